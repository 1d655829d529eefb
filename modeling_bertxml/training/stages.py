"""The whole pipeline as stages, each the command a user runs: what `make demo` (demo.py) and benchmarks/quality.py run.

corpus (`python -m modeling_bertxml.data.synthetic`) -> domain tokenizer -> MLM pretraining -> fine-tuning with
evaluation -> TF-IDF + logistic regression baseline. A YAML file gives each stage its flags (one section per stage,
`as_flags`) and the output dir; a stage whose output exists from a run with the same command is reused, so a second
run only redoes what changed. Other notes than the synthetic corpus: a folder of split files (`run_stages`' `corpus`),
which replaces the corpus stage; `pretrain: false` skips pretraining (fine-tuning then builds the model from scratch:
its section's `config_overrides` gives the sizes); the tokenizer section's `train_file` (a file, a glob or a list)
adds unlabelled text to the training notes it learns the vocabulary from (its --train_file is repeatable).
"""

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

SPLITS = ("train", "validation", "test")
DESCRIPTIONS_FILE = "code_descriptions.tsv"  # a corpus's own texts of its codes, in its notes' language
RESULTS_FILES = {"validation": "eval_results.json", "test": "test_results.json"}  # what train.py writes per split


def corpus_splits(out: Path, corpus: Path | None = None) -> dict[str, Path]:
    """The split files the stages read: the corpus stage's three (in `out`/data), or those of `corpus` (train and
    validation, and test when it has one)."""
    data = out / "data" if corpus is None else corpus
    return {split: data / f"{split}.jsonl" for split in SPLITS if corpus is None or (data / f"{split}.jsonl").is_file()}


def stage_commands(out: Path, corpus: Path | None = None, pretrain: bool = True) -> dict[str, tuple[list[str], Path]]:
    """Each stage's command line (without its YAML section's flags) and the file whose existence means it finished.

    With `corpus` (a folder of train/validation(/test).jsonl, only read) there is no corpus stage; a corpus without
    test.jsonl is scored on validation, and its `DESCRIPTIONS_FILE` (data/prepare_codiesp.py --codes_file), when it has
    one, gives fine-tuning the texts of its codes. Without `pretrain` fine-tuning starts from the tokenizer alone.
    """
    splits = {split: str(path) for split, path in corpus_splits(out, corpus).items()}
    split_flags = [flag for split, path in splits.items() for flag in (f"--{split}_file", path)]
    scored = "test" if "test" in splits else "validation"
    python = [sys.executable, "-m"]
    commands = {}
    if corpus is None:
        data = out / "data"
        commands["corpus"] = (python + ["modeling_bertxml.data.synthetic", "--output_dir", str(data)],
                              data / "test.jsonl")  # fmt: skip
    commands["tokenizer"] = (
        python + ["tokenizer_training.train_tokenizer", "--train_file", splits["train"],
                  "--output_dir", str(out / "tokenizer")],
        out / "tokenizer" / "tokenizer_report.json",
    )  # fmt: skip
    if pretrain:
        commands["pretrain"] = (
            python + ["modeling_bertxml.training.pretrain", "--tokenizer_name", str(out / "tokenizer"),
                      "--train_file", splits["train"], "--validation_file", splits["validation"],
                      "--output_dir", str(out / "pretrained"), "--overwrite_output_dir"],
            out / "pretrained" / "model.safetensors",
        )  # fmt: skip
    start = ["--model_name_or_path", str(out / "pretrained")]
    if not pretrain:  # a new model: the finetune section's config_overrides sizes it
        start = ["--tokenizer_name", str(out / "tokenizer")]
    if corpus is not None and (corpus / DESCRIPTIONS_FILE).is_file():
        start += ["--code_descriptions", str(corpus / DESCRIPTIONS_FILE)]
    commands["finetune"] = (
        python + ["modeling_bertxml.training.train", *start, *split_flags, "--output_dir", str(out / "model"),
                  "--overwrite_output_dir"],
        out / "model" / RESULTS_FILES[scored],
    )  # fmt: skip
    commands["baseline"] = (
        python + ["modeling_bertxml.evaluation.baseline_tfidf", *split_flags, "--label_space_from", str(out / "model"),
                  "--output_file", str(out / "baseline_results.json")],
        out / "baseline_results.json",
    )  # fmt: skip
    return commands


def as_flags(options: dict | None) -> list[str]:
    """{"num_train_epochs": 3, "streaming": true, "train_file": ["a.txt", "b.txt"]} -> ["--num_train_epochs", "3",
    "--streaming", "--train_file", "a.txt", "b.txt"]."""
    flags = []
    for key, value in (options or {}).items():
        if value is True:
            flags.append(f"--{key}")
        elif isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        elif value is not False and value is not None:  # `0 in (False, None)` is True
            flags += [f"--{key}", str(value)]
    return flags


def run_stage(name: str, command: list[str], done: Path, out: Path) -> float:
    """Run one stage unless its output exists from a run with the same command; returns seconds spent.

    A stage that did not finish (or whose settings changed) starts over: its scripts get --overwrite_output_dir. One
    that fails exits with a line that names it (its script printed why), not a traceback of the subprocess call.
    """
    stamp = out / f".{name}.done"
    if done.exists() and stamp.exists() and json.loads(stamp.read_text()) == command:
        print(f"== {name}: reusing {done.parent}")
        return 0.0
    print(f"== {name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    if subprocess.run(command).returncode:
        raise SystemExit(f"== {name} failed: see its error above. The stages before it are kept, and a rerun starts "
                         "from this one.")
    stamp.write_text(json.dumps(command))
    return time.perf_counter() - start


def clear_stages(out: Path, reports: tuple[str, ...] = ()) -> list[str]:
    """Delete what the stages wrote into `out` (each stage's output and stamp) and the caller's `reports`, nothing
    else; returns the names deleted. A run's `--fresh` on a folder the user chose must not take the user's files."""
    commands = stage_commands(out)  # every stage: a corpus stage, pretraining
    outputs = sorted({done.relative_to(out).parts[0] for _, done in commands.values()})
    names = (*outputs, *(f".{stage}.done" for stage in commands), *reports)
    deleted = [name for name in names if (out / name).exists()]
    for name in deleted:
        path = out / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return deleted


def run_stages(config: dict, corpus: Path | None = None) -> tuple[Path, dict[str, float]]:
    """Every stage with the flags of its section of `config` (a YAML file's contents), into `config["output_dir"]`, on
    the synthetic corpus or on the split files in `corpus`; returns that folder and each stage's seconds (0 when
    reused). `pretrain: false` in `config` leaves pretraining out."""
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name, (command, done) in stage_commands(out, corpus, config.get("pretrain") is not False).items():
        timings[name] = run_stage(name, command + as_flags(config.get(name)), done, out)
    return out, timings


__all__ = [
    "DESCRIPTIONS_FILE",
    "RESULTS_FILES",
    "SPLITS",
    "as_flags",
    "clear_stages",
    "corpus_splits",
    "run_stage",
    "run_stages",
    "stage_commands",
]
