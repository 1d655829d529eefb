"""Serving on a CPU: PyTorch fp32 against ONNX Runtime fp32 and dynamic int8, on the same model and notes, in one run.

    python benchmarks/bench_serving.py --model runs/coder --notes test.jsonl --output results.json [--bert_base]

For each backend, through the `icd-coding` pipeline (tokenising, scoring, evidence: what a user runs):
- `notes_per_s`: the notes coded in batches of `--batch_size`, longest first (as `bert-xml-predict` batches them);
- `ms_per_note_p50`/`_p95`: one note per call, the latency a single request sees (each backend timed in phases of
  its own: `time_backends`);
- `max_score_diff`: the largest |score| difference to PyTorch fp32 over every code of every note;
- `map_change`: MAP (every code's score against the notes' `labels`) minus PyTorch fp32's;
- `gflop_per_s` and `peak_share`: the model's forward FLOPs (encoder and label attention) per second of the batched
  run, and their share of that backend's matmul peak on this machine (`peak_gflop_per_s`: one large square matmul,
  in PyTorch fp32, in ONNX Runtime fp32, and in ONNX Runtime dynamically quantized to int8, whose kernels run several
  times faster).
`--processes 1 2` adds the backlog rows: `bert-xml-predict` coding the notes, repeated to `--backlog_notes`, into
shards, for PyTorch fp32 and ONNX Runtime int8 on each number of CPU processes (`accelerate launch`, the `--threads`
shared out: 2 processes of one thread each here), `notes_per_s` as it reports (every process, from a common start).
`--bert_base` adds the time of one 4,096-token note on a randomly initialised BERT-base-sized coder (12 x 768,
512-token chunks, `--base_codes` codes) for each backend. Threads: `--threads`, for PyTorch and for ONNX Runtime (the
pipeline's sessions take PyTorch's count). The model folder is only read: the ONNX files are exported into a temporary
folder.
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_bertxml import BertXMLConfig, BertXMLForMultiLabelCoding, ICDCodingPipeline  # noqa: E402
from modeling_bertxml.data.readers import NotesError, iter_notes  # noqa: E402
from modeling_bertxml.evaluation.metrics import compute_metrics  # noqa: E402
from modeling_bertxml.model.pipeline_bertxml import onnx_cpu_session  # noqa: E402
from modeling_bertxml.release.onnx_export import OPSET, export_onnx  # noqa: E402
from modeling_bertxml.release.predict import RESULTS_FILE  # noqa: E402
from modeling_bertxml.training.arguments import model_folder  # noqa: E402
from benchmarks.measure import Meter, matmul_peak  # noqa: E402
from modeling_bertxml.training.throughput import encoder_flops  # noqa: E402

BACKENDS = {"pytorch-fp32": "pytorch", "onnx-fp32": "onnx-fp32", "onnx-int8": "onnx-int8"}  # row -> pipeline's
BACKLOG_BACKENDS = ("pytorch-fp32", "onnx-int8")  # today's path and the fastest (onnx-fp32 runs as PyTorch does)
BASE_NOTE_TOKENS = 4096
ROUNDS = 2  # turns each backend takes (time_backends)
PEAK_SIZE = 4096  # a 1,024-wide probe ran slower than the BERT-base note's own matmuls: no peak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=model_folder, help="A coding model folder (read only).")
    parser.add_argument("--notes", required=True, type=Path, help="Notes with `text` and gold `labels`.")
    parser.add_argument("--output", required=True, type=Path, help="The rows, as a JSON list.")
    parser.add_argument("--max_notes", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's threads (the cores a hospital CPU gives).")
    parser.add_argument("--peak_size", type=int, default=PEAK_SIZE,
                        help="Side of the square matmul that measures each backend's peak.")
    parser.add_argument("--processes", type=int, nargs="*", default=[],
                        help="Also time bert-xml-predict coding a backlog on each of these numbers of processes.")
    parser.add_argument("--backlog_notes", type=int, default=1000, help="The backlog: the notes, repeated to this many.")
    parser.add_argument("--bert_base", action="store_true", help="Also time a 4,096-token note on a BERT-base coder.")
    parser.add_argument("--base_codes", type=int, default=8922, help="Codes of that coder (MIMIC-III full: 8,922).")
    parser.add_argument("--base_overrides", default=None,
                        help='Changes to that coder\'s config, e.g. "hidden_size=32,num_hidden_layers=1" (tests).')
    args = parser.parse_args(argv)
    if any(processes < 1 for processes in args.processes):
        parser.error("--processes takes numbers of processes, each at least 1")
    if not args.output.parent.is_dir():  # found now, not after minutes of measuring
        parser.error(f"--output {args.output}: its folder {args.output.parent} does not exist")
    return args


def read_notes(path: Path, max_notes: int | None) -> tuple[list[str], list[list[str]]]:
    rows = [(text or "", fields.get("labels") or []) for _, fields, text in iter_notes([path])][:max_notes]
    return [text for text, _ in rows], [labels for _, labels in rows]


def onnx_matmul_peaks(meter: Meter, workdir: Path, size: int) -> dict[str, float]:
    """FLOP/s of one (size x size) @ (size x size) matmul in ONNX Runtime, in fp32 and quantized as the int8 backend
    is (`quantize_dynamic`): the peaks the ONNX rows are shares of (`meter`'s median after its warm-up)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "weight")
    square = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "weight"], ["y"])], "peak", square[:1], square[1:],
                              [weight])  # fmt: skip
    fp32, int8 = workdir / "peak.onnx", workdir / "peak_int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), fp32)
    logging.disable(logging.WARNING)  # its advice to pre-process, for a graph of one MatMul
    try:
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    feed = {"x": rng.standard_normal((size, size), dtype=np.float32)}
    peaks = {}
    for backend, path in (("onnx-fp32", fp32), ("onnx-int8", int8)):
        session = onnx_cpu_session(str(path))  # on the threads the pipeline's sessions get
        # Wall time: ONNX Runtime's threads spin while they wait, which CPU time would count as work.
        peaks[backend] = 2 * size**3 / meter.measure(lambda: session.run(None, feed)).wall_seconds
    return peaks


