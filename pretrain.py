"""Masked-language-model pretraining of BERT-XML's encoder from scratch on clinical notes, with Accelerate.

The same command runs on a laptop CPU, one GPU, many GPUs (DDP, FSDP, DeepSpeed) or several nodes: the launch
decides (`python pretrain.py ...` or `accelerate launch [--config_file configs/accelerate/...] pretrain.py ...`), the
script never asks. Modelled on transformers' `examples/pytorch/language-modeling/run_mlm_no_trainer.py`:

    python pretrain.py --tokenizer_name tokenizer/ --train_file notes/*.txt --validation_file dev.txt \
        --config_overrides "hidden_size=256,num_hidden_layers=4" --output_dir runs/mlm --checkpointing_steps 1000

Notes are tokenised with `datasets.map`, concatenated and cut into `--max_seq_length` blocks (no padding is wasted),
and masked by whole words. Checkpoints are atomic and `--resume_from_checkpoint latest` continues at the same step
and data position. The output dir ends with a `save_pretrained` model (+ tokenizer) that loads with
`AutoModelForMaskedLM` and whose encoder loads into `BertXMLForMultiLabelCoding` for fine-tuning.
"""

import argparse
import itertools
import json
import math
import os
import struct
import time
import zlib
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from modeling_bertxml import BertXMLConfig, BertXMLForMaskedLM
from modeling_bertxml.readers import NotesError, load_text_dataset
from modeling_bertxml.training import (
    CheckpointManager,
    NonFiniteLossError,
    OutputWriteError,
    add_checkpoint_args,
    add_data_args,
    add_model_args,
    add_optimization_args,
    check_finite,
    create_optimizer,
    create_scheduler,
    load_config,
    load_tokenizer,
    prepare_output_dir,
    resume_dataloader,
    save_model,
    setup_accelerator,
)

logger = get_logger(__name__)

STREAMING_SHUFFLE_BUFFER = 10_000  # notes held in memory to shuffle a streamed corpus
RESULTS_FILE = "train_results.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    add_data_args(parser)
    add_optimization_args(parser)
    add_checkpoint_args(parser)
    group = parser.add_argument_group("pretraining")
    group.add_argument("--mlm_probability", type=float, default=0.15, help="Share of words masked (whole words).")
    group.add_argument("--streaming", action="store_true", help="Read the corpus lazily (larger than memory).")
    group.add_argument("--logging_steps", type=int, default=10, help="Log the training loss every N steps.")
    args = parser.parse_args(argv)
    if args.train_file is None:
        parser.error("--train_file is required")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a streamed corpus has no known length)")
    if args.model_name_or_path is None and args.tokenizer_name is None:
        parser.error("--tokenizer_name is required when training from scratch")
    return args


# ------------------------------------------------------------------------------------------------------------ data
def pack_notes(examples: dict, tokenizer: PreTrainedTokenizerBase, block_size: int) -> dict:
    """Tokenise a batch of notes, concatenate them and cut the stream into `block_size` blocks (the tail is dropped).

    Offsets and the special-token mask travel with the ids: whole-word masking finds word boundaries from offsets,
    and each note keeps its own [CLS] ... [SEP], so no word spans two notes.
    """
    encoded = tokenizer(
        examples["text"], return_special_tokens_mask=True, return_offsets_mapping=True, verbose=False
    )
    keys = ("input_ids", "special_tokens_mask", "offset_mapping")
    stream = {key: list(itertools.chain.from_iterable(encoded[key])) for key in keys}
    total = len(stream["input_ids"]) // block_size * block_size
    return {key: [values[i : i + block_size] for i in range(0, total, block_size)] for key, values in stream.items()}


