"""The shared training module: atomic checkpoints, output-dir and tokenizer/config guards, optimizer groups."""

import argparse
import builtins
import errno
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from accelerate.state import AcceleratorState
from safetensors import SafetensorError
from safetensors.torch import load_file

from modeling_bertxml import BertXMLForMaskedLM
from modeling_bertxml.training.checkpointing import (
    CheckpointManager,
    OutputDirError,
    OutputWriteError,
    Progress,
    claim_output_dir,
    record_output,
    save_model_folder,
)
from modeling_bertxml.training.arguments import (
    add_checkpoint_args,
    add_data_args,
    add_model_args,
    add_optimization_args,
    run_args,
)
from modeling_bertxml.training.loop import (
    TrainingDivergedError,
    check_loss,
    create_optimizer,
    create_scheduler,
    setup_accelerator,
    training_step,
)
from modeling_bertxml.model.configuration_bertxml import vocab_fingerprint
from modeling_bertxml.training.models import ConfigError, check_tokenizer_matches_config, load_config, load_tokenizer

from conftest import folder_state, shuffled_tokenizer, tiny_config, tiny_tokenizer


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for add in (add_model_args, add_data_args, add_optimization_args, add_checkpoint_args):
        add(parser)
    return parser.parse_args(list(argv))


def prepare_output_dir(args: argparse.Namespace) -> None:
    """Claim the output dir as a script does, and let it go again."""
    resume, overwrite = bool(args.resume_from_checkpoint), args.overwrite_output_dir
    with claim_output_dir(args.output_dir, run_args(args), resume, overwrite):
        pass


def save_model(accelerator, model, tokenizer, output_dir) -> None:
    save_model_folder(accelerator, model, tokenizer, output_dir)


def kill_when_moving(monkeypatch, source_suffix: str) -> None:
    """A kill (KeyboardInterrupt) at the moment `os.replace` moves a path ending with `source_suffix`."""
    replace = os.replace

    def killed(source, target):
        if str(source).endswith(source_suffix):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed)


@pytest.fixture
def trained(tmp_path):
    """An accelerator, a prepared tiny MLM with optimizer and scheduler, and the run's CheckpointManager."""
    accelerator = setup_accelerator(tmp_path / "run", project_name="test")
    model = BertXMLForMaskedLM(tiny_config())
    optimizer = create_optimizer(model, learning_rate=1e-3)
    scheduler = create_scheduler(optimizer, 10, num_warmup_steps=0)  # every step moves the weights
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer, CheckpointManager(tmp_path / "run")


