"""Code a backlog of notes: streamed, in shards, resumable, on one process or many.

    bert-xml-predict --model DIR --input notes.jsonl --output_dir codes/
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m modeling_bertxml.release.predict ...

The input is any notes file the training scripts read (JSON Lines, CSV, Parquet, a folder of `.txt` files, a saved
`datasets` dataset), the note in `text` (`--text_column`), read as a stream, never whole in memory: a first pass
counts and checks the rows (a bad row fails with its file and line before the model loads), the second codes them.
Each output row keeps the input's other fields (an `id`, gold `labels`, ...) and adds `codes`: the `icd-coding`
pipeline's answer (codes with descriptions, scores and, unless `--num_evidence_spans 0`, evidence spans).

Shards: rows [i * S, (i + 1) * S) of the input (S = `--shard_size`) are shard i. Of the shards not yet finished,
process r of N codes the r-th, the (r + N)-th, ..., each sorted by note length so that a batch pads little, and
writes it whole, in input order, to `shards/codes-0000i.jsonl` (or `.parquet`) through a temporary file and a rename,
then records it in `shards/finished.json`. Started again with the same arguments (or another number of processes), a
killed run skips the finished shards and shares out the rest; a shard written but not yet recorded is coded again and
replaced by the same rows. So the output is the same, note for note, whatever the number of processes and of kills,
and no note is coded twice or skipped.

On a CPU, small models code more notes/s as N processes of one thread each than as one process of N threads (each
op is too small to share out): `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` gives each
process cores / N threads, and the ONNX backends take as many (`benchmarks/bench_serving.py --processes`).

The output dir is claimed as `train.py`'s is (`claim_output_dir`): one run at a time, another run's folder refused,
`--overwrite_output_dir` deletes only what runs wrote there. The model's own code is used, never the folder's remote
code.
"""

import argparse
import fcntl
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, pipeline

from ..data.readers import NotesError, iter_notes
from ..model.pipeline_bertxml import BACKENDS, ONNX_DIR, ONNX_FILES, ICDCodingPipeline
from ..training.arguments import model_folder_or_hub_id, non_negative_int, positive_int, run_args
from ..training.atomic import OutputDirError, OutputWriteError, fsync_dir, write_json_atomic, writing
from ..training.checkpointing import RUN_ARGS_FILE, claim_output_dir, record_output

logger = logging.getLogger(__name__)

