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
from accelerate import Accelerator, DistributedType
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from ..data.readers import DatasetSource, NotesError, describe, load_text_dataset
from ..model.configuration_bertxml import BertXMLConfig
from ..model.modeling_bertxml import BertXMLForMaskedLM
from ..release.hub import HubPushError, IdentifiersFoundError, check_push_from_args, push_from_args
from ..release.model_card import hub_id, render_encoder_card
from .arguments import accelerator_settings, data_source, run_args
from .arguments import parse_pretrain_args as parse_args
from .checkpointing import (
    CheckpointManager,
    OutputDirError,
    OutputWriteError,
    Progress,
    claim_output_dir,
    save_model_folder,
)
from .loop import (
    STREAMING_SHUFFLE_BUFFER,
    TrainingDivergedError,
    TrainingLog,
    check_on_main_process,
    check_parameters,
    checkpoint_due,
    create_optimizer,
    create_scheduler,
    default_learning_rate,
    epoch_batches,
    finish_trackers,
    fused_optimizer,
    log_validation,
    save_checkpoint,
    setup_accelerator,
    training_step,
)
from .models import ConfigError, load_config, load_tokenizer
from .throughput import TRAINING_FLOPS_FACTOR, Throughput, matmul_peak_flops, mlm_flops, warmup_steps_for

logger = get_logger(__name__)

# Default peak rate for a 256-wide model, scaled by width (loop.default_learning_rate).
LEARNING_RATE_AT_256 = 1e-3
UNIGRAM_BLOCKS = 20_000  # training blocks counted for the unigram baseline (plenty for token frequencies)
RESULTS_FILE = "train_results.json"


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
    keep_prob: float = 0.1
    random_prob: float = 0.1

    def torch_call(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        tokens = np.asarray([example["input_ids"] for example in examples], dtype=np.int64)
        seed = zlib.crc32(struct.pack("<qq", self.mask_seed, self.epoch) + tokens.tobytes())
        # The parent draws every mask from `self.generator` (its own `seed` stays None so it never replaces it).
        self.generator = torch.Generator().manual_seed(seed)
        batch = super().torch_call(examples)
        self._keep_or_randomise(batch["input_ids"], batch["labels"])
        return batch

    def _keep_or_randomise(self, input_ids: torch.Tensor, labels: torch.Tensor) -> None:
        """BERT's 80/10/10 on the masked tokens, which transformers' whole-word masking makes all [MASK]: `keep_prob`
        get their own token back and `random_prob` a random one, both still predicted. Why: fine-tuning feeds real
        tokens only, and if every predicted token were [MASK] no loss would ever reach the top states of real ones
        (trained that way, a 300-step encoder named the token at 3 % of the positions of unmasked notes)."""
        masked = labels != -100
        draw = torch.rand(labels.shape, generator=self.generator)
        keep = masked & (draw < self.keep_prob)
        randomise = masked & (draw >= self.keep_prob) & (draw < self.keep_prob + self.random_prob)
        input_ids[keep] = labels[keep]
        input_ids[randomise] = torch.randint(len(self.tokenizer), labels.shape, generator=self.generator)[randomise]


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
    args: argparse.Namespace, files: "list[str] | DatasetSource", tokenizer: PreTrainedTokenizerBase, block_size: int,
    train: bool,
) -> datasets.Dataset | datasets.IterableDataset:
    """Notes from `files` (or a dataset's split) as packed blocks, cached by `datasets` (built once, on the main
    process first)."""
    split = "train" if train else "validation"
    raw = load_text_dataset(files, text_column=args.text_column, streaming=args.streaming, split=split)
    map_kwargs = dict(
        batched=True, remove_columns=["text"], fn_kwargs=dict(tokenizer=tokenizer, block_size=block_size)
    )
    if args.streaming:
        if train:
            raw = raw.shuffle(seed=args.seed, buffer_size=STREAMING_SHUFFLE_BUFFER)
        return raw.map(pack_notes, **map_kwargs)
    blocks = raw.map(
        pack_notes, num_proc=args.preprocessing_num_workers, desc=f"Tokenising and packing the {split} notes",
        **map_kwargs,
    )
    if len(blocks) == 0:
        raise NotesError(
            f"{describe(files)}: fewer tokens than one block of --max_seq_length {block_size}; add notes or "
            "lower --max_seq_length"
        )
    return blocks


