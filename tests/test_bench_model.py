"""The model benchmark runs as documented and prints every table; its exact head variants match the naive head.

Both run on CPU at tiny sizes (a 64² matmul for the peak): they check what the scripts print and compute, never how
fast this machine is."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SUBPROCESS_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_prints_tables_and_writes_json(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    command = [sys.executable, "benchmarks/bench_model.py", "--configs", "tiny", "--lengths", "32", "64"]
    command += ["--codes", "20", "300", "--budget", "0.01", "--whole_codes", "20", "--variant_codes", "20"]
    command += ["--naive_training_max_scores", "10000", "--device", "cpu", "--peak_size", "64", "--output", str(output)]
    # oneDNN limited to AVX2, as on a CPU without bf16 kernels (x86): the bf16 rows then run emulated, and the tables
    # must print whether or not a bf16 peak exists.
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for title in ("Encoder alone", "head vs the naive head", "End to end", "Ways to run the head", "GFLOP/s", "MFU"):
        assert title in done.stdout

    results = json.loads(output.read_text())
    assert len(results["encoder"]) == 4 and len(results["head"]) == 8 and len(results["whole"]) == 1
    assert all(row["seconds"] > 0 and row["peak_mb"] >= 0 for row in results["encoder"] + results["head"])
    skipped = [row for row in results["head"] if row["naive_seconds"] is None]
    assert {(row["mode"], row["tokens"], row["codes"]) for row in skipped} == {("training", 64, 300)}
    errors = {row["variant"]: row["max_abs_error"] for row in results["variants"]}
    exact_fp32 = [error for variant, error in errors.items() if variant.startswith("exact") and "bf16" not in variant]
    assert len(exact_fp32) == 5 and max(exact_fp32) < 1e-5
    paths = {row["variant"]: row["path"] for row in results["variants"]}
    assert paths["exact: SDPA per block"] == "sdpa" and paths["exact: explicit blocks"] == "blocks"
    assert paths["exact, bf16 autocast, default (auto)"] == "blocks"  # CPU bf16 inference
    assert results["warmup_runs"] == 1 and all(row["runs"] >= 1 for row in results["encoder"])
    assert results["peak_flops"]["fp32"] > 0 and set(results["peak_flops"]) == {"fp32", "bf16"}


def test_head_path_check_holds_every_path_to_the_naive_head(tmp_path: Path) -> None:
    """The script benchmarks/gpu_check.sh runs on CUDA, run here on CPU: each forced path runs as itself and matches
    the naive head in values and gradients (fp32 tightly, bf16 autocast within its rounding)."""
    output = tmp_path / "paths.json"
    command = [sys.executable, "benchmarks/check_head_paths.py", "--config", "tiny", "--codes", "50", "--tokens", "64",
               "--block_size", "16", "--budget", "0.01", "--device", "cpu", "--peak_size", "64",
               "--output", str(output)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    assert {(row["precision"], row["path"]) for row in rows} == {
        (precision, path) for precision in ("fp32", "bf16") for path in ("auto", "sdpa", "blocks", "naive")
    }
    assert all(row["runs as"] == row["path"] for row in rows if row["path"] != "auto")
    for row in rows:
        limit = 1e-5 if row["precision"] == "fp32" else 3e-2
        assert row["logit error"] < limit and row["gradient error"] < limit, row
        assert row["inference ms"] > 0 and row["training ms"] > 0