PRECISIONS = {"auto": None, "bf16": True, "fp32": False}  # -> the pipeline's bf16 parameter
SHARDS_DIR, FINISHED_FILE = "shards", "finished.json"
RESULTS_FILE = "predict_results.json"  # what the run coded, how fast and on what: read by the benchmarks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Predict ICD-10 codes, with evidence, for any number of notes.")
    parser.add_argument("--model", required=True, type=model_folder_or_hub_id, help="A folder saved by train.py, or a Hub model id.")
    parser.add_argument("--input", required=True, type=Path,
                        help="Notes: JSON Lines, CSV, Parquet, .txt, a folder of .txt files or a saved dataset.")
    parser.add_argument("--output_dir", required=True, type=Path,
                        help="Shards of results are written under it; a killed run started again continues there.")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="Delete the results of an earlier run in --output_dir (only what runs wrote) first.")
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="The shards' file format.")
    parser.add_argument("--shard_size", type=positive_int, default=10_000,
                        help="Notes per shard: the unit of resumption.")
    parser.add_argument("--text_column", default="text", help="The field that holds the note.")
    parser.add_argument("--batch_size", type=positive_int, default=8)
    parser.add_argument("--threshold", type=float, default=None, help="Defaults to the model's tuned threshold.")
    parser.add_argument("--top_k", type=positive_int, default=None, help="Keep at most this many codes per note.")
    parser.add_argument("--num_evidence_spans", type=non_negative_int, default=3,
                        help="0 writes codes and scores only.")
    parser.add_argument("--device", default=None,
                        help='e.g. "cpu", "cuda:1"; defaults to the process\'s device (the first GPU, or its own).')
    parser.add_argument(
        "--backend", choices=BACKENDS, default="pytorch",
        help="onnx-fp32 / onnx-int8: ONNX Runtime on the CPU (int8: up to 2.3x PyTorch's notes/s there); the model "
        "folder's onnx/ files, else exported into --output_dir/onnx first (needs bert-xml[serve]).",
    )
    parser.add_argument(
        "--precision", choices=list(PRECISIONS), default="auto",
        help="auto: bf16 autocast on a GPU that supports it, float32 elsewhere (the scores are float32 either way).",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # Found here, not once the model has loaded and the output dir holds this run's arguments.
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        parser.error(f"--threshold: expected a score from 0 to 1, got {args.threshold}")
    return args


def count_rows(args: argparse.Namespace) -> int:
    """The number of notes, every row checked (file:line errors) before the model loads."""
    total = sum(1 for _ in iter_notes([args.input], args.text_column))
    if not total:
        raise NotesError(f"{args.input}: holds no notes")
    return total


def iter_shards(args: argparse.Namespace) -> Iterator[tuple[int, list[tuple[dict, str]]]]:
    """(shard index, [(the row's other fields, its note)]) in input order; an empty cell is an empty note."""
    rows = ((fields, text or "") for _, fields, text in iter_notes([args.input], args.text_column))
    for shard, group in itertools.groupby(enumerate(rows), key=lambda item: item[0] // args.shard_size):
        yield shard, [row for _, row in group]


def shard_name(shard: int, file_format: str) -> str:
    return f"codes-{shard:05d}.{file_format}"


def read_finished(shards: Path) -> dict[str, int]:
    """Shard file name -> its number of notes, for every shard written whole."""
    path = shards / FINISHED_FILE
    return json.loads(path.read_text())["finished"] if path.is_file() else {}


def record_finished(shards: Path, name: str, notes: int) -> None:
    """Add a shard to `finished.json`; processes take turns (a lock file), each rewriting it atomically."""
    with open(shards / ".finished.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        finished = read_finished(shards)
        finished[name] = notes
        write_json_atomic(shards / FINISHED_FILE, {"finished": dict(sorted(finished.items()))})


def code_shard(coder: ICDCodingPipeline, rows: list[tuple[dict, str]], batch_size: int, parameters: dict,
               progress: tqdm) -> list[list[dict]]:  # fmt: skip
    """The codes of each note, in input order; notes go to the model longest first, so a batch's notes are of
    similar length (the character count stands for the token count: tokenizing twice costs more than it saves)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][1]))
    codes: list[list[dict]] = [[] for _ in rows]
    results = coder((rows[i][1] for i in order), batch_size=batch_size, **parameters)  # a generator: streamed
    for i, result in zip(order, results):
        codes[i] = result
        progress.update()
    return codes


def write_shard(path: Path, fields: list[dict], codes: list[list[dict]], file_format: str) -> None:
    """Write a shard into a temporary file beside `path` (mode 0600: codes of patients), renamed into place whole."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with writing(path, Path(temporary)), os.fdopen(handle, "wb") as file:
            if file_format == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                others = pa.Table.from_pylist(fields)  # no columns at all for a .txt input
                columns, names = [*others.columns, pa.array(codes, codes_type())], [*others.column_names, "codes"]
                pq.write_table(pa.table(columns, names=names), file)
            else:
                # default=str: a Parquet or dataset field (a date, bytes) that JSON has no type for is kept as text.
                file.writelines(
                    (json.dumps({**row, "codes": row_codes}, ensure_ascii=False, default=str) + "\n").encode()
                    for row, row_codes in zip(fields, codes)
                )
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def codes_type():
    """The Arrow type of the `codes` column (pyarrow is imported by a Parquet run only)."""
    import pyarrow as pa

    span = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()), ("attention", pa.float64())])
    code = pa.struct([("code", pa.string()), ("description", pa.string()), ("score", pa.float64()),
                      ("evidence", pa.list_(span))])  # fmt: skip
    return pa.list_(code)


def make_coder(args: argparse.Namespace, device: torch.device) -> tuple[ICDCodingPipeline, dict]:
    """The pipeline on `device` (or `--device`), and the call parameters the flags set."""
    # Loaded here, not by pipeline(): its error for a folder without weights is every class's traceback in one message.
    model = AutoModelForSequenceClassification.from_pretrained(args.model)
    coder = pipeline("icd-coding", model=model, tokenizer=args.model, pipeline_class=ICDCodingPipeline,
                     device=args.device or device)  # fmt: skip
    parameters = {
        "threshold": args.threshold, "top_k": args.top_k, "num_evidence_spans": args.num_evidence_spans,
        "bf16": PRECISIONS[args.precision], "backend": args.backend, "onnx_dir": onnx_dir(args),
    }  # fmt: skip
    return coder, {name: value for name, value in parameters.items() if value is not None}


def onnx_dir(args: argparse.Namespace) -> str | None:
    """Where an ONNX backend's files are: the model folder's `onnx/`, else the run's own export."""
    if args.backend == "pytorch":
        return None
    exported = Path(args.model) / ONNX_DIR / ONNX_FILES[args.backend]
    return str(exported.parent if exported.is_file() else args.output_dir / ONNX_DIR)


