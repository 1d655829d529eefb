"""train.py end to end on a tiny pretrained checkpoint: the Edin et al. protocol, the Hub-ready folder, LoRA, resume,
two ranks, and the push to a loopback Hub."""

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PreTrainedTokenizerFast

from modeling_bertxml import BertXMLForMaskedLM, BertXMLForMultiLabelCoding
from modeling_bertxml.model.configuration_bertxml import vocab_fingerprint
from modeling_bertxml.training.arguments import SYNONYM_QUERIES
from modeling_bertxml.training.label_init import note_keywords
from modeling_bertxml.training.models import build_coding_model, load_coding_model
from modeling_bertxml.evaluation.metrics import METRIC_KEYS, TRAINING_COUNT_KEY, compute_metrics, tune_threshold
from modeling_bertxml.data.notes import MultiLabelCollator, read_notes, tokenize_notes
from tests.conftest import (
    SUBPROCESS_TIMEOUT_S,
    TRAIN_TAGS,
    assert_close_scaled,
    assert_valid_model_card,
    folder_state,
    free_port,
    run_in_fresh_interpreter,
    save_backbone_checkpoint,
    shuffled_tokenizer,
    tiny_config,
    tiny_tokenizer,
    tracked_scalars,
)
from tests.hub_server import closed_port_endpoint, loopback_hub, point_hub_client_at  # noqa: F401 (fixture)
from modeling_bertxml.training import train as train_script
from modeling_bertxml.training.train import main, parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]
TOPICS = {
    "E11.9": "type 2 diabetes mellitus metformin glucose insulin",
    "I10": "hypertension essential lisinopril blood pressure",
    "J18.9": "pneumonia",
    "N17.9": "acute kidney injury",
    "I50.9": "heart failure",
}
FILLER = "patient admitted discharged with stable vitals the a and of denies chest pain".split()
UNSEEN_CODE = "R51.9"  # only in the test split: must count as a miss
SCORES = [key for key in METRIC_KEYS if key not in ("threshold", "num_notes", "num_codes")]