def forward_flops(model: BertXMLForMultiLabelCoding, tokens: int) -> int:
    return encoder_flops(model.config, tokens) + model.label_head.flops_per_token * tokens


def all_scores(coder: ICDCodingPipeline, texts: list[str], backend: str, onnx_dir: str) -> np.ndarray:
    """(notes, codes) scores of every code, one note at a time (no padding: the scores are the note's own)."""
    rows = []
    with torch.no_grad():
        for text in texts:
            encoded = coder.preprocess(text)
            logits, _ = coder.score(encoded["input_ids"], encoded["attention_mask"], backend, onnx_dir)
            rows.append(logits.float().sigmoid()[0].numpy())
    return np.stack(rows)


def time_backends(coder: ICDCodingPipeline, texts: list[str], onnx_dir: str, batch_size: int) -> dict[str, dict]:
    """Per backend: latency per note (one per call) and notes/s in length-sorted batches.

    Each backend runs its calls in a phase of its own, after an untimed warm-up call, and the phases take turns over
    `ROUNDS`, so that a shared machine's drift slows them alike. Calls of two backends interleaved one by one would
    slow each other: ONNX Runtime's and PyTorch's thread pools spin on the same cores after each call (PyTorch's p50
    on the demo model: 45 ms interleaved, 17 ms alone)."""
    calls = {name: partial(coder, backend=backend, onnx_dir=onnx_dir) for name, backend in BACKENDS.items()}
    latencies, seconds = {name: [] for name in calls}, dict.fromkeys(calls, 0.0)
    ordered = sorted(texts, key=len, reverse=True)
    for _ in range(ROUNDS):
        for name, call in calls.items():
            call(texts[:batch_size], batch_size=batch_size)
            for text in texts:
                start = time.perf_counter()
                call(text)
                latencies[name].append(1e3 * (time.perf_counter() - start))
            start = time.perf_counter()
            call(ordered, batch_size=batch_size)
            seconds[name] += time.perf_counter() - start
    return {
        name: {
            "notes_per_s": ROUNDS * len(texts) / seconds[name],
            "ms_per_note_p50": float(np.percentile(latencies[name], 50)),
            "ms_per_note_p95": float(np.percentile(latencies[name], 95)),
            "batched_seconds": seconds[name] / ROUNDS,
        }
        for name in calls
    }


