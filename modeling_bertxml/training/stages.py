"""The whole pipeline as stages, each the command a user runs: what `make demo` (demo.py) and benchmarks/quality.py run.

corpus (`python -m modeling_bertxml.data.synthetic`) -> domain tokenizer -> MLM pretraining -> fine-tuning with
evaluation -> TF-IDF + logistic regression baseline. A YAML file gives each stage its flags (one section per stage,
`as_flags`) and the output dir; a stage whose output exists from a run with the same command is reused, so a second
run only redoes what changed.
"""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def stage_commands(out: Path) -> dict[str, tuple[list[str], Path]]:
    """Each stage's command line (without its YAML section's flags) and the file whose existence means it finished."""
    data = out / "data"
    splits = {split: str(data / f"{split}.jsonl") for split in ("train", "validation", "test")}
    python = [sys.executable, "-m"]
    return {
        "corpus": (python + ["modeling_bertxml.data.synthetic", "--output_dir", str(data)], data / "test.jsonl"),
        "tokenizer": (
            python + ["tokenizer_training.train_tokenizer", "--train_file", splits["train"],
                      "--output_dir", str(out / "tokenizer")],
            out / "tokenizer" / "tokenizer_report.json",
        ),
        "pretrain": (
            python + ["modeling_bertxml.training.pretrain", "--tokenizer_name", str(out / "tokenizer"),
                      "--train_file", splits["train"], "--validation_file", splits["validation"],
                      "--output_dir", str(out / "pretrained"), "--overwrite_output_dir"],
            out / "pretrained" / "model.safetensors",
        ),
        "finetune": (
            python + ["modeling_bertxml.training.train", "--model_name_or_path", str(out / "pretrained"),
                      "--train_file", splits["train"], "--validation_file", splits["validation"],
                      "--test_file", splits["test"], "--output_dir", str(out / "model"), "--overwrite_output_dir"],
            out / "model" / "test_results.json",
        ),
        "baseline": (
            python + ["modeling_bertxml.evaluation.baseline_tfidf", "--train_file", splits["train"],
                      "--validation_file", splits["validation"], "--test_file", splits["test"],
                      "--label_space_from", str(out / "model"), "--output_file", str(out / "baseline_results.json")],
            out / "baseline_results.json",
        ),
    }  # fmt: skip


def as_flags(options: dict | None) -> list[str]:
    """{"num_train_epochs": 3, "streaming": true} -> ["--num_train_epochs", "3", "--streaming"]."""
    flags = []
    for key, value in (options or {}).items():
        if value is True:
            flags.append(f"--{key}")
        elif value is not False and value is not None:  # `0 in (False, None)` is True
            flags += [f"--{key}", str(value)]
    return flags


def run_stage(name: str, command: list[str], done: Path, out: Path) -> float:
    """Run one stage unless its output exists from a run with the same command; returns seconds spent.

    A stage that did not finish (or whose settings changed) starts over: its scripts get --overwrite_output_dir.
    """
    stamp = out / f".{name}.done"
    if done.exists() and stamp.exists() and json.loads(stamp.read_text()) == command:
        print(f"== {name}: reusing {done.parent}")
        return 0.0
    print(f"== {name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    stamp.write_text(json.dumps(command))
    return time.perf_counter() - start


def run_stages(config: dict) -> tuple[Path, dict[str, float]]:
    """Every stage with the flags of its section of `config` (a YAML file's contents), into `config["output_dir"]`;
    returns that folder and each stage's seconds (0 when reused)."""
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name, (command, done) in stage_commands(out).items():
        timings[name] = run_stage(name, command + as_flags(config.get(name)), done, out)
    return out, timings


__all__ = ["as_flags", "run_stage", "run_stages", "stage_commands"]
