"""Bag-of-words baseline: TF-IDF features + one-vs-rest logistic regression, threshold tuned on validation.

It is the floor the BERT-XML model has to beat, measured in the same run (`make demo`, benchmarks/quality.py). On the
synthetic corpus it is fooled by negated and family-history mentions (same words as real diagnoses), so its micro-F1
stays well below 1. `score_splits` scores any baseline (code priors too) exactly as train.py scores the model.

    python -m modeling_bertxml.evaluation.baseline_tfidf --train_file data/synthetic/train.jsonl \
        --validation_file data/synthetic/validation.jsonl --test_file data/synthetic/test.jsonl
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from ..data.notes import NoteColumns, Notes, label_indices, multi_hot, read_notes
from .metrics import compute_metrics, format_table, tune_threshold


def score_splits(
    validation_file: str,
    test_file: str,
    columns: NoteColumns,
    label2id: dict[str, int],
    score: Callable[[Notes], np.ndarray],
) -> dict[str, dict[str, float]]:
    """Metrics of `score(notes) -> (notes, codes) probabilities` on validation and test, the threshold tuned on
    validation only; codes outside `label2id` count as misses. Shared by every baseline so that they compare."""
    results, threshold = {}, None
    for split, path in (("validation", validation_file), ("test", test_file)):
        notes = read_notes(path, split, columns)
        targets = multi_hot(label_indices(notes, label2id), len(label2id))
        unseen = sum(notes.report.outside_label_space.values())
        scores = score(notes)
        if threshold is None:
            threshold, _ = tune_threshold(scores, targets, num_unseen_positives=unseen)
        results[split] = compute_metrics(scores, targets, threshold, num_unseen_positives=unseen)
    return results


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

    Notes are read, validated and normalised exactly as train.py reads them, and scored with the same metrics module;
    codes that occur only in validation or test count as misses rather than vanishing.
    """
    columns = NoteColumns(text=text_column, labels=label_column)
    train = read_notes(train_file, "train", columns)
    codes = sorted({code for note_codes in train.codes for code in note_codes})
    label2id = {code: i for i, code in enumerate(codes)}
    vectorizer = TfidfVectorizer(ngram_range=(1, ngram_max), min_df=2, max_features=max_features, sublinear_tf=True)
    classifier = OneVsRestClassifier(LogisticRegression(C=C, max_iter=1000, solver="liblinear"))
    # Boolean targets: with int8 ones (multi_hot's), sklearn's label binariser wraps past 127 codes and the fit is
    # near chance (micro-AUC 0.48 where this fit scores 0.91 on a 1,767-code corpus).
    targets = multi_hot(label_indices(train, label2id), len(codes)).astype(bool)
    classifier.fit(vectorizer.fit_transform(train.texts), targets)

    return score_splits(
        validation_file, test_file, columns, label2id,
        lambda notes: classifier.predict_proba(vectorizer.transform(notes.texts)),
    )  # fmt: skip


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