def masking_collator(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> WholeWordMaskingCollator:
    # transformers makes every masked word [MASK]; the collator then keeps or randomises 10 % each (BERT's 80/10/10).
    return WholeWordMaskingCollator(
        tokenizer, mlm_probability=args.mlm_probability, whole_word_mask=True, mask_replace_prob=1.0,
        random_replace_prob=0.0, mask_seed=args.seed,
    )


def build_dataloaders(
    args: argparse.Namespace, accelerator: Accelerator, tokenizer: PreTrainedTokenizerBase, block_size: int
) -> tuple[DataLoader, DataLoader | None]:
    with accelerator.main_process_first():
        train = load_blocks(args, data_source(args, "train"), tokenizer, block_size, train=True)
        validation_source = data_source(args, "validation")
        validation = (
            load_blocks(args, validation_source, tokenizer, block_size, train=False) if validation_source else None
        )
    # The loader's own generator: starting an epoch must not draw from the global RNG (dropout's stream), or a
    # resumed run, which starts its epoch after restoring that stream, would drop out differently.
    # Workers mask the next batches while the device trains. Not persistent: each epoch's workers take a fresh copy
    # of the collator, whose epoch (the masks' seed) train() sets before the epoch starts.
    train_loader = DataLoader(
        train, shuffle=not args.streaming, collate_fn=masking_collator(args, tokenizer),
        batch_size=args.per_device_train_batch_size, generator=torch.Generator().manual_seed(args.seed),
        num_workers=args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda",
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
    if args.torch_compile:
        model.compile(backend=args.torch_compile)  # in place: the module and its weight names stay as they are
    logger.info(f"Model: {sum(p.numel() for p in model.parameters()):,} parameters")
    return model


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, eval_loader: DataLoader, unigram: torch.Tensor) -> dict[str, float]:
    """Validation MLM loss and perplexity, and the unigram baseline's on the same masked tokens: means over the masked
    tokens of all batches (a batch that drew no mask weighs nothing), gathered over ranks without the padding rows
    of uneven shards."""
    model.eval()
    sums: dict[str, list[torch.Tensor]] = {"loss": [], "unigram": [], "tokens": []}
    for batch in eval_loader:
        loss = model(**batch).loss
        labels = batch["labels"][batch["labels"] != -100]
        batch_sums = {
            "loss": loss.detach().float() * len(labels), "unigram": -unigram.to(labels.device)[labels].sum(),
            "tokens": torch.tensor(float(len(labels)), device=labels.device),
        }  # fmt: skip
        rows = batch["input_ids"].shape[0]
        for name, value in batch_sums.items():  # shared out over the rows, so that dropped padding rows take theirs
            sums[name].append(accelerator.gather_for_metrics((value / rows).repeat(rows)))
    model.train()
    total = {name: torch.cat(values).sum().item() for name, values in sums.items()}
    tokens = max(total["tokens"], 1)
    eval_loss, unigram_loss = total["loss"] / tokens, total["unigram"] / tokens
    return {
        "eval_loss": eval_loss,
        "perplexity": math.exp(eval_loss) if eval_loss < 700 else math.inf,
        "unigram_perplexity": math.exp(unigram_loss),
    }


# -------------------------------------------------------------------------------------------------------- training
def log_eval(
    args, accelerator: Accelerator, model, eval_loader: DataLoader, unigram: torch.Tensor, progress: Progress
) -> dict[str, float]:
    metrics = evaluate(accelerator, model, eval_loader, unigram)
    values = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    logger.info(f"step {progress.step} (epoch {progress.epoch}): {values}")
    if args.with_tracking:
        log_validation(accelerator, metrics, progress.step)
    return {**metrics, "eval_step": progress.step}


def train(
    args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, unigram: torch.Tensor,
    progress: Progress, throughput: Throughput,
) -> dict:
    """The Accelerate loop: optimizer steps, logging, evaluation (beside the `unigram` baseline), checkpoints;
    returns the last evaluation. The host reads the loss only every --logging_steps (that is also when the
    divergence guard looks at it), so it can queue the next steps while the device runs; evaluations and
    checkpoints are left out of `throughput`."""
    checkpoints = CheckpointManager(args.output_dir, args.checkpoints_total_limit)
    uniform_loss = math.log(accelerator.unwrap_model(model).config.vocab_size)  # the divergence guard's yardstick
    metrics, batch = {}, None  # batch: the last one trained (see save_checkpoint)
    model.train()
    with TrainingLog(
        accelerator, progress, args.max_train_steps, throughput, args.logging_steps, args.with_tracking, uniform_loss
    ) as log:
        while progress.step < args.max_train_steps and progress.epoch < args.num_train_epochs:
            train_loader.collate_fn.epoch = progress.epoch  # new masks every epoch
            for batch in epoch_batches(accelerator, train_loader, progress):
                loss = training_step(
                    accelerator, model, optimizer, scheduler, batch, progress, uniform_loss, args.max_grad_norm,
                    check_divergence=False,
                )  # fmt: skip
                log.micro_batch(loss, batch["input_ids"].numel())
                if not accelerator.sync_gradients:
                    continue
                log.optimizer_step(progress, scheduler)
                with throughput.paused():
                    if args.eval_steps and eval_loader is not None and progress.step % args.eval_steps == 0:
                        metrics = log_eval(args, accelerator, model, eval_loader, unigram, progress)
                    # Ends inside the epoch (at its end, the epoch's own save below is the last one).
                    last = progress.step >= args.max_train_steps and not accelerator.gradient_state.end_of_dataloader
                    if checkpoint_due(args.checkpointing_steps, progress.step, last):
                        save_checkpoint(accelerator, model, checkpoints, progress, batch, uniform_loss)
                if last:
                    break
            else:  # the whole epoch was trained
                progress.next_epoch()
                with throughput.paused():
                    if eval_loader is not None and not args.eval_steps:
                        metrics = log_eval(args, accelerator, model, eval_loader, unigram, progress)
                    if args.checkpointing_steps == "epoch":
                        save_checkpoint(accelerator, model, checkpoints, progress, batch, uniform_loss)
        with throughput.paused():
            if eval_loader is not None and metrics.get("eval_step") != progress.step:
                metrics = log_eval(args, accelerator, model, eval_loader, unigram, progress)
    return metrics


def mlm_throughput(accelerator: Accelerator, config: BertXMLConfig, block_size: int, steps: int) -> Throughput:
    """Steady-state tokens/s and MFU of the coming `steps` optimizer steps: training FLOPs of a `block_size` block
    per token, against the matmul peak of this device measured now (bf16 on CUDA, float32 on CPU)."""
    flops_per_token = TRAINING_FLOPS_FACTOR * mlm_flops(config, block_size) / block_size
    peak = matmul_peak_flops(accelerator.device)
    logger.info(f"Matmul peak of {accelerator.device}: {peak[0] / 1e12:.3g} TFLOP/s in {peak[1]}")
    return Throughput(
        accelerator.device, flops_per_token, peak, warmup_steps_for(steps), processes=accelerator.num_processes
    )


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


def finish(
    args, accelerator: Accelerator, model, tokenizer, progress: Progress, metrics: dict, runtime: float,
    throughput: Throughput,
) -> None:
    """Save the model folder (with its train_results.json) once, after checking the weights are whole and agree.
    `tokens_per_second` and `mfu` are the steady state's (see `Throughput`); `train_runtime` is the whole loop's."""
    check_parameters(model, progress.step, accelerator)
    agree = check_ranks_agree(accelerator, model)
    if not agree:
        logger.error("Final weights differ between processes: the launch did not synchronise them")
    results = {
        "train_steps": progress.step,
        "train_tokens": progress.tokens,
        "train_runtime": runtime,
        **throughput.results(),
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
    accelerator = setup_accelerator(args.output_dir, **accelerator_settings(args, "bert-xml-pretrain"))
    # A push that would fail at the end is refused now, by the main process (the only one that talks to the Hub).
    check_on_main_process(accelerator, lambda: check_push_from_args(args, args.output_dir), HubPushError)
    tokenizer = load_tokenizer(args.tokenizer_name or args.model_name_or_path, trust_remote_code=args.trust_remote_code)
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
    optimizer = create_optimizer(model, args.learning_rate, args.weight_decay, fused=fused_optimizer(accelerator))
    scheduler = create_scheduler(
        optimizer, args.max_train_steps, args.lr_scheduler_type, args.num_warmup_steps, args.warmup_ratio
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    progress = CheckpointManager(args.output_dir).resume(accelerator, args.resume_from_checkpoint)
    throughput = mlm_throughput(accelerator, config, block_size, args.max_train_steps - progress.step)
    start = time.perf_counter()
    try:
        metrics = train(
            args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, unigram, progress, throughput
        )
        runtime = time.perf_counter() - start
        finish(args, accelerator, model, tokenizer, progress, metrics, runtime, throughput)
        if accelerator.is_main_process:
            push_from_args(args, args.output_dir)  # private by default, scanned for identifiers, as train.py
    finally:
        finish_trackers(accelerator)


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
