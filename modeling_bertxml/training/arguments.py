"""Every flag of `pretrain.py` and `train.py`, one function per group: what `--help` shows is written here.

Both scripts start from `script_parser` (model, data, optimization, checkpoints and logging, Hub, model card) and add
their own group; `parse_pretrain_args` and `parse_train_args` are the one call each script makes. A flag that means the
same in both scripts is defined once, in a shared group; where the scripts want another default (`--logging_steps`)
each sets its own. The Hub's flags are `release.hub.add_hub_args`, which `bert-xml-push` parses too.

Below the parsers: what the flags mean for the plain functions of the loop (`accelerator_settings`, `data_source`,
`run_args`), which take no argparse namespace themselves.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from accelerate import DataLoaderConfiguration
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import SchedulerType

from ..data.code_systems import CODE_SYSTEMS

NOTE_KEYWORDS = 16  # train.py --note_keywords: measured on CodiEsp (docs/learning.md, "Real notes")
SYNONYM_QUERIES = 4  # train.py --label_queries_per_code for queries started from texts: measured on CodiEsp (same)
from ..data.readers import DatasetSource
from ..release.hub import add_hub_args
from ..release.model_card import DEFAULT_LICENSE
from .loop import WARMUP_RATIO
from .models import adapter_base_id

PRETRAIN_DESCRIPTION = (
    "Masked-language-model pretraining of BERT-XML's encoder from scratch on clinical notes, with Accelerate."
)
TRAIN_DESCRIPTION = (
    "Fine-tune BERT-XML for multi-label ICD coding, evaluate it as Edin et al. (2023) do, and push it to the Hub."
)
# What installs a tracker that --report_to names: TensorBoard comes with the package's `tracking` extra.
TRACKER_INSTALL = {"tensorboard": "pip install 'bert-xml[tracking]' (or tensorboard)"}
# Reading the loss makes the host wait for the device, so pretraining (thousands of short steps) reads it every 10
# steps; fine-tuning reads it every step anyway (its divergence guard), so it logs every step.
LOGGING_STEPS = {"pretrain": 10, "train": 1}


# ----------------------------------------------------------------------------------------------------- argparse types
def non_negative_int(value: str) -> int:
    """argparse type: a count that may be 0."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {value!r}")
    return int(value)


