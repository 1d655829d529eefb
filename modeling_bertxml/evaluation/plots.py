"""The model card's figures (PNG), drawn by `train.py` into the model folder.

- micro precision-recall curve of the evaluation split, with the tuned threshold marked;
- micro and macro F1 by how often a code was seen in training (1-10, 11-50, 51-500, >500 notes): where a model fails;
- validation MAP and loss at each evaluation (per epoch by default);
and benchmarks/quality.py's comparison of BERT-XML with the baselines of the same run.

Every figure is drawn from numbers only: scores, 0/1 targets, per-code training counts and per-evaluation metrics. No
function here takes a note, so no note text can reach a figure. matplotlib's object API on the Agg canvas: no display,
and no pyplot state or backend switch in the caller's process.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import _check_inputs, _count_above, _divide, _f1, _row_blocks

# (label, fewest, most) training notes with the code; a code of --label_file never seen in training gets its own bar.
FREQUENCY_BUCKETS = (("1-10", 1, 10), ("11-50", 11, 50), ("51-500", 51, 500), (">500", 501, math.inf))
UNSEEN_BUCKET = ("never", 0, 0)
CURVE_POINTS = 201
FIGURE_FILES = {
    "precision_recall": "precision_recall.png",
    "f1_by_frequency": "f1_by_code_frequency.png",
    "training_curves": "training_curves.png",
}


@dataclass
class Bucket:
    label: str
    num_codes: int  # codes of the label space in this frequency range
    num_present: int  # of which have at least one gold note in the evaluated split
    micro_f1: float
    macro_f1: float  # over the present codes


def precision_recall_curve(
    probs, targets, num_unseen_positives: int = 0, points: int = CURVE_POINTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Micro precision and recall at `points` thresholds in [0, 1], counted as `compute_metrics` does (a code is
    predicted when its score is strictly above; gold codes outside the label space are misses)."""
    probs, targets = _check_inputs(probs, targets)
    thresholds = np.linspace(0.0, 1.0, points)
    predicted, true_positives = _count_above(probs, thresholds), _count_above(probs[targets], thresholds)
    gold = np.full(points, targets.sum() + num_unseen_positives)
    return _divide(true_positives, predicted), _divide(true_positives, gold), thresholds


