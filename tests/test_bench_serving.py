"""The serving benchmark runs as documented on a tiny model (in-process, a backlog on 2 CPU processes, a long note) and
writes its rows' keys; it never measures speed here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SUBPROCESS_TIMEOUT_S
from tests.test_predict import write_notes

REPO = Path(__file__).resolve().parents[1]
KEYS = {"backend", "notes_per_s", "ms_per_note_p50", "ms_per_note_p95", "max_score_diff", "map_change",
        "peak_gflop_per_s", "peak_share"}

pytest.importorskip("onnxruntime")


def test_bench_serving_prints_the_table_and_writes_every_backend(untrained_coder_folder: Path, tmp_path: Path) -> None:
    notes, output = tmp_path / "notes.jsonl", tmp_path / "results.json"
    rows = write_notes(notes, 6)
    rows = [{**row, "labels": ["C00.0"] if i % 2 else ["C01.1", "C05.5"]} for i, row in enumerate(rows)]
    notes.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tiny = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"
    tiny += ",max_position_embeddings=64,max_chunks=64"  # 4,096 tokens
    command = [sys.executable, "benchmarks/bench_serving.py", "--model", str(untrained_coder_folder), "--notes",
               str(notes), "--output", str(output), "--bert_base", "--base_codes", "10", "--base_overrides", tiny,
               "--peak_size", "64", "--processes", "2", "--backlog_notes", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| backend | notes/s | ms/note p50" in done.stdout and "4,096-token note" in done.stdout
    results = json.loads(output.read_text())
    assert "A backlog of 8 notes" in done.stdout
    backends = ["pytorch-fp32", "onnx-fp32", "onnx-int8"]
    assert [row["backend"] for row in results] == [*backends, "pytorch-fp32", "onnx-int8", *backends]
    assert all(KEYS <= set(row) for row in results)
    backlog = results[3:5]  # bert-xml-predict on 2 CPU processes of one thread, every note of the backlog coded
    assert all(row["processes"] == 2 and row["threads_per_process"] == 1 and row["notes"] == 8 for row in backlog)
    reference = results[0]
    assert reference["max_score_diff"] == 0 and reference["map_change"] == 0
    assert results[1]["max_score_diff"] < 1e-4  # fp32 ONNX Runtime: float noise


@pytest.mark.parametrize("case", ["model", "output", "notes"])
def test_a_wrong_path_stops_the_benchmark_in_one_line_before_it_measures(untrained_coder_folder: Path, tmp_path: Path,
                                                                        case: str) -> None:  # fmt: skip
    notes = tmp_path / "notes.jsonl"
    write_notes(notes, 2)
    paths = {"model": untrained_coder_folder, "notes": notes, "output": tmp_path / "results.json"}
    paths[case] = {"model": tmp_path, "output": tmp_path / "no" / "results.json", "notes": tmp_path / "no.jsonl"}[case]
    command = [sys.executable, "benchmarks/bench_serving.py",
               *(arg for name, path in paths.items() for arg in (f"--{name}", str(path)))]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=REPO)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert str(paths[case]) in done.stderr.strip().splitlines()[-1]
