"""Offline metrics for multi-label ICD coding (numpy, no torch).

Definitions follow Edin et al. 2023 ("Automated Medical Coding on MIMIC-III and MIMIC-IV: A Critical Review and
Replicability Study", code: JoakimEdin/medical-coding-reproducibility), with these choices made explicit:

- A code is predicted when its probability is strictly above the threshold (`probs > threshold`, as Edin et al.).
- Micro scores and AUCs use every (note, code) pair of the label space, also codes absent from the split: a false
  positive on a code nobody in the split has is still a wrong code on a record (Edin et al. drop those columns).
- `macro_f1` averages per-code F1 over codes with >= 1 positive in the split (Edin et al.); `macro_f1_all_codes`
  averages over every code of the label space, a code with no positive scoring 0 (the code set of CAML /
  Mullenbach et al. 2018; their script takes the harmonic mean of macro precision and recall instead, which
  overstates macro F1). Hence `macro_f1_all_codes == macro_f1 * codes_present / num_codes`.
- Ranking metrics (`precision_at_k`, `recall_at_8`, `r_precision`, `map`) average over notes with >= 1 gold code
  (Edin et al. drop the others). Codes are ranked by probability; ties go to the lower code index (a stable sort),
  so results do not depend on the sort algorithm. P@k divides by min(k, num_codes), as CAML does.
- Gold codes outside the label space (seen only in validation/test) cannot be predicted: pass their count as
  `num_unseen_positives` and they are false negatives in `micro_recall` and `micro_f1`.
- A metric with nothing to average (no gold code in the split, no prediction, a single class) is 0.0, never NaN.
- `compute_metrics_by_group` scores subsets of the label space (diagnoses and procedures, as Edin et al. report them
  separately) with the same threshold: each group is a label space of its own for the micro, macro and ranking scores.
- `compute_metrics_by_training_count` scores the codes by how many training notes carry them (0, 1-5, 6-50, >50): on
  real corpora most codes are rare, and the mean over all codes hides whether a model codes anything but the frequent
  ones. There a gold code outside the label space joins its bucket as a miss in MAP too: a note's average precision
  divides by it, as trec_eval's does by a relevant document never retrieved. Codes are ranked over the whole label
  space (not within their bucket, where a bucket of one code would always rank it first).
"""

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm


TOP_K = (5, 8, 15)
METRIC_KEYS = (
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_f1",
    "macro_f1_all_codes",
    "micro_auc",
    "macro_auc",
    *(f"precision_at_{k}" for k in TOP_K),
    "recall_at_8",
    "r_precision",
    "map",
    "threshold",
    "num_notes",
    "num_codes",
)
GROUPS_KEY = "code_systems"  # a split's per-group results (diagnoses, procedures) in eval/test_results.json
TRAINING_COUNT_KEY = "by_training_count"  # a split's results by how many training notes carry each code
# Each bucket and the most training notes a code of it is carried by, in order.
TRAINING_COUNT_BUCKETS = {"0": 0, "1-5": 5, "6-50": 50, ">50": math.inf}
# Rows per block are chosen so that one (rows, num_codes) array holds about this many cells (32 MB of int64):
# ranking the full ICD-10-CM code set for a large test split stays within memory.
_BLOCK_CELLS = 1 << 22


