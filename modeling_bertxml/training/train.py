"""Fine-tune BERT-XML for multi-label ICD coding, evaluate it as Edin et al. (2023) do, and push it to the Hub.

    python train.py --model_name_or_path runs/pretrain --train_file train.jsonl --validation_file dev.jsonl \
        --test_file test.jsonl --output_dir runs/coder [--use_lora --merge_lora] [--push_to_hub --hub_model_id org/name]

Runs the same under `accelerate launch` (multi-GPU, multi-node, mixed precision). Evaluation protocol: after each
epoch (or --eval_steps) the validation split is scored; the model with the best validation MAP is kept and training
stops after --early_stopping_patience evaluations that did not beat the best MAP by more than
--early_stopping_threshold. One global threshold is then tuned on the
validation split (micro F1, grid of 100) and applied unchanged to the test split. The output folder is Hub-ready:
weights, config (labels, threshold, auto_map), tokenizer, remote code, README.md model card with its figures (PNG:
precision-recall, F1 by code frequency, validation curves), handler.py for Inference Endpoints (answering as the
`icd-coding` pipeline), app.py + requirements.txt (the coder's web app, Space-ready), eval_results.json and
test_results.json.
"""

import argparse
import json
import math
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from ..data.code_systems import code_descriptions, code_groups, get_code_system, warn_local_codes
from ..data.notes import (
    MultiLabelCollator,
    NoteColumns,
    Notes,
    NotesError,
    build_label_space,
    check_disjoint,
    log_report,
    read_code_texts,
    read_notes,
    tokenize_notes,
)
from ..data.sampling import LengthGroupedSampler, padding_share
from ..evaluation.metrics import (
    GROUPS_KEY,
    TRAINING_COUNT_KEY,
    binary_cross_entropy,
    compute_metrics,
    compute_metrics_by_group,
    compute_metrics_by_training_count,
    format_table,
    tune_threshold,
)
from ..evaluation.plots import write_figures
from ..model import source_file
from ..release.hub import HubPushError, IdentifiersFoundError, check_push_from_args, push_from_args
from ..release.model_card import hub_id, render_model_card
from ..release.pipeline_folder import add_pipeline_to_config, save_pipeline_code
from ..release.space import save_space_app
from .arguments import SYNONYM_QUERIES, accelerator_settings, data_source, run_args
from .arguments import parse_train_args as parse_args
from .checkpointing import (
    CheckpointManager,
    OutputDirError,
    OutputWriteError,
    Progress,
    claim_output_dir,
)
from .label_init import KEYWORD_MIN_NOTES, add_description_match, note_keywords
from .loop import (
    STREAMING_SHUFFLE_BUFFER,
    TrainingDivergedError,
    TrainingLog,
    check_on_main_process,
    checkpoint_due,
    create_optimizer,
    create_scheduler,
    default_learning_rate,
    epoch_batches,
    finish_trackers,
    log_validation,
    save_checkpoint,
    setup_accelerator,
    steps_per_epoch,
    training_step,
)
from .models import (
    ConfigError,
    add_lora,
    build_coding_model,
    coding_config,
    is_backbone_checkpoint,
    load_tokenizer,
    save_coding_model,
)
from .throughput import TRAINING_FLOPS_FACTOR, Throughput, encoder_flops, matmul_peak_flops, warmup_steps_for

logger = get_logger(__name__)

THRESHOLD_GRID = 100  # Edin et al.
# Default encoder rate for a 256-wide model (scaled by width: loop.default_learning_rate). From scratch or after
# a short pretraining, the encoder has to learn to single out the few tokens that name a code: at 5e-4 on a 128-wide
# model it had not after an epoch (validation MAP at the code-prior level), at 2e-3 it had (docs/learning.md, "What
# mattered").
LEARNING_RATE_AT_256 = 1e-3
UNIFORM_LOSS = math.log(2)  # BCE per code of a model that answers 0.5 everywhere: the divergence guard's yardstick


