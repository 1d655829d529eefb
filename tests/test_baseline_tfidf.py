"""TF-IDF + logistic regression baseline: reads notes as train.py does, tunes on validation, unseen codes are misses."""

import json

import pytest

from modeling_bertxml.evaluation.baseline_tfidf import run_tfidf_baseline
from modeling_bertxml.data import icd10
from modeling_bertxml.data.notes import NotesError


def _write(path, rows):
    path.write_text("".join(json.dumps({"text": text, "labels": labels}) + "\n" for text, labels in rows))
    return str(path)


def test_baseline_runs_and_counts_unseen_codes_as_misses(tmp_path):
    train = [("fever and cough, chest film with consolidation", ["J18.9"]), ("knee pain and stiffness", ["m179"])] * 4
    validation = [("cough with fever", ["J18.9"]), ("stiffness of the knee", ["M17.9"])]
    test = validation + [("high blood pressure", ["I10"])]
    results = run_tfidf_baseline(
        _write(tmp_path / "train.jsonl", train), _write(tmp_path / "validation.jsonl", validation),
        _write(tmp_path / "test.jsonl", test),
    )
    assert results["validation"]["micro_f1"] == 1.0  # "m179" was normalised to the validation split's "M17.9"
    assert results["test"]["threshold"] == results["validation"]["threshold"]
    assert results["test"]["num_codes"] == 2  # the label space comes from training
    assert results["test"]["micro_recall"] == pytest.approx(2 / 3)  # I10, seen only in test, is a miss


def test_missing_column_is_reported_with_the_file(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"note": "x", "labels": ["I10"]}) + "\n")
    with pytest.raises(NotesError, match="notes.jsonl"):
        run_tfidf_baseline(str(path), str(path), str(path))



def test_baseline_learns_with_more_than_127_codes(tmp_path):
    """sklearn's one-vs-rest fit mis-reads int8 targets once there are more than 128 codes (micro-AUC 0.50 instead of
    0.89 on the same data): a corpus with a long tail of rare codes, each named by its own word, must be learnt."""
    codes = list(icd10.billable_codes())[:150]

    def note(i: int) -> tuple[str, list[str]]:
        picked = [i % 150, (7 * i + 3) % 150]
        return "patient seen " + " ".join(f"finding{j}" for j in picked), [codes[j] for j in picked]

    train, held_out = [note(i) for i in range(600)], [note(i) for i in range(600, 750)]
    results = run_tfidf_baseline(
        _write(tmp_path / "train.jsonl", train), _write(tmp_path / "validation.jsonl", held_out),
        _write(tmp_path / "test.jsonl", held_out),
    )
    assert results["test"]["num_codes"] == 150
    assert results["test"]["micro_auc"] > 0.95
    assert results["test"]["map"] > 0.9


def test_baseline_on_a_coders_label_space_without_a_test_split(tmp_path):
    """Scored on the model's codes and code system (here one more code than training has), validation only."""
    from modeling_bertxml.evaluation.baseline_tfidf import coder_label_space
    from modeling_bertxml.evaluation.metrics import TRAINING_COUNT_KEY
    from modeling_bertxml.model.configuration_bertxml import BertXMLConfig

    codes = ["I10", "J18.9", "M17.9"]  # I10: a --label_file code no training note carries
    BertXMLConfig(id2label=dict(enumerate(codes)), code_system="icd10cm").save_pretrained(tmp_path / "coder")
    label2id, code_system = coder_label_space(tmp_path / "coder")
    assert (label2id, code_system) == ({"I10": 0, "J18.9": 1, "M17.9": 2}, "icd10cm")

    train = [("fever and cough, chest film with consolidation", ["J18.9"]), ("knee pain and stiffness", ["m179"])] * 4
    validation = [("cough with fever", ["J18.9"]), ("stiffness of the knee", ["M17.9"]), ("blood pressure", ["I10"])]
    results = run_tfidf_baseline(
        _write(tmp_path / "train.jsonl", train), _write(tmp_path / "validation.jsonl", validation),
        label2id=label2id, code_system=code_system,
    )  # fmt: skip
    assert list(results) == ["validation"]
    assert results["validation"]["num_codes"] == 3
    assert results["validation"]["micro_recall"] == pytest.approx(2 / 3)  # I10 scores 0: never predicted
    buckets = results["validation"][TRAINING_COUNT_KEY]
    assert buckets["0"] == {"map": pytest.approx(1 / 3), "micro_f1": 0.0, "share": pytest.approx(1 / 3)}
    assert buckets["1-5"] == {"map": 1.0, "micro_f1": 1.0, "share": pytest.approx(2 / 3)}  # 4 notes each