def f1_by_frequency(probs, targets, threshold: float, train_counts: Sequence[int]) -> list[Bucket]:
    """Micro and macro F1 of the codes in each training-frequency bucket (`train_counts[i]`: notes with code i)."""
    probs, targets = _check_inputs(probs, targets)
    counts = np.asarray(train_counts)
    if counts.shape != (probs.shape[1],):
        raise ValueError(f"train_counts needs one count per code ({probs.shape[1]}), got shape {counts.shape}")
    true_positives, predicted = np.zeros(counts.size, np.int64), np.zeros(counts.size, np.int64)
    for block in _row_blocks(*probs.shape):  # bounded memory for the full ICD-10-CM code set
        above = probs[block] > np.float64(threshold)
        predicted += above.sum(0)
        true_positives += (above & targets[block]).sum(0)
    gold = targets.sum(0)
    buckets = []
    for label, low, high in (UNSEEN_BUCKET, *FREQUENCY_BUCKETS):
        codes = (counts >= low) & (counts <= high)
        if label == UNSEEN_BUCKET[0] and not codes.any():
            continue
        present = codes & (gold > 0)
        micro = _f1(true_positives[codes].sum(), predicted[codes].sum(), gold[codes].sum())
        macro = _f1(true_positives[present], predicted[present], gold[present])
        buckets.append(
            Bucket(label, int(codes.sum()), int(present.sum()), float(micro), float(macro.mean()) if macro.size else 0)
        )
    return buckets


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def precision_recall_figure(
    precision: np.ndarray, recall: np.ndarray, tuned: dict[str, float], split: str
) -> Figure:
    """The curve and the operating point of the tuned threshold (`tuned`: that split's `compute_metrics` result)."""
    figure = _figure()
    axes = figure.add_subplot()
    keep = (precision > 0) | (recall > 0)  # thresholds above every score predict nothing: no point to draw
    axes.plot(recall[keep], precision[keep], color="tab:blue", label="micro precision-recall")
    axes.scatter(
        [tuned["micro_recall"]], [tuned["micro_precision"]], color="tab:red", zorder=3,
        label=f"tuned threshold {tuned['threshold']:.2f}: P {tuned['micro_precision']:.2f}, "
        f"R {tuned['micro_recall']:.2f}, F1 {tuned['micro_f1']:.2f}",
    )  # fmt: skip
    axes.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="micro recall", ylabel="micro precision")
    axes.set_title(f"Precision-recall, {split} split (threshold tuned on validation)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return figure


def f1_by_frequency_figure(buckets: Sequence[Bucket], split: str) -> Figure:
    figure = _figure()
    axes = figure.add_subplot()
    x = np.arange(len(buckets))
    for offset, key, color in ((-0.2, "micro_f1", "tab:blue"), (0.2, "macro_f1", "tab:orange")):
        values = [getattr(bucket, key) for bucket in buckets]
        bars = axes.bar(x + offset, values, width=0.4, color=color, label=key.replace("_f1", " F1"))
        # A bucket without codes has no F1 (not a zero one): its bars stay unlabelled.
        axes.bar_label(bars, [f"{v:.2f}" if b.num_codes else "" for v, b in zip(values, buckets)], fontsize=8)
    axes.set_xticks(x, [f"{b.label}\n{b.num_codes:,} codes\n{b.num_present:,} in split" for b in buckets])
    axes.set(ylim=(0, 1.1), xlabel="training notes with the code", ylabel="F1")
    axes.set_title(f"F1 by code frequency in training, {split} split")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper left")
    return figure


def training_curves_figure(history: Sequence[dict]) -> Figure:
    """Validation MAP and loss per evaluation (`history`: dicts with `epoch`, `map`, `loss`), best MAP marked."""
    figure = _figure(8.0, 3.6)
    epochs = [record["epoch"] for record in history]
    best = max(range(len(history)), key=lambda i: history[i]["map"])
    for position, (key, label, color) in enumerate((("map", "validation MAP", "tab:green"),
                                                     ("loss", "validation loss (BCE per code)", "tab:purple"))):
        axes = figure.add_subplot(1, 2, position + 1)
        values = [record[key] for record in history]
        axes.plot(epochs, values, marker="o", color=color)
        axes.scatter([epochs[best]], [values[best]], color="tab:red", zorder=3, label="kept (best MAP)")
        axes.set(xlabel="epoch", title=label)
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def comparison_figure(
    scores: dict[str, dict[str, float]], perplexities: dict[str, float] | None = None, split: str = "test"
) -> Figure:
    """Models side by side on each metric of `split` (`scores`: model -> metric -> value, as benchmarks/quality.py
    collects them), and optionally the MLM's perplexity beside the unigram baseline's (`perplexities`: name ->
    value)."""
    figure = _figure(9.0 if perplexities else 7.0, 4.0)
    grid = figure.add_gridspec(1, 4) if perplexities else figure.add_gridspec(1, 1)
    axes = figure.add_subplot(grid[0, :3] if perplexities else grid[0, 0])
    metrics = list(dict.fromkeys(metric for values in scores.values() for metric in values))
    width = 0.8 / len(scores)
    for i, (model, values) in enumerate(scores.items()):
        x = np.arange(len(metrics)) + (i - (len(scores) - 1) / 2) * width
        bars = axes.bar(x, [values.get(metric, np.nan) for metric in metrics], width=width, label=model)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks(np.arange(len(metrics)), [metric.replace("_", " ") for metric in metrics])
    axes.set(ylim=(0, 1.2), title=f"ICD-10 coding, {split} split")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper center", ncols=len(scores), fontsize=8)
    if perplexities:
        side = figure.add_subplot(grid[0, 3])
        bars = side.bar(list(perplexities), list(perplexities.values()), color=["tab:gray", "tab:green"])
        side.bar_label(bars, fmt="%.1f", fontsize=8)
        side.set(title="MLM perplexity\n(lower is better)")
        side.tick_params(axis="x", labelsize=8)
        side.grid(axis="y", alpha=0.3)
    return figure


def save_figure(figure: Figure, path: Path) -> None:
    figure.savefig(path, format="png", metadata={"Software": None})  # no version string in the file


def write_figures(
    folder: str | Path,
    split: str,
    probs,
    targets,
    metrics: dict[str, float],
    train_counts: Sequence[int],
    history: Sequence[dict],
    num_unseen_positives: int = 0,
) -> dict[str, str]:
    """Draw the card's figures for `split` (scores, targets and its `compute_metrics` result) into `folder`; return
    {name: file name} of those written (no training curve without an evaluation)."""
    folder = Path(folder)
    precision, recall, _ = precision_recall_curve(probs, targets, num_unseen_positives)
    figures = {
        "precision_recall": precision_recall_figure(precision, recall, metrics, split),
        "f1_by_frequency": f1_by_frequency_figure(
            f1_by_frequency(probs, targets, metrics["threshold"], train_counts), split
        ),
    }
    if history:
        figures["training_curves"] = training_curves_figure(history)
    for name, figure in figures.items():
        save_figure(figure, folder / FIGURE_FILES[name])
    return {name: FIGURE_FILES[name] for name in figures}


__all__ = [
    "FIGURE_FILES",
    "comparison_figure",
    "FREQUENCY_BUCKETS",
    "Bucket",
    "f1_by_frequency",
    "f1_by_frequency_figure",
    "precision_recall_curve",
    "precision_recall_figure",
    "save_figure",
    "training_curves_figure",
    "write_figures",
]
