"""MLM pretraining throughput: tokens per second of `pretrain.py` for a tiny and a BERT-base BERT-XML, on this machine.

Each configuration runs the real script (a fresh process, as a user would) for a few optimizer steps on a generated
corpus with a tokenizer trained by tokenizer_training, then reads `train_results.json`. Prints a markdown table.

    python benchmarks/bench_pretrain.py                 # CPU: a couple of minutes
    python benchmarks/bench_pretrain.py --configs base --steps 50 --batch_scale 16 --mixed_precision bf16 \
        --notes 4000 --dataloader_num_workers 4 [--torch_compile]                                          # a GPU

tokens/s and MFU are pretrain.py's steady state (its first steps, evaluations and checkpoints untimed; MFU against
the matmul peak it measures at start: bf16 on CUDA, fp32 on CPU); on a shared machine the numbers are indicative only.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokenizer_training.train_tokenizer import train_tokenizer  # noqa: E402

# name -> (config overrides, sequence length, per-device batch size at --batch_scale 1)
CONFIGS = {
    "tiny": ("hidden_size=128,num_hidden_layers=2,num_attention_heads=4,intermediate_size=512,"
             "max_position_embeddings=128,max_chunks=16", 128, 16),
    # BERT-base sizes (BertXMLConfig's defaults) with BERT's 30,522-entry vocabulary, whatever our tokenizer's size.
    "base": ("vocab_size=30522", 512, 2),
}
WORDS = ("patient denies chest pain shortness of breath history type 2 diabetes mellitus hypertension hyperlipidemia "
         "atrial fibrillation on apixaban admitted for acute kidney injury creatinine improved with fluids discharged "
         "home stable follow up in clinic metformin lisinopril echocardiogram ejection fraction pneumonia treated "
         "with ceftriaxone azithromycin chronic obstructive pulmonary disease exacerbation").split()


def write_corpus(path: Path, num_notes: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    notes = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 400))) for _ in range(num_notes))
    path.write_text("\n".join(notes) + "\n")


def run(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    overrides, seq_len, batch = CONFIGS[name]
    batch *= args.batch_scale
    output_dir = workdir / f"run_{name}"
    command = [
        sys.executable, str(REPO / "pretrain.py"), "--tokenizer_name", str(workdir / "tokenizer"),
        "--train_file", str(workdir / "notes.txt"), "--config_overrides", overrides, "--max_seq_length", str(seq_len),
        "--per_device_train_batch_size", str(batch), "--max_train_steps", str(args.steps[name]),
        "--learning_rate", "1e-4", "--output_dir", str(output_dir), "--logging_steps", "10",
    ]  # fmt: skip
    if args.mixed_precision:
        command += ["--mixed_precision", args.mixed_precision]
    if args.torch_compile:
        command += ["--torch_compile"]
    command += ["--dataloader_num_workers", str(args.dataloader_num_workers)]
    env = {**os.environ, "HF_DATASETS_CACHE": str(workdir / "hf_cache")}
    logs = subprocess.DEVNULL if args.quiet else None
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=logs)
    results = json.loads((output_dir / "train_results.json").read_text())
    return {"config": name, "seq_len": seq_len, "batch": batch, **results}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--steps", type=int, help="Optimizer steps per config (default: 20 tiny, 3 base).")
    parser.add_argument("--batch_scale", type=int, default=1, help="Multiply the per-device batch sizes (GPUs).")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--quiet", action="store_true", help="Hide the runs' logs and progress bars.")
    parser.add_argument("--notes", type=int, default=300, help="Notes in the generated corpus (about 250 words each).")
    parser.add_argument("--torch_compile", action="store_true", help="pretrain.py --torch_compile (inductor).")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    args = parser.parse_args()
    args.steps = {name: args.steps or default for name, default in (("tiny", 20), ("base", 3))}
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_corpus(workdir / "notes.txt", num_notes=args.notes)
        train_tokenizer([str(workdir / "notes.txt")], str(workdir / "tokenizer"), vocab_size=2000, min_frequency=1)
        rows = [run(name, args, workdir) for name in args.configs]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    compiled = ", torch.compile" if args.torch_compile else ""
    print(f"\nMLM pretraining throughput on {device}, precision {args.mixed_precision or 'fp32'}{compiled}:\n")
    print("| config | parameters | seq len | batch | steps (timed) | loop seconds | steady tokens/s | MFU | peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['config']} | {row['num_parameters'] / 1e6:.1f}M | {row['seq_len']} | {row['batch']} "
              f"| {row['train_steps']} ({row['steady_state_steps']}) | {row['train_runtime']:.1f} "
              f"| {row['tokens_per_second']:,.0f} | {100 * row['mfu']:.1f} % "
              f"| {row['peak_flops'] / 1e12:,.3g} TFLOP/s {row['peak_dtype']} |")


if __name__ == "__main__":
    main()