def train_step(model, optimizer) -> None:
    ids = torch.randint(5, 40, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("crash_in", ["save_state", "marker"])
def test_a_save_killed_midway_leaves_no_checkpoint_that_resolves(trained, monkeypatch, crash_in):
    accelerator, model, optimizer, checkpoints = trained
    train_step(model, optimizer)
    good = checkpoints.save(accelerator, Progress(step=1, batches_in_epoch=1, tokens=16), extra={"seen": [1]})
    train_step(model, optimizer)

    def die(*args, **kwargs):
        if crash_in == "save_state":
            (checkpoints.root / ".step_2.tmp" / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # what a kill looks like from inside: the save never returns

    if crash_in == "save_state":
        monkeypatch.setattr(accelerator, "save_state", die)
    else:
        monkeypatch.setattr("modeling_bertxml.training.checkpointing.write_json_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(accelerator, Progress(step=2, batches_in_epoch=2))

    assert not (checkpoints.root / "step_2").exists()
    assert checkpoints.resolve("latest") == good
    assert checkpoints.load(accelerator, good) == (Progress(step=1, batches_in_epoch=1, tokens=16), {"seen": [1]})


# What a full disk raises, depending on which writer hits it.
DISK_FULL = {
    "python": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "torch": RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1216 vs 1110"),
    "safetensors": SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
}


@pytest.mark.parametrize("writer", DISK_FULL)
def test_disk_full_is_one_clear_error_and_keeps_what_was_saved(trained, tmp_path, monkeypatch, writer):
    accelerator, model, optimizer, checkpoints = trained
    good = checkpoints.save(accelerator, Progress(step=1))
    tokenizer, output_dir = tiny_tokenizer(), tmp_path / "run"
    save_model(accelerator, model, tokenizer, str(output_dir))
    saved = load_file(output_dir / "model.safetensors")
    train_step(model, optimizer)

    def disk_full(*args, **kwargs):
        raise DISK_FULL[writer]

    def card_then_disk_full(folder):
        (folder / "README.md").write_text("")  # a card begun when the disk filled up
        disk_full()

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(OutputWriteError, match=r"step_2: could not be written \(.+; [\d,]+ MiB free on that disk\)"):
        checkpoints.save(accelerator, Progress(step=2))
    with pytest.raises(OutputWriteError, match="nothing already saved there was changed"):
        save_model_folder(accelerator, model, tokenizer, output_dir, add_files=card_then_disk_full)
    assert checkpoints.resolve("latest") == good and not list(checkpoints.root.glob(".step_*"))
    assert all(torch.equal(saved[k], v) for k, v in load_file(output_dir / "model.safetensors").items())
    assert not (output_dir / "README.md").exists() and not (output_dir / ".model.tmp").exists()


def test_a_best_model_swap_killed_midway_keeps_a_complete_best_model(trained, monkeypatch):
    accelerator, model, optimizer, checkpoints = trained
    checkpoints.save_best(accelerator, model)
    first = {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    train_step(model, optimizer)
    kill_when_moving(monkeypatch, ".best_model.tmp")  # before the new one is in
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_best(accelerator, model)
    monkeypatch.undo()
    checkpoints.restore_best(accelerator, model)  # what a resumed run does at the end
    for name, weight in accelerator.unwrap_model(model).state_dict().items():
        assert torch.equal(weight, first[name]), name
    checkpoints.save_best(accelerator, model)  # and the next save still works
    assert sorted(p.name for p in checkpoints.root.iterdir()) == ["best_model"]


def test_resolve_refuses_an_incomplete_folder_and_latest_picks_the_newest_complete(trained):
    accelerator, model, optimizer, checkpoints = trained
    assert checkpoints.resolve("latest") is None
    for step in (2, 10):
        checkpoints.save(accelerator, Progress(step=step))
    (checkpoints.root / "step_30").mkdir()  # e.g. copied by hand without its marker
    assert checkpoints.resolve("latest").name == "step_10"  # numeric, not alphabetical, order
    with pytest.raises(ValueError, match=r"step_30: incomplete checkpoint \(no training_state.json"):
        checkpoints.resolve(str(checkpoints.root / "step_30"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        checkpoints.resolve(str(checkpoints.root / "step_99"))


def test_a_resaved_step_replaces_the_old_checkpoint(trained):
    accelerator, model, optimizer, checkpoints = trained
    first = load_file(checkpoints.save(accelerator, Progress(step=1)) / "model.safetensors")
    train_step(model, optimizer)
    second = load_file(checkpoints.save(accelerator, Progress(step=1)) / "model.safetensors")
    name = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(first[name], second[name])
    assert sorted(p.name for p in checkpoints.root.iterdir()) == ["step_1"]


def test_save_model_interrupted_keeps_the_previous_model(trained, tmp_path, monkeypatch):
    accelerator, model, optimizer, checkpoints = trained
    tokenizer, output_dir = tiny_tokenizer(), str(tmp_path / "run")
    save_model(accelerator, model, tokenizer, output_dir)
    before = load_file(os.path.join(output_dir, "model.safetensors"))
    train_step(model, optimizer)
    monkeypatch.setattr(type(tokenizer), "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        save_model(accelerator, model, tokenizer, output_dir)
    after = load_file(os.path.join(output_dir, "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_every_saved_file_gets_the_mode_of_any_new_file_safetensors_included(trained, tmp_path):
    """safetensors 0.8 writes its files 0600: weights a group could not read beside a config it can."""
    accelerator, model, _, checkpoints = trained
    umask = os.umask(0o022)
    try:
        save_model(accelerator, model, tiny_tokenizer(), tmp_path / "run")
        checkpoints.save(accelerator, Progress(step=1))
        checkpoints.save_best(accelerator, model)
    finally:
        os.umask(umask)
    modes = {str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777)
             for path in (tmp_path / "run").rglob("*") if path.is_file()}  # fmt: skip
    assert "run/model.safetensors" in modes and "run/checkpoints/best_model/model.safetensors" in modes
    assert {path: mode for path, mode in modes.items() if mode != oct(0o644)} == {}


def test_output_dir_holding_another_run_is_refused_unless_overwritten(tmp_path):
    out = str(tmp_path / "run")
    prepare_output_dir(parse("--output_dir", out, "--learning_rate", "1e-3"))
    record_output(out, "checkpoints")  # as CheckpointManager does before its first save
    (tmp_path / "run" / "checkpoints" / "step_5").mkdir(parents=True)
    with pytest.raises(OutputDirError, match=r"already holds a run .*--resume_from_checkpoint latest.*--overwrite"):
        prepare_output_dir(parse("--output_dir", out, "--learning_rate", "1e-3"))
    with pytest.raises(OutputDirError, match=r"holds a different run .*--learning_rate: '?0.001'? -> '?0.002'?"):
        prepare_output_dir(parse("--output_dir", out, "--learning_rate", "2e-3", "--resume_from_checkpoint", "latest"))
    # Same run, resumed (also with a different checkpoint cadence): accepted, checkpoints kept.
    prepare_output_dir(parse("--output_dir", out, "--learning_rate", "1e-3", "--resume_from_checkpoint", "latest",
                             "--checkpointing_steps", "7"))
    assert (tmp_path / "run" / "checkpoints" / "step_5").is_dir()
    # Overwrite: the old run's files go (checkpoints; model, card and results: test_overwrite_deletes_what_...), so
    # that neither "latest" nor a crash of the new run can leave the old run's model beside the new run's arguments.
    prepare_output_dir(parse("--output_dir", out, "--learning_rate", "2e-3", "--overwrite_output_dir"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".bertxml.lock", ".bertxml_manifest.json", "run_args.json"
    ]  # fmt: skip
    assert json.loads((tmp_path / "run" / "run_args.json").read_text())["learning_rate"] == 2e-3


def test_a_run_that_stopped_before_writing_anything_can_be_retried_without_flags(tmp_path):
    # A run refused for a missing notes file leaves only its run_args.json; the corrected command just runs.
    out = str(tmp_path / "run")
    prepare_output_dir(parse("--output_dir", out, "--train_file", "typo.jsonl"))
    prepare_output_dir(parse("--output_dir", out, "--train_file", "notes.jsonl"))
    assert json.loads((tmp_path / "run" / "run_args.json").read_text())["train_file"] == ["notes.jsonl"]
    record_output(out, "logs")  # once it has written anything else, it is a run to resume or overwrite
    (tmp_path / "run" / "logs").mkdir()
    with pytest.raises(OutputDirError, match="already holds a run"):
        prepare_output_dir(parse("--output_dir", out, "--train_file", "other.jsonl"))


def test_overwrite_never_deletes_files_that_no_run_wrote(tmp_path):
    (tmp_path / "notes.jsonl").write_text("{}")
    with pytest.raises(OutputDirError, match=r"holds files that no bert-xml run wrote .*empty or new --output_dir"):
        prepare_output_dir(parse("--output_dir", str(tmp_path), "--overwrite_output_dir"))
    assert (tmp_path / "notes.jsonl").read_text() == "{}"
    assert [path.name for path in tmp_path.iterdir()] == ["notes.jsonl"]  # nor its lock file


def test_overwrite_deletes_what_the_run_wrote_and_keeps_the_users_files(trained, tmp_path):
    """A run's checkpoints, best model and model folder go; the user's notes and folder beside them stay."""
    accelerator, model, optimizer, checkpoints = trained
    out = tmp_path / "run"
    prepare_output_dir(parse("--output_dir", str(out)))
    checkpoints.save(accelerator, Progress(step=1))
    checkpoints.save_best(accelerator, model)
    save_model(accelerator, model, tiny_tokenizer(), out)
    (out / "my_notes.jsonl").write_text("{}")
    (out / "mydata").mkdir()
    (out / "mydata" / "codes.txt").write_text("E11.9")
    prepare_output_dir(parse("--output_dir", str(out), "--overwrite_output_dir"))
    assert (out / "my_notes.jsonl").read_text() == "{}" and (out / "mydata" / "codes.txt").read_text() == "E11.9"
    left = {path.name for path in out.iterdir()} - {".bertxml.lock", ".bertxml_manifest.json"}
    assert left == {"my_notes.jsonl", "mydata", "run_args.json"}


def test_an_input_inside_the_output_dir_is_refused_before_anything_is_touched(tmp_path):
    out = tmp_path / "run"
    prepare_output_dir(parse("--output_dir", str(out)))
    (out / "notes").mkdir()
    (out / "notes" / "a.jsonl").write_text("{}")
    before = folder_state(out)
    inputs = [("--train_file", out / "notes" / "a.jsonl"), ("--train_file", out / "notes" / "*.jsonl"),
              ("--validation_file", out / "notes"), ("--dataset_name", out), ("--tokenizer_name", out / "notes")]
    for flag, value in inputs:
        message = rf"^{flag} {re.escape(str(value))} is inside --output_dir {out}, where a run"
        with pytest.raises(OutputDirError, match=message):
            prepare_output_dir(parse("--output_dir", str(out), flag, str(value), "--overwrite_output_dir"))
        assert folder_state(out) == before, flag
    # The model continued in place is read from the dir itself; a run's own checkpoint is resumed from it.
    in_place = ["--output_dir", str(out), "--model_name_or_path", str(out)]
    prepare_output_dir(parse(*in_place, "--overwrite_output_dir"))
    prepare_output_dir(parse(*in_place, "--resume_from_checkpoint", str(out / "checkpoints" / "step_1")))


def test_a_dir_written_before_the_manifest_loses_only_the_files_bert_xml_wrote(tmp_path):
    """The previous version kept no manifest: its files are known by name (a folder only when all it holds is
    bert-xml's); the rest is the user's."""
    out = tmp_path / "run"
    for name in ("run_args.json", "model.safetensors", "config.json", "README.md", "eval_results.json",
                 "checkpoints/step_5/model.safetensors", "checkpoints/best_model/model.safetensors",
                 "logs/bert-xml-train/events.out.tfevents.1", "notes.jsonl", "mydata/codes.txt", "analysis.py"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}")
    prepare_output_dir(parse("--output_dir", str(out), "--overwrite_output_dir"))
    left = {path.name for path in out.iterdir()} - {".bertxml.lock", ".bertxml_manifest.json"}
    assert left == {"notes.jsonl", "mydata", "analysis.py", "run_args.json"}
    assert (out / "mydata" / "codes.txt").read_text() == "{}"
    # A folder of a run's name that holds something else is the user's: refused, not deleted nor written into.
    (out / "logs").mkdir()
    (out / "logs" / "slurm-1.out").write_text("mine")
    with pytest.raises(OutputDirError, match=r"holds logs, which no bert-xml run recorded writing but a run writes"):
        prepare_output_dir(parse("--output_dir", str(out), "--overwrite_output_dir"))
    assert (out / "logs" / "slurm-1.out").read_text() == "mine"


def test_a_new_model_replaces_the_old_one_whole_and_a_kill_midway_puts_the_old_one_back(trained, monkeypatch):
    accelerator, model, optimizer, checkpoints = trained
    out, tokenizer = checkpoints.root.parent, tiny_tokenizer()

    def add_results(folder: Path) -> None:
        (folder / "eval_results.json").write_text("{}")

    save_model_folder(accelerator, model, tokenizer, out, add_files=add_results)
    first = load_file(out / "model.safetensors")
    train_step(model, optimizer)
    kill_when_moving(monkeypatch, ".model.tmp/config.json")  # every other new file is in, the old ones aside
    with pytest.raises(KeyboardInterrupt):
        save_model(accelerator, model, tokenizer, out)
    monkeypatch.undo()
    prepare_output_dir(parse("--output_dir", str(out), "--resume_from_checkpoint", "latest"))  # the next run's claim
    assert all(torch.equal(first[k], v) for k, v in load_file(out / "model.safetensors").items())
    assert (out / "eval_results.json").is_file()  # the old model's, whole
    save_model(accelerator, model, tokenizer, out)
    assert not all(torch.equal(first[k], v) for k, v in load_file(out / "model.safetensors").items())
    assert not (out / "eval_results.json").exists()  # the old model's result does not stay beside the new model
    assert not list(out.glob(".model.*"))
    BertXMLForMaskedLM.from_pretrained(out)


def test_a_second_live_run_in_the_same_output_dir_is_refused(tmp_path):
    args = parse("--output_dir", str(tmp_path / "run"))
    resumed = parse("--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", "latest")
    with claim_output_dir(args.output_dir, run_args(args), False, False):
        with pytest.raises(OutputDirError, match=rf"is in use by another run \(process {os.getpid()}\)"):
            prepare_output_dir(resumed)
    prepare_output_dir(resumed)  # the lock ends with the run


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # tests run as root, who may write anywhere: a path under a file cannot be created
    with pytest.raises(OutputDirError, match=rf"--output_dir {blocker}/run is not writable: Not a directory"):
        prepare_output_dir(parse("--output_dir", str(blocker / "run")))


def read_only(monkeypatch, folder: Path) -> None:
    """Make writing anything inside `folder` fail as in a read-only folder (tests run as root: modes stop nobody)."""
    mkdir, open_ = os.mkdir, io.open

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(folder.resolve()) and Path(path).resolve() != folder.resolve()

    def refused_mkdir(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return mkdir(path, *args, **kwargs)

    def refused_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and inside(file):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return open_(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused_mkdir)
    monkeypatch.setattr(io, "open", refused_open)
    monkeypatch.setattr(builtins, "open", refused_open)


def test_a_read_only_folder_of_the_run_is_refused_before_it_starts(trained, tmp_path, monkeypatch):
    """A resumed run whose checkpoints/ it cannot write would otherwise train until its first checkpoint."""
    accelerator, _, _, checkpoints = trained
    out = str(tmp_path / "run")
    prepare_output_dir(parse("--output_dir", out))
    checkpoints.save(accelerator, Progress(step=1))
    read_only(monkeypatch, checkpoints.root)
    resume = parse("--output_dir", out, "--resume_from_checkpoint", "latest")
    with pytest.raises(OutputDirError, match=rf"^{checkpoints.root}, a folder of --output_dir {out} that runs write "
                                             r"into, is not writable: Permission denied"):
        prepare_output_dir(resume)
    with pytest.raises(PermissionError):  # where the run found out before: at its first checkpoint
        checkpoints.save(accelerator, Progress(step=2))
    monkeypatch.undo()
    prepare_output_dir(resume)


def test_a_launch_whose_processes_did_not_join_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what each process of an unsynchronised 2-process launch sees
    with pytest.raises(RuntimeError, match="2 processes were launched but they are not synchronised.*USE_CPU=1"):
        prepare_output_dir(parse("--output_dir", str(tmp_path / "run")))


def test_an_fsdp_launch_that_accelerate_ran_as_something_else_is_refused(tmp_path, monkeypatch):
    """`ACCELERATE_USE_CPU=1 accelerate launch --config_file configs/accelerate/fsdp.yaml` on CPU: Accelerate sets up
    DDP instead (FSDP is for GPUs), which then fails on meta-device weights; the run must say why at once."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets from the FSDP config
    with pytest.raises(RuntimeError, match="asks for FSDP but Accelerate set up NO: Accelerate runs FSDP on GPUs"):
        prepare_output_dir(parse("--output_dir", str(tmp_path / "run")))


def test_tokenizer_and_config_must_belong_together(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    tok = tmp_path / "tok"
    tokenizer = load_tokenizer(tok)
    scratch = load_config(tokenizer=tokenizer)
    assert (scratch.vocab_size, scratch.pad_token_id) == (len(tokenizer), tokenizer.pad_token_id)

    # Too few embeddings fail on some batch much later; too many mean the model was trained with another tokenizer.
    for vocab_size in (20, 2 * len(tokenizer)):
        message = rf"tokenizer \S+tok has {len(tokenizer)} tokens but the config's vocab_size is {vocab_size}"
        with pytest.raises(ConfigError, match=message):
            load_config(config_overrides=f"vocab_size={vocab_size}", tokenizer=tokenizer)

    tiny_config(vocab_size=len(tokenizer), pad_token_id=3).save_pretrained(tmp_path / "model")
    with pytest.raises(ConfigError, match=r"pads with id 0 \(\[PAD\]\) but the config's pad_token_id is 3"):
        load_tokenizer(tok, load_config(tmp_path / "model"))

    # Another run's tokenizer of the same size: its ids name other tokens, which only the vocabulary fingerprint that
    # the config keeps can tell.
    assert scratch.vocab_fingerprint == vocab_fingerprint(tokenizer.get_vocab())
    assert load_tokenizer(tok, scratch).get_vocab() == tokenizer.get_vocab()  # the same, saved and reloaded
    other = shuffled_tokenizer(tokenizer)
    assert len(other) == len(tokenizer) and vocab_fingerprint(other.get_vocab()) != scratch.vocab_fingerprint
    with pytest.raises(ConfigError, match=rf"tokenizer \S+ has the model's {len(tokenizer)} tokens but not its "
                                          r"vocabulary \(fingerprint \w+, the model's \w+\)"):
        check_tokenizer_matches_config(other, scratch, "other-tokenizer")
    scratch.vocab_fingerprint = None  # a config saved before fingerprints: not checked, and given one
    scratch.save_pretrained(tmp_path / "old")
    assert load_config(tmp_path / "old", tokenizer=other).vocab_fingerprint == vocab_fingerprint(other.get_vocab())

    # A tokenizer folder cut short (an older trainer's, on a full disk): the folder and the reason, no traceback.
    (tok / "tokenizer.json").write_text((tok / "tokenizer.json").read_text()[:500])
    with pytest.raises(ConfigError, match=rf"^tokenizer {tok} cannot be read \(.+\): train it again"):
        load_tokenizer(tok)


def test_optimizer_skips_decay_on_biases_and_layernorm_and_gives_prefixes_their_rate():
    model = BertXMLForMaskedLM(tiny_config())
    optimizer = create_optimizer(model, learning_rate=1e-4, weight_decay=0.01, param_groups={model.cls: 1e-2})
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert group_of[id(named["bert.encoder.layer.0.attention.output.LayerNorm.weight"])]["weight_decay"] == 0.0
    assert group_of[id(named["bert.encoder.layer.0.attention.self.query.bias"])]["weight_decay"] == 0.0
    query = group_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])]
    assert (query["weight_decay"], query["lr"]) == (0.01, 1e-4)
    assert group_of[id(named["cls.predictions.transform.dense.weight"])]["lr"] == 1e-2
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


class DeviceReads(TorchDispatchMode):
    """Counts the reads of a tensor's value by the host (`.item()`, `bool(tensor)`): each one waits for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_a_training_step_without_the_guard_leaves_the_loss_on_the_device(tmp_path):
    """pretrain.py's steps: the loss stays on the device (read every --logging_steps), so the host can queue the next
    step while the device runs this one; the guard (train.py's steps) reads it. Other reads on CPU (AdamW's step
    counters, transformers' all-ones mask check) are the same in both and CPU-side or tiny on a GPU."""
    reads = {}
    for check_divergence in (True, False):
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = setup_accelerator(tmp_path, seed=0)
        model = BertXMLForMaskedLM(tiny_config())
        optimizer = create_optimizer(model, learning_rate=1e-3)
        scheduler = create_scheduler(optimizer, num_training_steps=2)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        ids = torch.randint(5, 40, (2, 16))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        progress = Progress()
        with DeviceReads() as device_reads:
            loss = training_step(accelerator, model, optimizer, scheduler, batch, progress, uniform_loss=4.0,
                                 check_divergence=check_divergence)  # fmt: skip
        reads[check_divergence] = device_reads.count
        assert progress.step == 1 and loss.ndim == 0 and not loss.requires_grad
    with DeviceReads() as guard:
        check_loss(loss, step=1, uniform_loss=4.0, accelerator=accelerator)
    assert guard.count >= 1 and reads[True] == reads[False] + guard.count, (reads, guard.count)


def test_warmup_ratio_sets_the_linear_warmup():
    model = torch.nn.Linear(2, 2)
    optimizer = create_optimizer(model, learning_rate=1.0)
    scheduler = create_scheduler(optimizer, num_training_steps=8, warmup_ratio=0.25)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_check_loss_names_the_step_and_stops_on_nan_or_divergence():
    check_loss(torch.tensor(2.5), step=3, uniform_loss=1.0)
    with pytest.raises(TrainingDivergedError, match="loss is inf at optimizer step 7"):
        check_loss(torch.tensor(float("inf")), step=7, uniform_loss=1.0)
    with pytest.raises(TrainingDivergedError, match=r"loss is 1234 at optimizer step 8 .*limit is 10\)"):
        check_loss(torch.tensor(1234.0), step=8, uniform_loss=1.0)


def test_new_configs_are_rotary_and_a_mistyped_override_is_refused() -> None:
    assert load_config(None, "hidden_size=32,num_attention_heads=4").position_embedding_type == "rotary"
    assert load_config(None, "position_embedding_type=absolute").position_embedding_type == "absolute"
    with pytest.raises(ConfigError, match="position_embedding_type must be .* got 'rotry'"):
        load_config(None, "position_embedding_type=rotry")


def test_lr_scheduler_type_takes_and_shows_plain_names(capsys) -> None:
    # As transformers' examples document them: "cosine", not "SchedulerType.COSINE".
    args = parse("--output_dir", "unused", "--lr_scheduler_type", "cosine")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = create_scheduler(optimizer, 10, args.lr_scheduler_type, num_warmup_steps=0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.5, rel=1e-6)  # half-way down a cosine
    with pytest.raises(SystemExit):
        parse("--help")
    shown = capsys.readouterr().out
    assert "{linear,cosine," in shown and "SchedulerType" not in shown


@pytest.mark.parametrize("script", ["pretrain", "train"])
def test_tracking_without_its_tracker_installed_is_refused_with_the_install_line(script, monkeypatch, capsys) -> None:
    """A wheel install has no `dev` extra, so no tensorboard: the run must not train for hours and log nothing."""
    import accelerate.tracking

    from modeling_bertxml.training.arguments import parse_pretrain_args, parse_train_args

    parse_args = {"pretrain": parse_pretrain_args, "train": parse_train_args}[script]
    argv = ["--tokenizer_name", "tok", "--train_file", "t.jsonl", "--validation_file", "v.jsonl", "--output_dir", "o"]
    assert parse_args([*argv, "--with_tracking"]).with_tracking  # tensorboard is installed here
    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])
    assert not parse_args(argv).with_tracking  # no tracking asked, nothing needed
    for report_to, install in (("tensorboard", "pip install 'bert-xml[tracking]'"), ("all", "pip install"),
                               ("wandb", "pip install wandb")):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args([*argv, "--with_tracking", "--report_to", report_to])
        assert install in capsys.readouterr().err
