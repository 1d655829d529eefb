"""`make demo`: the whole BERT-XML pipeline on the bundled synthetic corpus, stage by stage.

corpus -> domain tokenizer -> MLM pretraining -> ICD-10 fine-tuning + evaluation -> TF-IDF baseline -> coding two
notes through `AutoModel` and `pipeline`. Sizes live in a YAML file (configs/demo.yaml); each stage runs the real
command-line script a user would run, and a stage whose output exists with the same settings is reused.
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml


def stage_commands(out: Path) -> dict[str, tuple[list[str], Path]]:
    """Each stage's command line (from the YAML section) and the file whose existence means it finished."""
    data = out / "data"
    splits = {split: str(data / f"{split}.jsonl") for split in ("train", "validation", "test")}
    python = [sys.executable]
    return {
        "corpus": (
            python + ["-m", "modeling_bertxml.data.synthetic", "--output_dir", str(data)],
            data / "test.jsonl",
        ),
        "tokenizer": (
            python + ["tokenizer_training/train_tokenizer.py", "--train_file", splits["train"],
                      "--output_dir", str(out / "tokenizer")],
            out / "tokenizer" / "tokenizer_report.json",
        ),
        "pretrain": (
            python + ["pretrain.py", "--tokenizer_name", str(out / "tokenizer"), "--train_file", splits["train"],
                      "--validation_file", splits["validation"], "--output_dir", str(out / "pretrained"),
                      "--overwrite_output_dir"],
            out / "pretrained" / "model.safetensors",
        ),
        "finetune": (
            python + ["train.py", "--model_name_or_path", str(out / "pretrained"), "--train_file", splits["train"],
                      "--validation_file", splits["validation"], "--test_file", splits["test"],
                      "--output_dir", str(out / "model"), "--overwrite_output_dir"],
            out / "model" / "test_results.json",
        ),
        "baseline": (
            python + ["benchmarks/baseline_tfidf.py", "--train_file", splits["train"], "--validation_file",
                      splits["validation"], "--test_file", splits["test"],
                      "--output_file", str(out / "baseline_results.json")],
            out / "baseline_results.json",
        ),
    }


def as_flags(options: dict | None) -> list[str]:
    """{"num_train_epochs": 3, "streaming": true} -> ["--num_train_epochs", "3", "--streaming"]."""
    flags = []
    for key, value in (options or {}).items():
        if value is True:
            flags.append(f"--{key}")
        elif value is not False and value is not None:  # `0 in (False, None)` is True
            flags += [f"--{key}", str(value)]
    return flags


def run_stage(name: str, command: list[str], done: Path, out: Path) -> float:
    """Run one stage unless its output exists from a run with the same command; returns seconds spent.

    A stage that did not finish (or whose settings changed) starts over: its scripts get --overwrite_output_dir.
    """
    stamp = out / f".{name}.done"
    if done.exists() and stamp.exists() and json.loads(stamp.read_text()) == command:
        print(f"== {name}: reusing {done.parent}")
        return 0.0
    print(f"== {name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    stamp.write_text(json.dumps(command))
    return time.perf_counter() - start


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
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name, (command, done) in stage_commands(out).items():
        timings[name] = run_stage(name, command + as_flags(config.get(name)), done, out)
    print("\nStage times (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items()))
    code_examples(out / "model", out / "data" / "test.jsonl")
    compare(out)


if __name__ == "__main__":
    main()