def positive_int(value: str) -> int:
    """argparse type for a count that must be at least 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


def model_folder(value: str) -> Path:
    """argparse type: a folder saved by train.py (found now, not as transformers' "Repo id must be..." later)."""
    if not (Path(value) / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{value}: not a model folder (no config.json); give a folder saved by train.py")
    return Path(value)


def model_folder_or_hub_id(value: str) -> str:
    """argparse type: a Hub id, or a path that must then be a `model_folder`."""
    if os.path.exists(value):
        model_folder(value)
    return value


def repo_id_argument(value: str) -> str:
    """argparse type of a Hub repo id ("org/name"): a path or a typo would otherwise end up in the card."""
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub repo id (org/name, not a local path)") from None
    return value


def checkpointing_steps(value: str) -> int | str:
    """argparse type for --checkpointing_steps: a positive step count or "epoch"."""
    if value == "epoch":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f'expected a positive number of steps or "epoch", got {value!r}')
    return int(value)


# ------------------------------------------------------------------------------------------------ the shared groups
def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model_name_or_path", help="Continue from this checkpoint (a folder or Hub id).")
    group.add_argument(
        "--config_name", help="Config (folder, config.json or Hub id) for a model trained from scratch."
    )
    group.add_argument(
        "--config_overrides",
        help='Override config values for a model trained from scratch, e.g. "hidden_size=128,num_hidden_layers=2".',
    )
    group.add_argument("--tokenizer_name", help="Tokenizer folder (from tokenizer_training) or Hub id.")
    group.add_argument(
        "--trust_remote_code", action="store_true",
        help="Run code from the tokenizer's Hub repo (only for a repo you trust). Datasets cannot run code (datasets "
        "4+ dropped loading scripts): --dataset_name names data files, a saved dataset or a Hub dataset without one.",
    )  # fmt: skip


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--train_file", nargs="+", help="Training files: .txt, .jsonl, .csv, .parquet, folders, globs.")
    group.add_argument("--validation_file", nargs="+", help="Validation files, same formats as --train_file.")
    group.add_argument(
        "--dataset_name",
        help="Instead of files: a Hub dataset id, a local folder of data files named by split (train.jsonl, "
        "validation.jsonl, ...) or a DatasetDict saved with save_to_disk; its train/validation(/test) splits are used "
        "(a --*_file flag replaces its split).",
    )  # fmt: skip
    group.add_argument("--dataset_config_name", help="The configuration (subset) of --dataset_name.")
    group.add_argument("--streaming", action="store_true", help="Read the training notes lazily (larger than memory).")
    group.add_argument("--text_column", default="text", help="Column holding the note in JSONL/CSV/Parquet files.")
    group.add_argument("--max_seq_length", type=int, help="Tokens per example (default: the tokenizer's limit).")
    group.add_argument("--preprocessing_num_workers", type=int, help="Processes for tokenisation (datasets.map).")
    group.add_argument(
        "--dataloader_num_workers", type=non_negative_int, default=0,
        help="Processes that collate (and mask) batches while the device trains (0: in the training process).",
    )  # fmt: skip
    group.add_argument("--output_dir", required=True, help="Where checkpoints, logs and the final model go.")
    group.add_argument(
        "--overwrite_output_dir", action="store_true", help="Start a new run in an output dir that holds another one."
    )


def add_optimization_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimization")
    group.add_argument("--per_device_train_batch_size", type=int, default=8)
    group.add_argument("--per_device_eval_batch_size", type=int, default=8)
    group.add_argument(
        "--learning_rate", type=float,
        help="Peak learning rate of AdamW (default: the script's rate for the model's width, default_learning_rate).",
    )  # fmt: skip
    group.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not on biases/LayerNorm).")
    group.add_argument("--num_train_epochs", type=int, default=3)
    group.add_argument("--max_train_steps", type=int, help="Optimizer steps in total; overrides --num_train_epochs.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    # Plain names: choices=list(SchedulerType) would print and accept "SchedulerType.LINEAR" in --help and errors.
    group.add_argument(
        "--lr_scheduler_type", default="linear", choices=[kind.value for kind in SchedulerType],
        help="Learning-rate schedule after warmup.",
    )  # fmt: skip
    warmup = group.add_mutually_exclusive_group()
    warmup.add_argument("--num_warmup_steps", type=int, help="Linear warmup steps.")
    warmup.add_argument(
        "--warmup_ratio", type=float, help=f"Linear warmup, a fraction of all optimizer steps (default {WARMUP_RATIO})."
    )
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping; 0 turns it off.")
    group.add_argument(
        "--mixed_precision", choices=["no", "fp16", "bf16"], help="Overrides the accelerate config's setting."
    )
    group.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for activation memory.")
    group.add_argument(
        "--torch_compile", nargs="?", const="inductor", metavar="BACKEND",
        help="Compile the model's forward with torch.compile (default backend inductor; the first steps compile).",
    )  # fmt: skip
    group.add_argument("--seed", type=int, default=42)
    group.add_argument(
        "--deterministic", action="store_true", help="Deterministic torch kernels (slower; exact reruns on GPU)."
    )


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpoints and tracking")
    group.add_argument(
        "--checkpointing_steps", type=checkpointing_steps,
        help='Save the training state every N steps, or "epoch": after every epoch and at the end of training.',
    )  # fmt: skip
    group.add_argument(
        "--checkpoints_total_limit", type=positive_int,
        help="Keep only the newest N checkpoints (each holds the optimizer state); default: keep all.",
    )  # fmt: skip
    group.add_argument(
        "--resume_from_checkpoint", help='Continue from a checkpoint folder, or "latest" in --output_dir/checkpoints.'
    )
    group.add_argument("--with_tracking", action="store_true", help="Log metrics to --report_to.")
    group.add_argument(
        "--report_to", default="tensorboard", choices=[tracker.value for tracker in LoggerType],
        help="Accelerate's tracker (all: every one installed); tensorboard comes with the `tracking` extra.",
    )  # fmt: skip
    group.add_argument(
        "--logging_steps", type=positive_int,
        help="Log the mean training loss and the throughput every N optimizer steps (default %(default)s for this "
        "script).",
    )  # fmt: skip
    group.add_argument("--eval_steps", type=int, help="Evaluate every N optimizer steps (default: every epoch).")


def add_card_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model card")
    group.add_argument(
        "--license", default=DEFAULT_LICENSE,
        help=f"License of the model, a Hub license id (apache-2.0, cc-by-nc-4.0, ...; default {DEFAULT_LICENSE}: "
        "none granted).",
    )  # fmt: skip
    group.add_argument(
        "--base_model_id", type=repo_id_argument,
        help="Hub id of --model_name_or_path when that is a local folder: the card's base_model (the Hub's model "
        "tree) and the base a LoRA adapter folder names.",
    )


def script_parser(description: str) -> argparse.ArgumentParser:
    """The flags both scripts share, in the order `--help` lists them."""
    parser = argparse.ArgumentParser(description=description)
    for add in (add_model_args, add_data_args, add_optimization_args, add_checkpoint_args, add_hub_args, add_card_args):
        add(parser)
    return parser


# ------------------------------------------------------------------------------------------ each script's own group
def add_pretraining_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pretraining")
    group.add_argument("--mlm_probability", type=float, default=0.15, help="Share of words masked (whole words).")


def add_coding_args(parser: argparse.ArgumentParser) -> None:
    coding = parser.add_argument_group("ICD coding")
    coding.add_argument(
        "--code_system", choices=CODE_SYSTEMS, default="icd10",
        help="What the codes are: icd10cm (diagnoses), icd10pcs (procedures), icd10 (both), icd9cm (diagnoses and "
        "procedures, with their dots: 401.9 vs 40.19), any (local codes, used as written). Stored in the config.",
    )
    coding.add_argument("--test_file", nargs="+", help="Test notes; scored once, with the validation threshold.")
    coding.add_argument("--label_column", default="labels", help="Column of the code lists (CSV: ';'-separated).")
    coding.add_argument("--id_column", default="id", help="Optional column of note ids (checked for duplicates).")
    coding.add_argument("--label_file", help="File of codes to predict, one per line (default: the training codes).")
    coding.add_argument("--min_code_count", type=int, default=1, help="Keep training codes seen at least this often.")
    coding.add_argument(
        "--label_space", choices=["training", "code_system"], default="training",
        help="training: the codes of the training notes (or --label_file), each with label-attention rows. "
        "code_system: those, plus every other billable code of --code_system (icd10cm, icd10pcs or icd10), scored by "
        "the description match alone, so that codes no training note carries can be predicted (zero-shot).",
    )
    coding.add_argument(
        "--description_match", action=argparse.BooleanOptionalAction,
        help="Add to each code's score how much the note reads like the code's official texts (TF-IDF cosine over "
        "the vocabulary: BertXMLDescriptionMatch). Default: on with --label_space code_system, else off.",
    )
    coding.add_argument(
        "--description_terms", type=int, default=32, help="Tokens of each code's texts that the match keeps."
    )
    coding.add_argument(
        "--code_descriptions",
        help="Your own texts of codes, one line per code: code<TAB>text[<TAB>another text...] (e.g. descriptions in "
        "the notes' language, CodiEsp's codes file). They replace the official (English) texts of the codes they "
        "list wherever texts are read: description-initialised queries, the description match, the pipeline.",
    )
    coding.add_argument(
        "--note_keywords", type=non_negative_int, default=NOTE_KEYWORDS,
        help="Words of its training notes added to the texts of each code of 6 training notes or more, where they "
        "start its query and its description match (the N most particular to the notes that carry it; any language): "
        "what lets codes start well when their texts are in another language than the notes. Never saved. 0: off.",
    )
    coding.add_argument(
        "--label_queries_per_code", type=positive_int, default=None,
        help="Label-attention queries of each code, its score the best of theirs, each started from one of its texts "
        "(MSMN's synonym queries). Default: 4 when queries start from the codes' texts, else 1. A coder given as "
        "--model_name_or_path keeps its own.",
    )
    coding.add_argument("--strict_codes", action="store_true", help="Malformed/unknown codes are errors, not counts.")
    coding.add_argument("--allow_non_billable", action="store_true", help="Do not report non-billable codes.")
    coding.add_argument("--head_learning_rate", type=float, default=3e-3, help="Learning rate of the label head.")
    coding.add_argument(
        "--init_label_queries_from_descriptions", action=argparse.BooleanOptionalAction,
        help="Start each code's attention query and output weight from the encoder's embedding of its official "
        "description and ICD-10-CM inclusion terms (codes without one keep random queries). Default: on for an "
        "encoder trained from scratch, where random queries let it collapse; off from a checkpoint, where they "
        "measured worse (docs/learning.md).",
    )
    coding.add_argument(
        "--mlm_loss_weight", type=float, default=0.0,
        help="Keep the masked-LM loss at this weight beside the coding loss: training notes get 15%% of their tokens "
        "masked, and the checkpoint's MLM head scores them (built-in BERT only). It keeps the encoder's token states "
        "apart, but measured no better MAP (docs/learning.md); 0, the default, is off.",
    )
    coding.add_argument(
        "--no_length_grouping", action="store_true",
        help="Batch training notes in random order instead of grouping notes of similar length (less padding).",
    )  # fmt: skip
    coding.add_argument(
        "--allow_random_encoder", action="store_true",
        help="Fine-tune even when --model_name_or_path's encoder weights do not load (e.g. weights saved under "
        "other names than its config.json says): the encoder then starts from random weights. Refused by default.",
    )
    coding.add_argument(
        "--early_stopping_patience", type=int, default=3,
        help="Stop after this many evaluations in a row that did not beat the best validation MAP by more than "
        "--early_stopping_threshold (0: never stop early).",
    )
    coding.add_argument(
        "--early_stopping_threshold", type=float, default=0.001,
        help="How much a validation MAP must beat the best so far to count as better for early stopping (a smaller "
        "gain is noise; the best weights are still kept). Default %(default)s; 0 counts any gain.",
    )


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--use_lora", action="store_true", help="Train LoRA adapters and the head, not the encoder.")
    lora.add_argument("--lora_r", type=int, default=8)
    lora.add_argument("--lora_alpha", type=int, default=16)
    lora.add_argument("--lora_dropout", type=float, default=0.1)
    lora.add_argument("--lora_target_modules", nargs="+", default=["query", "value"])
    lora.add_argument("--merge_lora", action="store_true", help="Save a plain model with the adapters merged in.")


# --------------------------------------------------------------------------------------------------------- parsing
def check_shared_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What a wrong command would otherwise find out only after loading data or a model."""
    if args.model_name_or_path is None and args.tokenizer_name is None:
        parser.error("--tokenizer_name is required when training from scratch")
    if args.torch_compile and args.torch_compile not in torch.compiler.list_backends(exclude_tags=()):
        parser.error(f"--torch_compile {args.torch_compile}: not a torch.compile backend; e.g. inductor, eager")
    if args.with_tracking:
        check_tracker_installed(parser, args.report_to)


def check_tracker_installed(parser: argparse.ArgumentParser, report_to: str) -> None:
    """Accelerate only warns when the tracker --report_to names is not installed, then logs nothing for the whole run
    (a wheel install has no tensorboard): refuse, with the line that installs it."""
    available = {str(tracker) for tracker in get_available_trackers()}
    if report_to == "all" and not available:
        parser.error(f"--with_tracking --report_to all: no tracker is installed; {TRACKER_INSTALL['tensorboard']}")
    if report_to != "all" and report_to not in available:
        install = TRACKER_INSTALL.get(report_to, f"pip install {report_to}")
        parser.error(f"--with_tracking --report_to {report_to}: {report_to} is not installed; {install}")


def parse_pretrain_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(PRETRAIN_DESCRIPTION)
    add_pretraining_args(parser)
    parser.set_defaults(logging_steps=LOGGING_STEPS["pretrain"])
    args = parser.parse_args(argv)
    if args.train_file is None and args.dataset_name is None:
        parser.error("--train_file or --dataset_name is required")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a streamed corpus has no known length)")
    check_shared_args(parser, args)
    return args


def parse_train_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(TRAIN_DESCRIPTION)
    add_coding_args(parser)
    add_lora_args(parser)
    parser.set_defaults(logging_steps=LOGGING_STEPS["train"])
    args = parser.parse_args(argv)
    if args.dataset_name is None and (not args.train_file or not args.validation_file):
        parser.error("--train_file and --validation_file (or --dataset_name) are required (the threshold and best "
                     "model come from the validation split)")  # fmt: skip
    check_shared_args(parser, args)
    if args.merge_lora and not args.use_lora:
        parser.error("--merge_lora needs --use_lora")
    if args.use_lora and not args.merge_lora:
        try:  # checked now, not after training: the adapter folder must name a base others can load
            args.base_model_id = adapter_base_id(args.base_model_id, args.model_name_or_path)
        except ValueError as error:
            parser.error(str(error))
    return args


# ------------------------------------------------------------------------------------ what the flags mean elsewhere
def accelerator_settings(args: argparse.Namespace, project_name: str) -> dict:
    """The keyword arguments of `loop.setup_accelerator` from the flags of the groups above."""
    return dict(
        seed=args.seed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        report_to=args.report_to if args.with_tracking else None,
        project_name=project_name,
        hparams=vars(args),
        deterministic=args.deterministic,
        # A stream is read by every rank (dispatching batches from rank 0 would need the whole corpus there). Batches
        # come from pinned memory on CUDA and are copied without blocking: a blocking copy waits for the queued steps.
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, dispatch_batches=False if args.streaming else None,
            non_blocking=torch.cuda.is_available(),
        ),  # fmt: skip
    )


def data_source(args: argparse.Namespace, split: str) -> "list[str] | DatasetSource | None":
    """What to read the `split` ("train", "validation", "test") from: its --*_file flag, else --dataset_name's split of
    that name (None when neither has it)."""
    files = getattr(args, f"{split}_file", None)
    if files:
        return files
    if args.dataset_name is None:
        return None
    source = DatasetSource(args.dataset_name, args.dataset_config_name)
    return source if split in source.split_names() else None


def run_args(args: argparse.Namespace) -> dict:
    """A script's arguments as JSON values: what `claim_output_dir` records and compares on resume."""
    return json.loads(json.dumps(vars(args), default=str))


__all__ = [
    "PRETRAIN_DESCRIPTION",
    "TRAIN_DESCRIPTION",
    "accelerator_settings",
    "add_card_args",
    "add_checkpoint_args",
    "add_coding_args",
    "add_data_args",
    "add_lora_args",
    "add_model_args",
    "add_optimization_args",
    "add_pretraining_args",
    "checkpointing_steps",
    "data_source",
    "non_negative_int",
    "parse_pretrain_args",
    "parse_train_args",
    "positive_int",
    "repo_id_argument",
    "run_args",
    "script_parser",
]
