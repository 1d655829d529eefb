"""benchmarks/quality.py end to end on a tiny corpus folder (--corpus), with and without test split and pretraining."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import quality
from tests.conftest import folder_state

ROOT = Path(__file__).resolve().parent.parent
SIZES = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,max_position_embeddings=32"
# Each code named by its own words; I10 in every note (>50 would need 51 notes: the buckets are tested in test_metrics).
FINDINGS = {"J18.9": "pneumonia with cough", "E11.9": "type 2 diabetes on metformin", "N44.8": "testicular pain"}


def _notes(count: int, offset: int) -> list[dict]:
    notes = []
    for i in range(offset, offset + count):
        codes = ["I10", list(FINDINGS)[i % 3]] + (["R52"] if i % 4 == 0 else [])  # R52 in a few notes only
        text = f"patient {i} with hypertension and {FINDINGS[codes[1]]}" + (" and pain" if "R52" in codes else "")
        notes.append({"id": str(i), "text": text, "labels": codes})
    return notes


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, (count, offset) in {"train": (12, 0), "validation": (6, 100), "test": (6, 200)}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(note) + "\n" for note in _notes(count, offset)))
    with (folder / "test.jsonl").open("a") as file:  # a code training never showed
        file.write(json.dumps({"id": "300", "text": "patient with a fracture", "labels": ["S52.501A"]}) + "\n")
    return folder


def _config(tmp_path, **sections) -> str:
    config = {
        "output_dir": str(tmp_path / "ignored"),  # --output_dir overrides it
        "pretrain": {"config_overrides": SIZES, "max_seq_length": 32, "max_train_steps": 2,
                     "per_device_train_batch_size": 4},
        "finetune": {"max_train_steps": 2, "per_device_train_batch_size": 4},
        **sections,
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.integration
def test_quality_on_a_corpus_folder_with_and_without_test_and_pretraining(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the stages' scripts import this checkout's package
    before, out = folder_state(corpus), tmp_path / "run"
    test_codes = sum(len(json.loads(line)["labels"]) for line in (corpus / "test.jsonl").read_text().splitlines())
    descriptions = tmp_path / "descriptions.txt"  # unlabelled text the vocabulary also learns from
    descriptions.write_text("Pneumonia, unspecified organism\nEssential (primary) hypertension\nPain, unspecified\n")
    tokenizer = {"vocab_size": 200, "min_frequency": 1, "train_file": [str(descriptions)]}
    config = _config(tmp_path, tokenizer=tokenizer)
    quality.main(["--config", config, "--corpus", str(corpus), "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert folder_state(corpus) == before  # read, never written into
    results = json.loads((out / "quality.json").read_text())
    assert set(results) == {"mlm", "split", "test", "by_training_count", "seconds"}
    assert results["split"] == "test" and results["mlm"]["train_steps"] == 2
    assert set(results["test"]) == {"BERT-XML", "TF-IDF + LR", "code priors"}
    assert all(list(metrics) == quality.METRICS for metrics in results["test"].values())
    assert list(results["seconds"]) == ["tokenizer", "pretrain", "finetune", "baseline"]  # no corpus stage
    breakdown = results["by_training_count"]
    assert {"TF-IDF + LR", "code priors"} <= set(breakdown)  # BERT-XML's when train.py writes it
    # the baselines score the same gold codes: S52.501A (never in training) is the test split's bucket 0
    for buckets in breakdown.values():
        assert buckets["0"]["share"] == pytest.approx(1 / test_codes) and buckets["0"]["map"] == 0.0
    assert "Test split (threshold tuned on validation):" in printed
    assert "| map, 0 training notes |" in printed and "MLM perplexity" in printed
    assert (out / "quality.png").is_file()
    report = json.loads((out / "tokenizer" / "tokenizer_report.json").read_text())
    assert report["train_notes"] + report["eval_notes"] == 12 + 3  # the training notes and the descriptions

    # The held-back test split left out, no pretraining, and the corpus's own code texts (another language than the
    # code system's tables): the tokenizer is reused, the coder built from scratch, the codes described by the corpus.
    (corpus / "test.jsonl").unlink()
    (corpus / "code_descriptions.tsv").write_text("code\tdescription\nJ18.9\tNeumonía, organismo no especificado\n")
    finetune = {"config_overrides": SIZES, "max_train_steps": 2}
    config = _config(tmp_path, tokenizer=tokenizer, pretrain=False, finetune=finetune)
    quality.main(["--config", config, "--corpus", str(corpus), "--output_dir", str(out)])
    printed = capsys.readouterr().out
    results = json.loads((out / "quality.json").read_text())
    assert results["split"] == "validation" and results["mlm"] is None and "test" not in results
    assert set(results["validation"]) == {"BERT-XML", "TF-IDF + LR", "code priors"}
    assert list(results["seconds"]) == ["tokenizer", "finetune", "baseline"] and results["seconds"]["tokenizer"] == 0
    assert "no pretraining" in printed and "Validation split (threshold tuned on validation; no test split):" in printed
    coder = json.loads((out / "model" / "config.json").read_text())
    assert (coder["hidden_size"], coder["num_hidden_layers"]) == (32, 1)  # the finetune section's sizes
    assert coder["label_descriptions"]["J18.9"] == "Neumonía, organismo no especificado"


def test_quality_refuses_a_corpus_without_its_splits(corpus, tmp_path, capsys):
    (corpus / "validation.jsonl").unlink()
    with pytest.raises(SystemExit):
        quality.main(["--corpus", str(corpus), "--output_dir", str(tmp_path / "run")])
    assert f"--corpus {corpus}: no validation.jsonl in it" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    (corpus / "validation.jsonl").write_text((corpus / "train.jsonl").read_text())
    with pytest.raises(SystemExit):
        quality.main(["--corpus", str(corpus), "--output_dir", str(tmp_path)])
    assert "lies in the output dir" in capsys.readouterr().err


def test_a_corpus_runs_the_recipe_for_real_notes_unless_a_config_is_named(corpus, tmp_path):
    out = str(tmp_path / "run")
    for budget in ("cpu", "gpu"):
        _, config = quality.parse_args(["--budget", budget, "--corpus", str(corpus), "--output_dir", out])
        recipe = yaml.safe_load((ROOT / "configs" / "quality" / "cpu_real.yaml").read_text())
        assert config == {**recipe, "output_dir": out}
        assert config["pretrain"] is False and config["finetune"]["label_space"] == "code_system"
    _, config = quality.parse_args(["--output_dir", out])  # no corpus: the synthetic preset
    assert config["corpus"] == {"preset": "hard"} and config["pretrain"]["max_train_steps"] > 0
    _, config = quality.parse_args(["--config", _config(tmp_path), "--corpus", str(corpus)])
    assert config["finetune"] == {"max_train_steps": 2, "per_device_train_batch_size": 4}


def test_fresh_deletes_what_the_stages_wrote_and_nothing_else(tmp_path):
    from modeling_bertxml.training.stages import clear_stages

    out = tmp_path / "run"
    for folder in ("tokenizer", "model", "mydata"):
        (out / folder).mkdir(parents=True)
        (out / folder / "file.txt").write_text("x")
    for name in (".tokenizer.done", "quality.json", "notes.txt"):
        (out / name).write_text("{}")
    assert sorted(clear_stages(out, quality.REPORTS)) == [".tokenizer.done", "model", "quality.json", "tokenizer"]
    assert sorted(path.name for path in out.iterdir()) == ["mydata", "notes.txt"]
    assert (out / "mydata" / "file.txt").read_text() == "x"


def test_a_failed_stage_is_named_without_a_traceback_and_is_not_marked_done(tmp_path):
    from modeling_bertxml.training.stages import run_stage

    failing = [sys.executable, "-c", "raise SystemExit('error: notes.jsonl:3: no text')"]
    with pytest.raises(SystemExit, match="== finetune failed: see its error above"):
        run_stage("finetune", failing, tmp_path / "model", tmp_path)
    assert not (tmp_path / ".finetune.done").exists()


def test_list_values_become_one_flag_with_several_values():
    from modeling_bertxml.training.stages import as_flags

    options = {"train_file": ["a.txt", "notes/*.txt"], "lowercase": True, "streaming": False, "vocab_size": 0}
    assert as_flags(options) == ["--train_file", "a.txt", "notes/*.txt", "--lowercase", "--vocab_size", "0"]