def export_if_needed(args: argparse.Namespace) -> None:
    """Export the model to ONNX into the output dir when the model folder has no export (main process only)."""
    folder = onnx_dir(args)
    if folder is None or Path(folder, ONNX_FILES[args.backend]).is_file():
        return
    from .onnx_export import export_onnx

    record_output(args.output_dir, ONNX_DIR)
    logger.info(f"Exporting {args.model} to ONNX into {folder}")
    export_onnx(args.model, folder)


def predict(args: argparse.Namespace) -> None:
    from accelerate import PartialState  # claim_output_dir has made it: the launch's process group

    state = PartialState()
    logger.info(state)
    total = count_rows(args)
    # The model loads before anything is written: a model that is not there leaves only the run's arguments, and
    # started again with another --model, the run is a new one, not "a different run" to overwrite.
    coder, parameters = make_coder(args, state.device)
    shards = args.output_dir / SHARDS_DIR
    if state.is_main_process:
        record_output(args.output_dir, SHARDS_DIR)
        shards.mkdir(exist_ok=True)
        for leftover in shards.glob(".codes-*.tmp"):  # a killed run's half shard (the dir is locked: no live writer)
            leftover.unlink()
        export_if_needed(args)
    state.wait_for_everyone()
    finished = read_finished(shards)
    todo = [s for s in range(-(-total // args.shard_size)) if shard_name(s, args.format) not in finished]
    mine = set(todo[state.process_index :: state.num_processes])
    notes = {s: min(args.shard_size, total - s * args.shard_size) for s in todo}
    progress = tqdm(total=sum(notes[s] for s in mine), desc="Coding notes", unit="note",
                    disable=not state.is_local_main_process)  # fmt: skip
    state.wait_for_everyone()  # every process starts coding together: the rate reported is the launch's
    start = time.perf_counter()
    for shard, rows in iter_shards(args):
        if shard in mine:
            codes = code_shard(coder, rows, args.batch_size, parameters, progress)
            name = shard_name(shard, args.format)
            write_shard(shards / name, [fields for fields, _ in rows], codes, args.format)
            fsync_dir(shards)
            record_finished(shards, name, len(rows))
    progress.close()
    state.wait_for_everyone()
    if state.is_main_process:
        report(args, state, coder, total, sum(notes.values()), time.perf_counter() - start)


def report(args: argparse.Namespace, state, coder: ICDCodingPipeline, total: int, coded: int, seconds: float) -> None:
    """Check that the finished shards hold every note once, and say how fast the launch's processes coded them (on
    stderr and in `RESULTS_FILE`)."""
    finished = read_finished(args.output_dir / SHARDS_DIR)
    if sum(finished.values()) != total:
        raise OutputWriteError(f"{args.output_dir}: the shards hold {sum(finished.values())} notes, the input {total}")
    results = {
        "notes": total, "notes_coded": coded, "seconds": seconds, "notes_per_s": coded / max(seconds, 1e-9),
        "device": str(coder.device), "processes": state.num_processes,
        "threads_per_process": torch.get_num_threads() if coder.device.type == "cpu" else None,
        "backend": args.backend, "precision": "bf16" if coder.runs_bf16(PRECISIONS[args.precision]) else "fp32",
        "batch_size": args.batch_size,
    }  # fmt: skip
    record_output(args.output_dir, RESULTS_FILE)
    write_json_atomic(args.output_dir / RESULTS_FILE, results)
    processes = f"{state.num_processes} process" + ("es" if state.num_processes > 1 else "")
    if results["threads_per_process"]:
        threads = results["threads_per_process"]
        processes += f" x {threads} thread" + ("s" if threads > 1 else "")
    print(
        f"Coded {coded:,} notes in {seconds:.1f} s: {results['notes_per_s']:,.1f} notes/s on {coder.device}, "
        f"{processes} ({args.backend}, {results['precision']}, batch size {args.batch_size}); {total:,} notes in "
        f"{len(finished)} shards -> {args.output_dir / SHARDS_DIR}",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # A folder that holds a run's arguments and shards is that run, resumed (any other run there is refused); one
    # that holds only arguments is a run that stopped before coding (a model that is not there): started anew.
    begun = all((args.output_dir / name).exists() for name in (RUN_ARGS_FILE, SHARDS_DIR))
    resume = begun and not args.overwrite_output_dir
    recorded = {key: value for key, value in run_args(args).items() if key != "overwrite_output_dir"}
    try:
        with claim_output_dir(args.output_dir, recorded, resume, args.overwrite_output_dir):
            predict(args)
    except (ValueError, OutputDirError, OutputWriteError) as error:  # NotesError (file:line, field), a bad flag
        raise SystemExit(f"error: {error}") from None
    except OSError as error:  # an unwritable folder, a model folder that is not there, a full disk
        where = f"{error.filename}: " if error.filename else ""
        raise SystemExit(f"error: {where}{error.strerror or error}") from None


if __name__ == "__main__":
    main()
