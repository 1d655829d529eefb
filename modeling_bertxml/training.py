"""Training machinery shared by `pretrain.py` and `train.py` (not remote code).

Both scripts are flat Accelerate loops in the style of transformers' `examples/pytorch/*_no_trainer.py`; what they
share lives here so that it is written (and tested) once: argument groups, accelerator setup, the output-dir and
tokenizer/config checks that catch a wrong command before hours of compute, the optimizer and schedule, atomic
checkpoints with exact resume, the non-finite-loss guard and the final `save_pretrained`.
"""

import argparse
import json
import logging
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration, parse_flag_from_env, set_seed
from transformers import AutoTokenizer, PreTrainedTokenizerBase, SchedulerType, get_scheduler

from .configuration_bertxml import BertXMLConfig

# A plain logger: these helpers also run before any accelerate state exists (e.g. load_config in a notebook).
logger = logging.getLogger(__name__)

RUN_ARGS_FILE = "run_args.json"
# Arguments that may change between a run and its resumption without making it a different run.
RESUMABLE_ARG_CHANGES = frozenset(
    {
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "with_tracking",
        "report_to",
        "preprocessing_num_workers",
        "checkpointing_steps",
        "eval_steps",
        "max_train_steps",
        "num_train_epochs",
        "per_device_eval_batch_size",
        "output_dir",
    }
)


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


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--train_file", nargs="+", help="Training files: .txt, .jsonl, .csv, .parquet, folders, globs.")
    group.add_argument("--validation_file", nargs="+", help="Validation files, same formats as --train_file.")
    group.add_argument("--text_column", default="text", help="Column holding the note in JSONL/CSV/Parquet files.")
    group.add_argument("--max_seq_length", type=int, help="Tokens per example (default: the tokenizer's limit).")
    group.add_argument("--preprocessing_num_workers", type=int, help="Processes for tokenisation (datasets.map).")
    group.add_argument("--output_dir", required=True, help="Where checkpoints, logs and the final model go.")
    group.add_argument(
        "--overwrite_output_dir", action="store_true", help="Start a new run in an output dir that holds another one."
    )


def add_optimization_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimization")
    group.add_argument("--per_device_train_batch_size", type=int, default=8)
    group.add_argument("--per_device_eval_batch_size", type=int, default=8)
    group.add_argument("--learning_rate", type=float, default=5e-5, help="Peak learning rate of AdamW.")
    group.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not on biases/LayerNorm).")
    group.add_argument("--num_train_epochs", type=int, default=3)
    group.add_argument("--max_train_steps", type=int, help="Optimizer steps in total; overrides --num_train_epochs.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--lr_scheduler_type", type=SchedulerType, default="linear", choices=list(SchedulerType))
    warmup = group.add_mutually_exclusive_group()
    warmup.add_argument("--num_warmup_steps", type=int, help="Linear warmup steps (default 0).")
    warmup.add_argument("--warmup_ratio", type=float, help="Linear warmup as a fraction of all optimizer steps.")
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


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpoints and tracking")
    group.add_argument(
        "--checkpointing_steps", type=checkpointing_steps, help='Save the training state every N steps or "epoch".'
    )
    group.add_argument(
        "--resume_from_checkpoint", help='Continue from a checkpoint folder, or "latest" in --output_dir/checkpoints.'
    )
    group.add_argument("--with_tracking", action="store_true", help="Log metrics to --report_to.")
    group.add_argument("--report_to", default="tensorboard", help='Accelerate tracker(s): "tensorboard", "all", ...')
    group.add_argument("--eval_steps", type=int, help="Evaluate every N optimizer steps (default: every epoch).")


# ------------------------------------------------------------------------------------------- accelerator and disk
def setup_accelerator(
    args: argparse.Namespace, project_name: str, dataloader_config: DataLoaderConfiguration | None = None
) -> Accelerator:
    """One Accelerator for any launch (python, accelerate launch, multi-GPU, multi-node): the script never asks."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        # A seeded sampler makes each epoch's order a function of (seed, epoch), so a resumed run sees the same data.
        dataloader_config=dataloader_config or DataLoaderConfiguration(use_seedable_sampler=True),
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
    set_seed(args.seed, deterministic=getattr(args, "deterministic", False))
    if args.with_tracking:
        # Trackers (TensorBoard) take scalars only.
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers(project_name, config=hparams)
    return accelerator


def check_synchronised(state: PartialState) -> None:
    """Refuse a multi-process launch whose processes did not join one process group: each would train (and save)
    its own model. `accelerate launch --multi_gpu` does this on a CPU-only machine without ACCELERATE_USE_CPU=1.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        raise RuntimeError(
            f"{launched} processes were launched but they are not synchronised (each sees {state.num_processes}): "
            "on a CPU-only machine set ACCELERATE_USE_CPU=1 for a multi-process launch"
        )


