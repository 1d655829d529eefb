"""TF-IDF + logistic regression baseline: metrics on a hand-computed table, threshold tuning, unseen codes."""

import json

import numpy as np
import pytest

from benchmarks.baseline_tfidf import compute_metrics, format_table, run_tfidf_baseline, tune_threshold

LABELS = np.array([[1, 0, 1], [0, 1, 0]])
SCORES = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.1]])


def test_compute_metrics_on_a_hand_computed_table():
    # threshold 0.5 predicts {0} and {0, 1}: TP = 2, FP = 1, FN = 1; per-code F1 = 2/3, 1, 0
    metrics = compute_metrics(LABELS, SCORES, 0.5)
    assert metrics["micro_precision"] == pytest.approx(2 / 3)
    assert metrics["micro_recall"] == pytest.approx(2 / 3)
    assert metrics["micro_f1"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics["precision_at_5"] == pytest.approx((2 + 1) / 2 / 5)
    assert (metrics["num_notes"], metrics["num_codes"]) == (2, 3)


def test_tuned_threshold_beats_the_default():
    threshold = tune_threshold(LABELS, SCORES)
    assert 0.2 < threshold <= 0.4  # between the last negative above a positive (0.2) and the positive 0.4
    assert compute_metrics(LABELS, SCORES, threshold)["micro_f1"] > compute_metrics(LABELS, SCORES, 0.5)["micro_f1"]


def _write(path, rows):
    path.write_text("".join(json.dumps({"text": text, "labels": labels}) + "\n" for text, labels in rows))
    return str(path)


def test_baseline_runs_and_counts_unseen_codes_as_misses(tmp_path):
    train = [("fever and cough, chest film with consolidation", ["J18.9"]), ("knee pain and stiffness", ["M17.9"])] * 4
    validation = [("cough with fever", ["J18.9"]), ("stiffness of the knee", ["M17.9"])]
    test = validation + [("high blood pressure", ["I10"])]
    results = run_tfidf_baseline(
        _write(tmp_path / "train.jsonl", train), _write(tmp_path / "validation.jsonl", validation),
        _write(tmp_path / "test.jsonl", test),
    )
    assert results["validation"]["micro_f1"] == 1.0
    assert results["test"]["threshold"] == results["validation"]["threshold"]
    assert results["test"]["num_codes"] == 3
    assert results["test"]["micro_recall"] == pytest.approx(2 / 3)
    assert "| micro_f1 | 1.0000 |" in format_table(results)


def test_missing_column_is_reported(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"note": "x", "labels": ["I10"]}) + "\n")
    with pytest.raises(ValueError, match="no column 'text'"):
        run_tfidf_baseline(str(path), str(path), str(path))