def uniform_loss(config) -> float:
    """The loss of a model that knows nothing: BCE 0.5 per code, plus the weighted MLM loss of a uniform guess."""
    return UNIFORM_LOSS + config.mlm_loss_weight * math.log(config.vocab_size)


@dataclass
class Splits:
    train: Notes
    validation: Notes
    test: Notes | None
    labels: list[str]  # the model's codes in order: those with attention rows first
    attention_labels: int  # how many of them have attention rows (the others: the description match alone)


def load_splits(args: argparse.Namespace, accelerator: Accelerator) -> Splits:
    """Read and validate the three splits and fix the label space (training codes, or --label_file)."""
    columns = NoteColumns(args.text_column, args.label_column, args.id_column)
    read = {}
    for name in ("train", "validation", "test"):
        source = data_source(args, name)
        if source is None and name != "test":
            raise NotesError(f"--dataset_name {args.dataset_name}: no {name} split; pass --{name}_file")
        if source is not None:
            with accelerator.main_process_first():  # one process writes the split's Arrow cache, the others read it
                streaming = args.streaming and name == "train"  # evaluation splits are scored whole
                read[name] = read_notes(
                    source, name, columns, args.strict_codes, args.allow_non_billable, args.code_system, streaming
                )
    check_disjoint(*read.values())
    labels = build_label_space(read["train"], args.min_code_count, args.label_file, args.code_system)
    attention_labels = len(labels)
    if args.label_space == "code_system":
        if args.description_match is False:
            raise ConfigError("--label_space code_system scores codes without training notes by the description "
                              "match: drop --no-description_match")  # fmt: skip
        try:
            listed = get_code_system(args.code_system).codes()
        except ValueError as error:
            raise ConfigError(f"--label_space code_system with --code_system {args.code_system}: {error}") from None
        known = set(labels)
        labels += [code for code in listed if code not in known]
        logger.info(f"{len(labels) - attention_labels:,} codes of the code system beside the {attention_labels:,} of "
                    "the label space are scored by the description match alone")  # fmt: skip
    if accelerator.is_main_process:
        groups = code_groups(args.code_system, labels)
        kinds = ", ".join(f"{len(indices):,} {kind}" for kind, indices in groups.items())
        logger.info(f"Label space: {len(labels):,} {get_code_system(args.code_system).title} codes ({kinds})")
        warn_local_codes(args.code_system, {code for notes in read.values() for code in notes.code_counts})
    return Splits(read["train"], read["validation"], read.get("test"), labels, attention_labels)


def label_frequencies(notes: Notes, labels: list[str]) -> dict[str, float]:
    """Share of the notes that carry each code, add-half smoothed (a code of --label_file may never occur)."""
    counts = notes.code_counts
    return {code: (counts[code] + 0.5) / (len(notes) + 1) for code in labels}


def build_dataloaders(
    args: argparse.Namespace, splits: Splits, tokenizer, max_length: int, pad_token_id: int
) -> dict[str, DataLoader]:
    label2id = {code: i for i, code in enumerate(splits.labels)}
    collator = MultiLabelCollator(num_labels=len(label2id), pad_token_id=pad_token_id)
    masking = DataCollatorForLanguageModeling(tokenizer) if args.mlm_loss_weight else None
    loaders = {}
    for name in ("train", "validation", "test"):
        notes = getattr(splits, name)
        if notes is None:
            continue
        dataset = tokenize_notes(notes, label2id, tokenizer, max_length, args.preprocessing_num_workers)
        shuffle = name == "train"
        if notes.streaming:  # shuffled within a buffer, anew every epoch (the loader's set_epoch)
            dataset, shuffle = dataset.shuffle(seed=args.seed or 0, buffer_size=STREAMING_SHUFFLE_BUFFER), False
        batch_size = args.per_device_train_batch_size if name == "train" else args.per_device_eval_batch_size
        # The loader's own generator: starting an epoch must not draw from the global RNG (dropout's stream), or a
        # resumed run would not continue exactly (see training.epoch_batches).
        seed = args.seed if args.seed is not None else 0
        generator = torch.Generator().manual_seed(seed)
        sampler = None
        if name == "train" and not args.no_length_grouping and not notes.streaming:  # a stream has no lengths
            lengths = [len(ids) for ids in dataset["input_ids"]]
            sampler = LengthGroupedSampler(lengths, batch_size, seed)
            shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
            logger.info(
                f"Padding in training batches: {padding_share(lengths, list(sampler), batch_size):.1%} grouped by "
                f"length, {padding_share(lengths, shuffled, batch_size):.1%} in random order"
            )
        collate = replace(collator, mlm=masking) if name == "train" else collator  # evaluation reads whole notes
        loaders[name] = DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
            collate_fn=collate, generator=generator, num_workers=args.dataloader_num_workers,
            pin_memory=torch.cuda.is_available(),
        )  # fmt: skip
    return loaders


