"""Training machinery shared by `pretrain.py` and `train.py` (not remote code).

Both scripts are flat Accelerate loops in the style of transformers' `examples/pytorch/*_no_trainer.py`; what they
share lives here so that it is written (and tested) once: argument groups, accelerator setup, the tokenizer/config
checks that catch a wrong command before hours of compute, the optimizer and schedule, and one optimizer step with
its epoch iterator and divergence guards. Every function takes plain values (argparse stays in the scripts), so a
notebook can call them; what is written to disk lives in `checkpointing`.
"""

import argparse
import json
import logging
import math
import os
from collections.abc import Iterator

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    SchedulerType,
    get_scheduler,
)

from .checkpointing import LOGS_DIR, CheckpointManager, Progress, check_synchronised, record_output
from ..model.configuration_bertxml import BertXMLConfig
from ..data.readers import DatasetSource

# A plain logger: these helpers also run before any accelerate state exists (e.g. load_config in a notebook).
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- argument groups
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


def non_negative_int(value: str) -> int:
    """argparse type: a count that may be 0."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {value!r}")
    return int(value)


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


STREAMING_SHUFFLE_BUFFER = 10_000  # notes (pretrain.py) or tokenised notes (train.py) held to shuffle a stream
WARMUP_RATIO = 0.06  # BERT's and RoBERTa's: the high default rates below need it, a post-LayerNorm BERT most


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


def default_learning_rate(hidden_size: int, rate_at_256: float) -> float:
    """A script's default peak rate for a model `hidden_size` wide: `rate_at_256 * 256 / hidden_size`.

    Adam moves every weight by about the learning rate per step, so a unit's output moves in proportion to its fan-in:
    the fastest stable rate falls as 1 / width (muP's rule for Adam). A fixed small rate (5e-5, tuned for fine-tuning
    BERT-base) left the narrow models from scratch on their plateaus (README: "What mattered").
    """
    return rate_at_256 * 256 / hidden_size


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
    group.add_argument("--seed", type=int, default=42)
    group.add_argument(
        "--deterministic", action="store_true", help="Deterministic torch kernels (slower; exact reruns on GPU)."
    )


def checkpointing_steps(value: str) -> int | str:
    """argparse type for --checkpointing_steps: a positive step count or "epoch"."""
    if value == "epoch":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f'expected a positive number of steps or "epoch", got {value!r}')
    return int(value)


def positive_int(value: str) -> int:
    """argparse type for a count that must be at least 1."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


def checkpoint_due(checkpointing_steps: int | str | None, step: int, last: bool) -> bool:
    """Whether to save after optimizer step `step` inside an epoch: every N steps, or at the `last` step of training
    with "epoch" (training that ends inside an epoch, or before the epoch-end save, still leaves its last epoch)."""
    if isinstance(checkpointing_steps, int):
        return step % checkpointing_steps == 0
    return checkpointing_steps == "epoch" and last


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
    group.add_argument("--report_to", default="tensorboard", help='Accelerate tracker(s): "tensorboard", "all", ...')
    group.add_argument("--eval_steps", type=int, help="Evaluate every N optimizer steps (default: every epoch).")


def accelerator_settings(args: argparse.Namespace, project_name: str) -> dict:
    """The keyword arguments of `setup_accelerator` from the flags of the groups above (for the scripts)."""
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


def steps_per_epoch(loader, num_examples: int, accelerator: Accelerator) -> int:
    """Optimizer steps in one pass over a prepared (sharded) training loader. A streamed dataset has no length: its
    batches per process come from the example count (known after the validating pass), as the sharded loader
    deals whole batches out to the processes in turn."""
    try:
        batches = len(loader)
    except TypeError:
        batches = math.ceil(num_examples / (loader.batch_size * accelerator.num_processes))
    return math.ceil(batches / accelerator.gradient_accumulation_steps)


# ---------------------------------------------------------------------------------------------------- accelerator
def setup_accelerator(
    output_dir: str | os.PathLike,
    *,
    seed: int = 42,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str | None = None,
    report_to: str | None = None,
    project_name: str = "bert-xml",
    hparams: dict | None = None,
    deterministic: bool = False,
    dataloader_config: DataLoaderConfiguration | None = None,
) -> Accelerator:
    """One Accelerator for any launch (python, accelerate launch, multi-GPU, multi-node): the script never asks.

    `report_to` names the tracker(s) (e.g. "tensorboard"; None: no tracking), which log `hparams` once.
    """
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=os.path.join(output_dir, LOGS_DIR)
        ),
        # A seeded sampler makes each epoch's order a function of (seed, epoch), so a resumed run sees the same data.
        # Non-blocking copies of (pinned) batches on CUDA: a blocking copy waits for every step queued before it.
        dataloader_config=dataloader_config
        or DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=torch.cuda.is_available()),
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state)  # every rank: its own rank, device and the process count
    check_synchronised(accelerator.state)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(seed, deterministic=deterministic)
    if report_to:
        if accelerator.is_main_process:  # recorded before the trackers create it, so a later overwrite deletes it
            record_output(output_dir, LOGS_DIR)
        # Trackers (TensorBoard) take scalars only.
        scalars = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in (hparams or {}).items()}
        accelerator.init_trackers(project_name, config=scalars)
    return accelerator


