"""Metrics against hand-computed values on small fixed examples (the arithmetic is in the comments)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from modeling_bertxml.evaluation import metrics
from modeling_bertxml.evaluation.metrics import (
    METRIC_KEYS,
    binary_cross_entropy,
    compute_metrics,
    format_table,
    tune_threshold,
)
from tests.conftest import SUBPROCESS_TIMEOUT_S


# Codes A, B, C, D. D has no positive in this split; note 2 has no gold code.
PROBS = np.array(
    [
        [0.9, 0.6, 0.2, 0.1],  # gold A, C
        [0.3, 0.8, 0.7, 0.4],  # gold B
        [0.1, 0.2, 0.3, 0.7],  # no gold code
    ]
)
TARGETS = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])

# At threshold 0.5 the predictions are {A, B} for note 0, {B, C} for note 1, {D} for note 2:
# TP = 2 (0A, 1B), predicted = 5, gold = 3 (0A, 0C, 1B).
# Per code F1 = 2 TP / (predicted + gold): A 2/(1+1) = 1, B 2/(2+1) = 2/3, C 0/(1+1) = 0, D 0 (no positive).
# Micro AUC: positives 0.9, 0.8, 0.2 against 9 negatives {0.6, 0.1, 0.3, 0.7, 0.4, 0.1, 0.2, 0.3, 0.7}:
#   0.9 and 0.8 beat all 9, 0.2 beats the two 0.1 and ties one 0.2 -> (9 + 9 + 2.5) / 27 = 41/54.
# Macro AUC over A, B, C (D has one class): A 0.9 > {0.3, 0.1} = 1, B 0.8 > {0.6, 0.2} = 1, C 0.2 < {0.7, 0.3} = 0.
# Ranking over notes 0 and 1 (note 2 has no gold code): with 4 codes P@k divides by min(k, 4) = 4.
#   note 0 ranks A B C D -> hits 1 0 1 0; note 1 ranks B C D A -> hits 1 0 0 0.
EXPECTED = {
    "micro_precision": 2 / 5,
    "micro_recall": 2 / 3,
    "micro_f1": 2 * 2 / (5 + 3),
    "macro_f1": (1 + 2 / 3 + 0) / 3,  # codes present: A, B, C
    "macro_f1_all_codes": (1 + 2 / 3 + 0 + 0) / 4,  # every code, D counts 0
    "micro_auc": 41 / 54,
    "macro_auc": (1 + 1 + 0) / 3,
    "precision_at_5": (2 / 4 + 1 / 4) / 2,
    "precision_at_8": (2 / 4 + 1 / 4) / 2,
    "precision_at_15": (2 / 4 + 1 / 4) / 2,
    "recall_at_8": (2 / 2 + 1 / 1) / 2,
    "r_precision": (1 / 2 + 1 / 1) / 2,  # note 0: top 2 = A B, 1 hit of R = 2; note 1: top 1 = B
    "map": ((1 / 1 + 2 / 3) / 2 + 1 / 1) / 2,  # note 0: gold at ranks 1 and 3; note 1: at rank 1
    "threshold": 0.5,
    "num_notes": 3,
    "num_codes": 4,
}


def test_compute_metrics_matches_hand_computed_values():
    results = compute_metrics(PROBS, TARGETS, threshold=0.5)
    assert list(results) == list(METRIC_KEYS)
    assert results == pytest.approx(EXPECTED)
    assert isinstance(results["num_notes"], int) and isinstance(results["micro_f1"], float)


def test_macro_all_codes_is_macro_scaled_by_present_codes():
    results = compute_metrics(PROBS, TARGETS, threshold=0.5)
    # 5/12 = 5/9 * 3/4: the absent code D adds a 0 to the average.
    assert results["macro_f1_all_codes"] < results["macro_f1"]
    assert results["macro_f1_all_codes"] == pytest.approx(results["macro_f1"] * 3 / 4)


def test_note_without_gold_codes_counts_for_micro_only():
    with_empty = compute_metrics(PROBS, TARGETS, threshold=0.5)
    without_empty = compute_metrics(PROBS[:2], TARGETS[:2], threshold=0.5)
    # Note 2's prediction D is a false positive: micro precision 2/5 with it, 2/4 without.
    assert without_empty["micro_precision"] == pytest.approx(2 / 4)
    # Ranking metrics average over notes with a gold code only; with note 2 counted P@5 would be (2/4 + 1/4 + 0) / 3.
    for key in ("precision_at_5", "precision_at_8", "precision_at_15", "recall_at_8", "r_precision", "map"):
        assert with_empty[key] == pytest.approx(without_empty[key]), key


@pytest.mark.parametrize(
    "num_unseen, recall, f1",
    [
        (0, 2 / 3, 4 / 8),  # TP 2 of 3 gold
        (2, 2 / 5, 4 / 10),  # 2 unseen gold codes are misses: TP 2 of 5, F1 = 2*2 / (5 predicted + 5 gold)
    ],
)
def test_unseen_codes_are_false_negatives(num_unseen, recall, f1):
    results = compute_metrics(PROBS, TARGETS, threshold=0.5, num_unseen_positives=num_unseen)
    assert results["micro_recall"] == pytest.approx(recall)
    assert results["micro_f1"] == pytest.approx(f1)
    assert results["micro_precision"] == pytest.approx(2 / 5)  # precision does not see unseen codes


# One note, 10 codes; codes 1..6 tie at 0.5. Ties go to the lower code index, so the top 5 is codes 0, 1, 2, 3, 4.
TIED = [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1]


@pytest.mark.parametrize(
    "gold, key, expected",
    [
        ((0, 6), "precision_at_5", 1 / 5),  # top 5 = 0 1 2 3 4: only code 0; code 6 loses the tie
        ((0, 1), "precision_at_5", 2 / 5),  # code 1 wins the tie against 2..6
        ((0, 6), "precision_at_8", 2 / 8),  # top 8 = 0..7 holds both
        ((0, 6), "precision_at_15", 2 / 10),  # only 10 codes: divide by min(15, 10)
        ((0, 6), "recall_at_8", 2 / 2),
        ((0, 6), "r_precision", 1 / 2),  # top R = 2 is codes 0 1
        ((0, 6), "map", (1 / 1 + 2 / 7) / 2),  # gold at ranks 1 and 7
    ],
)
def test_ranking_ties_go_to_lower_code_index(gold, key, expected):
    targets = np.zeros((1, 10), dtype=int)
    targets[0, list(gold)] = 1
    assert compute_metrics(np.array([TIED]), targets)[key] == pytest.approx(expected)


def test_threshold_is_strict():
    # A probability equal to the threshold is not a prediction: recall 0/1.
    assert compute_metrics([[0.5]], [[1]], threshold=0.5)["micro_recall"] == 0.0
    assert compute_metrics([[0.5]], [[1]], threshold=0.49)["micro_recall"] == 1.0


def test_tune_threshold_picks_lowest_best_grid_point():
    # One code; gold notes score 0.8 and 0.35, the others 0.3 and 0.1. Thresholds k/99 with 0.3 <= k/99 < 0.35
    # (k = 30..34) keep exactly the gold notes (F1 = 1); 29/99 = 0.293 also takes 0.3 (F1 = 2*2/(3+2) = 0.8);
    # the default 0.5 keeps only 0.8 (F1 = 2*1/(1+2) = 2/3). Ties go to the lowest: 30/99.
    probs = np.array([[0.8], [0.35], [0.3], [0.1]])
    targets = np.array([[1], [1], [0], [0]])
    threshold, best_f1 = tune_threshold(probs, targets)
    assert threshold == pytest.approx(30 / 99)
    assert best_f1 == pytest.approx(1.0)
    assert compute_metrics(probs, targets, 0.5)["micro_f1"] == pytest.approx(2 / 3)


def test_tune_threshold_is_validation_optimal_over_the_grid():
    rng = np.random.default_rng(0)
    targets = rng.random((30, 12)) < 0.2
    probs = np.clip(rng.random((30, 12)) * 0.7 + targets * 0.25, 0, 1).astype(np.float32)
    threshold, best_f1 = tune_threshold(probs, targets, num_unseen_positives=3)
    by_brute_force = [
        compute_metrics(probs, targets, t, num_unseen_positives=3)["micro_f1"] for t in np.linspace(0, 1, 100)
    ]
    assert best_f1 == pytest.approx(max(by_brute_force))
    assert compute_metrics(probs, targets, threshold, num_unseen_positives=3)["micro_f1"] == best_f1


@pytest.mark.parametrize("targets", [np.zeros((2, 3), dtype=int), np.ones((2, 3), dtype=int)])
def test_undefined_metrics_are_zero_not_nan(targets):
    # No gold code at all (or no negative): AUCs, macro F1 and ranking metrics have nothing to average.
    results = compute_metrics(np.full((2, 3), 0.4), targets, threshold=0.5)
    json.dumps(results, allow_nan=False)
    assert results["micro_auc"] == 0.0 and results["macro_auc"] == 0.0
    assert all(0.0 <= results[key] <= 1.0 for key in METRIC_KEYS[:-2])


def test_row_blocks_give_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(1)
    targets = rng.random((25, 9)) < 0.3
    probs = rng.random((25, 9)).round(1)  # rounding makes ties
    whole, whole_tuned = compute_metrics(probs, targets, 0.4), tune_threshold(probs, targets)
    monkeypatch.setattr(metrics, "_BLOCK_CELLS", 20)  # 2 rows per block
    assert compute_metrics(probs, targets, 0.4) == pytest.approx(whole)
    assert tune_threshold(probs, targets) == pytest.approx(whole_tuned)


def test_agrees_with_scikit_learn_on_random_data():
    rng = np.random.default_rng(2)
    targets = (rng.random((40, 15)) < 0.2).astype(int)
    probs = rng.random((40, 15)).round(2)
    results = compute_metrics(probs, targets, 0.5)
    present = targets.sum(axis=0) > 0
    two_classes = present & (targets.sum(axis=0) < 40)
    assert results["micro_f1"] == pytest.approx(f1_score(targets, probs > 0.5, average="micro"))
    assert results["macro_f1"] == pytest.approx(
        f1_score(targets[:, present], probs[:, present] > 0.5, average="macro", zero_division=0)
    )
    assert results["micro_auc"] == pytest.approx(roc_auc_score(targets.ravel(), probs.ravel()))
    assert results["macro_auc"] == pytest.approx(roc_auc_score(targets[:, two_classes], probs[:, two_classes]))
    untied = rng.random((40, 15))  # sklearn groups tied scores, so compare MAP without ties
    with_gold = targets.sum(axis=1) > 0
    expected_map = np.mean([average_precision_score(t, p) for t, p in zip(targets[with_gold], untied[with_gold])])
    assert compute_metrics(untied, targets)["map"] == pytest.approx(expected_map)


@pytest.mark.parametrize(
    "probs, targets, message",
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), "must both be"),
        (np.array([[0.1, 1.5]]), np.array([[0, 1]]), "probs row 0 .* outside"),
        (np.array([[0.1, 0.2], [np.nan, 0.2]]), np.array([[0, 1], [0, 1]]), "probs row 1"),
        (np.array([[0.1, 0.2], [0.3, 0.2]]), np.array([[0, 1], [2, 1]]), "targets row 1 .* multi-hot"),
    ],
)
def test_bad_input_names_argument_and_row(probs, targets, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(probs, targets)


def test_format_table():
    table = format_table({"validation": EXPECTED, "test": {"micro_f1": 0.25, "extra": 3}})
    lines = table.splitlines()
    assert lines[0] == "| metric | validation | test |"
    assert lines[1] == "|---|---:|---:|"
    assert "| micro_f1 | 0.5000 | 0.2500 |" in lines
    assert "| num_codes | 4 |  |" in lines  # ints as ints, a missing value left blank
    assert lines[-1] == "| extra |  | 3 |"  # keys outside METRIC_KEYS come last
    assert len(lines) == 2 + len(METRIC_KEYS) + 1


def test_evaluate_module_loads_offline_and_matches(tmp_path):
    # A fresh process, so HF_HUB_OFFLINE is read at import; HF_HOME keeps the module cache out of the home directory.
    script = textwrap.dedent(
        """
        import json, evaluate, numpy as np
        from modeling_bertxml.evaluation.metrics_evaluate import MULTILABEL_ICD_SCRIPT
        probs, targets = np.array(json.loads(input())), np.array(json.loads(input()))
        metric = evaluate.load(MULTILABEL_ICD_SCRIPT)
        whole = metric.compute(predictions=probs, references=targets, threshold=0.5, num_unseen_positives=2)
        metric.add_batch(predictions=probs[:1], references=targets[:1])
        metric.add_batch(predictions=probs[1:], references=targets[1:])
        print(json.dumps([whole, metric.compute(threshold=0.5, num_unseen_positives=2)]))
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=f"{json.dumps(PROBS.tolist())}\n{json.dumps(TARGETS.tolist())}\n",
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=SUBPROCESS_TIMEOUT_S, check=True,
    )
    whole, batched = json.loads(out.stdout.splitlines()[-1])
    expected = compute_metrics(PROBS, TARGETS, threshold=0.5, num_unseen_positives=2)
    assert whole == expected and batched == expected