def _check_inputs(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    """Return float `probs` and boolean `targets`, or raise naming the argument and the first bad row."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    if probs.ndim != 2 or probs.shape != targets.shape or probs.shape[1] == 0:
        raise ValueError(
            f"probs and targets must both be (num_notes, num_codes >= 1); got {probs.shape} and {targets.shape}"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    bad_probs = ~((probs >= 0) & (probs <= 1))  # also catches NaN
    if bad_probs.any():
        row = int(np.argwhere(bad_probs)[0, 0])
        raise ValueError(f"probs row {row} has values outside [0, 1] (apply a sigmoid to logits): {probs[row]}")
    bad_targets = (targets != 0) & (targets != 1)
    if bad_targets.any():
        row = int(np.argwhere(bad_targets)[0, 0])
        raise ValueError(f"targets row {row} must be multi-hot (0/1 only): {targets[row]}")
    return probs, targets.astype(bool)


def _row_blocks(num_rows: int, num_cols: int) -> list[slice]:
    step = max(1, _BLOCK_CELLS // max(1, num_cols))
    return [slice(start, start + step) for start in range(0, num_rows, step)]


def _divide(numerator, denominator) -> np.ndarray:
    """Elementwise ratio that is 0 where the denominator is 0 (an undefined score counts as 0, never NaN)."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def _f1(true_positives, predicted, gold) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + gold), elementwise."""
    return _divide(2 * np.asarray(true_positives), np.asarray(predicted) + np.asarray(gold))


def _threshold_metrics(probs: np.ndarray, targets: np.ndarray, threshold: float, num_unseen: int) -> dict:
    """Micro precision/recall/F1 and both macro F1s of the hard predictions `probs > threshold`."""
    # np.float64 makes the comparison happen in float64 whatever the probs dtype, exactly as in tune_threshold
    predictions = probs > np.float64(threshold)
    true_positives = (predictions & targets).sum(axis=0)
    predicted, gold = predictions.sum(axis=0), targets.sum(axis=0)
    tp, all_gold = true_positives.sum(), gold.sum() + num_unseen
    per_code_f1 = _f1(true_positives, predicted, gold)
    present = gold > 0
    return {
        "micro_precision": float(_divide(tp, predicted.sum())),
        "micro_recall": float(_divide(tp, all_gold)),
        "micro_f1": float(_f1(tp, predicted.sum(), all_gold)),
        "macro_f1": float(per_code_f1[present].mean()) if present.any() else 0.0,
        "macro_f1_all_codes": float(per_code_f1.mean()),
    }


def _pairs_ranked_right(sorted_positives: np.ndarray, negatives: np.ndarray) -> float:
    """Count of (positive, negative) pairs with the positive scored higher, ties counting 1/2 (Mann-Whitney U)."""
    below = np.searchsorted(sorted_positives, negatives, side="left")
    not_above = np.searchsorted(sorted_positives, negatives, side="right")
    return float((sorted_positives.size - not_above).sum() + 0.5 * (not_above - below).sum())


def _auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC of one binary problem, equal to sklearn's roc_auc_score (ties included)."""
    return _pairs_ranked_right(np.sort(positives), negatives) / (positives.size * negatives.size)


def _micro_auc(probs: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC over all (note, code) pairs, streamed over row blocks instead of sorting num_notes * num_codes scores."""
    positives = np.sort(probs[targets])
    num_negatives = targets.size - positives.size
    if positives.size == 0 or num_negatives == 0:
        return 0.0
    right = sum(
        _pairs_ranked_right(positives, probs[block][~targets[block]]) for block in _row_blocks(*probs.shape)
    )
    return right / (positives.size * num_negatives)


def _macro_auc(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean ROC AUC over codes that have both a positive and a negative note in the split."""
    gold = targets.sum(axis=0)
    codes = np.flatnonzero((gold > 0) & (gold < targets.shape[0]))
    if codes.size == 0:
        return 0.0
    aucs = [
        _auc(probs[targets[:, code], code], probs[~targets[:, code], code])
        for code in tqdm(codes, desc="macro AUC", leave=False, disable=None)
    ]
    return float(np.mean(aucs))


def _ranked(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each note's codes ranked by score: the column order, whether each ranked code is gold (`hits`) and how many gold
    codes are among the top r (`found[:, r - 1]`)."""
    # stable sort of the negated scores: descending, ties broken by the lower code index
    order = np.argsort(-probs, axis=1, kind="stable")
    hits = np.take_along_axis(targets, order, axis=1)
    return order, hits, hits.cumsum(axis=1)


def _ranking_sums(probs: np.ndarray, targets: np.ndarray) -> tuple[dict[str, float], int]:
    """Per-note ranking scores summed over notes with >= 1 gold code, and the number of such notes."""
    num_codes = probs.shape[1]
    ranks = np.arange(1, num_codes + 1)
    sums = dict.fromkeys([f"precision_at_{k}" for k in TOP_K] + ["recall_at_8", "r_precision", "map"], 0.0)
    num_ranked = 0
    for block in tqdm(_row_blocks(*probs.shape), desc="ranking metrics", leave=False, disable=None):
        gold = targets[block].sum(axis=1)
        keep = gold > 0
        gold = gold[keep]
        _, hits, found = _ranked(probs[block][keep], targets[block][keep])
        for k in TOP_K:
            sums[f"precision_at_{k}"] += found[:, min(k, num_codes) - 1].sum() / min(k, num_codes)
        sums["recall_at_8"] += (found[:, min(8, num_codes) - 1] / gold).sum()
        sums["r_precision"] += (found[np.arange(gold.size), gold - 1] / gold).sum()
        # average precision: mean over the gold codes of the precision at their rank
        sums["map"] += ((hits * found / ranks).sum(axis=1) / gold).sum()
        num_ranked += gold.size
    return sums, num_ranked


def compute_metrics(probs, targets, threshold: float = 0.5, num_unseen_positives: int = 0) -> dict[str, float | int]:
    """Every metric of `METRIC_KEYS` for one split, as plain Python numbers (JSON-ready, never NaN).

    Args:
        probs: (num_notes, num_codes) probabilities, e.g. the sigmoid of the model's logits.
        targets: (num_notes, num_codes) multi-hot gold codes over the same label space.
        threshold: a code is predicted when its probability is strictly above it (tune it with `tune_threshold`
            on validation, never on test).
        num_unseen_positives: gold codes of this split outside the label space; counted as false negatives.
    """
    probs, targets = _check_inputs(probs, targets)
    if num_unseen_positives < 0:
        raise ValueError(f"num_unseen_positives must be >= 0, got {num_unseen_positives}")
    results = _threshold_metrics(probs, targets, threshold, num_unseen_positives)
    results["micro_auc"] = _micro_auc(probs, targets)
    results["macro_auc"] = _macro_auc(probs, targets)
    sums, num_ranked = _ranking_sums(probs, targets)
    results.update({key: float(_divide(total, num_ranked)) for key, total in sums.items()})
    results.update(threshold=float(threshold), num_notes=int(probs.shape[0]), num_codes=int(probs.shape[1]))
    return {key: results[key] for key in METRIC_KEYS}


def compute_metrics_by_group(
    probs,
    targets,
    groups: Mapping[str, Sequence[int]],
    threshold: float = 0.5,
    num_unseen_positives: Mapping[str, int] | None = None,
) -> dict[str, dict[str, float | int]]:
    """`compute_metrics` of each group of code columns (`{"diagnoses": [0, 2], "procedures": [1]}`).

    `num_unseen_positives` gives each group's gold codes outside the label space (false negatives of that group).
    """
    probs, targets = np.asarray(probs), np.asarray(targets)
    unseen = num_unseen_positives or {}
    return {
        name: compute_metrics(probs[:, list(columns)], targets[:, list(columns)], threshold, unseen.get(name, 0))
        for name, columns in groups.items()
    }


def training_count_buckets(codes: Iterable[str], train_counts: Mapping[str, int]) -> dict[str, str]:
    """Each code's bucket of `TRAINING_COUNT_BUCKETS` ("0", "1-5", "6-50", ">50") by how many training notes carry it
    (`train_counts`, e.g. `Notes.code_counts` of the training split; a code it lacks has 0)."""
    return {
        code: next(bucket for bucket, most in TRAINING_COUNT_BUCKETS.items() if train_counts.get(code, 0) <= most)
        for code in codes
    }


def compute_metrics_by_training_count(
    probs,
    targets,
    labels: Sequence[str],
    note_codes: Iterable[Sequence[str]],
    train_counts: Mapping[str, int],
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """`{bucket: {"map", "micro_f1", "share"}}` for each bucket of `training_count_buckets`, every bucket listed.

    `labels` names the columns; `note_codes` are each note's gold codes, all of them: those outside `labels` join their
    bucket as misses. `map` is each note's average precision over its gold codes of the bucket, codes ranked over the
    whole label space as a coder sees them (a note's MAP is the share-weighted sum of its buckets'), averaged over the
    notes with such codes; `micro_f1` counts the bucket's (note, code) pairs at `threshold`; `share` is the bucket's
    part of the split's gold code occurrences. A bucket without gold codes scores 0.
    """
    probs, targets = _check_inputs(probs, targets)
    if len(labels) != probs.shape[1]:
        raise ValueError(f"{len(labels)} labels for {probs.shape[1]} columns of probs")
    buckets = list(TRAINING_COUNT_BUCKETS)
    label_index = {code: column for column, code in enumerate(labels)}
    outside = [[code for code in codes if code not in label_index] for codes in note_codes]
    if len(outside) != probs.shape[0]:
        raise ValueError(f"note_codes has {len(outside)} notes, probs {probs.shape[0]}")
    bucket_of = training_count_buckets({*labels, *(code for codes in outside for code in codes)}, train_counts)
    column_bucket = np.array([buckets.index(bucket_of[code]) for code in labels], dtype=np.int64)
    unseen = np.zeros((probs.shape[0], len(buckets)), dtype=np.int64)  # gold codes outside the label space
    for row, codes in enumerate(outside):
        for code in codes:
            unseen[row, buckets.index(bucket_of[code])] += 1
    gold = unseen.sum(axis=0)  # per bucket; the label space's gold codes are added block by block
    precision_sums, num_ranked = np.zeros(len(buckets)), np.zeros(len(buckets), dtype=np.int64)
    true_positives, predicted = np.zeros(len(buckets), dtype=np.int64), np.zeros(len(buckets), dtype=np.int64)
    ranks = np.arange(1, probs.shape[1] + 1)
    for block in _row_blocks(*probs.shape):
        order, hits, found = _ranked(probs[block], targets[block])
        precision = hits * found / ranks  # at each gold code's rank, else 0
        ranked_bucket = column_bucket[order]
        predictions = probs[block] > np.float64(threshold)
        for index in range(len(buckets)):
            columns = column_bucket == index
            note_gold = targets[block][:, columns].sum(axis=1) + unseen[block, index]
            average_precision = _divide(np.where(ranked_bucket == index, precision, 0).sum(axis=1), note_gold)
            precision_sums[index] += average_precision.sum()
            num_ranked[index] += (note_gold > 0).sum()
            gold[index] += targets[block][:, columns].sum()
            true_positives[index] += (predictions[:, columns] & targets[block][:, columns]).sum()
            predicted[index] += predictions[:, columns].sum()
    shares = gold / max(int(gold.sum()), 1)  # no gold code at all: every share 0
    return {
        bucket: {
            "map": float(_divide(precision_sums[index], num_ranked[index])),
            "micro_f1": float(_f1(true_positives[index], predicted[index], gold[index])),
            "share": float(shares[index]),
        }
        for index, bucket in enumerate(buckets)
    }


def _count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t (sorted ascending), how many of `values` are > t; one pass over the values."""
    values = values.reshape(values.shape[0], -1)
    # searchsorted(side="left") = number of thresholds strictly below the value = thresholds it is above
    counts = np.zeros(thresholds.size + 1, dtype=np.int64)
    for block in _row_blocks(*values.shape):
        counts += np.bincount(np.searchsorted(thresholds, values[block].ravel(), side="left"), minlength=counts.size)
    return values.size - np.cumsum(counts)[:-1]


def tune_threshold(probs, targets, grid: int = 100, num_unseen_positives: int = 0) -> tuple[float, float]:
    """The global threshold in `np.linspace(0, 1, grid)` with the best micro F1, and that F1 (Edin et al.).

    Use on the validation split only. Ties go to the lowest threshold. The returned F1 equals
    `compute_metrics(probs, targets, threshold, num_unseen_positives)["micro_f1"]`.
    """
    probs, targets = _check_inputs(probs, targets)
    if grid < 2:
        raise ValueError(f"grid must be >= 2 points, got {grid}")
    thresholds = np.linspace(0.0, 1.0, grid)
    predicted = _count_above(probs, thresholds)
    true_positives = _count_above(probs[targets], thresholds)
    f1 = _f1(true_positives, predicted, targets.sum() + num_unseen_positives)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def binary_cross_entropy(probs, targets) -> float:
    """Mean BCE per (note, code) pair: the loss training minimises, on a split (scores clipped to [1e-7, 1 - 1e-7]).
    Computed in row blocks, so the full ICD-10-CM code set needs no float64 copy of all scores."""
    probs, targets = _check_inputs(probs, targets)
    total = 0.0
    for block in _row_blocks(*probs.shape):
        clipped = np.clip(probs[block].astype(np.float64), 1e-7, 1 - 1e-7)
        total -= float(np.where(targets[block], np.log(clipped), np.log1p(-clipped)).sum())
    return total / probs.size


def _format_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{value:.4f}"


def format_table(results: dict[str, dict]) -> str:
    """A markdown table with one row per metric and one column per split or model, for scripts to print.

    A split's nested groups (`{"test": {..., "code_systems": {"diagnoses": {...}}}}`) become columns of their own
    ("test diagnoses"); other nested results (`TRAINING_COUNT_KEY`) are left out: they are tables of their own.
    """
    results = {
        f"{name} {group}" if group else name: metrics
        for name, result in results.items()
        for group, metrics in [("", result), *(result.get(GROUPS_KEY) or {}).items()]
    }
    results = {
        name: {k: v for k, v in metrics.items() if not isinstance(v, Mapping)} for name, metrics in results.items()
    }
    columns = list(results)
    present = dict.fromkeys(key for result in results.values() for key in result)
    keys = [key for key in METRIC_KEYS if key in present] + [key for key in present if key not in METRIC_KEYS]
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_format_value(results[c].get(key)) for c in columns) + " |")
    return "\n".join(lines)


__all__ = [
    "GROUPS_KEY",
    "METRIC_KEYS",
    "TOP_K",
    "TRAINING_COUNT_BUCKETS",
    "TRAINING_COUNT_KEY",
    "binary_cross_entropy",
    "compute_metrics",
    "compute_metrics_by_group",
    "compute_metrics_by_training_count",
    "format_table",
    "training_count_buckets",
    "tune_threshold",
]
