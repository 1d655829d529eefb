"""Bag-of-words baseline: TF-IDF features + one-vs-rest logistic regression, threshold tuned on validation.

It is the floor the BERT-XML model has to beat. On the synthetic corpus it is fooled by negated and family-history
mentions (same words as real diagnoses), so its micro-F1 stays well below 1.

    python benchmarks/baseline_tfidf.py --train_file data/synthetic/train.jsonl \
        --validation_file data/synthetic/validation.jsonl --test_file data/synthetic/test.jsonl
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from datasets import load_dataset
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

THRESHOLDS = np.linspace(0.01, 0.99, 100)


def compute_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The headline metrics of DESIGN.md for multi-hot `labels` and probability `scores` (notes x codes).

    Kept self-contained so it can be swapped for the shared metrics module; macro-F1 averages over the codes
    present in the split (as Edin et al. 2023 do), precision@k over notes.
    """
    predictions = scores >= threshold
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, average="micro", zero_division=0)
    present = labels.sum(axis=0) > 0
    _, _, per_code_f1, _ = precision_recall_fscore_support(labels, predictions, average=None, zero_division=0)
    ranked = np.argsort(-scores, axis=1)
    metrics = {"micro_precision": precision, "micro_recall": recall, "micro_f1": f1}
    metrics["macro_f1"] = float(per_code_f1[present].mean()) if present.any() else 0.0
    for k in (5, 8, 15):
        metrics[f"precision_at_{k}"] = float(np.take_along_axis(labels, ranked[:, :k], axis=1).sum(axis=1).mean() / k)
    metrics.update(threshold=float(threshold), num_notes=len(labels), num_codes=int(present.sum()))
    return {key: float(value) for key, value in metrics.items()}


def tune_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The grid threshold with the best validation micro-F1."""
    f1s = [compute_metrics(labels, scores, threshold)["micro_f1"] for threshold in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(f1s))])


def _load(path: str, text_column: str, label_column: str) -> tuple[list[str], list[list[str]]]:
    extension = Path(path).suffix.lstrip(".").replace("jsonl", "json")
    dataset = load_dataset(extension, data_files=path, split="train")
    for column in (text_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"{path}: no column {column!r} (columns: {dataset.column_names})")
    labels = dataset[label_column]
    if labels and isinstance(labels[0], str):  # CSV stores the codes as one `;`-separated string
        labels = [[code.strip() for code in value.split(";") if code.strip()] for value in labels]
    return dataset[text_column], labels


def run_tfidf_baseline(
    train_file: str,
    validation_file: str,
    test_file: str,
    text_column: str = "text",
    label_column: str = "labels",
    max_features: int = 100_000,
    ngram_max: int = 1,
    C: float = 10.0,
) -> dict[str, dict[str, float]]:
    """Fit on train, tune the threshold on validation, return {"validation": metrics, "test": metrics}.

    Codes that occur only in validation or test get a score of 0, so they count as misses rather than vanishing.
    """
    train_texts, train_labels = _load(train_file, text_column, label_column)
    vectorizer = TfidfVectorizer(ngram_range=(1, ngram_max), min_df=2, max_features=max_features, sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    train_codes = sorted({code for codes in train_labels for code in codes})
    classifier = OneVsRestClassifier(LogisticRegression(C=C, max_iter=1000, solver="liblinear"))
    classifier.fit(features, MultiLabelBinarizer(classes=train_codes).fit_transform(train_labels))

    results, threshold = {}, None
    for split, path in (("validation", validation_file), ("test", test_file)):
        texts, labels = _load(path, text_column, label_column)
        unseen = sorted({code for codes in labels for code in codes} - set(train_codes))
        scores = classifier.predict_proba(vectorizer.transform(texts))
        scores = np.hstack([scores, np.zeros((len(texts), len(unseen)))])
        multi_hot = MultiLabelBinarizer(classes=train_codes + unseen).fit_transform(labels)
        if threshold is None:
            threshold = tune_threshold(multi_hot, scores)
        results[split] = compute_metrics(multi_hot, scores, threshold)
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per metric, one column per split."""
    splits = list(results)
    keys = [key for key in results[splits[0]] if key not in ("num_notes", "num_codes")]
    lines = ["| metric | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {key} | " + " | ".join(f"{results[split][key]:.4f}" for split in splits) + " |" for key in keys]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_file", type=str, required=True)
    parser.add_argument("--validation_file", type=str, required=True)
    parser.add_argument("--test_file", type=str, required=True)
    parser.add_argument("--output_file", type=str, default=None, help="Write the metrics here as JSON.")
    parser.add_argument("--text_column", type=str, default="text")
    parser.add_argument("--label_column", type=str, default="labels")
    parser.add_argument("--max_features", type=int, default=100_000)
    parser.add_argument("--ngram_max", type=int, default=1, help="Word n-grams from 1 to this (2 is ~30x slower).")
    parser.add_argument("--C", type=float, default=10.0, help="Inverse regularisation strength.")
    args = parser.parse_args()
    start = time.perf_counter()
    results = run_tfidf_baseline(
        args.train_file, args.validation_file, args.test_file, args.text_column, args.label_column,
        args.max_features, args.ngram_max, args.C,
    )
    print(format_table(results))
    print(f"\nTF-IDF + logistic regression in {time.perf_counter() - start:.1f} s")
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
