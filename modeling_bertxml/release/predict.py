"""Code a file of notes in batch.

    python -m modeling_bertxml.release.predict --model DIR --input notes.jsonl --output codes.jsonl

The input is any notes file the training scripts read (JSON Lines, CSV, Parquet, `.txt`, a saved dataset), the note
in `text` (`--text_column`). Each output line (JSON Lines) keeps the input's other fields (an `id`, gold `labels`, ...)
and adds `codes`: the `icd-coding` pipeline's answer for the note (codes with descriptions, scores and evidence spans).
The model's own code is used, never the folder's remote code.

The output is written to a temporary file beside it and renamed into place once complete, so a killed run never
leaves a truncated file that looks finished, and it may not be the input (a hard link or symlink to it included).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import pipeline

from ..data.readers import NotesError, iter_notes
from ..model.pipeline_bertxml import ICDCodingPipeline

PRECISIONS = {"auto": None, "bf16": True, "fp32": False}  # -> the pipeline's bf16 parameter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Predict ICD-10 codes, with evidence, for a file of notes.")
    parser.add_argument("--model", required=True, help="A folder saved by train.py, or a Hub model id.")
    parser.add_argument("--input", required=True, type=Path,
                        help="Notes: JSON Lines, CSV, Parquet, .txt (one note per line) or a saved dataset.")
    parser.add_argument("--output", required=True, type=Path,
                        help="JSON Lines written here, one line per note (never the input file).")
    parser.add_argument("--text_column", default="text", help="The field that holds the note.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=None, help="Defaults to the model's tuned threshold.")
    parser.add_argument("--top_k", type=int, default=None, help="Keep at most this many codes per note.")
    parser.add_argument("--num_evidence_spans", type=int, default=3)
    parser.add_argument("--device", default=None, help='e.g. "cpu", "cuda:1"; defaults to the first GPU if any.')
    parser.add_argument(
        "--precision", choices=list(PRECISIONS), default="auto",
        help="auto: bf16 autocast on a GPU that supports it, float32 elsewhere (the scores are float32 either way).",
    )  # fmt: skip
    return parser.parse_args(argv)


def read_rows(path: Path, text_column: str) -> list[tuple[dict, str]]:
    """(the row's other fields, its note) for every row; an empty cell is an empty note (coded as no codes)."""
    rows = [(fields, text or "") for _, fields, text in iter_notes([path], text_column)]
    if not rows:
        raise NotesError(f"{path}: holds no notes")
    return rows


def prepare_output(input_path: Path, output: Path) -> None:
    """Refuse an output that is the input (same file, a link to it) or a folder, and create its folder, all before
    the model loads: the notes must survive, and a typo must not cost a whole run."""
    if output.is_dir():
        raise ValueError(f"--output {output}: is a folder; give a file name such as codes.jsonl")
    if output.exists() and input_path.exists() and os.path.samefile(input_path, output):
        raise ValueError(f"--output {output}: is the input file (or a link to it); writing would destroy the notes")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder should be, no permission
        raise ValueError(f"--output {output}: cannot create its folder ({error.strerror})") from None
    if not os.access(output.parent, os.W_OK):
        raise ValueError(f"--output {output}: its folder is not writable")


def write_lines_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write into a temporary file beside `path` (mode 0600: codes of patients) and rename it over `path` at the end."""
    file = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                       suffix=".tmp", delete=False)
    try:
        with file:
            file.writelines(lines)
            file.flush()
            os.fsync(file.fileno())
        os.replace(file.name, path)
    except BaseException:
        Path(file.name).unlink(missing_ok=True)
        raise


def predict(args: argparse.Namespace) -> None:
    prepare_output(args.input, args.output)
    rows = read_rows(args.input, args.text_column)  # all of them: a bad row fails before the model loads
    device = args.device or (0 if torch.cuda.is_available() else -1)
    coder = pipeline("icd-coding", model=args.model, pipeline_class=ICDCodingPipeline, device=device)
    parameters = {
        "threshold": args.threshold, "top_k": args.top_k, "num_evidence_spans": args.num_evidence_spans,
        "bf16": PRECISIONS[args.precision],
    }  # fmt: skip
    parameters = {name: value for name, value in parameters.items() if value is not None}
    notes = (text for _, text in rows)  # a generator makes the pipeline stream, so progress is live
    results = coder(notes, batch_size=args.batch_size, **parameters)
    progress = tqdm(zip(rows, results), total=len(rows), desc="Coding notes", unit="note")
    start = time.perf_counter()
    # default=str: a Parquet or saved-dataset field (a date, bytes) that JSON has no type for is kept as text.
    write_lines_atomically(
        args.output, (json.dumps({**fields, "codes": codes}, ensure_ascii=False, default=str) + "\n"
                      for (fields, _), codes in progress)
    )
    seconds = time.perf_counter() - start
    precision = "bf16" if coder.runs_bf16(PRECISIONS[args.precision]) else "fp32"
    print(
        f"Coded {len(rows):,} notes in {seconds:.1f} s: {len(rows) / seconds:,.1f} notes/s on {coder.device} "
        f"({precision}, batch size {args.batch_size}) -> {args.output}",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        predict(args)
    except ValueError as error:  # NotesError (file:line, field), a bad --output, a tokenizer that does not fit
        raise SystemExit(f"error: {error}") from None
    except OSError as error:  # an unwritable folder, a model folder that is not there, a full disk
        where = f"{error.filename}: " if error.filename else ""
        raise SystemExit(f"error: {where}{error.strerror or error}") from None


if __name__ == "__main__":
    main()