def synthetic_notes(rng: random.Random, count: int, start: int) -> list[dict]:
    notes = []
    for i in range(count):
        codes = rng.sample(sorted(TOPICS), rng.randint(1, 2))
        words = " ".join(TOPICS[code] for code in codes).split() + rng.sample(FILLER, 6)
        rng.shuffle(words)
        notes.append({"id": f"note-{start + i}", "text": " ".join(words), "labels": codes})
    return notes


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny MLM checkpoint as pretrain.py writes it, and train/validation/test notes (15: uneven across 2 ranks)."""
    folder = tmp_path_factory.mktemp("data")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = tiny_config(max_chunks=2, vocab_size=len(tokenizer))
    BertXMLForMaskedLM(config).save_pretrained(folder / "pretrained")
    tiny_tokenizer(model_max_length=config.max_note_length).save_pretrained(folder / "pretrained")
    rng = random.Random(0)
    splits = {"train": synthetic_notes(rng, 48, 0), "validation": synthetic_notes(rng, 15, 100)}
    splits["test"] = synthetic_notes(rng, 16, 200)
    splits["test"][0]["labels"].append(UNSEEN_CODE)
    splits["test"][0]["text"] += " " + " ".join(["chest pain"] * 20)  # longer than the model reads
    for name, notes in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(note) + "\n" for note in notes))
    return folder


def train_args(data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(data / "pretrained"),
        "--train_file", str(data / "train.jsonl"),
        "--validation_file", str(data / "validation.jsonl"),
        "--output_dir", str(output_dir),
        "--num_train_epochs", "2",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-3",
        "--head_learning_rate", "2e-2",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


class Messages(logging.Handler):
    """The log lines of a run (accelerate's logger formats them as '[RANK 0] ...')."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_train(args: list[str]) -> list[str]:
    messages, root = Messages(), logging.getLogger()
    level = root.level
    root.addHandler(messages)
    root.setLevel(logging.INFO)  # what train.py's logging.basicConfig sets outside pytest
    try:
        main(args)
    finally:
        root.removeHandler(messages)
        root.setLevel(level)
    return messages.lines


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    output_dir = tmp_path_factory.mktemp("run") / "coder"
    lines = run_train(train_args(data, output_dir, "--test_file", str(data / "test.jsonl"), "--num_train_epochs", "3"))
    return output_dir, lines


def probabilities(model: torch.nn.Module, tokenizer, notes_file: Path, labels: list[str]) -> tuple[np.ndarray, ...]:
    """Scores and targets of a split computed here, independently of train.py's evaluation loop."""
    notes = read_notes(notes_file, "check")
    label2id = {code: i for i, code in enumerate(labels)}
    dataset = tokenize_notes(notes, label2id, tokenizer, tokenizer.model_max_length)
    batch = MultiLabelCollator(len(labels), tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    unseen = sum(notes.report.outside_label_space.values())
    return torch.sigmoid(logits).numpy(), batch["labels"].numpy().astype(np.int8), unseen


def scores_of(results: dict) -> dict:
    """A results file's metrics as `compute_metrics` returns them: without the breakdown by training count."""
    return {key: value for key, value in results.items() if key != TRAINING_COUNT_KEY}


def flat(results: dict, prefix: str = "") -> dict:
    """Nested results as one flat mapping ("by_training_count/0/map": ...), which pytest.approx compares."""
    items = {}
    for key, value in results.items():
        items.update(flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return items


def load_folder(folder: Path):
    model = load_coding_model(folder)
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    labels = [config.id2label[i] for i in range(len(config.id2label))]
    return model, PreTrainedTokenizerFast.from_pretrained(folder), labels


def test_threshold_comes_from_validation_and_test_uses_it(data: Path, trained) -> None:
    output_dir, _ = trained
    model, tokenizer, labels = load_folder(output_dir)
    eval_results = json.loads((output_dir / "eval_results.json").read_text())
    test_results = json.loads((output_dir / "test_results.json").read_text())
    probs, targets, unseen = probabilities(model, tokenizer, data / "validation.jsonl", labels)
    threshold, _ = tune_threshold(probs, targets, grid=100, num_unseen_positives=unseen)
    assert eval_results["threshold"] == test_results["threshold"] == model.config.threshold == threshold
    assert scores_of(eval_results) == pytest.approx(compute_metrics(probs, targets, threshold), abs=1e-6)
    probs, targets, unseen = probabilities(model, tokenizer, data / "test.jsonl", labels)
    assert unseen == 1  # the test-only code is a miss, not dropped
    assert scores_of(test_results) == pytest.approx(compute_metrics(probs, targets, threshold, unseen), abs=1e-6)


def test_results_files_have_every_metric_and_the_best_validation_map_is_kept(data: Path, trained) -> None:
    output_dir, lines = trained
    for name, num_notes in (("eval_results.json", 15), ("test_results.json", 16)):
        results = json.loads((output_dir / name).read_text())
        assert list(results) == [*METRIC_KEYS, TRAINING_COUNT_KEY]
        assert all(0.0 <= results[key] <= 1.0 for key in SCORES)
        assert (results["num_notes"], results["num_codes"]) == (num_notes, len(TOPICS))
        buckets = results[TRAINING_COUNT_KEY]
        assert sum(bucket["share"] for bucket in buckets.values()) == pytest.approx(1.0)
    test_gold = sum(len(json.loads(line)["labels"]) for line in (data / "test.jsonl").open())
    unseen_bucket = json.loads((output_dir / "test_results.json").read_text())[TRAINING_COUNT_KEY]["0"]
    assert unseen_bucket == {"map": 0.0, "micro_f1": 0.0, "share": pytest.approx(1 / test_gold)}  # R51.9: a miss
    maps = [float(line.split("validation MAP ")[1].split(",")[0]) for line in lines if ": validation MAP" in line]
    assert len(maps) == 3  # one per epoch
    assert json.loads((output_dir / "eval_results.json").read_text())["map"] == pytest.approx(max(maps), abs=1e-4)
    unseen = "1 code occurrences (1 codes) are outside the label space, counted as misses: R51.9"
    assert any(unseen in line for line in lines)
    assert any("test: 1 of 16 notes are longer than 32 tokens and were truncated" in line for line in lines)
    speed = json.loads((output_dir / "train_results.json").read_text())
    # 48 notes, 8 per batch, 3 epochs: 18 steps, the first 5 untimed (warm-up).
    assert speed["train_steps"] == 18 and speed["steady_state_steps"] == 13
    assert speed["tokens_per_second"] > 0 and 0 < speed["mfu"] < 1
    assert speed["mfu"] == pytest.approx(speed["tokens_per_second"] * speed["flops_per_token"] / speed["peak_flops"])
    assert any("note tokens/s, MFU" in line for line in lines)
    # Mega-batches are batch x min(notes // (4 x batch), 50) notes (transformers' rule): one batch for 48 notes, so
    # grouping cannot beat random order here; tests/test_sampling.py measures it on a larger set.
    padding = [line for line in lines if "Padding in training batches" in line]
    grouped, shuffled = (float(share) for share in re.findall(r"(\d+\.\d)%", padding[0]))
    assert grouped <= shuffled


def test_no_note_text_reaches_the_logs_or_the_output_folder(data: Path, trained) -> None:
    output_dir, lines = trained
    log = "\n".join(lines)
    written = "\n".join(path.read_text() for path in output_dir.iterdir() if path.suffix in (".md", ".json"))
    for split in ("train", "validation", "test"):
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            text = json.loads(line)["text"]
            assert text not in log and text not in written


def test_output_folder_is_hub_ready(data: Path, trained) -> None:
    output_dir, _ = trained
    expected = {
        "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "configuration_bertxml.py",
        "modeling_bertxml.py", "pipeline_bertxml.py", "README.md", "handler.py", "eval_results.json",
        "test_results.json",
    }  # fmt: skip
    assert expected <= {path.name for path in output_dir.iterdir()}
    config = json.loads((output_dir / "config.json").read_text())
    assert set(config["id2label"].values()) == set(TOPICS) and "AutoModel" in config["auto_map"]
    card = (output_dir / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert (metadata["library_name"], metadata["pipeline_tag"]) == ("transformers", "text-classification")
    assert {"icd-10", "medical-coding"} <= set(metadata["tags"])
    reported = {(r["dataset"]["split"], m["type"]) for r in metadata["model-index"][0]["results"] for m in r["metrics"]}
    assert reported == {(split, key) for split in ("validation", "test") for key in SCORES}
    for heading in ("## Intended use", "## Limitations", "Protected health information", "handler.py"):
        assert heading in card
    card_data = assert_valid_model_card(output_dir / "README.md").data
    # Trained from a local folder without --base_model_id: no base_model, rather than a path nobody else has.
    assert card_data.base_model is None and str(data) not in card
    # What the remote code needs, and the Space-ready app's gradio.
    requirements = (output_dir / "requirements.txt").read_text().split()
    assert requirements == ["transformers>=5", "torch>=2.4", "safetensors", "gradio>=6"]
    training_texts = [json.loads(line)["text"] for line in (data / "train.jsonl").read_text().splitlines()]
    widget_texts = [example["text"] for example in metadata["widget"]]
    assert widget_texts and not any(text in card or text in widget_texts for text in training_texts)
    assert config["label_descriptions"]["E11.9"] == "Type 2 diabetes mellitus without complications"


def note_trigrams(data: Path) -> set[str]:
    trigrams = set()
    for split in ("train", "validation", "test"):
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            words = json.loads(line)["text"].lower().split()
            trigrams.update(" ".join(words[i : i + 3]) for i in range(len(words) - 2))
    return trigrams


def strings_in(value) -> list[str]:
    """Every string inside nested arguments (numpy arrays of numbers hold none)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in strings_in(key) + strings_in(item)]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, np.ndarray):
        return [str(item) for item in value.ravel()] if value.dtype.kind in "OUS" else []
    return []


def test_card_figures_are_pngs_in_the_card_drawn_from_numbers_only(data: Path, tmp_path: Path, monkeypatch) -> None:
    from modeling_bertxml.training import train
    from matplotlib.text import Text

    from modeling_bertxml.evaluation import plots

    arguments, drawn = [], []
    write_figures, save_figure = train.write_figures, plots.save_figure

    def spy_write(*args, **kwargs):
        arguments.append((args, kwargs))
        return write_figures(*args, **kwargs)

    def spy_save(figure, path):
        drawn.extend(text.get_text() for text in figure.findobj(Text))
        save_figure(figure, path)

    monkeypatch.setattr(train, "write_figures", spy_write)
    monkeypatch.setattr(plots, "save_figure", spy_save)
    output_dir = tmp_path / "coder"
    run_train(train_args(data, output_dir, "--test_file", str(data / "test.jsonl")))

    card = (output_dir / "README.md").read_text()
    for name in ("precision_recall.png", "f1_by_code_frequency.png", "training_curves.png"):
        assert (output_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in card
    (args, kwargs), = arguments
    assert args[1] == "test" and len(args[6]) == 2  # the test split; one validation record per epoch
    assert [record["epoch"] for record in args[6]] == [1.0, 2.0]
    trigrams = note_trigrams(data)
    for text in strings_in([args[1:], kwargs]) + drawn:
        words = text.lower().split()
        assert not any(" ".join(words[i : i + 3]) in trigrams for i in range(len(words) - 2)), text
    assert any("Precision-recall" in text for text in drawn)  # the spy saw the figures' texts


FRESH_INTERPRETER = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_bertxml"] = None  # the package must not be importable: what a Hub user has
    import torch
    from transformers import AutoModel, AutoTokenizer, pipeline
    folder, note = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**tokenizer(note, return_tensors="pt", return_token_type_ids=False)).logits[0].tolist()
    coder = pipeline("text-classification", model=folder, trust_remote_code=True, top_k=None, truncation=True)
    sys.path.insert(0, folder)
    from handler import EndpointHandler
    handler = EndpointHandler(folder)
    print(json.dumps({
        "logits": logits,
        "pipeline": coder(note),
        "handler": handler({"inputs": note}),
        "handler_all": handler({"inputs": [note, ""], "parameters": {"threshold": 0.0}}),
    }))
    """
)


SPACE_APP = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["modeling_bertxml"] = None  # what a Space has: gradio, transformers, torch and the model repo
    folder, note = sys.argv[1], sys.argv[2]
    sys.path.insert(0, folder)
    import app
    os.environ.pop("MODEL_ID", None)
    coder = app.load_coder(app.parse_args([]).model)  # a cloned model repo: app.py serves its own folder
    app.build_app(coder)
    print(json.dumps({"codes": [item["code"] for item in app.code_note(coder, note)],
                      "threshold": coder.model.config.threshold}))
    """
)


def test_folder_is_a_space_app_that_serves_the_model_without_the_package(data: Path, trained) -> None:
    pytest.importorskip("gradio", reason="the app extra: pip install -e '.[app]'")
    output_dir, _ = trained
    assert (output_dir / "app.py").read_text() == (REPO_ROOT / "modeling_bertxml" / "model" / "app.py").read_text()
    requirements = (output_dir / "requirements.txt").read_text().split()
    assert "gradio>=6" in requirements and any(line.startswith("transformers>=") for line in requirements)
    note = json.loads((data / "test.jsonl").read_text().splitlines()[1])["text"]
    result = run_in_fresh_interpreter(SPACE_APP, str(output_dir), note, cwd=output_dir)
    config = json.loads((output_dir / "config.json").read_text())
    assert result["threshold"] == pytest.approx(config["threshold"])
    assert result["codes"] and set(result["codes"]) <= set(TOPICS)


def check_folder_without_the_package(data: Path, folder: Path) -> tuple:
    """Score a validation note with `folder` loaded here and in FRESH_INTERPRETER (no bert-xml: the folder's own
    code): AutoModel's logits and the pipeline's scores must agree. Returns the model, its codes, the probabilities
    and the fresh interpreter's answers (the handler's too)."""
    model, tokenizer, labels = load_folder(folder)
    note = json.loads((data / "validation.jsonl").read_text().splitlines()[0])["text"]
    with torch.no_grad():
        expected = torch.sigmoid(model(**tokenizer(note, return_tensors="pt", return_token_type_ids=False)).logits[0])
    result = run_in_fresh_interpreter(FRESH_INTERPRETER, str(folder), note, cwd=folder.parent)
    assert_close_scaled(torch.sigmoid(torch.tensor(result["logits"])), expected)
    scores = {item["label"]: item["score"] for item in result["pipeline"][0]}
    assert scores == pytest.approx({code: expected[i].item() for i, code in enumerate(labels)}, abs=1e-5)
    return model, labels, expected, result


def test_folder_loads_with_automodel_pipeline_and_handler_without_the_package(data: Path, trained) -> None:
    output_dir, _ = trained
    model, labels, expected, result = check_folder_without_the_package(data, output_dir)
    above = sorted((i for i in range(len(labels)) if expected[i] > model.config.threshold), key=lambda i: -expected[i])
    assert [item["code"] for item in result["handler"]] == [labels[i] for i in above]
    for item in result["handler"]:
        assert item["score"] == pytest.approx(expected[labels.index(item["code"])].item(), abs=1e-4)
        assert item["description"]
    every_code, empty_note = result["handler_all"]
    assert len(every_code) == len(labels) and empty_note == []


ADAPTER_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    sys.modules["modeling_bertxml"] = None  # an environment without bert-xml: the folder's own code only
    import torch
    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, pipeline
    adapter, base_id, note, hub_adapter = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5]
    ids = torch.tensor(json.loads(sys.argv[4]))
    config = AutoConfig.from_pretrained(adapter, trust_remote_code=True)
    models = {
        # transformers' adapter detection: the base named in adapter_config.json, then the adapter
        "AutoModel": AutoModel.from_pretrained(adapter, trust_remote_code=True),
        "AutoModelForSequenceClassification":
            AutoModelForSequenceClassification.from_pretrained(adapter, trust_remote_code=True),
        # peft's documented calls
        "PeftModel": PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
            base_id, config=config, trust_remote_code=True), adapter),
        "AutoPeftModel":
            AutoPeftModelForSequenceClassification.from_pretrained(adapter, trust_remote_code=True, id2label=config.id2label),
        # the same adapter on the Hub: transformers then reads the base's config, and the adapter's must win
        "Hub AutoModel": AutoModel.from_pretrained(hub_adapter, trust_remote_code=True),
    }
    result = {}
    with torch.no_grad():
        for name, model in models.items():
            result[name] = model.eval()(ids).logits[0].tolist()
    result["pipeline"] = pipeline("icd-coding", model=adapter, trust_remote_code=True, threshold=0.0)(note)
    result["Hub pipeline"] = pipeline(
        "icd-coding", model=hub_adapter, config=hub_adapter, trust_remote_code=True, threshold=0.0
    )(note)
    spec = importlib.util.spec_from_file_location("handler", f"{adapter}/handler.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    result["handler"] = handler.EndpointHandler(adapter)({"inputs": note, "parameters": {"threshold": 0.0}})
    print(json.dumps(result))
    """
)


def test_lora_adapter_names_a_hub_base_and_needs_one(data: Path, tmp_path: Path) -> None:
    lora = ["--use_lora", "--num_train_epochs", "1"]
    with pytest.raises(SystemExit):  # a local base: the adapter could name only a path
        parse_args(train_args(data, tmp_path / "adapter", *lora))
    with pytest.raises(SystemExit):
        parse_args(train_args(data, tmp_path / "adapter", *lora, "--base_model_id", str(data / "pretrained")))
    assert parse_args(train_args(data, tmp_path / "a", *lora, "--merge_lora")).base_model_id is None  # no base needed
    args = parse_args(train_args(data, tmp_path / "a", *lora, "--base_model_id", "hospital/encoder"))
    assert args.base_model_id == "hospital/encoder"


def test_lora_adapter_loads_the_standard_ways_without_the_package(data: Path, tmp_path: Path, loopback_hub) -> None:
    # The base lives on a (loopback) Hub under its id; the adapter folder, alone in a directory, must find it there.
    base_id = "hospital/encoder"
    api = HfApi(token=loopback_hub.token)
    api.create_repo(base_id, private=False)
    api.upload_folder(repo_id=base_id, folder_path=data / "pretrained")
    lora = ["--use_lora", "--lora_r", "4", "--num_train_epochs", "1", "--base_model_id", base_id]
    run_train(train_args(data, tmp_path / "run", *lora, "--hub_model_id", "hospital/coder-lora", "--push_to_hub",
                         "--hub_public", "--hub_token", loopback_hub.token))  # fmt: skip
    alone = tmp_path / "alone"
    alone.mkdir()
    adapter = alone / "coder-lora"
    os.replace(tmp_path / "run", adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == base_id
    assert json.loads((adapter / "config.json").read_text())["architectures"] == ["BertXMLForMultiLabelCoding"]
    assert "peft>=0.17" in (adapter / "requirements.txt").read_text().split()
    card = assert_valid_model_card(adapter / "README.md")
    assert (card.data.base_model, card.data.library_name) == (base_id, "peft")
    assert "PeftModel.from_pretrained" in card.text and str(tmp_path) not in card.text

    model = load_coding_model(adapter).eval()
    head = model.base_model.model.label_head
    for name, trained_parameter in head.modules_to_save["default"].named_parameters():
        assert not torch.equal(trained_parameter, getattr(head.original_module, name)), name  # trained, not random
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    pretrained = load_file(data / "pretrained" / "model.safetensors")
    base = model.get_base_model().bert.state_dict()
    assert torch.equal(base["embeddings.word_embeddings.weight"], pretrained["bert.embeddings.word_embeddings.weight"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(adapter)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    probs, targets, _ = probabilities(model, tokenizer, data / "validation.jsonl", labels)
    results = json.loads((adapter / "eval_results.json").read_text())
    assert compute_metrics(probs, targets, results["threshold"]) == pytest.approx(scores_of(results), abs=1e-6)

    note = "type 2 diabetes mellitus metformin and acute kidney injury"
    encoded = tokenizer(note, return_tensors="pt")
    with torch.no_grad():
        expected = model(**encoded).logits[0]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", ADAPTER_SCRIPT, adapter.name, base_id, note, json.dumps(encoded.input_ids.tolist()),
         "hospital/coder-lora"],
        capture_output=True, text=True, cwd=alone, env={**env, "PYTHONNOUSERSITE": "1"}, timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("AutoModel", "AutoModelForSequenceClassification", "PeftModel", "AutoPeftModel", "Hub AutoModel"):
        torch.testing.assert_close(torch.tensor(result[name]), expected, rtol=1e-4, atol=1e-5, msg=name)
    for answer in (result["pipeline"], result["handler"], result["Hub pipeline"]):
        scores = {item["code"]: item["score"] for item in answer}
        assert scores == pytest.approx({code: torch.sigmoid(expected[i]).item() for i, code in enumerate(labels)})


def test_lora_merged_folder_loads_as_a_plain_model(data: Path, tmp_path: Path) -> None:
    run_train(train_args(data, tmp_path / "merged", "--use_lora", "--lora_r", "4", "--num_train_epochs", "1",
                         "--merge_lora"))  # fmt: skip
    _, tokenizer, labels = load_folder(tmp_path / "merged")
    merged = AutoModel.from_pretrained(tmp_path / "merged")
    assert isinstance(merged, BertXMLForMultiLabelCoding) and not (tmp_path / "merged" / "adapter_config.json").exists()
    probs, targets, _ = probabilities(merged, tokenizer, data / "validation.jsonl", labels)
    results = json.loads((tmp_path / "merged" / "eval_results.json").read_text())
    assert compute_metrics(probs, targets, results["threshold"]) == pytest.approx(scores_of(results), abs=1e-6)


def test_accumulation_early_stopping_and_exact_resume(data: Path, tmp_path: Path) -> None:
    # 48 notes, 4 per micro-batch, windows of 2: 6 optimizer steps per epoch.
    args = train_args(
        data, tmp_path / "run", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--num_train_epochs", "10", "--checkpointing_steps", "3", "--early_stopping_patience", "2",
        "--learning_rate", "0", "--head_learning_rate", "0",
    )  # fmt: skip
    lines = run_train(args)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_3" / "training_state.json").read_text())
    assert state["batches_in_epoch"] == 6  # each optimizer step after a full window of 2 micro-batches
    # Weights never change (learning rate 0), so MAP never improves: stop after 1 + 2 evaluations = 3 epochs.
    assert sum(": validation MAP" in line for line in lines) == 3
    assert any("Early stopping" in line for line in lines)
    steps = sorted(int(path.name[5:]) for path in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert steps == [3, 6, 9, 12, 15, 18]


def test_resume_after_an_evaluation_ends_with_the_uninterrupted_weights(data: Path, tmp_path: Path) -> None:
    """Dropout on, and the resumed checkpoint (what a kill -9 after step 7 leaves) comes after the first evaluation:
    both runs must train in train mode throughout, with the same dropout draws."""
    dropout = "hidden_dropout_prob=0.1,attention_probs_dropout_prob=0.1"
    args = train_args(
        data, tmp_path / "resumed", "--checkpointing_steps", "1", "--eval_steps", "5", "--num_train_epochs", "3",
        "--config_overrides", dropout, "--early_stopping_patience", "0",
    )  # fmt: skip
    run_train(args)
    finished = load_file(tmp_path / "resumed" / "model.safetensors")
    lines = run_train([*args, "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoints" / "step_7")])
    assert any("Resumed from" in line and "at step 7" in line for line in lines)
    assert sum(": validation MAP" in line for line in lines) == 3  # steps 10, 15 and the last (18)
    for name, tensor in load_file(tmp_path / "resumed" / "model.safetensors").items():
        torch.testing.assert_close(tensor, finished[name], atol=1e-6, rtol=0, msg=name)


def test_checkpoint_rotation_keeps_the_newest_and_resume_still_ends_with_the_same_weights(
    data: Path, tmp_path: Path
) -> None:
    args = train_args(
        data, tmp_path / "run", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--with_tracking",
        "--num_train_epochs", "3", "--early_stopping_patience", "0", "--config_overrides", "hidden_dropout_prob=0.1",
    )  # fmt: skip
    run_train(args)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["best_model", "step_17", "step_18"]
    finished = load_file(tmp_path / "run" / "model.safetensors")
    # The same tags as pretrain.py's, one training point per optimizer step (6 per epoch), the schedule's rate.
    scalars = tracked_scalars(tmp_path / "run" / "logs")
    assert TRAIN_TAGS <= set(scalars) and {f"validation/{key}" for key in METRIC_KEYS} <= set(scalars)
    assert [step for step, _ in scalars["train/learning_rate"]] == list(range(1, 19))
    assert scalars["train/learning_rate"][-1][1] == 0.0 and scalars["train/epoch"][-1][1] == 2

    lines = run_train([*args, "--resume_from_checkpoint", str(checkpoints / "step_17")])
    assert any("Resumed from" in line and "at step 17" in line for line in lines)
    assert sorted(path.name for path in checkpoints.iterdir()) == ["best_model", "step_17", "step_18"]
    for name, tensor in load_file(tmp_path / "run" / "model.safetensors").items():
        torch.testing.assert_close(tensor, finished[name], atol=1e-6, rtol=0, msg=name)


def test_checkpointing_by_epoch_also_saves_a_last_partial_epoch(data: Path, tmp_path: Path) -> None:
    run_train(train_args(data, tmp_path / "run", "--checkpointing_steps", "epoch", "--max_train_steps", "8"))
    steps = sorted(path.name for path in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert steps == ["step_6", "step_8"]  # the end of epoch 1 (6 steps of 8 notes), then where training stopped
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_8" / "training_state.json").read_text())
    assert state["step"] == 8 and state["epoch"] == 1 and state["batches_in_epoch"] == 2


def test_dataset_name_trains_exactly_like_the_files(data: Path, tmp_path: Path) -> None:
    """The same splits as a DatasetDict saved with save_to_disk and as a folder of data files that load_dataset reads:
    the same notes in the same order, so the same results as from --train_file/--validation_file/--test_file."""
    import datasets

    splits = {name: str(data / f"{name}.jsonl") for name in ("train", "validation", "test")}
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, path in splits.items():
        (folder / f"{name}.jsonl").write_text(Path(path).read_text())
    datasets.load_dataset("json", data_files=splits).save_to_disk(str(tmp_path / "saved"))
    steps = ("--max_train_steps", "2")
    run_train(train_args(data, tmp_path / "files", "--test_file", splits["test"], *steps))
    expected = {name: json.loads((tmp_path / "files" / name).read_text())
                for name in ("eval_results.json", "test_results.json")}  # fmt: skip
    for source in ("saved", "folder"):
        args = [arg for arg in train_args(data, tmp_path / f"from_{source}", *steps)
                if arg not in ("--train_file", "--validation_file", *splits.values())]  # fmt: skip
        run_train([*args, "--dataset_name", str(tmp_path / source)])
        for name, results in expected.items():
            written = json.loads((tmp_path / f"from_{source}" / name).read_text())
            assert flat(written) == pytest.approx(flat(results), rel=1e-6)


def test_streaming_trains_whole_epochs_from_the_counted_stream(data: Path, tmp_path: Path) -> None:
    """--streaming reads the training notes lazily (an IterableDataset: no copy in datasets' cache) after one
    validating pass that counts them, so epochs, the schedule and epoch checkpoints are those of the files."""
    lines = run_train(train_args(data, tmp_path / "run", "--streaming", "--checkpointing_steps", "epoch"))
    assert any("48 training notes, 12 optimizer steps of 8 x 1 x 1 notes" in line for line in lines)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("step_*")) == ["step_12", "step_6"]
    state = json.loads((checkpoints / "step_12" / "training_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 6)  # the end of the second epoch (counted from 0)
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["num_notes"] == 15 and 0 <= results["map"] <= 1
    # A bad row anywhere in the stream stops the run before training, with its line and field.
    bad = tmp_path / "bad.jsonl"
    bad.write_text((data / "train.jsonl").read_text() + '{"text": "chest pain", "labels": [7]}\n')
    with pytest.raises(SystemExit, match=rf"error: {bad}:49: field 'labels': code 1 is a int"):
        main(train_args(data, tmp_path / "bad_run", "--streaming", "--train_file", str(bad)))
    assert not (tmp_path / "bad_run" / "checkpoints").exists()


def test_bad_notes_file_stops_with_file_line_and_field(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text((data / "train.jsonl").read_text() + '{"text": "chest pain", "labels": "I10"}\n')
    with pytest.raises(SystemExit, match=rf"error: {bad}:49: field 'labels': a string"):
        main(train_args(data, tmp_path / "out", "--train_file", str(bad)))


def test_training_a_coder_further_in_place_replaces_it_and_keeps_the_users_files(data: Path, trained, tmp_path):
    coder = tmp_path / "coder"
    shutil.copytree(trained[0], coder)
    (coder / "my_notes.jsonl").write_text((data / "train.jsonl").read_text())
    (coder / "mydata").mkdir()
    (coder / "mydata" / "codes.txt").write_text("E11.9\n")
    before = load_file(coder / "model.safetensors")
    args = train_args(data, coder, "--num_train_epochs", "1", "--overwrite_output_dir")  # no --test_file this time
    args[args.index("--model_name_or_path") + 1] = str(coder)
    run_train(args)
    after = load_file(coder / "model.safetensors")
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in before)
    assert isinstance(AutoModel.from_pretrained(coder), BertXMLForMultiLabelCoding)
    assert not (coder / "test_results.json").exists()  # the old model's, not the new one's
    assert (coder / "my_notes.jsonl").read_text() == (data / "train.jsonl").read_text()
    assert (coder / "mydata" / "codes.txt").read_text() == "E11.9\n"


def test_an_input_inside_the_output_dir_is_refused_in_one_line_and_nothing_is_written(data: Path, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(data / "validation.jsonl", out / "validation.jsonl")
    before = folder_state(out)
    with pytest.raises(SystemExit, match=rf"^error: --validation_file {out}/validation.jsonl is inside [^\n]+$"):
        main(train_args(data, out, "--validation_file", str(out / "validation.jsonl")))
    assert folder_state(out) == before


def test_two_ranks_gather_every_validation_note_once(data: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    port = str(free_port())  # another 2-rank job on this machine must not join our group
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO_ROOT / "train.py"), *train_args(data, output_dir, "--num_train_epochs", "1")]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=SUBPROCESS_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Num processes: 2" in out.stdout + out.stderr
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert list(results) == [*METRIC_KEYS, TRAINING_COUNT_KEY]
    assert results["num_notes"] == 15  # padding duplicates dropped
    model, tokenizer, labels = load_folder(output_dir)
    probs, targets, _ = probabilities(model, tokenizer, data / "validation.jsonl", labels)
    assert compute_metrics(probs, targets, results["threshold"]) == pytest.approx(scores_of(results), abs=1e-6)


def test_push_creates_a_private_repo_that_loads_with_the_same_logits(
    data: Path, tmp_path: Path, loopback_hub, capfd, monkeypatch
) -> None:
    repo_id = "hospital/bert-xml-icd10"
    output_dir = tmp_path / "pushed"
    args = train_args(data, output_dir, "--num_train_epochs", "1", "--push_to_hub", "--hub_model_id", repo_id,
                      "--hub_token", loopback_hub.token, "--checkpointing_steps", "epoch")  # fmt: skip
    lines = run_train(args)
    assert HfApi().model_info(repo_id, token=loopback_hub.token).private
    pushed = set(loopback_hub.repos[repo_id].files)
    assert {"model.safetensors", "README.md", "handler.py", "eval_results.json"} <= pushed
    assert not any(name.startswith("checkpoints/") for name in pushed) and "run_args.json" not in pushed
    ids = torch.tensor([[2, 10, 20, 30, 3]])
    remote = AutoModel.from_pretrained(repo_id, trust_remote_code=True, token=loopback_hub.token, cache_dir=tmp_path)
    local = AutoModel.from_pretrained(output_dir)
    with torch.no_grad():
        torch.testing.assert_close(remote.eval()(ids).logits, local.eval()(ids).logits, atol=0, rtol=0)
    captured = capfd.readouterr()
    assert loopback_hub.token not in "\n".join(lines) + captured.out + captured.err
    assert loopback_hub.token not in (output_dir / "run_args.json").read_text()

    # The network gone by the end of training (it was there at the start, when the push was checked): one clear
    # message, and the folder stays as it was.
    write_outputs = train_script.write_outputs

    def then_offline(*args, **kwargs):
        write_outputs(*args, **kwargs)
        point_hub_client_at(monkeypatch, closed_port_endpoint(), tmp_path / "offline_home")

    monkeypatch.setattr(train_script, "write_outputs", then_offline)
    before = {path.name: path.read_bytes() for path in output_dir.iterdir() if path.is_file()}
    with pytest.raises(SystemExit, match="(?s)error: Could not push .* the model folder is intact"):
        main([*args, "--output_dir", str(tmp_path / "offline"), "--num_train_epochs", "1"])
    assert (tmp_path / "offline" / "model.safetensors").is_file()
    assert before == {path.name: path.read_bytes() for path in output_dir.iterdir() if path.is_file()}


def test_a_push_to_a_namespace_the_token_cannot_write_stops_before_training(data: Path, tmp_path: Path,
                                                                           loopback_hub) -> None:
    output_dir = tmp_path / "coder"
    push = ["--push_to_hub", "--hub_model_id", "other-hospital/coder", "--hub_token", loopback_hub.token]
    with pytest.raises(SystemExit, match=r"^error: --push_to_hub: cannot push to \S+/other-hospital/coder: "
                                         r"other-hospital/coder does not exist and loopback-user may not create repos "
                                         r"in other-hospital; checked before training, so nothing was trained$"):
        main(train_args(data, output_dir, *push))
    assert sorted(path.name for path in output_dir.iterdir()) == [".bertxml.lock", ".bertxml_manifest.json",
                                                                   "run_args.json"]  # fmt: skip
    assert loopback_hub.repos == {}


def test_another_runs_tokenizer_of_the_same_size_is_refused_and_the_coder_records_its_own(data: Path,
                                                                                          tmp_path: Path) -> None:
    pretrained = tmp_path / "pretrained"
    shutil.copytree(data / "pretrained", pretrained)
    config = json.loads((pretrained / "config.json").read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(pretrained)
    fingerprint = vocab_fingerprint(tokenizer.get_vocab())  # what pretrain.py records
    (pretrained / "config.json").write_text(json.dumps({**config, "vocab_fingerprint": fingerprint}))
    shuffled_tokenizer(tokenizer).save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit, match=rf"^error: tokenizer \S+other has the model's \d+ tokens but not its "
                                         rf"vocabulary \(fingerprint \w+, the model's {fingerprint}\)"):
        main(train_args(data, tmp_path / "refused", "--model_name_or_path", str(pretrained),
                        "--tokenizer_name", str(tmp_path / "other")))  # fmt: skip
    main(train_args(data, tmp_path / "coder", "--model_name_or_path", str(pretrained), "--max_train_steps", "1"))
    assert json.loads((tmp_path / "coder" / "config.json").read_text())["vocab_fingerprint"] == fingerprint


def test_init_label_queries_from_descriptions_starts_known_codes_from_their_text(data: Path, tmp_path: Path) -> None:
    labels = ["E11.9", "I10", "LOCAL1"]  # LOCAL1: a hospital's own code, not in ICD-10-CM
    tokenizer = PreTrainedTokenizerFast.from_pretrained(data / "pretrained")
    torch.manual_seed(0)
    random_queries = build_coding_model(labels, tokenizer, data / "pretrained").label_head.queries
    torch.manual_seed(0)
    queries = build_coding_model(labels, tokenizer, data / "pretrained", init_from_descriptions=True).label_head.queries
    torch.testing.assert_close(queries.norm(dim=-1)[:2], torch.ones(2))  # unit-norm description embeddings
    assert not torch.allclose(queries[:2], random_queries[:2])
    torch.testing.assert_close(queries[2], random_queries[2])  # no description: keeps its random query

    # Several queries per code (MSMN's synonym queries): each starts from one of the code's texts, in turn.
    texts = {"E11.9": ["type 2 diabetes", "diabetes mellitus without complication"], "I10": ["hypertension"]}
    queries = build_coding_model(labels, tokenizer, data / "pretrained", init_from_descriptions=True, code_texts=texts,
                                 queries_per_code=3).label_head.queries.unflatten(0, (3, 3))  # fmt: skip
    diabetes, hypertension, local = queries
    torch.testing.assert_close(diabetes[2], diabetes[0])  # two texts for three queries: the first again
    assert not torch.allclose(diabetes[0], diabetes[1])
    torch.testing.assert_close(hypertension, hypertension[:1].expand(3, -1))  # one text: one query, three times
    assert not torch.allclose(local[0], local[1])  # no text: random queries


@pytest.mark.parametrize(
    ("start", "flag", "described"),
    [
        ("scratch", None, True),
        ("checkpoint", None, False),
        ("scratch", "--no-init_label_queries_from_descriptions", False),
        ("checkpoint", "--init_label_queries_from_descriptions", True),
    ],
)
def test_label_queries_start_from_descriptions_by_default_only_for_an_encoder_trained_from_scratch(
    data: Path, tmp_path: Path, start: str, flag: str | None, described: bool
) -> None:
    """From scratch, random queries let the 4 x 256 encoder collapse onto the code priors; from a checkpoint,
    description queries measured worse (README: What mattered). Either default can be overridden."""
    args = train_args(data, tmp_path / "run", "--num_train_epochs", "1", *([flag] if flag else []))
    if start == "scratch":
        index = args.index("--model_name_or_path")
        pretrained = str(data / "pretrained")
        args[index : index + 2] = ["--config_name", pretrained, "--tokenizer_name", pretrained]
    lines = run_train(args)
    assert any("new label queries start from their official descriptions" in line for line in lines) == described
    # Queries started from texts are several per code, one per text (SYNONYM_QUERIES); random ones stay one.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["label_queries_per_code"] == (SYNONYM_QUERIES if described else 1)


def test_a_coder_builds_trains_saves_and_reloads_from_python_without_argparse(data: Path, tmp_path: Path) -> None:
    from accelerate.state import AcceleratorState

    from modeling_bertxml.training.checkpointing import Progress
    from modeling_bertxml.training.models import save_coding_model
    from modeling_bertxml.training.loop import create_optimizer, create_scheduler, setup_accelerator, training_step

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = setup_accelerator(tmp_path / "notebook", seed=0)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(data / "pretrained")
    labels = ["E11.9", "I10"]
    model = build_coding_model(labels, tokenizer, data / "pretrained")
    optimizer = create_optimizer(model, learning_rate=1e-3, param_groups={model.label_head: 1e-2})
    scheduler = create_scheduler(optimizer, num_training_steps=1)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batch = dict(tokenizer(["metformin glucose", "lisinopril blood pressure"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    progress = Progress()
    model.train()
    loss = training_step(accelerator, model, optimizer, scheduler, batch, progress, uniform_loss=np.log(2))
    assert progress.step == 1 and loss > 0
    save_coding_model(accelerator, model, tokenizer, tmp_path / "coder")

    reloaded = load_coding_model(tmp_path / "coder").eval()
    assert [reloaded.config.id2label[i] for i in range(2)] == labels
    del batch["labels"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits)


def test_fine_tuning_a_coder_keeps_each_codes_head_row_whatever_the_order(data: Path, trained, tmp_path) -> None:
    coder, _ = trained
    source = load_coding_model(coder).label_head
    source_codes = [load_coding_model(coder).config.id2label[i] for i in range(source.queries.shape[0])]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(coder)
    # Same number of codes, other order, one new code: the positional load gave each row to the wrong code.
    codes = [*reversed(source_codes[1:]), "Z99.89"]
    head = build_coding_model(codes, tokenizer, coder).label_head
    for name in ("queries", "output_weight", "output_bias"):
        for i, code in enumerate(codes[:-1]):
            assert torch.equal(getattr(head, name)[i], getattr(source, name)[source_codes.index(code)]), (name, code)
    assert not any(torch.equal(head.queries[-1], row) for row in source.queries)  # the new code starts fresh
    assert head.output_bias[-1] == 0


def test_new_codes_start_at_their_training_frequency_and_known_codes_keep_their_rows(data: Path, trained) -> None:
    """A zero bias starts every code at probability 0.5; a new code's bias starts at its log prior odds instead."""
    coder, _ = trained
    source = load_coding_model(coder).label_head
    source_codes = [load_coding_model(coder).config.id2label[i] for i in range(source.queries.shape[0])]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(coder)
    codes = [source_codes[0], "Z99.89", "R51.9"]
    shares = {source_codes[0]: 0.5, "Z99.89": 0.02, "R51.9": 0.3}
    head = build_coding_model(codes, tokenizer, coder, label_frequencies=shares).label_head
    assert head.output_bias[0] == source.output_bias[0]  # learnt: kept
    torch.testing.assert_close(torch.sigmoid(head.output_bias[1:]), torch.tensor([0.02, 0.3]))


def test_resuming_after_the_training_codes_changed_is_refused(data: Path, tmp_path: Path) -> None:
    train_file = tmp_path / "train.jsonl"
    train_file.write_text((data / "train.jsonl").read_text())
    args = [*train_args(data, tmp_path / "run", "--num_train_epochs", "1", "--checkpointing_steps", "3"),
            "--train_file", str(train_file)]  # fmt: skip
    run_train(args)
    train_file.write_text(train_file.read_text().replace("N17.9", "N17.0"))  # the export was redone
    with pytest.raises(SystemExit, match=r"step_6 was saved by a run with other labels \(1 added, 1 removed\)"):
        main([*args, "--resume_from_checkpoint", "latest"])


def test_a_checkpoint_whose_encoder_does_not_load_is_refused_unless_allowed(data: Path, tmp_path: Path) -> None:
    # Weights saved from a DDP-wrapped model (module.*) are not named as the checkpoint's config.json says: nothing of
    # the encoder loads, be it BERT-XML's own or another encoder (the backbone of a RoBERTa checkpoint).
    tokenizer = PreTrainedTokenizerFast.from_pretrained(data / "pretrained")
    shutil.copytree(data / "pretrained", tmp_path / "bertxml")
    save_backbone_checkpoint("roberta", tmp_path / "roberta", tokenizer)
    for checkpoint in ("bertxml", "roberta"):
        weights = tmp_path / checkpoint / "model.safetensors"
        save_file({f"module.{key}": value for key, value in load_file(weights).items()}, weights, {"format": "pt"})
    for checkpoint, encoder in (("bertxml", "bert.embeddings"), ("roberta", "bert.backbone.embeddings")):
        args = train_args(data, tmp_path / "out", "--num_train_epochs", "1")
        args[args.index("--model_name_or_path") + 1] = str(tmp_path / checkpoint)
        with pytest.raises(SystemExit) as stopped:
            run_train(args)
        message = str(stopped.value.code)
        assert "encoder weights did not load" in message and f"{encoder}.word_embeddings.weight" in message
        assert "module." in message  # the unused weights say why
        assert "--allow_random_encoder" in message and not (tmp_path / "out" / "config.json").exists()

    lines = run_train([*args, "--allow_random_encoder", "--overwrite_output_dir"])
    assert any("encoder weights did not load" in line for line in lines)  # warned, not silent
    assert (tmp_path / "out" / "config.json").is_file()
    # A BERT-XML checkpoint loads whole: no error, no warning.
    labels = sorted(TOPICS)
    build_coding_model(labels, tokenizer, data / "pretrained")


def test_a_label_space_of_the_whole_code_system_codes_what_no_training_note_carries(data: Path, tmp_path: Path) -> None:
    """--label_space code_system: the training codes keep attention rows, every other billable ICD-10-CM code is scored
    by the description match, so the test note's R51.9 (in no training note) is a code of the model, not a miss."""
    from modeling_bertxml.data.code_systems import get_code_system

    output_dir = tmp_path / "coder"
    own_texts = tmp_path / "codes.tsv"  # a user's texts (here one, in Spanish) replace the official ones they list
    own_texts.write_text("code\tdescription\ni10\tHipertension esencial\n")
    args = train_args(data, output_dir, "--test_file", str(data / "test.jsonl"), "--num_train_epochs", "1",
                      "--code_system", "icd10cm", "--label_space", "code_system",
                      "--code_descriptions", str(own_texts))  # fmt: skip
    lines = run_train(args)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["label_descriptions"]["I10"] == "Hipertension esencial"
    assert config["label_descriptions"]["R07.9"] == "Chest pain, unspecified"
    # The words of the training notes that started the codes' queries and match (--note_keywords) are not saved.
    notes = read_notes(str(data / "train.jsonl"), "train", code_system="icd10cm")
    keywords = note_keywords(notes, sorted(TOPICS), PreTrainedTokenizerFast.from_pretrained(output_dir), 16)
    assert set(keywords) == set(TOPICS) and not any(words in json.dumps(config) for words in keywords.values())
    assert "pneumonia" in keywords["J18.9"] and "kidney" in keywords["N17.9"]  # they exist, and name their codes
    codes = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert codes[:5] == sorted(TOPICS) and config["num_attention_labels"] == 5
    assert sorted(codes) == sorted(get_code_system("icd10cm").codes())
    assert json.loads((output_dir / "test_results.json").read_text())["num_codes"] == len(codes)
    assert not any("outside the label space" in line for line in lines)
    model = load_coding_model(output_dir).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(output_dir)
    with torch.no_grad():
        logits = model(**tokenizer(["patient denies chest pain", "acute kidney injury"], padding=True,
                                   return_tensors="pt")).logits  # fmt: skip
    chest_pain = config["label2id"]["R07.9"]  # "Chest pain, unspecified": in no training note
    assert chest_pain >= 5 and logits[0, chest_pain] > logits[1, chest_pain]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--code_system", "any"], "--label_space code_system with --code_system any: local or mixed codes are not "),
        (["--code_system", "icd10cm", "--no-description_match"], "drop --no-description_match"),
        (["--code_system", "icd10cm", "--use_lora", "--base_model_id", "org/base"],
         "needs --merge_lora: an adapter folder"),
    ],
)
def test_a_label_space_of_the_code_system_that_cannot_be_is_refused_in_one_line(
    data: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(train_args(data, tmp_path / "coder", "--label_space", "code_system", *flags))
    assert not (tmp_path / "coder" / "model.safetensors").exists()


def test_note_keywords_take_a_count_and_zero_turns_them_off(data: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(train_args(data, tmp_path / "out", "--note_keywords", "-1"))
    assert "--note_keywords: expected a whole number of 0 or more, got '-1'" in capsys.readouterr().err
    assert parse_args(train_args(data, tmp_path / "out", "--note_keywords", "0")).note_keywords == 0
