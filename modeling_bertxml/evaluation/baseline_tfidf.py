"""Bag-of-words baseline: TF-IDF features + one-vs-rest logistic regression, threshold tuned on validation.

It is the floor the BERT-XML model has to beat, measured in the same run (`make demo`, benchmarks/quality.py). On the
synthetic corpus it is fooled by negated and family-history mentions (same words as real diagnoses), so its micro-F1
stays well below 1. `score_splits` scores any baseline (code priors too) exactly as train.py scores the model; with
`--label_space_from` a trained coder's folder, on that model's codes and code system.

    python -m modeling_bertxml.evaluation.baseline_tfidf --train_file data/synthetic/train.jsonl \
        --validation_file data/synthetic/validation.jsonl --test_file data/synthetic/test.jsonl
"""

import argparse
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from ..data.notes import NoteColumns, Notes, label_indices, multi_hot, read_notes
from ..model.configuration_bertxml import BertXMLConfig
from .metrics import (
    TRAINING_COUNT_KEY,
    compute_metrics,
    compute_metrics_by_training_count,
    format_table,
    tune_threshold,
)


def coder_label_space(model_dir: str | Path) -> tuple[dict[str, int], str]:
    """The codes (in the order of the head's rows) and the code system of a train.py folder: a baseline scored on them
    is scored on the model's label space and gold codes."""
    config = BertXMLConfig.from_pretrained(model_dir)
    return {config.id2label[i]: i for i in range(len(config.id2label))}, config.code_system


def score_splits(
    splits: Mapping[str, str],
    columns: NoteColumns,
    label2id: dict[str, int],
    score: Callable[[Notes], np.ndarray],
    train_counts: Mapping[str, int],
    code_system: str = "icd10",
) -> dict[str, dict]:
    """Metrics of `score(notes) -> (notes, codes) probabilities` on each of `splits` (name -> file: validation first,
    then test if there is one), the threshold tuned on validation only; codes outside `label2id` count as misses.
    Each split also gets its `TRAINING_COUNT_KEY` breakdown (`train_counts`: training notes per code). Shared by every
    baseline so that they compare."""
    labels = sorted(label2id, key=label2id.get)
    results, threshold = {}, None
    for split, path in splits.items():
        notes = read_notes(path, split, columns, code_system=code_system)
        targets = multi_hot(label_indices(notes, label2id), len(label2id))
        unseen = sum(notes.report.outside_label_space.values())
        scores = score(notes)
        if threshold is None:
            threshold, _ = tune_threshold(scores, targets, num_unseen_positives=unseen)
        results[split] = compute_metrics(scores, targets, threshold, num_unseen_positives=unseen)
        results[split][TRAINING_COUNT_KEY] = compute_metrics_by_training_count(
            scores, targets, labels, notes.note_codes(), train_counts, threshold
        )
    return results


def run_tfidf_baseline(
    train_file: str,
    validation_file: str,
    test_file: str | None = None,
    text_column: str = "text",
    label_column: str = "labels",
    max_features: int = 100_000,
    ngram_max: int = 1,
    C: float = 10.0,
    label2id: dict[str, int] | None = None,
    code_system: str = "icd10",
) -> dict[str, dict]:
    """Fit on train, tune the threshold on validation, return {"validation": metrics, "test": metrics} (no test
    without `test_file`).

    Notes are read, validated and normalised exactly as train.py reads them (in `code_system`), and scored with the
    same metrics module; codes that occur only in validation or test count as misses rather than vanishing. The label
    space is `label2id` (a coder's, `coder_label_space`), else the training codes; a code no training note carries
    scores 0.
    """
    columns = NoteColumns(text=text_column, labels=label_column)
    train = read_notes(train_file, "train", columns, code_system=code_system)
    if label2id is None:
        label2id = {code: i for i, code in enumerate(sorted(train.code_counts))}
    learnt = [code for code in label2id if train.code_counts[code]]  # a one-vs-rest fit needs a positive note
    vectorizer = TfidfVectorizer(ngram_range=(1, ngram_max), min_df=2, max_features=max_features, sublinear_tf=True)
    classifier = OneVsRestClassifier(LogisticRegression(C=C, max_iter=1000, solver="liblinear"))
    # Boolean targets: with int8 ones (multi_hot's), sklearn's label binariser wraps past 127 codes and the fit is
    # near chance (micro-AUC 0.48 where this fit scores 0.91 on a 1,767-code corpus).
    targets = multi_hot(label_indices(train, {code: i for i, code in enumerate(learnt)}), len(learnt)).astype(bool)
    classifier.fit(vectorizer.fit_transform(train.texts), targets)
    learnt_columns = [label2id[code] for code in learnt]

    def score(notes: Notes) -> np.ndarray:
        scores = np.zeros((len(notes), len(label2id)))
        scores[:, learnt_columns] = classifier.predict_proba(vectorizer.transform(notes.texts))
        return scores

    splits = {"validation": validation_file, "test": test_file}
    splits = {split: path for split, path in splits.items() if path is not None}
    return score_splits(splits, columns, label2id, score, train.code_counts, code_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_file", type=str, required=True)
    parser.add_argument("--validation_file", type=str, required=True)
    parser.add_argument("--test_file", type=str, default=None, help="Scored once, at the validation threshold.")
    parser.add_argument(
        "--label_space_from", type=str, default=None,
        help="A train.py output folder: score on its codes and code system (default: the training codes, icd10).",
    )  # fmt: skip
    parser.add_argument("--output_file", type=str, default=None, help="Write the metrics here as JSON.")
    parser.add_argument("--text_column", type=str, default="text")
    parser.add_argument("--label_column", type=str, default="labels")
    parser.add_argument("--max_features", type=int, default=100_000)
    parser.add_argument("--ngram_max", type=int, default=1, help="Word n-grams from 1 to this (2 is ~30x slower).")
    parser.add_argument("--C", type=float, default=10.0, help="Inverse regularisation strength.")
    args = parser.parse_args()
    start = time.perf_counter()
    label2id, code_system = coder_label_space(args.label_space_from) if args.label_space_from else (None, "icd10")
    results = run_tfidf_baseline(
        args.train_file, args.validation_file, args.test_file, args.text_column, args.label_column,
        args.max_features, args.ngram_max, args.C, label2id, code_system,
    )
    print(format_table(results))
    print(f"\nTF-IDF + logistic regression in {time.perf_counter() - start:.1f} s")
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_file).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
