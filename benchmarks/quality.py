"""Does BERT-XML learn? The real command-line scripts on the hard synthetic corpus, against the baselines of the run.

    python benchmarks/quality.py --budget cpu    # 4 x 256, 512-token chunks, 2 CPU cores (configs/quality/cpu.yaml)
    python benchmarks/quality.py --budget gpu    # BERT-base sizes, one GPU (configs/quality/gpu.yaml)

Stages, each the CLI a user runs (`make demo`'s runner, `modeling_bertxml.training.stages`; a finished stage is
reused, `--fresh` starts over): corpus (`python -m modeling_bertxml.data.synthetic --preset hard`) -> tokenizer ->
pretrain.py -> train.py (the scripts' default recipe: the YAML gives only files, sizes and budgets) -> TF-IDF +
logistic regression. Prints one markdown table: MLM perplexity beside the unigram perplexity of the same masked
tokens, BERT-XML beside code priors and TF-IDF on the test split, and each stage's wall time; writes it, with every
number, to `<output_dir>/quality.json`, and as a figure to `<output_dir>/quality.png`.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python benchmarks/quality.py` from anywhere

from modeling_bertxml.data.notes import NoteColumns, read_notes  # noqa: E402
from modeling_bertxml.evaluation.baseline_tfidf import coder_label_space, score_splits  # noqa: E402
from modeling_bertxml.evaluation.metrics import format_table  # noqa: E402
from modeling_bertxml.evaluation.plots import comparison_figure, save_figure  # noqa: E402
from modeling_bertxml.training.stages import run_stages  # noqa: E402

METRICS = ["micro_f1", "macro_f1", "micro_auc", "map", "precision_at_8"]


def prior_baseline(data: Path, model_dir: Path) -> dict[str, float]:
    """Every note gets each code's training frequency: what a model that learnt only code priors scores (on the
    model's label space and code system)."""
    label2id, code_system = coder_label_space(model_dir)
    train = read_notes(str(data / "train.jsonl"), "train", NoteColumns(), code_system=code_system)
    priors = np.array([train.code_counts[code] for code in label2id]) / len(train)
    results = score_splits(
        {split: str(data / f"{split}.jsonl") for split in ("validation", "test")}, NoteColumns(), label2id,
        lambda notes: np.tile(priors, (len(notes), 1)), train.code_counts, code_system,
    )  # fmt: skip
    return results["test"]


def collect(out: Path, timings: dict[str, float]) -> dict:
    pretrain = json.loads((out / "pretrained" / "train_results.json").read_text())
    model = json.loads((out / "model" / "test_results.json").read_text())
    tfidf = json.loads((out / "baseline_results.json").read_text())["test"]
    return {
        "mlm": {key: pretrain[key] for key in ("perplexity", "unigram_perplexity", "train_steps", "train_runtime")},
        "test": {
            "BERT-XML": {key: model[key] for key in METRICS},
            "TF-IDF + LR": {key: tfidf[key] for key in METRICS},
            "code priors": {
                key: value for key, value in prior_baseline(out / "data", out / "model").items() if key in METRICS
            },
        },
        "seconds": timings,
    }


def report(results: dict, budget: str) -> str:
    mlm, seconds = results["mlm"], results["seconds"]
    lines = [
        f"Budget {budget}: MLM perplexity {mlm['perplexity']:.1f} vs unigram {mlm['unigram_perplexity']:.1f} "
        f"({mlm['perplexity'] / mlm['unigram_perplexity']:.0%} of it) after {mlm['train_steps']} steps",
        "",
        format_table(results["test"]),
        "",
        "| stage | " + " | ".join(seconds) + " | total |",
        "|---|" + "---|" * (len(seconds) + 1),
        "| wall time (min) | " + " | ".join(f"{s / 60:.1f}" for s in seconds.values())
        + f" | {sum(seconds.values()) / 60:.1f} |",
    ]
    return "\n".join(lines)


def write_figure(results: dict, path: Path) -> None:
    """The table as a figure: each model on each test metric, and the MLM beside the unigram perplexity."""
    mlm = results["mlm"]
    perplexities = {"unigram": mlm["unigram_perplexity"], "BERT-XML MLM": mlm["perplexity"]}
    save_figure(comparison_figure(results["test"], perplexities), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--config", help="YAML with one section per stage (default: configs/quality/<budget>.yaml)")
    parser.add_argument("--fresh", action="store_true", help="Delete the output dir first: time every stage.")
    args = parser.parse_args(argv)
    config_file = Path(args.config or ROOT / "configs" / "quality" / f"{args.budget}.yaml")
    if not config_file.is_file():
        parser.error(f"--config {config_file}: no such file")
    config = yaml.safe_load(config_file.read_text())
    if args.fresh:
        shutil.rmtree(config["output_dir"], ignore_errors=True)
    out, timings = run_stages(config)  # a reused stage takes 0 s
    results = collect(out, timings)
    (out / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    write_figure(results, out / "quality.png")
    print("\n" + report(results, args.budget) + f"\n\nFigure: {out / 'quality.png'}")


if __name__ == "__main__":
    main()