def serving_rows(args: argparse.Namespace, texts: list[str], labels: list[list[str]], onnx_dir: str,
                 peaks: dict[str, float]) -> list[dict]:  # fmt: skip
    coder = pipeline("icd-coding", model=str(args.model), pipeline_class=ICDCodingPipeline, device=-1)
    label2id = {code: i for i, code in coder.model.config.id2label.items()}
    targets = np.zeros((len(texts), len(label2id)))
    for row, codes in enumerate(labels):
        targets[row, [label2id[code] for code in codes if code in label2id]] = 1
    tokens = sum(len(coder.preprocess(text)["input_ids"][0]) for text in texts)
    flops = forward_flops(coder.model, tokens)
    rows, reference = [], None
    timings = time_backends(coder, texts, onnx_dir, args.batch_size)
    for name, backend in BACKENDS.items():
        timing = timings[name]
        scores = all_scores(coder, texts, backend, onnx_dir)
        metric = compute_metrics(scores, targets, threshold=coder.model.config.threshold)["map"]
        reference = reference or (scores, metric)
        rows.append({
            "backend": name, "model": args.model.name, "notes": len(texts), "tokens": tokens, **timing,
            "max_score_diff": float(np.abs(scores - reference[0]).max()), "map": metric,
            "map_change": metric - reference[1], "gflop_per_s": flops / timing.pop("batched_seconds") / 1e9,
        })  # fmt: skip
        rows[-1].update(peak_gflop_per_s=peaks[name] / 1e9, peak_share=rows[-1]["gflop_per_s"] * 1e9 / peaks[name])
    return rows


def backlog_rows(args: argparse.Namespace, texts: list[str], workdir: Path, onnx_dir: str, rows: list[dict],
                 peaks: dict[str, float]) -> list[dict]:  # fmt: skip
    """notes/s of `bert-xml-predict` coding a backlog into shards (each process gets at least two), per backend and
    number of CPU processes, each process given `--threads` / processes threads."""
    model = workdir / "backlog-model"  # the model read through links, beside this run's export
    model.mkdir()
    for item in args.model.iterdir():
        if item.name != "onnx":
            (model / item.name).symlink_to(item.resolve())
    (model / "onnx").symlink_to(Path(onnx_dir).resolve())
    backlog = workdir / "backlog.jsonl"
    backlog.write_text("".join(json.dumps({"text": texts[i % len(texts)]}) + "\n" for i in range(args.backlog_notes)))
    shard_size = -(-args.backlog_notes // (2 * max(args.processes)))
    flops_per_note = rows[0]["gflop_per_s"] / rows[0]["notes_per_s"] * 1e9  # the in-process rows' notes, on average
    results = []
    for processes in args.processes:
        threads = max(1, args.threads // processes)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                  "--num_cpu_threads_per_process", str(threads), "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no", *(["--multi_gpu"] if processes > 1 else [])]  # fmt: skip
        for name in BACKLOG_BACKENDS:
            output_dir = workdir / f"backlog-{name}-{processes}"
            command = [*launch, "-m", "modeling_bertxml.release.predict", "--model", str(model), "--input",
                       str(backlog), "--output_dir", str(output_dir), "--shard_size", str(shard_size), "--batch_size",
                       str(args.batch_size), "--backend", BACKENDS[name]]  # fmt: skip
            env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"bert-xml-predict on {processes} processes failed:\n{done.stderr[-3000:]}")
            coded = json.loads((output_dir / RESULTS_FILE).read_text())
            notes_per_s = coded["notes_per_s"]
            results.append({
                "backend": name, "model": args.model.name, "notes": coded["notes_coded"], "processes": processes,
                "threads_per_process": coded["threads_per_process"], "notes_per_s": notes_per_s,
                "ms_per_note_p50": None, "ms_per_note_p95": None, "max_score_diff": None, "map_change": None,
                "gflop_per_s": flops_per_note * notes_per_s / 1e9, "peak_gflop_per_s": peaks[name] / 1e9,
                "peak_share": flops_per_note * notes_per_s / peaks[name],
            })  # fmt: skip
    return results


def bert_base_rows(args: argparse.Namespace, workdir: Path, peaks: dict[str, float]) -> list[dict]:
    """Seconds for one 4,096-token note on a randomly initialised BERT-base-sized coder, per backend (median of 3)."""
    config = BertXMLConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           max_position_embeddings=512, max_chunks=8, num_labels=args.base_codes)  # fmt: skip
    if args.base_overrides:
        config.update_from_string(args.base_overrides)
    folder = workdir / "bert-base"
    BertXMLForMultiLabelCoding(config).save_pretrained(folder)
    onnx_dir = str(export_onnx(folder, workdir / "bert-base-onnx"))
    coder = ICDCodingPipeline(model=BertXMLForMultiLabelCoding.from_pretrained(folder).eval(), tokenizer=None)
    input_ids = torch.randint(5, config.vocab_size, (1, BASE_NOTE_TOKENS), generator=torch.Generator().manual_seed(0))
    flops = forward_flops(coder.model, BASE_NOTE_TOKENS)
    score = {name: partial(coder.score, input_ids, torch.ones_like(input_ids), backend, onnx_dir)
             for name, backend in BACKENDS.items()}  # fmt: skip
    seconds, scores = {name: [] for name in score}, {}
    with torch.no_grad():
        for name, run in score.items():  # warm-up
            scores[name] = run()[0].sigmoid()
        for _ in range(3):  # in turns, so that other jobs on shared cores slow every backend alike
            for name, run in score.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
    rows = []
    for name in score:
        median = statistics.median(seconds[name])
        rows.append({
            "backend": name, "model": "bert-base", "codes": args.base_codes, "tokens": BASE_NOTE_TOKENS,
            "notes_per_s": 1 / median, "ms_per_note_p50": 1e3 * median, "ms_per_note_p95": 1e3 * max(seconds[name]),
            "max_score_diff": (scores[name] - scores["pytorch-fp32"]).abs().max().item(), "map_change": None,
            "gflop_per_s": flops / median / 1e9, "peak_gflop_per_s": peaks[name] / 1e9,
            "peak_share": flops / median / peaks[name],
        })  # fmt: skip
    return rows


