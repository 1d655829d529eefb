"""Fine-tuning and serving throughput of BERT-XML coding: train.py's note tokens/s and MFU, with and without
length-grouped batches, and the `predict` CLI's notes/s in its default precision and in fp32.

Each run is the real script in a fresh process on generated notes of mixed lengths (50 to `--max_words` words) with a
label space of the first `--codes` billable ICD-10-CM codes, starting from a randomly initialised encoder (speed
does not depend on the weights). Prints a markdown table.

    python benchmarks/bench_coding.py --config tiny --codes 50 --notes 64 --steps 6        # CPU, a minute or two
    python benchmarks/bench_coding.py --config base --codes 8000 --notes 2000 --steps 40 \\
        --batch_size 8 --mixed_precision bf16                                              # a GPU (gpu_check.sh)
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_model import CONFIGS  # noqa: E402
from benchmarks.bench_pretrain import WORDS  # noqa: E402
from modeling_bertxml import BertXMLConfig, BertXMLForMaskedLM  # noqa: E402
from modeling_bertxml.data import icd10  # noqa: E402
from modeling_bertxml.release.predict import RESULTS_FILE  # noqa: E402
from tokenizer_training.train_tokenizer import train_tokenizer  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=list(CONFIGS), default="tiny")
    parser.add_argument("--codes", type=int, default=50, help="label space: the first N billable ICD-10-CM codes")
    parser.add_argument("--notes", type=int, default=64, help="training notes")
    parser.add_argument("--max_words", type=int, default=3000, help="longest note, in words")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of train.py")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--mixed_precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--predict_notes", type=int, default=32)
    parser.add_argument("--quiet", action="store_true", help="hide the runs' logs")
    return parser.parse_args()


def write_notes(path: Path, count: int, codes: list[str], max_words: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(count):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, max_words)))
            labels = rng.sample(codes[: min(len(codes), 50)], rng.randint(1, 4))
            handle.write(json.dumps({"id": f"n{seed}-{i}", "text": words, "labels": labels}) + "\n")


def prepare(args: argparse.Namespace, workdir: Path) -> None:
    """Notes, a tokenizer, the label file and a random encoder that reads notes of up to 8 x 512 tokens."""
    codes = icd10.billable_codes()[: args.codes]
    (workdir / "codes.txt").write_text("\n".join(codes) + "\n")
    for name, count, seed in (("train", args.notes, 0), ("validation", 16, 1), ("predict", args.predict_notes, 2)):
        write_notes(workdir / f"{name}.jsonl", count, codes, args.max_words, seed)
    tokenizer, _ = train_tokenizer([str(workdir / "train.jsonl")], str(workdir / "encoder"), vocab_size=2000,
                                   min_frequency=1)  # fmt: skip
    config = BertXMLConfig(**CONFIGS[args.config], vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           max_position_embeddings=512, max_chunks=8, position_embedding_type="rotary")  # fmt: skip
    BertXMLForMaskedLM(config).save_pretrained(workdir / "encoder")
    tokenizer.model_max_length = config.max_note_length
    tokenizer.save_pretrained(workdir / "encoder")


def run(command: list[str], workdir: Path, quiet: bool) -> str:
    env = {**os.environ, "HF_DATASETS_CACHE": str(workdir / "hf_cache")}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if not quiet or done.returncode:
        sys.stderr.write(done.stderr[-5000:])
    done.check_returncode()
    return done.stderr


def fine_tune(args: argparse.Namespace, workdir: Path, grouped: bool) -> tuple[dict, str]:
    """train.py's train_results.json and its log."""
    output = workdir / ("coder" if grouped else "coder_random_order")
    command = [
        sys.executable, "train.py", "--model_name_or_path", str(workdir / "encoder"),
        "--train_file", str(workdir / "train.jsonl"), "--validation_file", str(workdir / "validation.jsonl"),
        "--label_file", str(workdir / "codes.txt"), "--output_dir", str(output),
        "--max_train_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--mixed_precision", args.mixed_precision, "--early_stopping_patience", "0",
    ]  # fmt: skip
    log = run(command + ([] if grouped else ["--no_length_grouping"]), workdir, args.quiet)
    return json.loads((output / "train_results.json").read_text()), log


def predict(args: argparse.Namespace, workdir: Path, precision: str) -> dict:
    command = [
        sys.executable, "-m", "modeling_bertxml.release.predict", "--model", str(workdir / "coder"),
        "--input", str(workdir / "predict.jsonl"), "--output_dir", str(workdir / f"codes_{precision}"),
        "--precision", precision, "--batch_size", str(args.batch_size),
    ]  # fmt: skip
    run(command, workdir, args.quiet)
    results = json.loads((workdir / f"codes_{precision}" / RESULTS_FILE).read_text())
    return {"precision": results["precision"], "notes_per_second": results["notes_per_s"], "device": results["device"]}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(args, workdir)
        (grouped, log), (shuffled, _) = (fine_tune(args, workdir, grouped) for grouped in (True, False))
        serving = [predict(args, workdir, precision) for precision in ("auto", "fp32")]
    print(f"\nFine-tuning ({args.config} config, {args.codes:,} codes, {args.notes:,} notes of 50-{args.max_words:,} "
          f"words, batch {args.batch_size}, {args.steps} steps, precision {args.mixed_precision}):\n")  # fmt: skip
    # train.py logs the padding of both orders (the grouped run's epoch 0 and a random permutation).
    padding = re.search(r"Padding in training batches: (\S+)% grouped by length, (\S+)% in random order", log)
    print("| batches | padding | steps timed | note tokens/s | MFU | peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r, share in (("grouped by length", grouped, padding[1]), ("random order", shuffled, padding[2])):
        print(f"| {name} | {share} % "
              f"| {r['steady_state_steps']} | {r['tokens_per_second']:,.0f} | {100 * r['mfu']:.1f} % "
              f"| {r['peak_flops'] / 1e12:,.3g} TFLOP/s {r['peak_dtype']} |")
    print(f"\nServing (`predict`, {args.predict_notes} notes, batch {args.batch_size}):\n")
    print("| precision | device | notes/s |")
    print("|---|---|---:|")
    for r in serving:
        print(f"| {r['precision']} | {r['device']} | {r['notes_per_second']:,.1f} |")


if __name__ == "__main__":
    main()