def _run_args(args: argparse.Namespace) -> dict:
    return json.loads(json.dumps(vars(args), default=str))


def prepare_output_dir(args: argparse.Namespace) -> None:
    """Refuse to mix two runs in one output dir, fail early on an unwritable one, and record this run's arguments.

    Call it before `setup_accelerator` (trackers write into the dir). A dir that already holds something is accepted
    only when resuming the run recorded in its `run_args.json`, or with --overwrite_output_dir (which removes the old
    run's checkpoints so that "latest" can never resume the other run).
    """
    # The first state made fixes the process group for the run: read ACCELERATE_USE_CPU as Accelerator would, or
    # CPU ranks launched with it would come up unsynchronised.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_synchronised(state)
    output_dir = Path(args.output_dir)
    run_args, recorded = _run_args(args), output_dir / RUN_ARGS_FILE
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite_output_dir:
        if not args.resume_from_checkpoint:
            contents = ", ".join(sorted(path.name for path in output_dir.iterdir()))
            raise FileExistsError(
                f"--output_dir {output_dir} already holds a run ({contents}); pass --resume_from_checkpoint latest "
                "to continue it or --overwrite_output_dir to start over"
            )
        if recorded.is_file():
            _check_same_run(recorded, run_args)
    _check_writable(output_dir, state.process_index)
    state.wait_for_everyone()
    if state.is_main_process:
        if args.overwrite_output_dir and not args.resume_from_checkpoint:
            shutil.rmtree(output_dir / CheckpointManager.subdir, ignore_errors=True)
        _write_json_atomic(recorded, run_args)
    state.wait_for_everyone()


def _check_same_run(recorded: Path, run_args: dict) -> None:
    """A resumed run must be the recorded one: other data or hyperparameters would silently make a different model."""
    previous = json.loads(recorded.read_text())
    changed = sorted(
        key
        for key in set(previous) | set(run_args)
        if key not in RESUMABLE_ARG_CHANGES and previous.get(key) != run_args.get(key)
    )
    if changed:
        details = "; ".join(f"--{key}: {previous.get(key)!r} -> {run_args.get(key)!r}" for key in changed)
        raise ValueError(
            f"--output_dir {recorded.parent} holds a different run ({recorded} differs: {details}); resume with "
            "the same arguments, or pass --overwrite_output_dir"
        )


def _check_writable(output_dir: Path, rank: int) -> None:
    probe = output_dir / f".write_test_{rank}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"--output_dir {output_dir} is not writable: {error.strerror} ({error.filename})"
        ) from error


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


# -------------------------------------------------------------------------------------------- config and tokenizer
def load_tokenizer(args: argparse.Namespace, config: BertXMLConfig | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer from --tokenizer_name (else --model_name_or_path), checked against `config` when given."""
    name = args.tokenizer_name or args.model_name_or_path
    if name is None:
        raise ValueError("--tokenizer_name is required (train one with tokenizer_training/train_tokenizer.py)")
    # Our own model dirs carry an auto_map; the tokenizer itself is a plain tokenizers backend, no remote code.
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    if config is not None:
        check_tokenizer_matches_config(tokenizer, config, name)
    return tokenizer


def load_config(
    args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase | None = None, **overrides
) -> BertXMLConfig:
    """--config_name / --model_name_or_path (else BERT-base sizes), then --config_overrides, then `overrides`.

    A config made from scratch (no --config_name/--model_name_or_path) takes its vocabulary size and padding id from
    `tokenizer`; any other config must already agree with it (checked, with a clear error).
    """
    name = args.config_name or args.model_name_or_path
    if name is not None:
        config = BertXMLConfig.from_pretrained(name)
    else:
        config = BertXMLConfig()
        if tokenizer is not None:
            config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    if args.config_overrides:
        logger.info(f"Overriding config: {args.config_overrides}")
        try:
            config.update_from_string(args.config_overrides)
        except ValueError as error:
            raise ValueError(f"--config_overrides {args.config_overrides!r}: {error}") from error
    for key, value in overrides.items():
        setattr(config, key, value)
    if tokenizer is not None:
        check_tokenizer_matches_config(tokenizer, config, args.tokenizer_name or args.model_name_or_path)
    return config


def check_tokenizer_matches_config(tokenizer: PreTrainedTokenizerBase, config: BertXMLConfig, name: str) -> None:
    """A tokenizer id beyond the embedding table, or a padding id the model does not mask, fails much later and
    opaquely (an index error on some batch, or silently wrong embeddings): refuse it up front."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"tokenizer {name} has {len(tokenizer)} tokens but the config's vocab_size is {config.vocab_size}: "
            "use the tokenizer the model was trained with, or set vocab_size to at least the tokenizer's size"
        )
    if tokenizer.pad_token_id is not None and config.pad_token_id is not None:
        if tokenizer.pad_token_id != config.pad_token_id:
            raise ValueError(
                f"tokenizer {name} pads with id {tokenizer.pad_token_id} ({tokenizer.pad_token}) but the config's "
                f"pad_token_id is {config.pad_token_id}: the tokenizer and the model do not belong together"
            )


