"""The shared training module: atomic checkpoints, output-dir and tokenizer/config guards, optimizer groups."""

import argparse
import errno
import json
import os

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from modeling_bertxml import BertXMLForMaskedLM
from modeling_bertxml.training import (
    CheckpointManager,
    NonFiniteLossError,
    OutputWriteError,
    add_checkpoint_args,
    add_data_args,
    add_model_args,
    add_optimization_args,
    check_finite,
    create_optimizer,
    create_scheduler,
    load_config,
    load_tokenizer,
    prepare_output_dir,
    save_model,
    setup_accelerator,
)

from conftest import tiny_config, tiny_tokenizer


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


@pytest.fixture
def trained(tmp_path):
    """An accelerator, a prepared tiny MLM with optimizer and scheduler, and the run's CheckpointManager."""
    args = parse("--output_dir", str(tmp_path / "run"), "--learning_rate", "1e-3")
    accelerator = setup_accelerator(args, "test")
    model = BertXMLForMaskedLM(tiny_config())
    optimizer = create_optimizer(model, args)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, create_scheduler(optimizer, args, 10))
    return accelerator, model, optimizer, CheckpointManager(args.output_dir)


def train_step(model, optimizer) -> None:
    ids = torch.randint(5, 40, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("crash_in", ["save_state", "marker"])
def test_a_save_killed_midway_leaves_no_checkpoint_that_resolves(trained, monkeypatch, crash_in):
    accelerator, model, optimizer, checkpoints = trained
    train_step(model, optimizer)
    good = checkpoints.save(accelerator, step=1, epoch=0, extra={"tokens": 16}, batches_in_epoch=1)
    train_step(model, optimizer)

    def die(*args, **kwargs):
        if crash_in == "save_state":
            (checkpoints.root / ".step_2.tmp" / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # what a kill looks like from inside: the save never returns

    if crash_in == "save_state":
        monkeypatch.setattr(accelerator, "save_state", die)
    else:
        monkeypatch.setattr("modeling_bertxml.training._write_json_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(accelerator, step=2, epoch=0, batches_in_epoch=2)

    assert not (checkpoints.root / "step_2").exists()
    assert checkpoints.resolve("latest") == good
    assert checkpoints.load(accelerator, good) == {"step": 1, "epoch": 0, "batches_in_epoch": 1, "tokens": 16}


def test_disk_full_is_one_clear_error_and_keeps_what_was_saved(trained, tmp_path, monkeypatch):
    accelerator, model, optimizer, checkpoints = trained
    good = checkpoints.save(accelerator, step=1, epoch=0)
    tokenizer, output_dir = tiny_tokenizer(), tmp_path / "run"
    save_model(accelerator, model, tokenizer, str(output_dir))
    saved = load_file(output_dir / "model.safetensors")
    train_step(model, optimizer)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    monkeypatch.setattr(type(tokenizer), "save_pretrained", disk_full)
    with pytest.raises(OutputWriteError, match=r"step_2: could not be written \(No space left on device\)"):
        checkpoints.save(accelerator, step=2, epoch=0)
    with pytest.raises(OutputWriteError, match="No space left on device"):
        save_model(accelerator, model, tokenizer, str(output_dir))
    assert checkpoints.resolve("latest") == good and not list(checkpoints.root.glob(".step_*"))
    assert all(torch.equal(saved[k], v) for k, v in load_file(output_dir / "model.safetensors").items())


def test_resolve_refuses_an_incomplete_folder_and_latest_picks_the_newest_complete(trained):
    accelerator, model, optimizer, checkpoints = trained
    assert checkpoints.resolve("latest") is None
    for step in (2, 10):
        checkpoints.save(accelerator, step=step, epoch=0)
    (checkpoints.root / "step_30").mkdir()  # e.g. copied by hand without its marker
    assert checkpoints.resolve("latest").name == "step_10"  # numeric, not alphabetical, order
    with pytest.raises(ValueError, match=r"step_30: incomplete checkpoint \(no training_state.json"):
        checkpoints.resolve(str(checkpoints.root / "step_30"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        checkpoints.resolve(str(checkpoints.root / "step_99"))


def test_a_resaved_step_replaces_the_old_checkpoint(trained):
    accelerator, model, optimizer, checkpoints = trained
    first = load_file(checkpoints.save(accelerator, step=1, epoch=0) / "model.safetensors")
    train_step(model, optimizer)
    second = load_file(checkpoints.save(accelerator, step=1, epoch=0) / "model.safetensors")
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


def test_output_dir_holding_another_run_is_refused_unless_overwritten(tmp_path):
    out = str(tmp_path / "run")
    prepare_output_dir(parse("--output_dir", out, "--learning_rate", "1e-3"))
    (tmp_path / "run" / "checkpoints" / "step_5").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"already holds a run .*--resume_from_checkpoint latest.*--overwrite"):
        prepare_output_dir(parse("--output_dir", out, "--learning_rate", "1e-3"))
    with pytest.raises(ValueError, match=r"holds a different run .*--learning_rate: '?0.001'? -> '?0.002'?"):
        prepare_output_dir(parse("--output_dir", out, "--learning_rate", "2e-3", "--resume_from_checkpoint", "latest"))
    # Same run, resumed (also with a different checkpoint cadence): accepted, checkpoints kept.
    prepare_output_dir(parse("--output_dir", out, "--learning_rate", "1e-3", "--resume_from_checkpoint", "latest",
                             "--checkpointing_steps", "7"))
    assert (tmp_path / "run" / "checkpoints" / "step_5").is_dir()
    # Overwrite: the old run's checkpoints go, so "latest" can never resume the other run.
    prepare_output_dir(parse("--output_dir", out, "--learning_rate", "2e-3", "--overwrite_output_dir"))
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert json.loads((tmp_path / "run" / "run_args.json").read_text())["learning_rate"] == 2e-3


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # tests run as root, who may write anywhere: a path under a file cannot be created
    with pytest.raises(PermissionError, match=rf"--output_dir {blocker}/run is not writable: Not a directory"):
        prepare_output_dir(parse("--output_dir", str(blocker / "run")))


def test_a_launch_whose_processes_did_not_join_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what each process of an unsynchronised 2-process launch sees
    with pytest.raises(RuntimeError, match="2 processes were launched but they are not synchronised.*USE_CPU=1"):
        prepare_output_dir(parse("--output_dir", str(tmp_path / "run")))


def test_tokenizer_and_config_must_belong_together(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    scratch = load_config(parse("--output_dir", "x", "--tokenizer_name", str(tmp_path / "tok")), tokenizer=tokenizer)
    assert (scratch.vocab_size, scratch.pad_token_id) == (len(tokenizer), tokenizer.pad_token_id)

    tok = str(tmp_path / "tok")
    too_small = parse("--output_dir", "x", "--tokenizer_name", tok, "--config_overrides", "vocab_size=20")
    message = rf"tokenizer \S+tok has {len(tokenizer)} tokens but the config's vocab_size is 20"
    with pytest.raises(ValueError, match=message):
        load_config(too_small, tokenizer=tokenizer)

    tiny_config(vocab_size=len(tokenizer), pad_token_id=3).save_pretrained(tmp_path / "model")
    args = parse("--output_dir", "x", "--tokenizer_name", tok, "--config_name", str(tmp_path / "model"))
    with pytest.raises(ValueError, match=r"pads with id 0 \(\[PAD\]\) but the config's pad_token_id is 3"):
        load_tokenizer(args, load_config(args))


def test_optimizer_skips_decay_on_biases_and_layernorm_and_gives_prefixes_their_rate():
    model = BertXMLForMaskedLM(tiny_config())
    args = parse("--output_dir", "x", "--weight_decay", "0.01", "--learning_rate", "1e-4")
    optimizer = create_optimizer(model, args, param_groups={"cls.": 1e-2})
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert group_of[id(named["bert.encoder.layer.0.attention.output.LayerNorm.weight"])]["weight_decay"] == 0.0
    assert group_of[id(named["bert.encoder.layer.0.attention.self.query.bias"])]["weight_decay"] == 0.0
    query = group_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])]
    assert (query["weight_decay"], query["lr"]) == (0.01, 1e-4)
    assert group_of[id(named["cls.predictions.transform.dense.weight"])]["lr"] == 1e-2
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_warmup_ratio_sets_the_linear_warmup():
    model = torch.nn.Linear(2, 2)
    args = parse("--output_dir", "x", "--learning_rate", "1.0", "--warmup_ratio", "0.25")
    optimizer = create_optimizer(model, args)
    scheduler = create_scheduler(optimizer, args, num_training_steps=8)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_check_finite_names_the_step():
    check_finite(torch.tensor(2.5), step=3)
    with pytest.raises(NonFiniteLossError, match="loss is inf at optimizer step 7"):
        check_finite(torch.tensor(float("inf")), step=7)