@dataclass
class WholeWordMaskingCollator(DataCollatorForLanguageModeling):
    """Whole-word MLM masking whose random draws depend only on (`mask_seed`, `epoch`, the batch's tokens).

    The stock collator draws from a running random stream, and the dataloader collates one batch ahead, so a run
    resumed from a checkpoint would mask differently from the uninterrupted run. Seeding each batch from its own
    content makes masks reproducible whatever was prefetched or skipped, and still new every epoch (dynamic masking).
    """

    mask_seed: int = 0
    epoch: int = 0

    def torch_call(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        tokens = np.asarray([example["input_ids"] for example in examples], dtype=np.int64)
        seed = zlib.crc32(struct.pack("<qq", self.mask_seed, self.epoch) + tokens.tobytes())
        # The parent draws every mask from `self.generator` (its own `seed` stays None so it never replaces it).
        self.generator = torch.Generator().manual_seed(seed)
        return super().torch_call(examples)


def block_size_for(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, config: BertXMLConfig) -> int:
    """--max_seq_length, defaulting to one encoder chunk; longer blocks are encoded in chunks, up to a whole note."""
    if args.max_seq_length is None:
        return min(tokenizer.model_max_length, config.max_position_embeddings)
    if not 1 <= args.max_seq_length <= config.max_note_length:
        raise ValueError(
            f"--max_seq_length {args.max_seq_length} must be in [1, {config.max_note_length}] "
            "(max_chunks * max_position_embeddings of the config)"
        )
    return args.max_seq_length


def load_blocks(
    args: argparse.Namespace, files: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, train: bool
) -> datasets.Dataset | datasets.IterableDataset:
    """Notes from `files` as packed blocks, cached by `datasets` (built once, on the main process first)."""
    raw = load_text_dataset(files, text_column=args.text_column, streaming=args.streaming)
    map_kwargs = dict(
        batched=True, remove_columns=["text"], fn_kwargs=dict(tokenizer=tokenizer, block_size=block_size)
    )
    if args.streaming:
        if train:
            raw = raw.shuffle(seed=args.seed, buffer_size=STREAMING_SHUFFLE_BUFFER)
        return raw.map(pack_notes, **map_kwargs)
    blocks = raw.map(
        pack_notes, num_proc=args.preprocessing_num_workers, desc=f"Tokenising and packing {files[0]}",
        **map_kwargs,
    )
    if len(blocks) == 0:
        raise NotesError(
            f"{', '.join(files)}: fewer tokens than one block of --max_seq_length {block_size}; add notes or "
            "lower --max_seq_length"
        )
    return blocks


def masking_collator(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> WholeWordMaskingCollator:
    # Whole-word masking cannot replace by random tokens (transformers v5): masked words become [MASK].
    return WholeWordMaskingCollator(
        tokenizer, mlm_probability=args.mlm_probability, whole_word_mask=True, mask_replace_prob=1.0,
        random_replace_prob=0.0, mask_seed=args.seed,
    )


def build_dataloaders(
    args: argparse.Namespace, accelerator: Accelerator, tokenizer: PreTrainedTokenizerBase, block_size: int
) -> tuple[DataLoader, DataLoader | None]:
    with accelerator.main_process_first():
        train = load_blocks(args, args.train_file, tokenizer, block_size, train=True)
        validation = (
            load_blocks(args, args.validation_file, tokenizer, block_size, train=False)
            if args.validation_file
            else None
        )
    # The loader's own generator: starting an epoch must not draw from the global RNG (dropout's stream), or a
    # resumed run, which starts its epoch after restoring that stream, would drop out differently.
    train_loader = DataLoader(
        train, shuffle=not args.streaming, collate_fn=masking_collator(args, tokenizer),
        batch_size=args.per_device_train_batch_size, generator=torch.Generator().manual_seed(args.seed),
    )
    # A collator of its own whose epoch never moves: every evaluation sees the same masks, so losses compare.
    eval_loader = (
        DataLoader(
            validation, collate_fn=masking_collator(args, tokenizer), batch_size=args.per_device_eval_batch_size
        )
        if validation
        else None
    )
    return train_loader, eval_loader


# ----------------------------------------------------------------------------------------------------------- model
def build_model(args: argparse.Namespace, config: BertXMLConfig) -> BertXMLForMaskedLM:
    if args.model_name_or_path:
        model = BertXMLForMaskedLM.from_pretrained(args.model_name_or_path, config=config, dtype=torch.float32)
    else:
        logger.info("Training a new model from scratch")
        model = BertXMLForMaskedLM(config)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    logger.info(f"Model: {sum(p.numel() for p in model.parameters()):,} parameters")
    return model


@torch.no_grad()
def evaluate(args: argparse.Namespace, accelerator: Accelerator, model, eval_loader: DataLoader) -> dict[str, float]:
    """Validation MLM loss and perplexity (gathered over ranks, without the padding batches of uneven shards)."""
    model.eval()
    losses = []
    for batch in eval_loader:
        loss = model(**batch).loss
        losses.append(accelerator.gather_for_metrics(loss.detach().float().repeat(batch["input_ids"].shape[0])))
    model.train()
    eval_loss = torch.cat(losses).mean().item()
    return {"eval_loss": eval_loss, "perplexity": math.exp(eval_loss) if eval_loss < 700 else math.inf}


# -------------------------------------------------------------------------------------------------------- training
@dataclass
class Progress:
    """Where training stands; what a checkpoint records and a resumed run starts from."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    metrics: dict = field(default_factory=dict)

    def take_mean_loss(self) -> float:
        mean = self.loss_sum / max(self.loss_count, 1)
        self.loss_sum, self.loss_count = 0.0, 0
        return mean


def maybe_resume(args, accelerator: Accelerator, checkpoints: CheckpointManager) -> Progress:
    path = checkpoints.resolve(args.resume_from_checkpoint)
    if path is None:
        if args.resume_from_checkpoint:
            logger.info(f"No complete checkpoint in {checkpoints.root}: starting from step 0")
        return Progress()
    state = checkpoints.load(accelerator, path)
    return Progress(step=state["step"], epoch=state["epoch"], batches_in_epoch=state["batches_in_epoch"],
                    tokens=state["tokens"])


def save_checkpoint(accelerator: Accelerator, checkpoints: CheckpointManager, progress: Progress, end_of_epoch: bool):
    # A checkpoint taken on an epoch's last batch resumes at the start of the next epoch.
    epoch, batches = (progress.epoch + 1, 0) if end_of_epoch else (progress.epoch, progress.batches_in_epoch)
    checkpoints.save(accelerator, progress.step, epoch, {"tokens": progress.tokens}, batches_in_epoch=batches)


def after_step(args, accelerator, model, eval_loader, checkpoints, progress: Progress, bar: tqdm) -> None:
    """What happens once per optimizer step: progress, logging, evaluation every --eval_steps, checkpoints."""
    bar.update(1)
    if progress.step % args.logging_steps == 0:
        loss = progress.take_mean_loss()
        bar.set_postfix(loss=f"{loss:.4f}")
        if args.with_tracking:
            accelerator.log({"train_loss": loss, "tokens": progress.tokens}, step=progress.step)
    if args.eval_steps and eval_loader is not None and progress.step % args.eval_steps == 0:
        log_eval(args, accelerator, evaluate(args, accelerator, model, eval_loader), progress)
    if isinstance(args.checkpointing_steps, int) and progress.step % args.checkpointing_steps == 0:
        end_of_epoch = accelerator.gradient_state.end_of_dataloader
        save_checkpoint(accelerator, checkpoints, progress, end_of_epoch)


def log_eval(args, accelerator: Accelerator, metrics: dict[str, float], progress: Progress) -> None:
    values = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    logger.info(f"step {progress.step} (epoch {progress.epoch}): {values}")
    progress.metrics = {**metrics, "eval_step": progress.step}
    if args.with_tracking:
        accelerator.log(metrics, step=progress.step)


def train_epoch(
    args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, checkpoints, progress, bar
) -> bool:
    """One pass over the data (the rest of it when resuming); False when it stopped early at --max_train_steps."""
    train_loader.set_epoch(progress.epoch)
    train_loader.collate_fn.epoch = progress.epoch
    loader = resume_dataloader(accelerator, train_loader, progress.batches_in_epoch)
    loader.set_epoch(progress.epoch)
    for batch in loader:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            check_finite(loss, progress.step + 1, accelerator)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        progress.batches_in_epoch += 1
        progress.tokens += batch["input_ids"].numel() * accelerator.num_processes
        progress.loss_sum, progress.loss_count = progress.loss_sum + loss.item(), progress.loss_count + 1
        if accelerator.sync_gradients:
            progress.step += 1
            after_step(args, accelerator, model, eval_loader, checkpoints, progress, bar)
            if progress.step >= args.max_train_steps and not accelerator.gradient_state.end_of_dataloader:
                return False
    return True


def train(args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, progress: Progress) -> Progress:
    checkpoints = CheckpointManager(args.output_dir)
    bar = tqdm(total=args.max_train_steps, initial=progress.step, disable=not accelerator.is_local_main_process)
    model.train()
    while progress.step < args.max_train_steps and progress.epoch < args.num_train_epochs:
        if not train_epoch(
            args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, checkpoints, progress, bar
        ):
            break
        if eval_loader is not None and not args.eval_steps:
            log_eval(args, accelerator, evaluate(args, accelerator, model, eval_loader), progress)
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, checkpoints, progress, end_of_epoch=True)
        progress.epoch, progress.batches_in_epoch = progress.epoch + 1, 0
    if eval_loader is not None and progress.metrics.get("eval_step") != progress.step:
        log_eval(args, accelerator, evaluate(args, accelerator, model, eval_loader), progress)
    bar.close()
    return progress


def plan_steps(args: argparse.Namespace, train_loader: DataLoader) -> None:
    """Fill in --max_train_steps / --num_train_epochs from each other and the (sharded) dataloader's length."""
    if args.streaming:
        args.num_train_epochs = math.inf  # a stream ends by steps
        return
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)


def check_ranks_agree(accelerator: Accelerator, model) -> bool:
    """True when every rank holds the same weights: a launch whose ranks never synchronised (e.g. CPU without
    ACCELERATE_USE_CPU=1) trains N different models, and this is where it shows."""
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return True  # sharded: no rank holds the whole model
    sums = torch.stack([p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters()])
    gathered = accelerator.gather(sums[None])
    return bool((gathered == gathered[0]).all())


def finish(args, accelerator: Accelerator, model, tokenizer, progress: Progress, runtime: float) -> None:
    agree = check_ranks_agree(accelerator, model)
    if not agree:
        logger.error("Final weights differ between processes: the launch did not synchronise them")
    save_model(accelerator, model, tokenizer, args.output_dir)
    results = {
        "train_steps": progress.step,
        "train_tokens": progress.tokens,
        "train_runtime": runtime,
        "tokens_per_second": progress.tokens / runtime if runtime else 0.0,
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        "num_processes": accelerator.num_processes,
        "ranks_identical": agree,
        **progress.metrics,
    }
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
    logger.info(f"Done: {results}")


def run(args: argparse.Namespace) -> None:
    prepare_output_dir(args)
    # Streams are read by every rank (dispatching batches from rank 0 would need the whole corpus there).
    loader_config = DataLoaderConfiguration(
        use_seedable_sampler=True, dispatch_batches=False if args.streaming else None
    )
    accelerator = setup_accelerator(args, "bertxml_pretraining", loader_config)
    tokenizer = load_tokenizer(args)
    config = load_config(args, tokenizer=tokenizer)
    block_size = block_size_for(args, tokenizer, config)
    train_loader, eval_loader = build_dataloaders(args, accelerator, tokenizer, block_size)
    model = build_model(args, config)
    # The schedule needs the per-process length, known once the dataloader is prepared (sharded).
    train_loader = accelerator.prepare(train_loader)
    eval_loader = accelerator.prepare(eval_loader) if eval_loader is not None else None
    plan_steps(args, train_loader)
    optimizer = create_optimizer(model, args)
    scheduler = create_scheduler(optimizer, args, args.max_train_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    progress = maybe_resume(args, accelerator, CheckpointManager(args.output_dir))
    start = time.perf_counter()
    try:
        progress = train(args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, progress)
        finish(args, accelerator, model, tokenizer, progress, time.perf_counter() - start)
    finally:
        accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    # Expected failures of a run: the message (file, line, field; or what to do), not a traceback. A bad row of a
    # streamed corpus is only found while training.
    except (NotesError, NonFiniteLossError, OutputWriteError, PermissionError, FileExistsError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