def finish_trackers(accelerator: Accelerator) -> None:
    """`Accelerator.end_training` but the process group's teardown, which `claim_output_dir` does after the run."""
    for tracker in accelerator.trackers:
        tracker.finish()


def log_training(
    accelerator: Accelerator, progress: Progress, loss: float, scheduler: torch.optim.lr_scheduler.LRScheduler,
    **rates: float,
) -> None:
    """Log a training step under the tags both scripts share: `train/loss`, `train/learning_rate` (the first
    parameter group's: the encoder's), `train/epoch` and `train/tokens`, so their runs compare in one TensorBoard;
    `rates` (tokens_per_second, mfu) under `train/` too."""
    values = {"loss": loss, "learning_rate": scheduler.get_last_lr()[0], "epoch": progress.epoch, **rates}
    accelerator.log({f"train/{key}": value for key, value in {**values, "tokens": progress.tokens}.items()},
                    step=progress.step)  # fmt: skip


def log_validation(accelerator: Accelerator, metrics: dict[str, float], step: int) -> None:
    """Log an evaluation as `validation/<metric>` (the key of the script's results file)."""
    accelerator.log({f"validation/{key}": value for key, value in metrics.items()}, step=step)


def run_args(args: argparse.Namespace) -> dict:
    """A script's arguments as JSON values: what `claim_output_dir` records and compares on resume."""
    return json.loads(json.dumps(vars(args), default=str))


