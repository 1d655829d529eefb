"""`bert-xml-predict` on a backlog: shards that hold every note once, in input order, the same after a `kill -9` and
a restart and on 2 processes as on one; its output dir claimed like train.py's; bad input named by file and line."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from modeling_bertxml import ICDCodingPipeline
from modeling_bertxml.release.predict import RESULTS_FILE
from modeling_bertxml.release.predict import main as predict_main
from tests.conftest import SUBPROCESS_TIMEOUT_S
from tests.test_pipeline import assert_same_coding

REPO = Path(__file__).resolve().parents[1]
WORDS = "patient denies chest pain history of type 2 diabetes mellitus hypertension glucose insulin".split()


def write_notes(path: Path, count: int) -> list[dict]:
    """`count` notes of 1 to 40 words (1 to 3 chunks of the tiny model), each with an id."""
    rows = [{"id": f"n{i}", "text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i * 13 % 40))}
            for i in range(count)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def read_output(output_dir: Path) -> list[dict]:
    """Every row of the shards, in shard order."""
    rows = []
    for path in sorted((output_dir / "shards").glob("codes-*")):
        if path.suffix == ".parquet":
            rows += pq.read_table(path).to_pylist()
        else:
            rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def predict_command(untrained_coder_folder: Path, notes: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(untrained_coder_folder), "--input", str(notes), "--output_dir", str(output_dir), "--top_k", "2",
            "--shard_size", "4", *extra]  # fmt: skip


def subprocess_env() -> dict[str, str]:
    # This checkout first (the shared venv may import another), one thread per process (2 ranks share 2 cores).
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_shards_hold_every_note_once_in_input_order_with_its_fields(
    untrained_coder: ICDCodingPipeline, untrained_coder_folder: Path, tmp_path: Path, capsys
) -> None:
    notes = tmp_path / "notes.jsonl"
    rows = [{**row, "labels": ["E11.9"]} for row in write_notes(notes, 10)]
    notes.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for file_format in ("jsonl", "parquet"):
        output_dir = tmp_path / file_format
        predict_main(predict_command(untrained_coder_folder, notes, output_dir, "--format", file_format))
        written = read_output(output_dir)
        assert [(row["id"], row["labels"]) for row in written] == [(row["id"], row["labels"]) for row in rows]
        assert all("text" not in row for row in written)
        assert_same_coding([row["codes"] for row in written], untrained_coder([row["text"] for row in rows], top_k=2))
        finished = json.loads((output_dir / "shards" / "finished.json").read_text())["finished"]
        assert finished == {f"codes-0000{i}.{file_format}": n for i, n in enumerate([4, 4, 2])}
    assert "Coded 10 notes in" in capsys.readouterr().err
    predict_main(predict_command(untrained_coder_folder, notes, tmp_path / "lean", "--num_evidence_spans", "0"))
    assert all(code["evidence"] == [] for row in read_output(tmp_path / "lean") for code in row["codes"])


def test_a_finished_run_started_again_codes_nothing_and_another_run_is_refused(
    untrained_coder_folder: Path, tmp_path: Path, capsys
) -> None:
    notes, output_dir = tmp_path / "notes.jsonl", tmp_path / "out"
    write_notes(notes, 6)
    predict_main(predict_command(untrained_coder_folder, notes, output_dir))
    before = {path: path.stat().st_mtime_ns for path in (output_dir / "shards").glob("codes-*")}
    predict_main(predict_command(untrained_coder_folder, notes, output_dir))
    assert "Coded 0 notes" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in (output_dir / "shards").glob("codes-*")} == before
    with pytest.raises(SystemExit, match=r"holds a different run .*--top_k: 2 -> 3"):
        predict_main(predict_command(untrained_coder_folder, notes, output_dir) + ["--top_k", "3"])
    predict_main(predict_command(untrained_coder_folder, notes, output_dir, "--top_k", "3", "--overwrite_output_dir"))
    assert all(len(row["codes"]) == 3 for row in read_output(output_dir))

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "mine.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="holds files that no bert-xml run wrote"):
        predict_main(predict_command(untrained_coder_folder, notes, theirs))
    with pytest.raises(SystemExit, match="is inside --output_dir"):
        predict_main(predict_command(untrained_coder_folder, theirs / "mine.txt", theirs, "--overwrite_output_dir"))
    assert (theirs / "mine.txt").read_text() == "a user's file"
    assert [path.name for path in theirs.iterdir()] == ["mine.txt"]  # a refused run leaves nothing, not even its lock


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", r"notes\.jsonl:1: not UTF-8 text"),
    ('{"text": ["Mr. John Smith"]}\n'.encode(), r"notes\.jsonl:1: field 'text': the note is a list"),
    ('{"id": 1, "text": "ok"}\n{"id": 2, "note": "John Smith"}\n'.encode(), r"notes\.jsonl:2: no field 'text'"),
    (b"", r"notes\.jsonl: holds no notes"),
])  # fmt: skip
def test_bad_input_is_one_line_naming_file_and_line_before_anything_is_coded(
    untrained_coder_folder: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(content)
    with pytest.raises(SystemExit, match=message) as error:
        predict_main(predict_command(untrained_coder_folder, notes, tmp_path / "out"))
    assert "John" not in str(error.value)
    assert not list((tmp_path / "out").glob("shards/codes-*"))


def test_a_run_stopped_before_coding_starts_again_with_other_arguments(untrained_coder_folder: Path, tmp_path: Path,
                                                                        capsys) -> None:  # fmt: skip
    """A typo in a flag, or a model that does not load, must not leave a run that only --overwrite_output_dir clears."""
    notes, output_dir = tmp_path / "notes.jsonl", tmp_path / "codes"
    write_notes(notes, 3)
    with pytest.raises(SystemExit):
        predict_main(predict_command(untrained_coder_folder, notes, output_dir, "--batch_size", "0"))
    assert "--batch_size: expected a positive whole number, got '0'" in capsys.readouterr().err
    assert not output_dir.exists()  # found before the output dir is touched
    broken = tmp_path / "broken"
    shutil.copytree(untrained_coder_folder, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(SystemExit, match="error: .*model.safetensors"):
        predict_main(predict_command(broken, notes, output_dir))
    predict_main(predict_command(untrained_coder_folder, notes, output_dir))  # no flag needed: nothing was coded
    assert len(read_output(output_dir)) == 3


def test_kill_9_then_restart_codes_each_note_once_as_an_uninterrupted_run(untrained_coder_folder: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.jsonl"
    rows = write_notes(notes, 600)
    command = [sys.executable, "-m", "modeling_bertxml.release.predict"]
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    run = subprocess.Popen([*command, *predict_command(untrained_coder_folder, notes, killed_dir)], cwd=tmp_path,
                           env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    finished = killed_dir / "shards" / "finished.json"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not finished.is_file() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    done = json.loads(finished.read_text())["finished"]
    assert 0 < sum(done.values()) < len(rows), "the run was not killed midway"

    for output_dir in (killed_dir, whole_dir):
        subprocess.run([*command, *predict_command(untrained_coder_folder, notes, output_dir)], cwd=tmp_path,
                       env=subprocess_env(), check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    resumed, whole = read_output(killed_dir), read_output(whole_dir)
    assert [row["id"] for row in resumed] == [row["id"] for row in rows]
    assert_same_coding([row["codes"] for row in resumed], [row["codes"] for row in whole])
    assert not list((killed_dir / "shards").glob(".*.tmp"))


def test_a_full_disk_names_the_shard_and_the_run_started_again_finishes(untrained_coder_folder: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:  # fmt: skip
    notes = tmp_path / "notes.jsonl"
    rows = write_notes(notes, 10)
    fsync = os.fsync

    def disk_fills(descriptor: int) -> None:  # the second shard's file is the first write that does not fit
        if "codes-00001" in os.readlink(f"/proc/self/fd/{descriptor}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", disk_fills)
    shard = tmp_path / "codes" / "shards" / "codes-00001.jsonl"
    with pytest.raises(SystemExit, match=rf"error: {shard}: could not be written \(No space left on device; "):
        predict_main(predict_command(untrained_coder_folder, notes, tmp_path / "codes"))
    monkeypatch.undo()
    assert [path.name for path in shard.parent.glob("*codes-*")] == ["codes-00000.jsonl"]  # no temporary file left
    predict_main(predict_command(untrained_coder_folder, notes, tmp_path / "codes"))
    assert [row["id"] for row in read_output(tmp_path / "codes")] == [row["id"] for row in rows]


def test_two_cpu_processes_write_the_output_of_one_note_for_note(untrained_coder_folder: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.jsonl"
    write_notes(notes, 30)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
              "modeling_bertxml.release.predict"]  # fmt: skip
    two = subprocess.run([*launch, *predict_command(untrained_coder_folder, notes, tmp_path / "two")], cwd=tmp_path,
                         env={**subprocess_env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Num processes: 2" in two.stderr
    # The rate reported is the launch's: every process's notes, each process on its share of the cores.
    coded = json.loads((tmp_path / "two" / RESULTS_FILE).read_text())
    assert (coded["processes"], coded["threads_per_process"], coded["notes_coded"]) == (2, 1, 30)
    predict_main(predict_command(untrained_coder_folder, notes, tmp_path / "one"))
    one, both = read_output(tmp_path / "one"), read_output(tmp_path / "two")
    assert [row["id"] for row in both] == [row["id"] for row in one]
    assert_same_coding([row["codes"] for row in both], [row["codes"] for row in one])