def test_metrics_by_group_score_each_kind_of_code_on_its_own():
    # Codes: 0, 1 diagnoses; 2 a procedure. At 0.5: note 0 predicts {0, 2}, note 1 predicts {1}.
    probs = np.array([[0.9, 0.2, 0.8], [0.1, 0.7, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 1]])
    groups = {"diagnoses": [0, 1], "procedures": [2]}
    results = metrics.compute_metrics_by_group(probs, targets, groups, 0.5, {"diagnoses": 2})
    diagnoses, procedures = results["diagnoses"], results["procedures"]
    # diagnoses: TP 2 of 2 predicted; gold 2 + 2 unseen -> recall 2/4, F1 = 2*2 / (2 + 4)
    assert (diagnoses["micro_precision"], diagnoses["micro_recall"]) == (1.0, 0.5)
    assert diagnoses["micro_f1"] == pytest.approx(2 / 3, rel=1e-9)
    assert diagnoses["num_codes"] == 2 and diagnoses["map"] == 1.0
    # procedures: note 0's prediction is wrong, note 1's code is missed; ranked alone, note 1's code is first
    assert (procedures["micro_precision"], procedures["micro_recall"], procedures["micro_f1"]) == (0.0, 0.0, 0.0)
    assert (procedures["map"], procedures["precision_at_5"], procedures["num_codes"]) == (1.0, 1.0, 1)
    assert procedures == compute_metrics(probs[:, [2]], targets[:, [2]], 0.5)