# -------------------------------------------------------------------------------------------- config and tokenizer
def load_tokenizer(
    name: str | os.PathLike, config: BertXMLConfig | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer of `name` (a folder from tokenizer_training, a model folder or a Hub id), checked against
    `config` when given."""
    # Our own model dirs carry an auto_map; the tokenizer itself is a plain tokenizers backend, no remote code.
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if config is not None:
        check_tokenizer_matches_config(tokenizer, config, str(name))
    return tokenizer


class ConfigError(ValueError):
    """A config value (from --config_overrides or a config file) that BERT-XML cannot run."""


# Checkpoints whose weights load into the built-in BERT encoder; any other model type is used as a backbone.
BUILT_IN_MODEL_TYPES = ("bertxml", "bert")


def is_backbone_checkpoint(name: str | os.PathLike | None) -> bool:
    """Whether `name` is a checkpoint of another encoder (RoBERTa, ModernBERT, ...): its config.json names a
    `model_type` that is neither BERT-XML's nor BERT's. Its encoder becomes the coding model's backbone."""
    if name is None:
        return False
    model_type = PretrainedConfig.get_config_dict(name)[0].get("model_type")
    return model_type is not None and model_type not in BUILT_IN_MODEL_TYPES


def load_config(
    name: str | os.PathLike | None = None,
    config_overrides: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **values,
) -> BertXMLConfig:
    """The config of `name` (else BERT-base sizes), then `config_overrides` ("hidden_size=128,..."), then `values`.

    A config made from scratch (no `name`) has rotary positions (learned absolute ones keep MLM at the unigram
    plateau, see `BertXMLRotarySelfAttention`) and takes its vocabulary size and padding id from `tokenizer`; any
    other config must already agree with it (checked, with a clear error). The config of another encoder
    (`is_backbone_checkpoint`) becomes the `backbone_config` of a BERT-XML config.
    """
    if is_backbone_checkpoint(name):
        try:
            config = BertXMLConfig(backbone_config=AutoConfig.from_pretrained(name))
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from error
        logger.info(f"{name} is a {config.backbone_config.model_type} checkpoint: its encoder is the backbone")
    elif name is not None:
        config = BertXMLConfig.from_pretrained(name)
    else:
        config = BertXMLConfig(position_embedding_type="rotary")
        if tokenizer is not None:
            config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    if config_overrides:
        logger.info(f"Overriding config: {config_overrides}")
        try:
            config.update_from_string(config_overrides)
        except ValueError as error:
            raise ConfigError(f"--config_overrides {config_overrides!r}: {error}") from error
    for key, value in values.items():
        setattr(config, key, value)
    try:
        config.check_values()
    except ValueError as error:
        where = f"--config_overrides {config_overrides!r}: " if config_overrides else ""
        raise ConfigError(f"{where}{error}") from error
    if tokenizer is not None:
        check_tokenizer_matches_config(tokenizer, config, tokenizer.name_or_path)
    return config


def check_tokenizer_matches_config(tokenizer: PreTrainedTokenizerBase, config: BertXMLConfig, name: str) -> None:
    """Refuse a tokenizer whose vocabulary or padding id is not the model's, before hours of compute.

    More tokens than embeddings fail later and opaquely (an index error on some batch); fewer mean another tokenizer
    whose ids name other words than the ones the model learnt (silently wrong), except in a backbone, whose table
    may be padded for speed (ModernBERT: 50,368 rows for 50,280 tokens); another padding id is not masked.
    """
    padded_table = config.backbone_config is not None and len(tokenizer) < config.vocab_size
    if len(tokenizer) != config.vocab_size and not padded_table:
        raise ConfigError(
            f"tokenizer {name} has {len(tokenizer)} tokens but the config's vocab_size is {config.vocab_size}: "
            "use the tokenizer the model was trained with (a new model from scratch takes its vocab_size from the "
            "tokenizer)"
        )
    if tokenizer.pad_token_id is not None and config.pad_token_id is not None:
        if tokenizer.pad_token_id != config.pad_token_id:
            raise ConfigError(
                f"tokenizer {name} pads with id {tokenizer.pad_token_id} ({tokenizer.pad_token}) but the config's "
                f"pad_token_id is {config.pad_token_id}: the tokenizer and the model do not belong together"
            )


# ---------------------------------------------------------------------------------------- optimizer and schedule
def create_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float = 0.0,
    param_groups: dict[str, float] | None = None,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm weights (every parameter of fewer than 2 dimensions).

    `param_groups` maps a parameter-name prefix to its own learning rate (e.g. `{"label_head.": 1e-3}` for a new
    head on a pretrained encoder); the other parameters use `learning_rate`. `fused`: one kernel updates every
    parameter (for CUDA, see `fused_optimizer`), instead of a dozen launches per parameter group.
    """
    prefixes = param_groups or {}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = next((rate for prefix, rate in prefixes.items() if name.startswith(prefix)), learning_rate)
        decay = weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(parameter)
    return torch.optim.AdamW(
        [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()],
        lr=learning_rate,
        fused=fused or None,
    )


def fused_optimizer(accelerator: Accelerator) -> bool:
    """Whether AdamW should be fused: on CUDA, where its per-parameter kernel launches are a visible share of a
    step; elsewhere the default (foreach) implementation is kept."""
    return accelerator.device.type == "cuda"


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    name: str | SchedulerType = "linear",
    num_warmup_steps: int | None = None,
    warmup_ratio: float | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup (`num_warmup_steps`, or `warmup_ratio` of all steps, by default WARMUP_RATIO) then decay over
    `num_training_steps` optimizer steps; pass the result to `accelerator.prepare`.

    A prepared scheduler steps once per process per optimizer step, hence the factor num_processes (as in
    transformers' no_trainer examples), so the schedule does not depend on how many GPUs run it.
    """
    if num_warmup_steps is None:
        num_warmup_steps = math.ceil((WARMUP_RATIO if warmup_ratio is None else warmup_ratio) * num_training_steps)
    processes = PartialState().num_processes
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=num_warmup_steps * processes,
        num_training_steps=num_training_steps * processes,
    )