# ---------------------------------------------------------------------------------------- optimizer and schedule
def create_optimizer(
    model: torch.nn.Module, args: argparse.Namespace, param_groups: dict[str, float] | None = None
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm weights (every parameter of fewer than 2 dimensions).

    `param_groups` maps a parameter-name prefix to its own learning rate (e.g. `{"label_head.": 1e-3}` for a new
    head on a pretrained encoder); the other parameters use --learning_rate.
    """
    prefixes = param_groups or {}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = next((rate for prefix, rate in prefixes.items() if name.startswith(prefix)), args.learning_rate)
        decay = args.weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(parameter)
    return torch.optim.AdamW(
        [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()],
        lr=args.learning_rate,
    )


def create_scheduler(
    optimizer: torch.optim.Optimizer, args: argparse.Namespace, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup then decay over `num_training_steps` optimizer steps; pass the result to `accelerator.prepare`.

    A prepared scheduler steps once per process per optimizer step, hence the factor num_processes (as in
    transformers' no_trainer examples), so the schedule does not depend on how many GPUs run it.
    """
    if args.warmup_ratio is not None:
        warmup = math.ceil(args.warmup_ratio * num_training_steps)
    else:
        warmup = args.num_warmup_steps or 0
    processes = PartialState().num_processes
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup * processes,
        num_training_steps=num_training_steps * processes,
    )


# ------------------------------------------------------------------------------------------ checkpoints and resume
class OutputWriteError(RuntimeError):
    """Writing a checkpoint or model failed (disk full, permissions): what is already on disk is left as it was."""


@contextmanager
def _writing(target: Path, temporary: Path):
    """Turn an OSError while writing `temporary` (meant to become `target`) into one clear `OutputWriteError`."""
    try:
        yield
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise OutputWriteError(
            f"{target}: could not be written ({error.strerror or error}); nothing already saved there was changed"
        ) from None


