"""Masked-language-model pretraining of BERT-XML's encoder from scratch on clinical notes, with Accelerate.

The same command runs on a laptop CPU, one GPU, many GPUs (DDP, FSDP, DeepSpeed) or several nodes: the launch
decides (`python pretrain.py ...` or `accelerate launch [--config_file configs/accelerate/...] pretrain.py ...`), the
script never asks. Modelled on transformers' `examples/pytorch/language-modeling/run_mlm_no_trainer.py`:

    python pretrain.py --tokenizer_name tokenizer/ --train_file notes/*.txt --validation_file dev.txt \
        --config_overrides "hidden_size=256,num_hidden_layers=4" --output_dir runs/mlm --checkpointing_steps 1000

Notes are tokenised with `datasets.map`, concatenated and cut into `--max_seq_length` blocks (no padding is wasted),
and masked by whole words. Checkpoints are atomic and `--resume_from_checkpoint latest` continues at the same step
and data position. The output dir ends with a `save_pretrained` model (+ tokenizer, model card, requirements.txt)
that loads with `AutoModelForMaskedLM` (`AutoModel`: the encoder) and whose encoder loads into
`BertXMLForMultiLabelCoding` for fine-tuning; `--push_to_hub` uploads it as train.py does (private by default).
"""

import argparse
import itertools
import json
import math
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from modeling_bertxml import BertXMLConfig, BertXMLForMaskedLM
from modeling_bertxml.checkpointing import (
    CheckpointManager,
    OutputDirError,
    OutputWriteError,
    Progress,
    claim_output_dir,
    save_model_folder,
)
from modeling_bertxml.hub import HubPushError, IdentifiersFoundError, add_hub_args, push_from_args
from modeling_bertxml.model_card import add_card_args, hub_id, render_encoder_card
from modeling_bertxml.readers import NotesError, load_text_dataset
from modeling_bertxml.training import (
    ConfigError,
    TrainingDivergedError,
    accelerator_settings,
    add_checkpoint_args,
    add_data_args,
    add_model_args,
    add_optimization_args,
    check_parameters,
    create_optimizer,
    create_scheduler,
    default_learning_rate,
    epoch_batches,
    load_config,
    load_tokenizer,
    run_args,
    save_checkpoint,
    setup_accelerator,
    training_step,
)

logger = get_logger(__name__)

STREAMING_SHUFFLE_BUFFER = 10_000  # notes held in memory to shuffle a streamed corpus
# Default peak rate for a 256-wide model, scaled by width (training.default_learning_rate).
LEARNING_RATE_AT_256 = 1e-3
UNIGRAM_BLOCKS = 20_000  # training blocks counted for the unigram baseline (plenty for token frequencies)
RESULTS_FILE = "train_results.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    add_data_args(parser)
    add_optimization_args(parser)
    add_checkpoint_args(parser)
    add_hub_args(parser)
    add_card_args(parser)
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


def unigram_log_probs(blocks: datasets.Dataset | datasets.IterableDataset, vocab_size: int) -> torch.Tensor:
    """log p(token) from the frequencies in (the first UNIGRAM_BLOCKS) training blocks, add-half smoothed.

    The baseline MLM must beat: a model that ignores the context and predicts token frequencies scores exactly
    this on masked tokens (the unigram plateau every run passes through first).
    """
    counts = torch.full((vocab_size,), 0.5, dtype=torch.float64)
    for block in itertools.islice(iter(blocks), UNIGRAM_BLOCKS):
        counts += torch.bincount(torch.as_tensor(block["input_ids"]), minlength=vocab_size)[:vocab_size]
    return (counts / counts.sum()).log().float()


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
def evaluate(accelerator: Accelerator, model, eval_loader: DataLoader, unigram: torch.Tensor) -> dict[str, float]:
    """Validation MLM loss and perplexity, and the unigram baseline's on the same masked tokens (gathered over ranks,
    without the padding batches of uneven shards)."""
    model.eval()
    losses, unigram_losses = [], []
    for batch in eval_loader:
        loss = model(**batch).loss
        labels = batch["labels"][batch["labels"] != -100]
        unigram_loss = -unigram.to(labels.device)[labels].mean()
        rows = batch["input_ids"].shape[0]
        losses.append(accelerator.gather_for_metrics(loss.detach().float().repeat(rows)))
        unigram_losses.append(accelerator.gather_for_metrics(unigram_loss.repeat(rows)))
    model.train()
    eval_loss, unigram_loss = torch.cat(losses).mean().item(), torch.cat(unigram_losses).mean().item()
    return {
        "eval_loss": eval_loss,
        "perplexity": math.exp(eval_loss) if eval_loss < 700 else math.inf,
        "unigram_perplexity": math.exp(unigram_loss),
    }


