"""The parts of the Accelerate loop that `pretrain.py` and `train.py` share, written (and tested) once.

Both scripts are flat loops in the style of transformers' `examples/pytorch/*_no_trainer.py`: accelerator setup, the
optimizer and schedule, one optimizer step with its epoch iterator and divergence guards, the training log every
--logging_steps, and checkpoints of sound weights only. Every function takes plain values (the flags are read in
`arguments`), so a notebook can call them; what is written to disk lives in `checkpointing`.
"""

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from .checkpointing import LOGS_DIR, CheckpointManager, Progress, check_synchronised, record_output
from .throughput import Throughput, logged_rates

# A plain logger: these helpers also run before any accelerate state exists (e.g. in a notebook).
logger = logging.getLogger(__name__)

STREAMING_SHUFFLE_BUFFER = 10_000  # notes (pretrain.py) or tokenised notes (train.py) held to shuffle a stream
WARMUP_RATIO = 0.06  # BERT's and RoBERTa's: the high default rates below need it, a post-LayerNorm BERT most


def default_learning_rate(hidden_size: int, rate_at_256: float) -> float:
    """A script's default peak rate for a model `hidden_size` wide: `rate_at_256 * 256 / hidden_size`.

    Adam moves every weight by about the learning rate per step, so a unit's output moves in proportion to its fan-in:
    the fastest stable rate falls as 1 / width (muP's rule for Adam). A fixed small rate (5e-5, tuned for fine-tuning
    BERT-base) left the narrow models from scratch on their plateaus (docs/learning.md, "What mattered").
    """
    return rate_at_256 * 256 / hidden_size


def checkpoint_due(checkpointing_steps: int | str | None, step: int, last: bool) -> bool:
    """Whether to save after optimizer step `step` inside an epoch: every N steps, or at the `last` step of training
    with "epoch" (training that ends inside an epoch, or before the epoch-end save, still leaves its last epoch)."""
    if isinstance(checkpointing_steps, int):
        return step % checkpointing_steps == 0
    return checkpointing_steps == "epoch" and last


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


def check_on_main_process(accelerator: Accelerator, check: Callable[[], None], error: type[Exception]) -> None:
    """Run `check` (one that asks the Hub, say) on the main process only, and raise the `error` it raised on every
    process: the others would otherwise wait for the main one in their next collective, forever."""
    found = [None]
    if accelerator.is_main_process:
        try:
            check()
        except error as failure:
            found = [str(failure)]
    if accelerator.num_processes > 1:
        broadcast_object_list(found)
    if found[0] is not None:
        raise error(found[0])


def finish_trackers(accelerator: Accelerator) -> None:
    """`Accelerator.end_training` but the process group's teardown, which `claim_output_dir` does after the run."""
    for tracker in accelerator.trackers:
        tracker.finish()


# ---------------------------------------------------------------------------------------- optimizer and schedule
def create_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float = 0.0,
    param_groups: dict[torch.nn.Module, float] | None = None,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm weights (every parameter of fewer than 2 dimensions).

    `param_groups` maps a submodule of `model` to its own learning rate (e.g. `{model.label_head: 1e-3}` for a new
    head on a pretrained encoder); the other parameters use `learning_rate`. `fused`: one kernel updates every
    parameter (for CUDA, see `fused_optimizer`), instead of a dozen launches per parameter group.
    """
    rates = {id(parameter): rate for module, rate in (param_groups or {}).items() for parameter in module.parameters()}
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        lr = rates.get(id(parameter), learning_rate)
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


# ------------------------------------------------------------------------------------------------ the training log
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


@dataclass
class LossWindow:
    """The mean training loss since it was last taken, summed on the device so that the host waits for it only when
    it is read."""

    total: float | torch.Tensor = 0.0
    count: int = 0

    def add(self, loss: torch.Tensor) -> None:
        self.total, self.count = self.total + loss, self.count + 1

    def take_mean(self) -> torch.Tensor:
        mean = self.total / max(self.count, 1)
        self.total, self.count = 0.0, 0
        return torch.as_tensor(mean)


class TrainingLog:
    """What both loops report every `logging_steps` optimizer steps: the mean loss of the micro-batches since the last
    report and the steady-state tokens/s on the progress bar, and with `with_tracking` the `train/*` scalars
    (`log_training`). Reading the loss makes the host wait for the device, so it happens only then.

    `uniform_loss`: a loop whose steps skip the divergence guard (`training_step(check_divergence=False)`) has each
    reported loss checked here instead (`check_loss`).
    """

    def __init__(
        self, accelerator: Accelerator, progress: Progress, total_steps: int, throughput: Throughput,
        logging_steps: int = 1, with_tracking: bool = False, uniform_loss: float | None = None,
    ):  # fmt: skip
        self.accelerator, self.throughput, self.losses = accelerator, throughput, LossWindow()
        self.logging_steps, self.with_tracking, self.uniform_loss = logging_steps, with_tracking, uniform_loss
        self.bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_local_main_process)

    def micro_batch(self, loss: torch.Tensor, tokens: int | torch.Tensor) -> None:
        """Count a trained micro-batch: its loss (a device tensor) and its tokens (see `Throughput.add_tokens`)."""
        self.losses.add(loss)
        self.throughput.add_tokens(tokens)

    def optimizer_step(self, progress: Progress, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        """After each optimizer step (`progress.step` counted): the bar moves, and every `logging_steps` the report."""
        self.throughput.optimizer_step()
        self.bar.update(1)
        if progress.step % self.logging_steps:
            return
        loss = self.losses.take_mean()
        if self.uniform_loss is not None:
            check_loss(loss, progress.step, self.uniform_loss, self.accelerator)
        rates = logged_rates(self.throughput.results())
        self.bar.set_postfix(loss=f"{loss.item():.4f}", tokens_per_s=f"{rates['tokens_per_second']:,.0f}")
        if self.with_tracking:
            log_training(self.accelerator, progress, loss.item(), scheduler, **rates)

    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.close()


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
    "DIVERGENCE_FACTOR",
    "STREAMING_SHUFFLE_BUFFER",
    "WARMUP_RATIO",
    "LossWindow",
    "TrainingDivergedError",
    "TrainingLog",
    "check_loss",
    "check_on_main_process",
    "check_parameters",
    "check_weights",
    "checkpoint_due",
    "create_optimizer",
    "create_scheduler",
    "default_learning_rate",
    "epoch_batches",
    "finish_trackers",
    "fused_optimizer",
    "log_training",
    "log_validation",
    "save_checkpoint",
    "setup_accelerator",
    "steps_per_epoch",
    "training_step",
]
