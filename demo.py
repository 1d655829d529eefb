"""`make demo`: the whole BERT-XML pipeline on the bundled synthetic corpus, stage by stage.

corpus -> domain tokenizer -> MLM pretraining -> ICD-10 fine-tuning + evaluation -> TF-IDF baseline -> coding two
notes through `AutoModel` and `pipeline`. Sizes live in a YAML file (configs/demo.yaml); each stage runs the command a
user would run (`modeling_bertxml.training.stages`), and a stage whose output exists with the same settings is reused.
"""

import argparse
import json
from pathlib import Path

import yaml

from modeling_bertxml.training.stages import run_stages


def code_examples(model_dir: Path, test_file: Path, count: int = 2) -> None:
    """Code the first notes of the test split through AutoModel and the pipeline, as a user of the Hub folder would."""
    import torch
    from transformers import AutoModel, AutoTokenizer, pipeline

    from modeling_bertxml.data.icd10 import description

    notes = [json.loads(line) for line in test_file.read_text().splitlines()[:count]]
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
    threshold = model.config.threshold
    for note, scored in zip(notes, classifier([note["text"] for note in notes], truncation=True)):
        with torch.no_grad():
            logits = model(**tokenizer(note["text"], truncation=True, return_tensors="pt")).logits[0]
        assert abs(torch.sigmoid(logits).max().item() - scored[0]["score"]) < 1e-4  # AutoModel and pipeline agree
        predicted = [item for item in scored if item["score"] > threshold]
        print(f"\nNote {note.get('id', '?')} (gold: {', '.join(note['labels'])}), threshold {threshold:.2f}:")
        for item in predicted:
            mark = "+" if item["label"] in note["labels"] else "-"
            print(f"  {mark} {item['label']:<8} {item['score']:.3f}  {description(item['label'])}")
        if not predicted:
            print("  (no code above the threshold)")


def compare(out: Path) -> None:
    """The final table: the fine-tuned BERT-XML against TF-IDF + logistic regression on the same test split."""
    from modeling_bertxml.evaluation.metrics import format_table

    model = json.loads((out / "model" / "test_results.json").read_text())
    baseline = json.loads((out / "baseline_results.json").read_text())["test"]
    keys = ["micro_f1", "macro_f1", "micro_precision", "micro_recall", "precision_at_5", "map", "micro_auc"]
    print("\nTest split:\n" + format_table({
        "BERT-XML (demo)": {key: model[key] for key in keys},
        "TF-IDF + LR": {key: baseline[key] for key in keys if key in baseline},
    }))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="YAML file with one section per stage")
    args = parser.parse_args(argv)
    out, timings = run_stages(yaml.safe_load(Path(args.config).read_text()))
    print("\nStage times (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items()))
    code_examples(out / "model", out / "data" / "test.jsonl")
    compare(out)


if __name__ == "__main__":
    main()