# -------------------------------------------------------------------------------------------------------- training
@dataclass
class LossWindow:
    """The mean training loss since it was last taken (for the log every --logging_steps)."""

    total: float = 0.0
    count: int = 0

    def add(self, loss: float) -> None:
        self.total, self.count = self.total + loss, self.count + 1

    def take_mean(self) -> float:
        mean = self.total / max(self.count, 1)
        self.total, self.count = 0.0, 0
        return mean


def log_eval(
    args, accelerator: Accelerator, model, eval_loader: DataLoader, unigram: torch.Tensor, progress: Progress
) -> dict[str, float]:
    metrics = evaluate(accelerator, model, eval_loader, unigram)
    values = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    logger.info(f"step {progress.step} (epoch {progress.epoch}): {values}")
    if args.with_tracking:
        accelerator.log(metrics, step=progress.step)
    return {**metrics, "eval_step": progress.step}


def train(
    args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, unigram: torch.Tensor, progress: Progress
) -> dict:
    """The Accelerate loop: optimizer steps, logging, evaluation (beside the `unigram` baseline), checkpoints;
    returns the last evaluation."""
    checkpoints = CheckpointManager(args.output_dir)
    bar = tqdm(total=args.max_train_steps, initial=progress.step, disable=not accelerator.is_local_main_process)
    uniform_loss = math.log(accelerator.unwrap_model(model).config.vocab_size)  # the divergence guard's yardstick
    losses, metrics, batch = LossWindow(), {}, None  # batch: the last one trained (see save_checkpoint)
    model.train()
    while progress.step < args.max_train_steps and progress.epoch < args.num_train_epochs:
        train_loader.collate_fn.epoch = progress.epoch  # new masks every epoch
        for batch in epoch_batches(accelerator, train_loader, progress):
            loss = training_step(
                accelerator, model, optimizer, scheduler, batch, progress, uniform_loss, args.max_grad_norm
            )
            losses.add(loss)
            if not accelerator.sync_gradients:
                continue
            bar.update(1)
            if progress.step % args.logging_steps == 0:
                loss = losses.take_mean()
                bar.set_postfix(loss=f"{loss:.4f}")
                if args.with_tracking:
                    accelerator.log({"train_loss": loss, "tokens": progress.tokens}, step=progress.step)
            if args.eval_steps and eval_loader is not None and progress.step % args.eval_steps == 0:
                metrics = log_eval(args, accelerator, model, eval_loader, unigram, progress)
            if isinstance(args.checkpointing_steps, int) and progress.step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, model, checkpoints, progress, batch, uniform_loss)
            if progress.step >= args.max_train_steps and not accelerator.gradient_state.end_of_dataloader:
                break
        else:  # the whole epoch was trained
            progress.next_epoch()
            if eval_loader is not None and not args.eval_steps:
                metrics = log_eval(args, accelerator, model, eval_loader, unigram, progress)
            if args.checkpointing_steps == "epoch":
                save_checkpoint(accelerator, model, checkpoints, progress, batch, uniform_loss)
    if eval_loader is not None and metrics.get("eval_step") != progress.step:
        metrics = log_eval(args, accelerator, model, eval_loader, unigram, progress)
    bar.close()
    return metrics


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


