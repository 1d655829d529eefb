"""Compare fine-tuned coding models on one test split, with rare codes singled out.

Used to measure what `--init_label_queries_from_descriptions` buys over random label queries: macro-F1 hides how the
codes seen in only a handful of training notes fare, so the table also gives F1 over the codes with fewer than
`--rare_below` training notes. Each model is scored at its own validation-tuned `config.threshold`.

    python benchmarks/compare_models.py --train_file train.jsonl --test_file test.jsonl \
        --model described=runs/a/model random=runs/b/model
"""

import argparse
from collections import Counter

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from modeling_bertxml.data.notes import MultiLabelCollator, multi_hot, read_notes, tokenize_notes
from modeling_bertxml.evaluation.metrics import compute_metrics, format_table
from modeling_bertxml.training.models import load_coding_model


@torch.no_grad()
def scores(folder: str, test_file: str, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """Sigmoid scores and targets of the test split for one saved model, its codes and its tuned threshold."""
    model = load_coding_model(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    codes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    label2id = {code: i for i, code in enumerate(codes)}
    notes = read_notes(test_file, "test")
    dataset = tokenize_notes(notes, label2id, tokenizer, model.config.max_note_length)
    loader = DataLoader(dataset, batch_size, collate_fn=MultiLabelCollator(len(codes), tokenizer.pad_token_id))
    probs = [
        torch.sigmoid(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
        for b in tqdm(loader, desc=folder)
    ]
    targets = multi_hot([[label2id[c] for c in note if c in label2id] for note in notes.codes], len(codes))
    return torch.cat(probs).numpy(), targets, codes, model.config.threshold


def rare_f1(probs: np.ndarray, targets: np.ndarray, threshold: float, rare: np.ndarray) -> float:
    """Mean per-code F1 over the rare codes present in the split."""
    predicted = probs > threshold
    tp = (predicted & (targets == 1)).sum(0)
    f1 = 2 * tp / np.maximum(predicted.sum(0) + targets.sum(0), 1)
    keep = rare & (targets.sum(0) > 0)
    return float(f1[keep].mean()) if keep.any() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_file", required=True, help="Training notes: how often each code was seen.")
    parser.add_argument("--test_file", required=True)
    parser.add_argument("--model", nargs="+", required=True, metavar="NAME=DIR", help="Saved train.py output folders.")
    parser.add_argument("--rare_below", type=int, default=30, help="A code is rare below this many training notes.")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    seen = Counter(code for note in read_notes(args.train_file, "train").codes for code in note)
    table = {}
    for name, folder in (entry.split("=", 1) for entry in args.model):
        probs, targets, codes, threshold = scores(folder, args.test_file, args.batch_size)
        rare = np.array([seen[code] < args.rare_below for code in codes])
        metrics = compute_metrics(probs, targets, threshold)
        table[name] = {key: metrics[key] for key in ("micro_f1", "macro_f1", "map", "precision_at_5")}
        table[name][f"rare_code_f1 (<{args.rare_below} train notes, {int(rare.sum())} codes)"] = rare_f1(
            probs, targets, threshold, rare
        )
    print(format_table(table))


if __name__ == "__main__":
    main()