class CheckpointManager:
    """Atomic, resumable checkpoints in `output_dir/checkpoints/step_{N}`.

    Every rank writes `accelerator.save_state` into a hidden temporary folder; the main process then writes
    `training_state.json` (the marker of a complete checkpoint) and renames the folder into place. A save killed at
    any point leaves either no `step_{N}` or one without the marker, which `resolve` never accepts.
    """

    subdir = "checkpoints"
    state_file = "training_state.json"

    def __init__(self, output_dir: str | os.PathLike):
        self.root = Path(output_dir) / self.subdir

    def is_complete(self, path: Path) -> bool:
        return (path / self.state_file).is_file()

    def save(
        self, accelerator: Accelerator, step: int, epoch: int, extra: dict | None = None, batches_in_epoch: int = 0
    ) -> Path:
        """Save the full training state after optimizer step `step`, `batches_in_epoch` dataloader batches into
        `epoch` (what `resume_dataloader` skips); `extra` (JSON) comes back from `load` too."""
        final, temporary = self.root / f"step_{step}", self.root / f".step_{step}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)  # left by a save that was killed
            temporary.mkdir(parents=True)
        accelerator.wait_for_everyone()
        with _writing(final, temporary):
            accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_in_epoch, **(extra or {})}
            with _writing(final, temporary):
                _write_json_atomic(temporary / self.state_file, state)
            if final.exists():  # a rerun that reached the same step: replace, never merge
                stale = self.root / f".step_{step}.old"
                os.replace(final, stale)
                os.replace(temporary, final)
                shutil.rmtree(stale)
            else:
                os.replace(temporary, final)
            _fsync_dir(self.root)
            logger.info(f"Saved checkpoint {final}")
        accelerator.wait_for_everyone()
        return final

    def resolve(self, resume_from_checkpoint: str | None) -> Path | None:
        """The checkpoint to resume from: a folder, or "latest" (None when this run has no complete one yet)."""
        if not resume_from_checkpoint:
            return None
        if resume_from_checkpoint == "latest":
            complete = [p for p in self.root.glob("step_*") if p.name[5:].isdigit() and self.is_complete(p)]
            return max(complete, key=lambda p: int(p.name[5:]), default=None)
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
        if not self.is_complete(path):
            raise ValueError(
                f"--resume_from_checkpoint {path}: incomplete checkpoint (no {self.state_file}; its save was "
                "interrupted): pick an earlier one or use latest"
            )
        return path

    def load(self, accelerator: Accelerator, path: Path) -> dict:
        """Restore model, optimizer, scheduler and RNG states; return what `save` recorded (step, epoch,
        batches_in_epoch and the keys of extra)."""
        accelerator.load_state(str(path))
        state = json.loads((path / self.state_file).read_text())
        logger.info(f"Resumed from {path} at step {state['step']} (epoch {state['epoch']})")
        return state


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: without it a power cut may forget the rename even though the files were written."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def resume_dataloader(accelerator: Accelerator, dataloader, batches_done: int):
    """The dataloader of the resumed epoch, without the `batches_done` batches the checkpoint had already seen.

    Call `set_epoch(epoch)` on the result as on the original. For a bit-exact resume, also give the `DataLoader` its
    own `generator`: otherwise starting the epoch draws from the global RNG (dropout's), which the resumed run has just
    restored to the checkpoint's state while the uninterrupted run drew it before the checkpoint.
    """
    if batches_done <= 0:
        return dataloader
    return accelerator.skip_first_batches(dataloader, batches_done)


# ---------------------------------------------------------------------------------------------- guards and saving
class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops so the last good checkpoint is not overwritten."""


def check_finite(loss: torch.Tensor, step: int, accelerator: Accelerator | None = None) -> None:
    """Raise `NonFiniteLossError` before a NaN/inf loss reaches the weights.

    With `accelerator`, the check is agreed across ranks (one bad rank stops all of them at the same step, instead of
    leaving the others waiting forever in the next all-reduce).
    """
    bad = (~torch.isfinite(loss.detach())).any().float()
    if accelerator is not None and accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if bad.item() > 0:
        raise NonFiniteLossError(
            f"loss is {loss.detach().float().mean().item()} at optimizer step {step}: training stopped before the "
            "update; the last good checkpoint is kept. Lower --learning_rate, add warmup, or check --mixed_precision."
        )


def save_model(
    accelerator: Accelerator, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: str
) -> None:
    """`save_pretrained` (safetensors) of model and tokenizer into `output_dir`, never leaving a half-written file.

    All ranks gather the state dict (FSDP/DeepSpeed shard it); the main process writes into a temporary folder and
    then moves each file into place with `os.replace`, `config.json` last so a loadable config implies its weights.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        output, temporary = Path(output_dir), Path(output_dir) / ".model.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        with _writing(output, temporary):
            accelerator.unwrap_model(model).save_pretrained(
                temporary, state_dict=state_dict, save_function=accelerator.save
            )
            tokenizer.save_pretrained(temporary)
        files = sorted(temporary.iterdir(), key=lambda p: p.name == "config.json")
        for file in files:
            os.replace(file, output / file.name)
        temporary.rmdir()
        logger.info(f"Saved model and tokenizer to {output}")
    accelerator.wait_for_everyone()


__all__ = [
    "CheckpointManager",
    "NonFiniteLossError",
    "OutputWriteError",
    "add_checkpoint_args",
    "add_data_args",
    "add_model_args",
    "add_optimization_args",
    "check_finite",
    "check_synchronised",
    "check_tokenizer_matches_config",
    "create_optimizer",
    "create_scheduler",
    "load_config",
    "load_tokenizer",
    "prepare_output_dir",
    "resume_dataloader",
    "save_model",
    "setup_accelerator",
]