def finish(args, accelerator: Accelerator, model, tokenizer, progress: Progress, metrics: dict, runtime: float):
    """Save the model folder (with its train_results.json) once, after checking the weights are whole and agree."""
    check_parameters(model, progress.step, accelerator)
    agree = check_ranks_agree(accelerator, model)
    if not agree:
        logger.error("Final weights differ between processes: the launch did not synchronise them")
    results = {
        "train_steps": progress.step,
        "train_tokens": progress.tokens,
        "train_runtime": runtime,
        "tokens_per_second": progress.tokens / runtime if runtime else 0.0,
        "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        "num_processes": accelerator.num_processes,
        "ranks_identical": agree,
        **metrics,
    }

    def write_results(folder: Path) -> None:
        (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        encoder_card(args, accelerator, tokenizer, accelerator.unwrap_model(model).config, results).save(
            folder / "README.md"
        )

    save_model_folder(accelerator, model, tokenizer, args.output_dir, add_files=write_results)
    logger.info(f"Done: {results}")


def encoder_card(args, accelerator: Accelerator, tokenizer, config: BertXMLConfig, results: dict):
    """The folder's README.md: what the encoder is, its perplexity beside the unigram baseline's, how to load it."""
    return render_encoder_card(
        repo_id=args.hub_model_id or Path(args.output_dir).resolve().name,
        results=results,
        license=args.license,
        base_model=args.base_model_id or hub_id(args.model_name_or_path),
        datasets=[name] if (name := hub_id(getattr(args, "dataset_name", None))) else None,
        max_note_length=f"{config.max_note_length:,}",
        chunk_length=config.max_position_embeddings,
        learning_rate=args.learning_rate,
        batch_size=f"{args.per_device_train_batch_size} x {accelerator.num_processes} x "
        f"{args.gradient_accumulation_steps}",
        mlm_probability=args.mlm_probability,
        block_size=block_size_for(args, tokenizer, config),
    )


def run(args: argparse.Namespace) -> None:
    # Streams are read by every rank (dispatching batches from rank 0 would need the whole corpus there).
    loader_config = DataLoaderConfiguration(
        use_seedable_sampler=True, dispatch_batches=False if args.streaming else None
    )
    accelerator = setup_accelerator(
        args.output_dir, dataloader_config=loader_config, **accelerator_settings(args, "bertxml_pretraining")
    )
    tokenizer = load_tokenizer(args.tokenizer_name or args.model_name_or_path)
    config = load_config(args.config_name or args.model_name_or_path, args.config_overrides, tokenizer)
    if args.learning_rate is None:
        args.learning_rate = default_learning_rate(config.hidden_size, LEARNING_RATE_AT_256)
        logger.info(f"Learning rate {args.learning_rate:.2g} (default for hidden size {config.hidden_size})")
    block_size = block_size_for(args, tokenizer, config)
    train_loader, eval_loader = build_dataloaders(args, accelerator, tokenizer, block_size)
    unigram = unigram_log_probs(train_loader.dataset, config.vocab_size)
    model = build_model(args, config)
    # The schedule needs the per-process length, known once the dataloader is prepared (sharded).
    train_loader = accelerator.prepare(train_loader)
    eval_loader = accelerator.prepare(eval_loader) if eval_loader is not None else None
    plan_steps(args, train_loader)
    optimizer = create_optimizer(model, args.learning_rate, args.weight_decay)
    scheduler = create_scheduler(
        optimizer, args.max_train_steps, args.lr_scheduler_type, args.num_warmup_steps, args.warmup_ratio
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    progress = CheckpointManager(args.output_dir).resume(accelerator, args.resume_from_checkpoint)
    start = time.perf_counter()
    try:
        metrics = train(
            args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, unigram, progress
        )
        finish(args, accelerator, model, tokenizer, progress, metrics, time.perf_counter() - start)
        if accelerator.is_main_process:
            push_from_args(args, args.output_dir)  # private by default, scanned for identifiers, as train.py
    finally:
        accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with claim_output_dir(
            args.output_dir, run_args(args), bool(args.resume_from_checkpoint), args.overwrite_output_dir
        ):
            run(args)
    # Expected failures of a run: the message (file, line, field; or what to do), not a traceback. A bad row of a
    # streamed corpus is only found while training.
    except (NotesError, ConfigError, TrainingDivergedError, OutputDirError, OutputWriteError, PermissionError,
            HubPushError, IdentifiersFoundError) as error:  # fmt: skip
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
