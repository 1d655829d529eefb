"""The model card's figures: the numbers they are drawn from, checked on hand-computed tables, and the PNG files."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_bertxml.release.hub import scan_for_identifiers
from modeling_bertxml.evaluation.metrics import compute_metrics
from modeling_bertxml.evaluation.plots import FIGURE_FILES, f1_by_frequency, precision_recall_curve, write_figures

# 3 notes x 5 codes; at threshold 0.5 the predictions are c0 c2 | c1 c2 | c0 c3, code c4 is never predicted.
PROBS = np.array([[0.9, 0.1, 0.8, 0.2, 0.1], [0.2, 0.7, 0.9, 0.1, 0.1], [0.6, 0.4, 0.3, 0.9, 0.1]])
TARGETS = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]])
TRAIN_COUNTS = [5, 20, 600, 0, 8]  # c3 only in --label_file: never seen in training


def test_f1_by_frequency_bucket_matches_a_hand_computed_table() -> None:
    buckets = {bucket.label: bucket for bucket in f1_by_frequency(PROBS, TARGETS, 0.5, TRAIN_COUNTS)}
    assert list(buckets) == ["never", "1-10", "11-50", "51-500", ">500"]
    # 1-10 holds c0 (2 predicted, 1 gold, 1 right: F1 2/3) and c4 (0 predicted, 1 gold: F1 0).
    assert (buckets["1-10"].num_codes, buckets["1-10"].num_present) == (2, 2)
    assert buckets["1-10"].micro_f1 == pytest.approx(2 * 1 / (2 + 2))
    assert buckets["1-10"].macro_f1 == pytest.approx((2 / 3 + 0) / 2)
    for label in ("never", "11-50", ">500"):
        assert (buckets[label].num_codes, buckets[label].micro_f1, buckets[label].macro_f1) == (1, 1.0, 1.0)
    assert (buckets["51-500"].num_codes, buckets["51-500"].micro_f1) == (0, 0.0)


def test_no_never_seen_bucket_when_every_code_was_trained_on() -> None:
    labels = [bucket.label for bucket in f1_by_frequency(PROBS, TARGETS, 0.5, [1, 11, 51, 501, 2])]
    assert labels == ["1-10", "11-50", "51-500", ">500"]
    with pytest.raises(ValueError, match="one count per code"):
        f1_by_frequency(PROBS, TARGETS, 0.5, [1, 2])


def test_precision_recall_curve_counts_as_compute_metrics_does() -> None:
    rng = np.random.default_rng(0)
    probs, targets = rng.random((40, 7)), rng.random((40, 7)) < 0.3
    precision, recall, thresholds = precision_recall_curve(probs, targets, num_unseen_positives=3, points=11)
    for p, r, threshold in zip(precision, recall, thresholds):
        expected = compute_metrics(probs, targets, threshold, num_unseen_positives=3)
        assert (p, r) == pytest.approx((expected["micro_precision"], expected["micro_recall"]), rel=1e-9)
    assert recall[0] < 1.0  # the unseen codes are never found, even at threshold 0


def test_figures_are_pngs_that_the_hub_push_accepts(tmp_path) -> None:
    metrics = compute_metrics(PROBS, TARGETS, 0.5)
    history = [{"step": 3, "epoch": 1.0, "map": 0.5, "loss": 0.6}, {"step": 6, "epoch": 2.0, "map": 0.7, "loss": 0.4}]
    written = write_figures(tmp_path, "test", PROBS, TARGETS, metrics, TRAIN_COUNTS, history)
    assert written == FIGURE_FILES
    for name in written.values():
        with Image.open(tmp_path / name) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) >= 300
    assert scan_for_identifiers(tmp_path) == []  # readable by the scan (text chunks), nothing flagged

    no_history = tmp_path / "no-history"
    no_history.mkdir()
    assert "training_curves" not in write_figures(no_history, "validation", PROBS, TARGETS, metrics, TRAIN_COUNTS, [])


def test_quality_benchmark_draws_its_comparison(tmp_path) -> None:
    from benchmarks.quality import write_figure

    results = json.loads((Path(__file__).parent.parent / "benchmarks" / "results_quality_cpu.json").read_text())
    write_figure(results, tmp_path / "quality.png")
    with Image.open(tmp_path / "quality.png") as image:
        image.verify()
        assert image.format == "PNG"
