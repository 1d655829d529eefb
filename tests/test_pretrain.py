"""pretrain.py end to end on CPU: `python` and 2-rank `accelerate launch` runs, loss, outputs, kill -9 + resume,
NaN stop, streaming; plus its data pieces (packing, whole-word masks that survive a resume)."""

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from huggingface_hub import HfApi
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerFast

from modeling_bertxml import BertXMLForMaskedLM, BertXMLForMultiLabelCoding
from modeling_bertxml.training import pretrain
from modeling_bertxml.training.checkpointing import is_run_output

from conftest import (
    SUBPROCESS_TIMEOUT_S,
    TRAIN_TAGS,
    assert_close_scaled,
    assert_valid_model_card,
    folder_state,
    free_port,
    tiny_tokenizer,
    tracked_scalars,
)
from tests.hub_server import loopback_hub  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,max_position_embeddings=16,"
    "max_chunks=4"
)
PHRASES = [
    "patient denies chest pain",
    "history of type 2 diabetes mellitus without complications",
    "hypertension essential",
    "no evidence of pneumonia",
    "admitted with acute kidney injury",
    "discharged with stable vitals",
    "family history heart failure",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    """A tokenizer folder and 200 + 20 notes made of fixed phrases: structure a tiny model learns in seconds."""
    root = tmp_path_factory.mktemp("corpus")
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    rng = random.Random(0)
    for name, count in (("train.txt", 200), ("validation.txt", 20)):
        notes = (" ".join(rng.choice(PHRASES) for _ in range(3)) for _ in range(count))
        (root / name).write_text("\n".join(notes) + "\n")
    return {name: str(root / name) for name in ("tokenizer", "train.txt", "validation.txt")}


def base_args(corpus: dict[str, str], output_dir: Path, *extra: str) -> list[str]:
    return [
        "--tokenizer_name", corpus["tokenizer"], "--train_file", corpus["train.txt"], "--config_overrides", TINY,
        "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def cli_env(tmp_path: Path) -> dict[str, str]:
    # One thread per process: two ranks (and other tests) share two cores.
    return {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"), "OMP_NUM_THREADS": "1"}


def run_cli(command: list[str], tmp_path: Path, **env: str) -> str:
    env = {**cli_env(tmp_path), **env}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    # A failed rank's own error comes first: the launcher's tail is the other ranks' "connection closed".
    errors = [line for line in result.stderr.splitlines() if re.match(r"(\[rank\d+\]: )?(error:|\w+Error\b)", line)]
    assert result.returncode == 0, "\n".join(errors[:10]) + "\n...\n" + result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture
def run_main(tmp_path, monkeypatch):
    """pretrain.main in this process (no interpreter start-up), with its own datasets cache and accelerate state."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))

    def run(argv: list[str]) -> None:
        AcceleratorState._reset_state(reset_partial_state=True)
        pretrain.main(argv)

    yield run
    AcceleratorState._reset_state(reset_partial_state=True)


def eval_losses(log: str) -> list[float]:
    return [float(loss) for loss in re.findall(r"eval_loss (\d+\.\d+)", log)]


def test_python_run_learns_and_saves_a_model_that_loads_into_both_heads(corpus, tmp_path):
    out = tmp_path / "mlm"
    # The default recipe (learning rate, warmup, rotary positions): only files, sizes and a step budget.
    args = base_args(corpus, out, "--validation_file", corpus["validation.txt"], "--max_train_steps", "60",
                     "--eval_steps", "20", "--with_tracking")
    log = run_cli([sys.executable, "pretrain.py", *args], tmp_path)

    assert "Num processes: 1" in log
    losses = eval_losses(log)
    # An untrained model predicts about uniformly over the vocabulary: loss ln(V).
    uniform = math.log(len(tiny_tokenizer()))
    assert len(losses) == 3 and losses == sorted(losses, reverse=True) and losses[-1] < uniform - 0.3, losses
    results = json.loads((out / "train_results.json").read_text())
    assert results["train_steps"] == 60 and results["perplexity"] == pytest.approx(math.exp(losses[-1]), rel=1e-3)
    assert_sane_throughput(results, warmup_steps=5)
    # Below the unigram plateau (token frequencies) on the same masked words: the context is used.
    assert results["perplexity"] < 0.95 * results["unigram_perplexity"], results
    scalars = tracked_scalars(out / "logs")
    assert TRAIN_TAGS | {"validation/eval_loss", "validation/perplexity", "validation/unigram_perplexity"} == set(scalars)
    # The default peak rate for width 32 (1e-3 * 256 / 32), 4 warmup steps (6 %), then linear decay to 0 at step 60.
    peak, warmup = 1e-3 * 256 / 32, 4
    for step, rate in scalars["train/learning_rate"]:
        assert rate == pytest.approx(peak * (60 - step) / (60 - warmup), rel=1e-5), step
    assert [step for step, _ in scalars["validation/eval_loss"]] == [20, 40, 60]

    mlm = AutoModelForMaskedLM.from_pretrained(out)
    assert isinstance(mlm, BertXMLForMaskedLM) and (out / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(out).mask_token == "[MASK]"
    coder = BertXMLForMultiLabelCoding.from_pretrained(out, num_labels=3)
    for name, weight in mlm.bert.state_dict().items():
        torch.testing.assert_close(coder.bert.state_dict()[name], weight, rtol=0, atol=0)
    card = assert_valid_model_card(out / "README.md")
    assert card.data.pipeline_tag == "fill-mask" and card.data.base_model is None  # from scratch
    # The card reports the run's perplexity beside the baseline's, as train_results.json has them.
    assert f"{results['perplexity']:.2f}" in card.text and f"{results['unigram_perplexity']:.2f}" in card.text


def test_push_makes_a_private_encoder_repo_that_loads_as_the_encoder(corpus, tmp_path, run_main, loopback_hub):
    repo_id = "hospital/bert-xml-encoder"
    out = tmp_path / "mlm"
    run_main(base_args(corpus, out, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", repo_id,
                       "--hub_token", loopback_hub.token, "--license", "cc-by-nc-4.0"))  # fmt: skip
    assert HfApi().model_info(repo_id, token=loopback_hub.token).private
    assert {"README.md", "requirements.txt", "model.safetensors", "modeling_bertxml.py"} <= set(
        loopback_hub.repos[repo_id].files
    )
    assert assert_valid_model_card(out / "README.md").data.license == "cc-by-nc-4.0"
    encoder = AutoModel.from_pretrained(repo_id, token=loopback_hub.token, cache_dir=tmp_path / "cache")
    mlm = BertXMLForMaskedLM.from_pretrained(out).eval()
    ids = torch.tensor([[2, 10, 20, 30, 3]])
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(ids).last_hidden_state, mlm.bert(ids).last_hidden_state)


def test_a_push_that_cannot_succeed_stops_the_run_before_its_first_step(corpus, tmp_path, run_main, loopback_hub,
                                                                           monkeypatch):
    steps = []
    monkeypatch.setattr(pretrain, "training_step", lambda *args, **kwargs: steps.append(1))
    out = tmp_path / "mlm"
    with pytest.raises(SystemExit, match=r"^error: --push_to_hub: cannot push to http://127\.0\.0\.1:\d+/hospital/enc: "
                                         r"no Hub token: .*; checked before training, so nothing was trained$"):
        run_main(base_args(corpus, out, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "hospital/enc"))
    assert steps == [] and loopback_hub.requests == [] and not (out / "model.safetensors").exists()


def test_two_ranks_agree_on_a_refused_push_and_neither_waits(corpus, tmp_path):
    """Only the main process asks the Hub; the other learns the answer from it instead of waiting at its first
    collective for a process that has stopped."""
    port = str(free_port())
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", port]  # fmt: skip
    args = base_args(corpus, tmp_path / "ddp", "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "org/enc")
    env = {**cli_env(tmp_path), "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*launch, "pretrain.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert result.returncode != 0
    # Each rank stops with the main process's reason. Counted in the text, not by line: the two ranks write to one
    # stderr, and a message and its newline are two writes, so the lines can interleave (seen in CI).
    refusal = "--push_to_hub: cannot push to https://huggingface.co/org/enc: offline mode is on (HF_HUB_OFFLINE=1)"
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]


def assert_sane_throughput(results: dict, warmup_steps: int) -> None:
    """Steady-state tokens/s and MFU: the steps after warm-up, at least about the whole loop's average rate (which
    also pays for warm-up and evaluations), FLOPs per token near the 6 x parameters rule, MFU what they make."""
    assert results["steady_state_steps"] == results["train_steps"] - warmup_steps
    whole_loop = results["train_tokens"] / results["train_runtime"]
    assert results["tokens_per_second"] > 0.5 * whole_loop, results
    assert 0.5 < results["flops_per_token"] / (6 * results["num_parameters"]) < 2, results
    per_device = results["tokens_per_second"] / results["num_processes"]
    assert results["mfu"] == pytest.approx(per_device * results["flops_per_token"] / results["peak_flops"], rel=1e-6)
    assert 0 < results["mfu"] < 1 and results["peak_dtype"] == "float32"


def test_compiled_model_with_loader_workers_trains_and_saves_plain_weight_names(corpus, tmp_path, run_main):
    out = tmp_path / "compiled"
    run_main(base_args(corpus, out, "--max_train_steps", "3", "--torch_compile", "eager",
                       "--dataloader_num_workers", "1"))  # fmt: skip
    mlm = AutoModelForMaskedLM.from_pretrained(out)
    assert not any("_orig_mod" in name for name in load_file(out / "model.safetensors"))
    assert isinstance(mlm, BertXMLForMaskedLM)


def test_two_gloo_ranks_train_one_model(corpus, tmp_path):
    out = tmp_path / "ddp"
    port = str(free_port())  # another 2-rank job on this machine must not join our group
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port", port]
    args = base_args(corpus, out, "--max_train_steps", "6", "--checkpointing_steps", "3")
    log = run_cli([*launch, "pretrain.py", *args], tmp_path, ACCELERATE_USE_CPU="1")

    assert log.count("Num processes: 2") == 2
    results = json.loads((out / "train_results.json").read_text())
    assert results["num_processes"] == 2 and results["ranks_identical"] is True
    assert_sane_throughput(results, warmup_steps=2)
    # Each rank consumed its own batches: twice the tokens of one process, and each rank saved its RNG state.
    assert results["train_tokens"] == 6 * 2 * 4 * 32
    assert {p.name for p in (out / "checkpoints" / "step_3").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"
    }


def test_kill_9_mid_epoch_then_resume_latest_ends_with_the_uninterrupted_weights(corpus, tmp_path):
    """A real process killed with SIGKILL after its first evaluation and second checkpoint (mid-epoch: 24 steps per
    epoch, checkpoints and evaluations every 5, dropout on, gradient accumulation) resumes from the last complete
    checkpoint and ends as if never hit: in train mode, with the same dropout draws and masks."""
    args = ["--max_train_steps", "40", "--checkpointing_steps", "5", "--gradient_accumulation_steps", "2",
            "--validation_file", corpus["validation.txt"], "--eval_steps", "5",
            "--per_device_train_batch_size", "2", "--learning_rate", "2e-3", "--deterministic", "--config_overrides",
            TINY + ",hidden_dropout_prob=0.1,attention_probs_dropout_prob=0.1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = cli_env(tmp_path)
    uninterrupted = subprocess.Popen([sys.executable, "pretrain.py", *base_args(corpus, full, *args)], cwd=REPO,
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = subprocess.Popen([sys.executable, "pretrain.py", *base_args(corpus, killed, *args)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in victim.stdout:
        if "Saved checkpoint" in line and "step_10" in line:
            victim.send_signal(signal.SIGKILL)
            break
    assert victim.wait(timeout=SUBPROCESS_TIMEOUT_S) == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()

    log = run_cli([sys.executable, "pretrain.py", *base_args(corpus, killed, *args, "--resume_from_checkpoint",
                                                             "latest")], tmp_path)
    resumed_step = int(re.search(r"Resumed from \S+step_(\d+) at step", log).group(1))
    assert 10 <= resumed_step < 40 and resumed_step % 5 == 0
    assert uninterrupted.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0
    expected, got = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert_close_scaled(got[name], expected[name], rtol=1e-6)


def test_overwrite_keeps_the_users_files_and_refuses_an_input_inside_the_output_dir(corpus, tmp_path, run_main):
    out = tmp_path / "mlm"
    run_main(base_args(corpus, out, "--max_train_steps", "2", "--checkpointing_steps", "1", "--with_tracking"))
    (out / "my_notes.txt").write_text(Path(corpus["train.txt"]).read_text())
    (out / "mydata").mkdir()
    (out / "mydata" / "codes.txt").write_text("E11.9\n")
    before = folder_state(out)
    notes_inside = ["--train_file", str(out / "my_notes.txt"), "--overwrite_output_dir"]
    with pytest.raises(SystemExit, match=rf"^error: --train_file {out}/my_notes.txt is inside --output_dir [^\n]+$"):
        run_main(base_args(corpus, out, "--max_train_steps", "2", *notes_inside))
    assert folder_state(out) == before
    run_main(base_args(corpus, out, "--max_train_steps", "3", "--overwrite_output_dir"))
    assert (out / "my_notes.txt").read_text() == Path(corpus["train.txt"]).read_text()
    assert (out / "mydata" / "codes.txt").read_text() == "E11.9\n"
    assert not (out / "checkpoints").exists() and not (out / "logs").exists()  # the first run's
    assert json.loads((out / "train_results.json").read_text())["train_steps"] == 3
    assert all(is_run_output(path.name) for path in out.iterdir() if path.name not in ("my_notes.txt", "mydata")
               and not path.name.startswith("."))  # fmt: skip


def test_continuing_pretraining_in_place_and_resuming_it_after_a_crash(corpus, tmp_path, run_main, monkeypatch,
                                                                         caplog):
    """New notes for a hospital's encoder, written over it: a crash mid-run leaves the old model whole and loadable,
    and the run resumed from its checkpoint replaces it at the end, with no file of the old one left over."""
    model = tmp_path / "mlm"
    run_main(base_args(corpus, model, "--max_train_steps", "2"))
    first, names = load_file(model / "model.safetensors"), {path.name for path in model.iterdir()}
    in_place = ["--model_name_or_path", str(model), "--output_dir", str(model), "--overwrite_output_dir",
                "--train_file", corpus["validation.txt"], "--max_seq_length", "32", "--per_device_train_batch_size",
                "2", "--max_train_steps", "4", "--checkpointing_steps", "2"]  # fmt: skip
    training_step = pretrain.training_step

    def crashing_after_step_2(*args, **kwargs):
        if args[5].step == 2:  # progress
            raise KeyboardInterrupt
        return training_step(*args, **kwargs)

    monkeypatch.setattr(pretrain, "training_step", crashing_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_main(in_place)
    for name, weight in load_file(model / "model.safetensors").items():
        assert torch.equal(weight, first[name]), name
    assert isinstance(AutoModelForMaskedLM.from_pretrained(model), BertXMLForMaskedLM)
    monkeypatch.setattr(pretrain, "training_step", training_step)
    caplog.set_level("INFO")
    run_main([*in_place, "--resume_from_checkpoint", "latest"])
    assert "Resumed from" in caplog.text and "step_2 at step 2" in caplog.text
    second = load_file(model / "model.safetensors")
    assert second.keys() == first.keys() and any(not torch.equal(second[k], first[k]) for k in first)
    assert isinstance(AutoModelForMaskedLM.from_pretrained(model), BertXMLForMaskedLM)
    assert {path.name for path in model.iterdir()} == names | {"checkpoints"}  # no file of the old model left over
    assert json.loads((model / "train_results.json").read_text())["train_steps"] == 4


STREAMING = ["--streaming", "--max_train_steps", "2"]
NAMED_ROW = '{"text": "pain"}\n{"text": ["Mr. John Smith"]}\n'
BAD_CORPORA = [
    ("", r"error: empty corpus: no non-blank note in", []),
    ("", r"error: empty corpus: no non-blank note in", STREAMING),
    (NAMED_ROW, r"error: .*notes\.jsonl:2: field 'text': the note is a list", []),
    (NAMED_ROW, r"error: .*notes\.jsonl:2: field 'text': the note is a list", STREAMING),
    ('{"text": "chest pain"}\n', r"error: .*fewer tokens than one block", []),  # a stream has no length to check
]


@pytest.mark.parametrize("content, message, streaming", BAD_CORPORA)
def test_bad_corpus_stops_with_file_and_line_not_a_traceback(corpus, tmp_path, run_main, content, message, streaming):
    notes = tmp_path / "notes.jsonl"
    notes.write_text(content)
    with pytest.raises(SystemExit, match=message) as error:
        run_main(base_args(corpus, tmp_path / "out", "--train_file", str(notes), *streaming))
    assert "John" not in str(error.value)


def test_an_output_dir_that_is_a_file_is_one_line_error(corpus, tmp_path, run_main):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(SystemExit, match="error: --output_dir .*out is not writable"):
        run_main(base_args(corpus, tmp_path / "out"))


@pytest.mark.parametrize("learning_rate", ["1e6", "10"])
def test_divergence_stops_with_a_clear_message_and_keeps_only_finite_checkpoints(
    corpus, tmp_path, run_main, learning_rate
):
    """Real causes: at 1e6 the weights and loss turn non-finite within two steps; at 10 the loss explodes (over
    1,000, far above ln V of a uniform guess) while staying finite. Neither may end as a finished run."""
    out = tmp_path / "diverged"
    with pytest.raises(SystemExit, match=r"error: (loss is \S+|non-finite weights) .*optimizer step \d+.*diverged"):
        run_main(base_args(corpus, out, "--learning_rate", learning_rate, "--max_train_steps", "40",
                           "--checkpointing_steps", "1"))
    for checkpoint in (out / "checkpoints").glob("step_*"):
        kept = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(weight).all() for weight in kept.values()), checkpoint
    assert not (out / "model.safetensors").exists()


def test_batches_with_no_masked_token_are_not_a_divergence(corpus, tmp_path, run_main, monkeypatch):
    """One 8-token block per batch: about a third of them draw no mask, whose masked-LM loss used to be NaN and
    stopped the run as "diverged" at the first checkpoint or log line that read one."""
    empty = []
    collate = pretrain.WholeWordMaskingCollator.torch_call

    def counting(self, examples):
        batch = collate(self, examples)
        empty.append(bool((batch["labels"] == -100).all()))
        return batch

    monkeypatch.setattr(pretrain.WholeWordMaskingCollator, "torch_call", counting)
    out = tmp_path / "one_block"
    run_main(base_args(corpus, out, "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1",
                       "--max_seq_length", "8", "--max_train_steps", "20", "--checkpointing_steps", "1",
                       "--logging_steps", "1", "--validation_file", corpus["validation.txt"]))  # fmt: skip
    assert any(empty) and not all(empty)
    results = json.loads((out / "train_results.json").read_text())
    assert math.isfinite(results["eval_loss"]) and math.isfinite(results["unigram_perplexity"])


def test_streaming_epochs_and_continuing_from_a_saved_model(corpus, tmp_path, run_main):
    first, second = tmp_path / "streamed", tmp_path / "continued"
    run_main(base_args(corpus, first, "--streaming", "--max_train_steps", "25", "--checkpointing_steps", "epoch"))
    results = json.loads((first / "train_results.json").read_text())
    # A pass is 94 blocks = 24 batches (the last of 2): step 25 read the stream again; the first epoch was saved, and
    # so was the last (partial) one.
    assert results["train_steps"] == 25 and results["train_tokens"] == (94 + 4) * 32
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["step_24", "step_25"]

    run_main(["--model_name_or_path", str(first), "--train_file", corpus["train.txt"], "--max_train_steps", "2",
              "--output_dir", str(second), "--gradient_checkpointing"])
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_dataset_name_reads_the_train_and_validation_splits(corpus, tmp_path, run_main):
    folder = tmp_path / "notes"
    folder.mkdir()
    for split in ("train", "validation"):
        notes = Path(corpus[f"{split}.txt"]).read_text().splitlines()
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": note}) + "\n" for note in notes))
    args = [arg for arg in base_args(corpus, tmp_path / "mlm", "--max_train_steps", "2") if arg != corpus["train.txt"]]
    args.remove("--train_file")
    run_main([*args, "--dataset_name", str(folder)])
    results = json.loads((tmp_path / "mlm" / "train_results.json").read_text())
    assert results["train_steps"] == 2 and math.isfinite(results["eval_loss"])  # validation came from the dataset
    with pytest.raises(SystemExit, match=r"error: .*notes\[train\]: no column 'body'"):
        run_main([*args, "--dataset_name", str(folder), "--text_column", "body", "--output_dir", str(tmp_path / "x")])


def test_pack_notes_fills_blocks_and_frames_every_note():
    tokenizer = tiny_tokenizer()
    notes = ["patient denies chest pain", "hypertension essential", "no evidence of pneumonia"]
    packed = pretrain.pack_notes({"text": notes}, tokenizer, block_size=5)
    stream = [i for note in tokenizer(notes)["input_ids"] for i in note]  # 6 + 4 + 6 = 16 tokens
    assert packed["input_ids"] == [stream[0:5], stream[5:10], stream[10:15]]  # the 16th token is the dropped tail
    assert all(len(block) == 5 for key in packed for block in packed[key])
    assert stream.count(tokenizer.cls_token_id) == stream.count(tokenizer.sep_token_id) == 3


def subword_tokenizer() -> PreTrainedTokenizerFast:
    """Words that split into pieces ("hyper ##tension"), so whole-word masking has something to keep together."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hyper", "##tension", "diabet", "##es", "pain", "no"]
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def test_masks_cover_whole_words_and_depend_only_on_seed_epoch_and_tokens():
    tokenizer = subword_tokenizer()
    text = "hypertension diabetes no pain hypertension diabetes pain no"
    examples = pretrain.pack_notes({"text": [text] * 8}, tokenizer, block_size=14)
    args = pretrain.parse_args(
        ["--train_file", "x", "--tokenizer_name", "x", "--output_dir", "x", "--mlm_probability", "0.5"]
    )

    rows = [dict(zip(examples, values)) for values in zip(*examples.values())]

    def masks(epoch: int) -> torch.Tensor:
        collator = pretrain.masking_collator(args, tokenizer)
        collator.epoch = epoch
        return collator([dict(row) for row in rows])["labels"] != -100

    first = masks(0)
    ids = torch.tensor(examples["input_ids"])
    starts = (ids == tokenizer.convert_tokens_to_ids("hyper")) | (ids == tokenizer.convert_tokens_to_ids("diabet"))
    pieces = starts.roll(1, dims=1)  # "##tension" / "##es" right after each word start
    assert first.any() and torch.equal(first[starts], first[pieces])
    assert torch.equal(masks(0), first), "same seed, epoch and tokens: same masks (what an exact resume needs)"
    assert not torch.equal(masks(1), first), "a new epoch masks anew"


def test_a_tenth_of_predicted_tokens_keep_their_own_token_and_a_tenth_get_a_random_one():
    """BERT's 80/10/10 on whole words: fine-tuning reads real tokens only, so MLM must predict some real ones too."""
    tokenizer = subword_tokenizer()
    examples = pretrain.pack_notes({"text": ["hypertension diabetes no pain"] * 600}, tokenizer, block_size=14)
    args = pretrain.parse_args(
        ["--train_file", "x", "--tokenizer_name", "x", "--output_dir", "x", "--mlm_probability", "0.5"]
    )
    rows = [dict(zip(examples, values)) for values in zip(*examples.values())]
    batch = pretrain.masking_collator(args, tokenizer)(rows)
    original = torch.tensor(examples["input_ids"])
    predicted = batch["labels"] != -100
    assert torch.equal(batch["labels"][predicted], original[predicted])
    assert torch.equal(batch["input_ids"][~predicted], original[~predicted])
    got = batch["input_ids"][predicted]
    shares = {
        "mask": (got == tokenizer.mask_token_id).float().mean(), "own": (got == original[predicted]).float().mean()
    }
    # ~1,300 predicted tokens: each share within 5 standard deviations; a random token is [MASK] or its own 1 in 11.
    assert predicted.sum() > 1000 and 0.74 < shares["mask"] < 0.86 and 0.06 < shares["own"] < 0.16, shares


@pytest.mark.parametrize(
    "name, distributed_type, machines",
    [
        ("multi_gpu", "MULTI_GPU", 1),
        ("fsdp", "FSDP", 1),
        ("deepspeed_zero2", "DEEPSPEED", 1),
        ("two_nodes", "MULTI_GPU", 2),
    ],
)
def test_example_accelerate_configs_load_and_are_documented(name, distributed_type, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    path = f"configs/accelerate/{name}.yaml"
    config = load_config_from_file(str(REPO / path))
    assert (config.distributed_type.name, config.num_machines) == (distributed_type, machines)
    assert path in (REPO / "README.md").read_text()