def test_format_table_shows_groups_as_columns():
    results = {"test": {"micro_f1": 0.5, "code_systems": {"diagnoses": {"micro_f1": 0.25}}}}
    table = format_table(results).splitlines()
    assert table[0] == "| metric | test | test diagnoses |"
    assert table[2] == "| micro_f1 | 0.5000 | 0.2500 |"


def test_binary_cross_entropy_is_the_mean_loss_per_note_and_code() -> None:
    probs, targets = np.array([[0.9, 0.2], [0.5, 0.0]]), np.array([[1, 0], [1, 0]])
    expected = -(np.log(0.9) + np.log(0.8) + np.log(0.5) + np.log(1 - 1e-7)) / 4  # 0 is clipped, never log(0)
    assert binary_cross_entropy(probs, targets) == pytest.approx(expected, rel=1e-9)


def test_evaluate_module_names_the_pip_package_when_bert_xml_is_missing(tmp_path):
    # evaluate checks a script's imports before running it; its message must say what to pip install (bert-xml), not
    # the import name (modeling_bertxml), which is no package on PyPI.
    from modeling_bertxml.evaluation.metrics_evaluate import MULTILABEL_ICD_SCRIPT

    script = textwrap.dedent(
        """
        import sys, evaluate
        sys.modules["modeling_bertxml"] = None  # as in an environment without bert-xml
        try:
            evaluate.load(sys.argv[1])
        except ImportError as error:
            print(error)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", script, MULTILABEL_ICD_SCRIPT],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=SUBPROCESS_TIMEOUT_S, check=True,
    )  # fmt: skip
    assert "pip install bert-xml" in out.stdout, out.stdout + out.stderr


def test_evaluate_module_has_a_metric_card():
    from huggingface_hub import RepoCard

    from modeling_bertxml.evaluation.metrics_evaluate import MULTILABEL_ICD_SCRIPT

    card = RepoCard.load(os.path.join(os.path.dirname(MULTILABEL_ICD_SCRIPT), "README.md"))
    assert {"evaluate", "metric"} <= set(card.data.tags) and card.data.description
    # Every score the module returns and every argument it takes is documented.
    assert all(f"`{key}`" in card.text for key in METRIC_KEYS)
    assert all(f"**{name}**" in card.text for name in ("predictions", "references", "threshold", "num_unseen_positives"))


@pytest.mark.parametrize(
    "count, bucket", [(0, "0"), (1, "1-5"), (5, "1-5"), (6, "6-50"), (50, "6-50"), (51, ">50"), (10_000, ">50")]
)
def test_training_count_buckets_bounds(count, bucket):
    assert metrics.training_count_buckets(["A"], {"A": count}) == {"A": bucket}
    assert metrics.training_count_buckets(["never seen"], {"A": count}) == {"never seen": "0"}


# One code in each bucket, two in ">50". Training notes: A 0 (a --label_file code), B 3, C 20, D 100, E 60; outside the
# label space: X (never in training) and Y (2 training notes, below a --min_code_count).
BUCKET_LABELS = ["A", "B", "C", "D", "E"]
BUCKET_COUNTS = {"B": 3, "C": 20, "D": 100, "E": 60, "Y": 2}
BUCKET_PROBS = np.array(
    [
        [0.9, 0.2, 0.6, 0.8, 0.95],  # gold A, D, X
        [0.1, 0.3, 0.7, 0.4, 0.1],  # gold B, Y
        [0.2, 0.1, 0.9, 0.6, 0.1],  # gold C, D
    ]
)
BUCKET_TARGETS = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]])
BUCKET_GOLD = [["A", "D", "X"], ["B", "Y"], ["C", "D"]]


def test_metrics_by_training_count_score_each_bucket_with_unseen_codes_as_misses():
    results = metrics.compute_metrics_by_training_count(
        BUCKET_PROBS, BUCKET_TARGETS, BUCKET_LABELS, BUCKET_GOLD, BUCKET_COUNTS, threshold=0.5
    )
    assert list(results) == ["0", "1-5", "6-50", ">50"]
    # Gold occurrences: "0" A + X = 2, "1-5" B + Y = 2, "6-50" C = 1, ">50" D twice = 2; 7 in all.
    # Rankings: note 0 E A D C B (gold A, D at ranks 2, 3: precision 1/2, 2/3); note 1 C D B A E (B at rank 3: 1/3);
    # note 2 C D A B E (C, D at ranks 1, 2: precision 1, 1).
    # "0": only note 0 has such codes, A at precision 1/2 and X never ranked: AP = (1/2 + 0) / 2. At 0.5, A is
    # predicted on note 0 only (right): F1 = 2*1 / (1 predicted + 2 gold).
    assert results["0"] == pytest.approx({"map": 1 / 4, "micro_f1": 2 / 3, "share": 2 / 7})
    # "1-5": note 1, B at 1/3 and Y never ranked: AP = (1/3) / 2; B is never above 0.5.
    assert results["1-5"] == pytest.approx({"map": 1 / 6, "micro_f1": 0.0, "share": 2 / 7})
    # "6-50": note 2, C first; C is predicted on all three notes, gold on one: F1 = 2*1 / (3 + 1).
    assert results["6-50"] == pytest.approx({"map": 1.0, "micro_f1": 1 / 2, "share": 1 / 7})
    # ">50": D at 2/3 on note 0, at 1 on note 2; predicted D0, E0, D2 with gold D0, D2: F1 = 2*2 / (3 + 2).
    assert results[">50"] == pytest.approx({"map": (2 / 3 + 1) / 2, "micro_f1": 4 / 5, "share": 2 / 7})


def test_a_notes_map_is_the_share_weighted_sum_of_its_buckets():
    probs, targets, gold = BUCKET_PROBS[:1], BUCKET_TARGETS[:1], [["A", "D"]]  # note 0 without X
    results = metrics.compute_metrics_by_training_count(probs, targets, BUCKET_LABELS, gold, BUCKET_COUNTS)
    weighted = sum(bucket["share"] * bucket["map"] for bucket in results.values())
    assert weighted == pytest.approx(compute_metrics(probs, targets)["map"]) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_metrics_by_training_count_bucket_outside_the_label_space_scores_zero():
    # The label space of the training codes: A (never in training) is outside it, like X, so bucket "0" has no column.
    columns = [1, 2, 3, 4]
    results = metrics.compute_metrics_by_training_count(
        BUCKET_PROBS[:, columns], BUCKET_TARGETS[:, columns], BUCKET_LABELS[1:], BUCKET_GOLD, BUCKET_COUNTS, 0.5
    )
    assert results["0"] == {"map": 0.0, "micro_f1": 0.0, "share": pytest.approx(2 / 7)}
    assert results["6-50"]["map"] == 1.0  # the other buckets do not change


def test_metrics_by_training_count_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="4 labels for 5 columns"):
        metrics.compute_metrics_by_training_count(BUCKET_PROBS, BUCKET_TARGETS, BUCKET_LABELS[1:], BUCKET_GOLD, {})
    with pytest.raises(ValueError, match="note_codes has 2 notes, probs 3"):
        metrics.compute_metrics_by_training_count(BUCKET_PROBS, BUCKET_TARGETS, BUCKET_LABELS, BUCKET_GOLD[:2], {})


def test_format_table_leaves_out_the_training_count_breakdown():
    results = {"test": {"micro_f1": 0.5, metrics.TRAINING_COUNT_KEY: {"0": {"map": 0.0}}}}
    assert format_table(results).splitlines() == ["| metric | test |", "|---|---:|", "| micro_f1 | 0.5000 |"]