# ---------------------------------------------------------------------------------------- one optimizer step
# A loss this many times that of a uniform guess (ln V for MLM, ln 2 per code for BCE) means the run diverged:
# healthy runs start near 1x and go down.
DIVERGENCE_FACTOR = 10


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became non-finite or exploded: training stops so the last good checkpoint is kept."""


def _any_rank(bad: bool, accelerator: Accelerator | None) -> bool:
    """Agree across ranks: one bad rank stops all of them at the same step, instead of leaving the others waiting
    forever in the next all-reduce."""
    flag = torch.tensor(float(bad), device=accelerator.device if accelerator else "cpu")
    if accelerator is not None and accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    return flag.item() > 0


def check_loss(
    loss: torch.Tensor, step: int, uniform_loss: float, accelerator: Accelerator | None = None
) -> None:
    """Raise `TrainingDivergedError` before a non-finite or exploded loss reaches the weights."""
    value = loss.detach().float().mean().item()
    limit = DIVERGENCE_FACTOR * uniform_loss
    if _any_rank(not math.isfinite(value) or value > limit, accelerator):
        raise TrainingDivergedError(
            f"loss is {value:.4g} at optimizer step {step} (a uniform guess scores {uniform_loss:.3g}; the limit is "
            f"{limit:.3g}): training diverged and stopped before the update; the last good checkpoint is kept. "
            "Lower --learning_rate, add warmup, or check --mixed_precision."
        )


def check_parameters(model: torch.nn.Module, step: int, accelerator: Accelerator) -> None:
    """Raise `TrainingDivergedError` when a weight is NaN/inf: such weights must never become a checkpoint."""
    bad = any(not torch.isfinite(p.detach()).all() for p in model.parameters())
    if _any_rank(bad, accelerator):
        raise TrainingDivergedError(
            f"non-finite weights after optimizer step {step}: training diverged and stopped without saving them; "
            "the last good checkpoint is kept. Lower --learning_rate or add warmup."
        )


def epoch_batches(accelerator: Accelerator, loader, progress: Progress) -> Iterator[dict]:
    """The batches of `progress.epoch` not trained yet (all, unless resuming mid-epoch), counted in `progress`.

    For a bit-exact resume, also give the `DataLoader` its own `generator`: otherwise starting the epoch draws from
    the global RNG (dropout's), which the resumed run has just restored to the checkpoint's state while the
    uninterrupted run drew it before the checkpoint.
    """
    loader.set_epoch(progress.epoch)
    batches = loader
    if progress.batches_in_epoch > 0:
        batches = accelerator.skip_first_batches(loader, progress.batches_in_epoch)
        batches.set_epoch(progress.epoch)
    for batch in batches:
        progress.batches_in_epoch += 1
        yield batch


def training_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: dict,
    progress: Progress,
    uniform_loss: float,
    max_grad_norm: float = 1.0,
    check_divergence: bool = True,
) -> torch.Tensor:
    """Train on one micro-batch: forward, divergence guard, backward, and at the end of an accumulation window
    clipping, update and `progress.step += 1` (`accelerator.sync_gradients` says whether it stepped).
    Returns the micro-batch's loss as a detached device tensor: reading it (`.item()`) waits for the device.

    `check_divergence=False` skips the guard, which reads the loss and so makes the host wait for the device every
    step; a loop that does so checks its losses itself now and then (`check_loss`), and `save_checkpoint` still
    refuses diverged weights."""
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        if check_divergence:
            check_loss(loss, progress.step + 1, uniform_loss, accelerator)
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    progress.tokens += batch["input_ids"].numel() * accelerator.num_processes
    if accelerator.sync_gradients:
        progress.step += 1
    return loss.detach().float()


@torch.no_grad()
def check_weights(
    model: torch.nn.Module, batch: dict | None, step: int, uniform_loss: float, accelerator: Accelerator
) -> None:
    """Raise `TrainingDivergedError` for weights that diverged with their last update: non-finite, or scoring the
    batch they were just trained on above the divergence limit (a huge learning rate gives finite 1e30 weights
    whose next loss is NaN). Scored in eval mode: no dropout, so no random draw that a resumed run would miss."""
    check_parameters(model, step, accelerator)
    if batch is None:  # e.g. the end of an epoch that a resumed run had already trained
        return
    was_training = model.training
    model.eval()
    loss = model(**batch).loss
    model.train(was_training)
    check_loss(loss, step, uniform_loss, accelerator)


def save_checkpoint(
    accelerator: Accelerator,
    model: torch.nn.Module,
    checkpoints: CheckpointManager,
    progress: Progress,
    last_batch: dict | None,
    uniform_loss: float,
    extra: dict | None = None,
) -> None:
    """A checkpoint of sound weights only (`check_weights` on `last_batch`): a diverged model stops the run instead
    of becoming the "last good" checkpoint."""
    check_weights(model, last_batch, progress.step, uniform_loss, accelerator)
    checkpoints.save(accelerator, progress, extra)


__all__ = [
    "BUILT_IN_MODEL_TYPES",
    "ConfigError",
    "DIVERGENCE_FACTOR",
    "STREAMING_SHUFFLE_BUFFER",
    "WARMUP_RATIO",
    "TrainingDivergedError",
    "accelerator_settings",
    "add_checkpoint_args",
    "add_data_args",
    "add_model_args",
    "add_optimization_args",
    "check_loss",
    "checkpoint_due",
    "check_parameters",
    "check_tokenizer_matches_config",
    "check_weights",
    "create_optimizer",
    "create_scheduler",
    "data_source",
    "default_learning_rate",
    "epoch_batches",
    "finish_trackers",
    "fused_optimizer",
    "is_backbone_checkpoint",
    "load_config",
    "load_tokenizer",
    "log_training",
    "log_validation",
    "positive_int",
    "run_args",
    "save_checkpoint",
    "setup_accelerator",
    "steps_per_epoch",
    "training_step",
]
