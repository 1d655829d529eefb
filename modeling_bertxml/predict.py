"""Code a file of notes in batch.

    python -m modeling_bertxml.predict --model DIR --input notes.jsonl --output codes.jsonl

Each input line is a JSON object with the note in `text` (`--text_column`); each output line keeps the input's other
fields (an `id`, gold `labels`, ...) and adds `codes`: the `icd-coding` pipeline's answer for the note (codes with
descriptions, scores and evidence spans). The model's own code is used, never the folder's remote code.
"""

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import pipeline

from .pipeline_bertxml import ICDCodingPipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Predict ICD-10 codes, with evidence, for a JSON Lines file of notes.")
    parser.add_argument("--model", required=True, help="A folder saved by train.py, or a Hub model id.")
    parser.add_argument("--input", required=True, type=Path, help="JSON Lines, one note per line.")
    parser.add_argument("--output", required=True, type=Path, help="JSON Lines written here, one line per note.")
    parser.add_argument("--text_column", default="text", help="The field that holds the note.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=None, help="Defaults to the model's tuned threshold.")
    parser.add_argument("--top_k", type=int, default=None, help="Keep at most this many codes per note.")
    parser.add_argument("--num_evidence_spans", type=int, default=3)
    parser.add_argument("--device", default=None, help='e.g. "cpu", "cuda:1"; defaults to the first GPU if any.')
    return parser.parse_args(argv)


def read_notes(path: Path, text_column: str) -> list[dict]:
    """The rows of a JSON Lines file; a clear error names the line of a row that is not an object with a text."""
    rows = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(text_column), str):
                raise ValueError(f"{path}, line {line_number}: expected an object with a string field {text_column!r}")
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = read_notes(args.input, args.text_column)
    device = args.device or (0 if torch.cuda.is_available() else -1)
    coder = pipeline("icd-coding", model=args.model, pipeline_class=ICDCodingPipeline, device=device)
    parameters = {"threshold": args.threshold, "top_k": args.top_k, "num_evidence_spans": args.num_evidence_spans}
    parameters = {name: value for name, value in parameters.items() if value is not None}
    notes = (row[args.text_column] for row in rows)  # a generator makes the pipeline stream, so progress is live
    results = coder(notes, batch_size=args.batch_size, **parameters)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as file:
        for row, codes in tqdm(zip(rows, results), total=len(rows), desc="Coding notes", unit="note"):
            kept = {key: value for key, value in row.items() if key != args.text_column}
            file.write(json.dumps({**kept, "codes": codes}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