def print_table(rows: list[dict], backlog: list[dict], base: list[dict], peaks: dict[str, float]) -> None:
    print(f"\nMatmul peaks of this machine ({torch.get_num_threads()} PyTorch threads), GFLOP/s: "
          + ", ".join(f"{name} {peak / 1e9:,.1f}" for name, peak in peaks.items()) + "\n")
    print("| backend | notes/s | ms/note p50 | ms/note p95 | max score diff | MAP change | GFLOP/s | of peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['backend']} | {row['notes_per_s']:.1f} | {row['ms_per_note_p50']:.1f} | "
              f"{row['ms_per_note_p95']:.1f} | {row['max_score_diff']:.4f} | {row['map_change']:+.4f} | "
              f"{row['gflop_per_s']:.1f} | {row['peak_share']:.0%} |")  # fmt: skip
    if backlog:
        print(f"\nA backlog of {backlog[0]['notes']:,} notes coded by bert-xml-predict (from every process's model "
              "loaded to the last shard written):\n")
        print("| backend | processes x threads | notes/s | GFLOP/s | of peak |\n|---|---:|---:|---:|---:|")
        for row in backlog:
            print(f"| {row['backend']} | {row['processes']} x {row['threads_per_process']} | {row['notes_per_s']:.1f} | "
                  f"{row['gflop_per_s']:.1f} | {row['peak_share']:.0%} |")  # fmt: skip
    if base:
        print(f"\nOne {BASE_NOTE_TOKENS:,}-token note, BERT-base-sized coder ({base[0]['codes']:,} codes):\n")
        print("| backend | s/note (median of 3) | max score diff | GFLOP/s | of peak |\n|---|---:|---:|---:|---:|")
        for row in base:
            print(f"| {row['backend']} | {row['ms_per_note_p50'] / 1e3:.2f} | {row['max_score_diff']:.4f} | "
                  f"{row['gflop_per_s']:.1f} | {row['peak_share']:.0%} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:  # before the minutes of measuring: a wrong file or a bad row, named by file and line
        texts, labels = read_notes(args.notes, args.max_notes)
    except NotesError as error:
        raise SystemExit(f"error: {error}") from None
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        meter = Meter(torch.device("cpu"), budget_s=10)
        peaks = {"pytorch-fp32": matmul_peak(meter, torch.float32, args.peak_size),
                 **onnx_matmul_peaks(meter, Path(tmp), args.peak_size)}  # fmt: skip
        onnx_dir = str(export_onnx(args.model, Path(tmp) / "onnx"))
        rows = serving_rows(args, texts, labels, onnx_dir, peaks)
        backlog = backlog_rows(args, texts, Path(tmp), onnx_dir, rows, peaks) if args.processes else []
        base = bert_base_rows(args, Path(tmp), peaks) if args.bert_base else []
    print_table(rows, backlog, base, peaks)
    args.output.write_text(json.dumps(rows + backlog + base, indent=2) + "\n")


if __name__ == "__main__":
    main()
