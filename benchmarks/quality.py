"""Does BERT-XML learn? The real command-line scripts on the hard synthetic corpus, or any corpus, against the baselines
of the run.

    python benchmarks/quality.py --budget cpu    # 4 x 256, 512-token chunks, 2 CPU cores (configs/quality/cpu.yaml)
    python benchmarks/quality.py --budget gpu    # BERT-base sizes, one GPU (configs/quality/gpu.yaml)
    python benchmarks/quality.py --budget cpu --corpus data/codiesp-en --output_dir runs/codiesp-cpu  # cpu_real.yaml

Stages, each the CLI a user runs (`make demo`'s runner, `modeling_bertxml.training.stages`; a finished stage is
reused, `--fresh` starts over): corpus (`python -m modeling_bertxml.data.synthetic --preset hard`) -> tokenizer ->
pretrain.py -> train.py (the scripts' default recipe: the YAML gives only files, sizes and budgets) -> TF-IDF +
logistic regression. `--corpus DIR` replaces the corpus stage with DIR's train.jsonl, validation.jsonl and test.jsonl
(only read; without test.jsonl every model is scored on validation) and runs the recipe for real notes,
`configs/quality/cpu_real.yaml` on either budget (no pretraining: `pretrain: false` trains the coder from scratch; the
label space of the whole code system). Prints the MLM perplexity beside the unigram perplexity of the same masked tokens, a table of BERT-XML
beside code priors and TF-IDF on the test split (all three on the model's label space), a second one by how many
training notes carry each code, and each stage's wall time; writes every number to `<output_dir>/quality.json`, and
the first table as a figure to `<output_dir>/quality.png`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python benchmarks/quality.py` from anywhere

from modeling_bertxml.data.notes import NoteColumns, read_notes  # noqa: E402
from modeling_bertxml.evaluation.baseline_tfidf import coder_label_space, score_splits  # noqa: E402
from modeling_bertxml.evaluation.metrics import TRAINING_COUNT_KEY, format_table  # noqa: E402
from modeling_bertxml.evaluation.plots import comparison_figure, save_figure  # noqa: E402
from modeling_bertxml.training.stages import RESULTS_FILES, clear_stages, corpus_splits, run_stages  # noqa: E402

METRICS = ["micro_f1", "macro_f1", "micro_auc", "map", "precision_at_8"]
REPORTS = ("quality.json", "quality.png")  # what main writes beside the stages' outputs
# What a --corpus runs on either budget: with a few hundred real notes no larger coder is measured better, so a GPU
# only runs the same recipe faster.
REAL_NOTES_RECIPE = "cpu_real.yaml"


def prior_baseline(splits: dict[str, Path], model_dir: Path) -> dict[str, dict]:
    """Every note gets each code's training frequency: what a model that learnt only code priors scores (on the
    model's label space and code system), on validation and test (if any)."""
    label2id, code_system = coder_label_space(model_dir)
    train = read_notes(str(splits["train"]), "train", NoteColumns(), code_system=code_system)
    priors = np.array([train.code_counts[code] for code in label2id]) / len(train)
    return score_splits(
        {split: str(path) for split, path in splits.items() if split != "train"}, NoteColumns(), label2id,
        lambda notes: np.tile(priors, (len(notes), 1)), train.code_counts, code_system,
    )  # fmt: skip


def collect(out: Path, splits: dict[str, Path], pretrained: bool, timings: dict[str, float]) -> dict:
    """Every number of the run: the MLM's (None without pretraining), each model's on the scored split (`split`: test,
    else validation), each model's training-count breakdown where its results have one, each stage's seconds."""
    split = "test" if "test" in splits else "validation"
    models = {
        "BERT-XML": json.loads((out / "model" / RESULTS_FILES[split]).read_text()),
        "TF-IDF + LR": json.loads((out / "baseline_results.json").read_text())[split],
        "code priors": prior_baseline(splits, out / "model")[split],
    }
    mlm = None
    if pretrained:
        pretrain = json.loads((out / "pretrained" / "train_results.json").read_text())
        mlm = {key: pretrain[key] for key in ("perplexity", "unigram_perplexity", "train_steps", "train_runtime")}
    return {
        "mlm": mlm,
        "split": split,
        split: {name: {key: results[key] for key in METRICS} for name, results in models.items()},
        # train.py writes it from issue 26 on; a model folder from before has none
        TRAINING_COUNT_KEY: {
            name: results[TRAINING_COUNT_KEY] for name, results in models.items() if TRAINING_COUNT_KEY in results
        },
        "seconds": timings,
    }