@torch.no_grad()
def predict(model, loader: DataLoader, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and multi-hot targets of a split, gathered from all ranks in dataset order."""
    model.eval()
    probs, targets = [], []
    for batch in tqdm(loader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process):
        labels = batch.pop("labels")
        logits = model(**batch).logits
        batch_probs, batch_labels = accelerator.gather_for_metrics((torch.sigmoid(logits.float()), labels))
        probs.append(batch_probs.cpu().numpy())
        targets.append(batch_labels.cpu().numpy().astype(np.int8))
    model.train()
    return np.concatenate(probs), np.concatenate(targets)


def score(
    probs: np.ndarray, targets: np.ndarray, notes: Notes, threshold: float | None = None,
    labels: list[str] | None = None, code_system: str = "icd10", train_counts: Counter | None = None,
) -> dict:
    """All metrics of a split; the threshold is tuned here when not given (pass it for test: never tune on test).

    With `labels`, a label space of several kinds (diagnoses and procedures) is also scored per kind, at the same
    threshold, under `GROUPS_KEY`; with `train_counts` too, by how many training notes carry each code (0, 1-5,
    6-50, >50) under `TRAINING_COUNT_KEY`: where a coder is weak is where codes are rare.
    """
    unseen = sum(notes.report.outside_label_space.values())
    if threshold is None:
        threshold, _ = tune_threshold(probs, targets, grid=THRESHOLD_GRID, num_unseen_positives=unseen)
    metrics = compute_metrics(probs, targets, threshold, num_unseen_positives=unseen)
    groups = code_groups(code_system, labels) if labels is not None else {}
    if len(groups) > 1:
        kind = get_code_system(code_system).kind
        unseen_by_kind = Counter()
        for code, count in notes.report.outside_label_space.items():
            unseen_by_kind[kind(code)] += count
        metrics[GROUPS_KEY] = compute_metrics_by_group(probs, targets, groups, threshold, unseen_by_kind)
    if labels is not None and train_counts is not None:
        metrics[TRAINING_COUNT_KEY] = compute_metrics_by_training_count(
            probs, targets, labels, notes.note_codes(), train_counts, metrics["threshold"]
        )
    return metrics


def validate_and_track(args, accelerator, model, loaders, splits, progress: Progress) -> bool:
    """Score the validation split, keep the weights if its MAP is the best so far; True when training should stop:
    --early_stopping_patience evaluations in a row that did not beat the best MAP by more than
    --early_stopping_threshold (the demo's coder sat at MAP 0.998 for 1,100 steps, each gain within 0.0001)."""
    probs, targets = predict(model, loaders["validation"], accelerator)
    metrics = score(probs, targets, splits.validation)
    epoch_steps = steps_per_epoch(loaders["train"], len(splits.train), accelerator)
    progress.history.append(
        {"step": progress.step, "epoch": progress.step / epoch_steps, "map": metrics["map"],
         "loss": binary_cross_entropy(probs, targets)}
    )  # fmt: skip
    logger.info(f"step {progress.step}: validation MAP {metrics['map']:.4f}, micro F1 {metrics['micro_f1']:.4f}")
    if args.with_tracking:
        log_validation(accelerator, metrics, progress.step)
    best = progress.best_score
    if metrics["map"] > best:
        progress.best_score, progress.best_step = metrics["map"], progress.step
        CheckpointManager(args.output_dir).save_best(accelerator, model)
    if metrics["map"] > best + args.early_stopping_threshold:
        progress.evals_without_improvement = 0
        return False
    progress.evals_without_improvement += 1
    stop = 0 < args.early_stopping_patience <= progress.evals_without_improvement
    if stop:
        logger.info(
            f"Early stopping: {progress.evals_without_improvement} evaluations without a validation MAP better than "
            f"the best by more than {args.early_stopping_threshold:g}"
        )
    return stop


def coding_throughput(accelerator: Accelerator, model, steps: int) -> Throughput:
    """Steady-state note tokens/s (padding not counted) and MFU of the coming `steps` optimizer steps: training FLOPs
    of the encoder (512-token chunks) and the label head per token, against this device's measured matmul peak."""
    unwrapped = accelerator.unwrap_model(model)
    config, chunk = coding_config(unwrapped), coding_config(unwrapped).max_position_embeddings
    head_flops = unwrapped.label_head.flops_per_token
    flops_per_token = TRAINING_FLOPS_FACTOR * (encoder_flops(config, chunk) / chunk + head_flops)
    peak = matmul_peak_flops(accelerator.device)
    return Throughput(
        accelerator.device, flops_per_token, peak, warmup_steps_for(steps), processes=accelerator.num_processes
    )


def train(
    args, accelerator, model, optimizer, scheduler, loaders, splits, progress: Progress, max_steps: int,
    throughput: Throughput,
) -> None:
    """The Accelerate loop: optimizer steps, validation and early stopping, checkpoints (the last two left out of
    `throughput`)."""
    checkpoints = CheckpointManager(args.output_dir, args.checkpoints_total_limit)
    uniform = uniform_loss(accelerator.unwrap_model(model).config)
    epoch_steps = steps_per_epoch(loaders["train"], len(splits.train), accelerator)
    batch = None  # the last one trained, which a checkpoint's weights must still score
    model.train()  # from_pretrained returns a model in eval mode: no dropout until the first evaluation otherwise
    with TrainingLog(accelerator, progress, max_steps, throughput, args.logging_steps, args.with_tracking) as log:
        while progress.epoch < math.ceil(max_steps / epoch_steps):
            for batch in epoch_batches(accelerator, loaders["train"], progress):
                # The divergence guard reads every step's loss before the update: a coding step is never left unchecked.
                loss = training_step(
                    accelerator, model, optimizer, scheduler, batch, progress, uniform, args.max_grad_norm
                )
                log.micro_batch(loss, batch["attention_mask"].sum())
                if not accelerator.sync_gradients:  # the optimizer steps only after a full accumulation window
                    continue
                log.optimizer_step(progress, scheduler)
                done = progress.step >= max_steps
                with throughput.paused():
                    # Validate before checkpointing, so that a resumed run knows the best MAP of the weights on disk.
                    if done or (args.eval_steps and progress.step % args.eval_steps == 0):
                        done = validate_and_track(args, accelerator, model, loaders, splits, progress) or done
                    if checkpoint_due(args.checkpointing_steps, progress.step, last=done):
                        save_checkpoint(
                            accelerator, model, checkpoints, progress, batch, uniform, {"labels": splits.labels}
                        )
                if done:
                    return
            progress.next_epoch()
            with throughput.paused():
                done = not args.eval_steps and validate_and_track(args, accelerator, model, loaders, splits, progress)
                if args.checkpointing_steps == "epoch":
                    save_checkpoint(
                        accelerator, model, checkpoints, progress, batch, uniform, {"labels": splits.labels}
                    )
            if done:
                return


def prepare_training(args, accelerator, model, loaders, splits: Splits) -> tuple:
    """Wrap everything with Accelerate and restore a checkpoint; returns model, optimizer, scheduler, loaders,
    the training state and the number of optimizer steps."""
    names = list(loaders)
    loaders = dict(zip(names, accelerator.prepare(*loaders.values())))
    epoch_steps = steps_per_epoch(loaders["train"], len(splits.train), accelerator)
    max_steps = args.max_train_steps or args.num_train_epochs * epoch_steps
    # The head's own rate: its parameters, found as the head's (a LoRA model forwards label_head to its wrapper).
    optimizer = create_optimizer(
        model, args.learning_rate, args.weight_decay, param_groups={model.label_head: args.head_learning_rate}
    )
    scheduler = create_scheduler(
        optimizer, max_steps, args.lr_scheduler_type, args.num_warmup_steps, args.warmup_ratio
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # A checkpoint's head rows belong to its codes: refuse one saved for another label space.
    checkpoints = CheckpointManager(args.output_dir)
    progress = checkpoints.resume(accelerator, args.resume_from_checkpoint, {"labels": splits.labels})
    logger.info(
        f"{len(splits.train):,} training notes, {max_steps:,} optimizer steps of "
        f"{args.per_device_train_batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps} notes"
    )
    return model, optimizer, scheduler, loaders, progress, max_steps


def final_evaluation(args, accelerator, model, loaders, splits: Splits) -> tuple[dict[str, dict], dict[str, tuple]]:
    """Best weights back; threshold tuned on validation only, then the same threshold on test. Returns each split's
    metrics and its (probs, targets), which the model card's figures are drawn from."""
    CheckpointManager(args.output_dir).restore_best(accelerator, model)
    per_kind = {"labels": splits.labels, "code_system": args.code_system, "train_counts": splits.train.code_counts}
    predictions = {"validation": predict(model, loaders["validation"], accelerator)}
    results = {"validation": score(*predictions["validation"], splits.validation, **per_kind)}
    if "test" in loaders:
        predictions["test"] = predict(model, loaders["test"], accelerator)
        threshold = results["validation"]["threshold"]
        results["test"] = score(*predictions["test"], splits.test, threshold, **per_kind)
    coding_config(accelerator.unwrap_model(model)).threshold = results["validation"]["threshold"]
    return results, predictions


def card_figures(folder: Path, splits: Splits, results: dict, predictions: dict, history: list) -> dict[str, str]:
    """The card's figures, of the test split when there is one (scored at validation's threshold), else validation."""
    split = "test" if "test" in predictions else "validation"
    counts = splits.train.code_counts
    unseen = sum(getattr(splits, split).report.outside_label_space.values())
    return write_figures(
        folder, split, *predictions[split], results[split], [counts[code] for code in splits.labels], history, unseen
    )


def write_outputs(
    args, accelerator, model, tokenizer, splits: Splits, results: dict, predictions: dict, progress: Progress,
    speed: dict, code_texts: dict[str, list[str]] | None = None,
) -> None:
    """The Hub-ready folder, written once: model, config with the codes' descriptions (`code_texts` first, a user's)
    and the `icd-coding` pipeline, results (train_results.json: steps and the steady state's note tokens/s and MFU),
    model card with its figures, the Endpoint handler and the Space app."""
    config = coding_config(accelerator.unwrap_model(model))
    add_pipeline_to_config(config, code_texts=code_texts)

    def add_files(folder: Path) -> None:
        for split, name in (("validation", "eval_results.json"), ("test", "test_results.json")):
            if split in results:
                (folder / name).write_text(json.dumps(results[split], indent=2) + "\n")
        train_results = {"train_steps": progress.step, "num_processes": accelerator.num_processes, **speed}
        (folder / "train_results.json").write_text(json.dumps(train_results, indent=2) + "\n")
        save_pipeline_code(folder)
        shutil.copyfile(source_file("handler.py"), folder / "handler.py")
        save_space_app(folder)
        figures = card_figures(folder, splits, results, predictions, progress.history)
        model_card(args, accelerator, config, splits, results, progress, figures).save(folder / "README.md")

    save_coding_model(accelerator, model, tokenizer, args.output_dir, args.merge_lora, add_files, args.base_model_id)
    logger.info(f"Results (threshold tuned on validation):\n{format_table(results)}")


def model_card(args, accelerator: Accelerator, config, splits: Splits, results: dict, progress: Progress, figures):
    return render_model_card(
        repo_id=args.hub_model_id or Path(args.output_dir).resolve().name,
        results=results,
        figures=figures,
        figures_split="test" if "test" in results else "validation",
        license=args.license,
        base_model=args.base_model_id or hub_id(args.model_name_or_path),
        datasets=[name] if (name := hub_id(args.dataset_name)) else None,
        adapter=args.use_lora and not args.merge_lora,
        num_labels=f"{len(splits.labels):,}",
        code_system=args.code_system,
        code_system_title=get_code_system(args.code_system).title,
        label_space=(f"codes of --label_file {Path(args.label_file).name}" if args.label_file
                     else f"training codes seen at least {args.min_code_count} time(s)")
        + (f", and {len(splits.labels) - splits.attention_labels:,} other codes of the code system scored by their "
           "description match alone" if len(splits.labels) > splits.attention_labels else ""),
        num_unseen=sum(sum(getattr(splits, split).report.outside_label_space.values()) for split in results),
        threshold=f"{config.threshold:.2f}",
        max_note_length=f"{config.max_note_length:,}",
        chunk_length=config.max_position_embeddings,
        encoder="BERT" if config.backbone_config is None else f"`{config.backbone_config.model_type}`",
        num_train_notes=f"{len(splits.train):,}",
        steps=f"{progress.step:,}",
        best_step=f"{progress.best_step:,}",
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        batch_size=f"{args.per_device_train_batch_size} x {accelerator.num_processes} x "
        f"{args.gradient_accumulation_steps}",
        fine_tuning=(f"LoRA (r={args.lora_r}, alpha={args.lora_alpha}, {', '.join(args.lora_target_modules)}; "
                     f"{'merged' if args.merge_lora else 'adapter'}) + full head" if args.use_lora else "full")
        + (f", masked-LM loss kept at weight {args.mlm_loss_weight:g}" if args.mlm_loss_weight else ""),
    )


def with_note_keywords(
    args: argparse.Namespace, splits: Splits, tokenizer: PreTrainedTokenizerBase, code_texts: dict[str, list[str]] | None
) -> dict[str, list[str]]:
    """The texts that start the codes' queries and the description match: each training code's own (`code_texts`,
    else official) and, for a code of `KEYWORD_MIN_NOTES` training notes or more, the `--note_keywords` words of its
    notes (`note_keywords`). Only these two read them: the saved config describes codes with `code_texts` alone,
    and never holds words of the notes."""
    codes = splits.labels[: splits.attention_labels]
    keywords = note_keywords(splits.train, codes, tokenizer, args.note_keywords, KEYWORD_MIN_NOTES)
    texts = code_descriptions(keywords, code_system=args.code_system, own=code_texts)
    return {**(code_texts or {}), **{code: [*texts.get(code, []), words] for code, words in keywords.items()}}


def uses_description_match(args: argparse.Namespace) -> bool:
    return args.description_match if args.description_match is not None else args.label_space == "code_system"


def check_adapter_base(args: argparse.Namespace) -> None:
    """An adapter folder is loaded with its base repo's code and weights: a RoBERTa or ModernBERT checkpoint has none
    of ours, so its adapter would load into transformers' own model, without the label attention; and the base has no
    description-match tables, which the adapter (LoRA weights and the head) does not hold. Refused before any work."""
    if not args.use_lora or args.merge_lora:
        return
    if is_backbone_checkpoint(args.model_name_or_path):
        raise ConfigError(
            f"--use_lora on {args.model_name_or_path}, another encoder than BERT-XML's, needs --merge_lora: an adapter "
            "folder loads with its base repo's code, which that checkpoint does not have"
        )
    if uses_description_match(args):
        raise ConfigError("--use_lora with the description match needs --merge_lora: an adapter folder holds the LoRA "
                          "weights and the head, not the match's tables")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    check_adapter_base(args)
    accelerator = setup_accelerator(args.output_dir, **accelerator_settings(args, "bert-xml-train"))
    # A push that would fail at the end is refused now, by the main process (the only one that talks to the Hub).
    check_on_main_process(accelerator, lambda: check_push_from_args(args, args.output_dir), HubPushError)
    splits = load_splits(args, accelerator)
    tokenizer = load_tokenizer(args.tokenizer_name or args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    code_texts = read_code_texts(args.code_descriptions, args.code_system) if args.code_descriptions else None
    frequencies = label_frequencies(splits.train, splits.labels)
    init_from_descriptions = args.init_label_queries_from_descriptions
    if init_from_descriptions is None:
        init_from_descriptions = args.model_name_or_path is None
    learning_texts = code_texts
    if args.note_keywords and (init_from_descriptions or uses_description_match(args)):
        learning_texts = with_note_keywords(args, splits, tokenizer, code_texts)
    queries_per_code = args.label_queries_per_code
    if queries_per_code is None:
        queries_per_code = SYNONYM_QUERIES if init_from_descriptions else 1
    model = build_coding_model(
        splits.labels[: splits.attention_labels], tokenizer, args.model_name_or_path, args.config_name,
        args.config_overrides, init_from_descriptions=init_from_descriptions, label_frequencies=frequencies,
        code_system=args.code_system, allow_random_encoder=args.allow_random_encoder,
        mlm_loss_weight=args.mlm_loss_weight, code_texts=learning_texts, queries_per_code=queries_per_code,
    )  # fmt: skip
    if args.learning_rate is None:
        args.learning_rate = default_learning_rate(model.config.hidden_size, LEARNING_RATE_AT_256)
        logger.info(f"Encoder learning rate {args.learning_rate:.2g}, the default for width {model.config.hidden_size}")
    max_length = min(args.max_seq_length or model.config.max_note_length, model.config.max_note_length)
    tokenizer.model_max_length = max_length  # pipelines called with truncation=True cut notes where training did
    if uses_description_match(args):
        add_description_match(
            model, tokenizer, splits.train, splits.labels[splits.attention_labels :], frequencies, args.code_system,
            args.description_terms, max_length, learning_texts,
        )  # fmt: skip
    loaders = build_dataloaders(args, splits, tokenizer, max_length, tokenizer.pad_token_id)
    if accelerator.is_main_process:
        for notes in (splits.train, splits.validation, splits.test):
            if notes is not None:
                log_report(notes, max_length)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if args.use_lora:
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    if args.torch_compile:
        model.compile(backend=args.torch_compile)  # in place: the module and its weight names stay as they are
    model, optimizer, scheduler, loaders, progress, max_steps = prepare_training(
        args, accelerator, model, loaders, splits
    )
    throughput = coding_throughput(accelerator, model, max_steps - progress.step)
    train(args, accelerator, model, optimizer, scheduler, loaders, splits, progress, max_steps, throughput)
    speed = throughput.results()
    logger.info(
        f"Training throughput (steady state, {speed['steady_state_steps']} steps): "
        f"{speed['tokens_per_second']:,.0f} note tokens/s, MFU {speed['mfu']:.1%}"
    )
    results, predictions = final_evaluation(args, accelerator, model, loaders, splits)
    write_outputs(args, accelerator, model, tokenizer, splits, results, predictions, progress, speed, code_texts)
    if accelerator.is_main_process:
        push_from_args(args, args.output_dir)
    finish_trackers(accelerator)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Expected failures of a run: the message (file, line, field; or what to do), not a traceback.
    expected = (NotesError, ConfigError, TrainingDivergedError, OutputDirError, OutputWriteError, HubPushError,
                IdentifiersFoundError, PermissionError)  # fmt: skip
    try:
        with claim_output_dir(
            args.output_dir, run_args(args), bool(args.resume_from_checkpoint), args.overwrite_output_dir
        ):
            run(args)
    except expected as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