def by_training_count_table(breakdown: dict[str, dict[str, dict[str, float]]]) -> str:
    """The models' `TRAINING_COUNT_KEY` results as one table: a column per model, a row per bucket and score."""
    rows = {
        model: {f"{score}, {bucket} training notes": value for bucket, scores in buckets.items()
                for score, value in scores.items()}
        for model, buckets in breakdown.items()
    }  # fmt: skip
    return format_table(rows)


def report(results: dict, budget: str) -> str:
    mlm, split, seconds = results["mlm"], results["split"], results["seconds"]
    if mlm is None:
        lines = [f"Budget {budget}: no pretraining (the coder is trained from scratch)"]
    else:
        lines = [f"Budget {budget}: MLM perplexity {mlm['perplexity']:.1f} vs unigram {mlm['unigram_perplexity']:.1f} "
                 f"({mlm['perplexity'] / mlm['unigram_perplexity']:.0%} of it) after {mlm['train_steps']} steps"]
    tuned = "threshold tuned on validation" + ("" if split == "test" else "; no test split")
    lines += ["", f"{split.capitalize()} split ({tuned}):", format_table(results[split])]
    if results[TRAINING_COUNT_KEY]:
        heading = f"{split.capitalize()} split by how many training notes carry the code (share: of its gold codes):"
        lines += ["", heading, by_training_count_table(results[TRAINING_COUNT_KEY])]
    lines += [
        "",
        "| stage | " + " | ".join(seconds) + " | total |",
        "|---|" + "---|" * (len(seconds) + 1),
        "| wall time (min) | " + " | ".join(f"{s / 60:.1f}" for s in seconds.values())
        + f" | {sum(seconds.values()) / 60:.1f} |",
    ]  # fmt: skip
    return "\n".join(lines)


def write_figure(results: dict, path: Path) -> None:
    """The first table as a figure: each model on each metric, and the MLM beside the unigram perplexity."""
    mlm = results["mlm"]
    perplexities = None if mlm is None else {"unigram": mlm["unigram_perplexity"], "BERT-XML MLM": mlm["perplexity"]}
    save_figure(comparison_figure(results[results["split"]], perplexities, results["split"]), path)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """The flags, and the YAML config they name with --output_dir applied."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--config", help="YAML with one section per stage (default: configs/quality/<budget>.yaml, and with --corpus "
        f"the recipe for real notes, configs/quality/{REAL_NOTES_RECIPE}, on either budget)",
    )  # fmt: skip
    parser.add_argument(
        "--corpus", type=Path,
        help="Folder with train.jsonl, validation.jsonl and (held back: leave it out) test.jsonl: run on it instead "
        "of the synthetic corpus. Only read.",
    )  # fmt: skip
    parser.add_argument("--output_dir", type=Path, help="Where every stage writes (default: the YAML's output_dir).")
    parser.add_argument(
        "--fresh", action="store_true",
        help="Delete what earlier runs of the stages wrote into the output dir first (nothing else): time every stage.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    recipe = REAL_NOTES_RECIPE if args.corpus is not None else f"{args.budget}.yaml"
    config_file = Path(args.config or ROOT / "configs" / "quality" / recipe)
    if not config_file.is_file():
        parser.error(f"--config {config_file}: no such file")
    config = yaml.safe_load(config_file.read_text())
    if args.output_dir is not None:
        config["output_dir"] = str(args.output_dir)
    if args.corpus is not None:
        missing = [name for name in ("train.jsonl", "validation.jsonl") if not (args.corpus / name).is_file()]
        if missing:
            parser.error(f"--corpus {args.corpus}: no {' and no '.join(missing)} in it")
        out, corpus = Path(config["output_dir"]).resolve(), args.corpus.resolve()
        if corpus == out or out in corpus.parents:  # --fresh would delete it, the stages write beside its files
            parser.error(f"--corpus {args.corpus} lies in the output dir {config['output_dir']}: choose another")
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    if args.fresh:
        clear_stages(Path(config["output_dir"]), REPORTS)
    out, timings = run_stages(config, args.corpus)  # a reused stage takes 0 s
    results = collect(out, corpus_splits(out, args.corpus), config.get("pretrain") is not False, timings)
    report_file, figure = (out / name for name in REPORTS)
    report_file.write_text(json.dumps(results, indent=2) + "\n")
    write_figure(results, figure)
    print("\n" + report(results, args.budget) + f"\n\nFigure: {figure}")


if __name__ == "__main__":
    main()
