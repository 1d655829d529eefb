"""Fine-tune BERT-XML for multi-label ICD-10 coding, evaluate it as Edin et al. (2023) do, and push it to the Hub.

    python train.py --model_name_or_path runs/pretrain --train_file train.jsonl --validation_file dev.jsonl \
        --test_file test.jsonl --output_dir runs/coder [--use_lora --merge_lora] [--push_to_hub --hub_model_id org/name]

Runs the same under `accelerate launch` (multi-GPU, multi-node, mixed precision). Evaluation protocol: after each
epoch (or --eval_steps) the validation split is scored; the model with the best validation MAP is kept and training
stops after --early_stopping_patience evaluations without improvement. One global threshold is then tuned on the
validation split (micro F1, grid of 100) and applied unchanged to the test split. The output folder is Hub-ready:
weights, config (labels, threshold, auto_map), tokenizer, remote code, README.md model card, handler.py for Inference
Endpoints (answering as the `icd-coding` pipeline), eval_results.json and test_results.json.
"""

import argparse
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_bertxml.finetuning import (
    add_lora,
    build_coding_model,
    coding_config,
    head_prefix,
    save_coding_model,
)
from modeling_bertxml.hub import HubPushError, IdentifiersFoundError, add_hub_args, push_from_args
from modeling_bertxml.metrics import compute_metrics, format_table, tune_threshold
from modeling_bertxml.model_card import render_model_card
from modeling_bertxml.pipeline_folder import make_pipeline_ready
from modeling_bertxml.notes import (
    MultiLabelCollator,
    NoteColumns,
    Notes,
    NotesError,
    build_label_space,
    check_disjoint,
    log_report,
    read_notes,
    tokenize_notes,
)
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
    load_tokenizer,
    prepare_output_dir,
    resume_dataloader,
    setup_accelerator,
)

logger = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parent
MODEL_CARD_TEMPLATE = REPO_ROOT / "model_card.md"
HANDLER_SOURCE = REPO_ROOT / "modeling_bertxml" / "endpoint_handler.py"
BEST_MODEL = "best_model"  # under checkpoints/: the weights with the best validation MAP so far
THRESHOLD_GRID = 100  # Edin et al.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    add_data_args(parser)
    add_optimization_args(parser)
    add_checkpoint_args(parser)
    add_hub_args(parser)
    coding = parser.add_argument_group("ICD-10 coding")
    coding.add_argument("--test_file", nargs="+", help="Test notes; scored once, with the validation threshold.")
    coding.add_argument("--label_column", default="labels", help="Column of the code lists (CSV: ';'-separated).")
    coding.add_argument("--id_column", default="id", help="Optional column of note ids (checked for duplicates).")
    coding.add_argument("--label_file", help="File of codes to predict, one per line (default: the training codes).")
    coding.add_argument("--min_code_count", type=int, default=1, help="Keep training codes seen at least this often.")
    coding.add_argument("--strict_codes", action="store_true", help="Malformed/unknown codes are errors, not counts.")
    coding.add_argument("--allow_non_billable", action="store_true", help="Do not report non-billable codes.")
    coding.add_argument("--head_learning_rate", type=float, default=1e-3, help="Learning rate of the new head.")
    coding.add_argument(
        "--init_label_queries_from_descriptions", action="store_true",
        help="Start each code's attention query and output weight from the encoder's embedding of its ICD-10-CM "
        "description and inclusion terms (meant for rare codes; needs a well-pretrained encoder, see README).",
    )
    coding.add_argument(
        "--early_stopping_patience", type=int, default=3,
        help="Stop after this many evaluations without a better validation MAP (0: never stop early).",
    )
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--use_lora", action="store_true", help="Train LoRA adapters and the head, not the encoder.")
    lora.add_argument("--lora_r", type=int, default=8)
    lora.add_argument("--lora_alpha", type=int, default=16)
    lora.add_argument("--lora_dropout", type=float, default=0.1)
    lora.add_argument("--lora_target_modules", nargs="+", default=["query", "value"])
    lora.add_argument("--merge_lora", action="store_true", help="Save a plain model with the adapters merged in.")
    args = parser.parse_args(argv)
    if not args.train_file or not args.validation_file:
        parser.error("--train_file and --validation_file are required (the threshold and best model come from it)")
    if args.merge_lora and not args.use_lora:
        parser.error("--merge_lora needs --use_lora")
    return args


@dataclass
class Splits:
    train: Notes
    validation: Notes
    test: Notes | None
    labels: list[str]


def load_splits(args: argparse.Namespace, accelerator: Accelerator) -> Splits:
    """Read and validate the three splits and fix the label space (training codes, or --label_file)."""
    columns = NoteColumns(args.text_column, args.label_column, args.id_column)
    read = {
        name: read_notes(files, name, columns, args.strict_codes, args.allow_non_billable)
        for name, files in (("train", args.train_file), ("validation", args.validation_file), ("test", args.test_file))
        if files
    }
    check_disjoint(*read.values())
    labels = build_label_space(read["train"], args.min_code_count, args.label_file)
    if accelerator.is_main_process:
        logger.info(f"Label space: {len(labels):,} codes")
    return Splits(read["train"], read["validation"], read.get("test"), labels)


def build_dataloaders(
    args: argparse.Namespace, splits: Splits, tokenizer, max_length: int, pad_token_id: int
) -> dict[str, DataLoader]:
    label2id = {code: i for i, code in enumerate(splits.labels)}
    collator = MultiLabelCollator(num_labels=len(label2id), pad_token_id=pad_token_id)
    loaders = {}
    for name in ("train", "validation", "test"):
        notes = getattr(splits, name)
        if notes is None:
            continue
        dataset = tokenize_notes(notes, label2id, tokenizer, max_length, args.preprocessing_num_workers)
        batch_size = args.per_device_train_batch_size if name == "train" else args.per_device_eval_batch_size
        # The loader's own generator: starting an epoch must not draw from the global RNG (dropout's stream), or a
        # resumed run would not continue exactly (see training.resume_dataloader).
        generator = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
        loaders[name] = DataLoader(
            dataset, batch_size=batch_size, shuffle=name == "train", collate_fn=collator, generator=generator
        )
    return loaders


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint so that a resumed run continues exactly, early stopping included."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # micro-batches of `epoch` already trained
    best_map: float = -1.0
    best_step: int = 0
    evals_without_improvement: int = 0


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


def evaluate(
    model, loader: DataLoader, accelerator: Accelerator, notes: Notes, threshold: float | None = None
) -> dict:
    """All metrics of a split; the threshold is tuned here when not given (pass it for test: never tune on test)."""
    probs, targets = predict(model, loader, accelerator)
    unseen = sum(notes.report.outside_label_space.values())
    if threshold is None:
        threshold, _ = tune_threshold(probs, targets, grid=THRESHOLD_GRID, num_unseen_positives=unseen)
    return compute_metrics(probs, targets, threshold, num_unseen_positives=unseen)


def validate_and_track(args, accelerator, model, loaders, splits, state: TrainState) -> bool:
    """Score the validation split, keep the weights if its MAP is the best so far; True when training should stop."""
    metrics = evaluate(model, loaders["validation"], accelerator, splits.validation)
    logger.info(f"step {state.step}: validation MAP {metrics['map']:.4f}, micro F1 {metrics['micro_f1']:.4f}")
    if args.with_tracking:
        accelerator.log({f"validation/{key}": value for key, value in metrics.items()}, step=state.step)
    if metrics["map"] > state.best_map:
        state.best_map, state.best_step, state.evals_without_improvement = metrics["map"], state.step, 0
        save_best(accelerator, model, Path(args.output_dir))
        return False
    state.evals_without_improvement += 1
    stop = 0 < args.early_stopping_patience <= state.evals_without_improvement
    if stop:
        logger.info(f"Early stopping: no better validation MAP for {state.evals_without_improvement} evaluations")
    return stop


def best_model_dir(output_dir: Path) -> Path:
    return output_dir / CheckpointManager.subdir / BEST_MODEL


def save_best(accelerator: Accelerator, model, output_dir: Path) -> None:
    """The best weights so far, in a temporary folder renamed into place (a killed save keeps the previous best)."""
    final = best_model_dir(output_dir)
    temporary = final.with_name(f".{BEST_MODEL}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)  # left by a killed save
    accelerator.wait_for_everyone()
    accelerator.save_model(model, temporary)
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        temporary.rename(final)
    accelerator.wait_for_everyone()


def restore_best(accelerator: Accelerator, model, output_dir: Path) -> None:
    """Load the weights with the best validation MAP into `model` (on every rank)."""
    state_dict = {}
    for shard in sorted(best_model_dir(output_dir).glob("*.safetensors")):
        state_dict.update(load_file(shard))
    accelerator.unwrap_model(model).load_state_dict(state_dict)


def train(args, accelerator, model, optimizer, scheduler, loaders, splits, state: TrainState, max_steps: int) -> None:
    """The Accelerate loop: accumulation windows, clipping, NaN guard, checkpoints, validation and early stopping."""
    checkpoints = CheckpointManager(args.output_dir)
    progress = tqdm(total=max_steps, initial=state.step, desc="Training", disable=not accelerator.is_local_main_process)
    epoch_steps = math.ceil(len(loaders["train"]) / args.gradient_accumulation_steps)
    window_loss = 0.0
    for epoch in range(state.epoch, math.ceil(max_steps / epoch_steps)):
        loaders["train"].set_epoch(epoch)
        batches = resume_dataloader(accelerator, loaders["train"], state.batches_done)
        batches.set_epoch(epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                check_finite(loss, state.step + 1, accelerator)
                window_loss += loss.detach().float().item() / args.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.batches_done += 1
            if not accelerator.sync_gradients:  # the optimizer steps only after a full accumulation window
                continue
            state.step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{window_loss:.4f}")
            if args.with_tracking:
                accelerator.log({"train/loss": window_loss, "train/lr": scheduler.get_last_lr()[0]}, step=state.step)
            window_loss = 0.0
            done = state.step >= max_steps
            # Validate before checkpointing, so that a resumed run knows the best MAP of the weights on disk.
            if done or (args.eval_steps and state.step % args.eval_steps == 0):
                done = validate_and_track(args, accelerator, model, loaders, splits, state) or done
            if isinstance(args.checkpointing_steps, int) and state.step % args.checkpointing_steps == 0:
                checkpoints.save(accelerator, state.step, state.epoch, asdict(state))
            if done:
                return
        state.epoch, state.batches_done = epoch + 1, 0
        done = not args.eval_steps and validate_and_track(args, accelerator, model, loaders, splits, state)
        if args.checkpointing_steps == "epoch":
            checkpoints.save(accelerator, state.step, state.epoch, asdict(state))
        if done:
            return


def prepare_training(args, accelerator, model, loaders) -> tuple:
    """Wrap everything with Accelerate and restore a checkpoint; returns model, optimizer, scheduler, loaders,
    the training state and the number of optimizer steps."""
    names = list(loaders)
    loaders = dict(zip(names, accelerator.prepare(*loaders.values())))
    epoch_steps = math.ceil(len(loaders["train"]) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * epoch_steps
    optimizer = create_optimizer(model, args, param_groups={head_prefix(model): args.head_learning_rate})
    scheduler = create_scheduler(optimizer, args, num_training_steps=max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state = TrainState()
    checkpoints = CheckpointManager(args.output_dir)
    resume = checkpoints.resolve(args.resume_from_checkpoint)
    if resume is not None:
        saved = checkpoints.load(accelerator, resume)
        state = TrainState(**{key: saved[key] for key in asdict(state)})
    logger.info(
        f"{len(loaders['train'].dataset):,} training notes, {max_steps:,} optimizer steps of "
        f"{args.per_device_train_batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps} notes"
    )
    return model, optimizer, scheduler, loaders, state, max_steps


def final_evaluation(args, accelerator, model, loaders, splits: Splits) -> dict[str, dict]:
    """Best weights back; threshold tuned on validation only, then the same threshold on test."""
    restore_best(accelerator, model, Path(args.output_dir))
    results = {"validation": evaluate(model, loaders["validation"], accelerator, splits.validation)}
    if "test" in loaders:
        threshold = results["validation"]["threshold"]
        results["test"] = evaluate(model, loaders["test"], accelerator, splits.test, threshold=threshold)
    coding_config(accelerator.unwrap_model(model)).threshold = results["validation"]["threshold"]
    return results


def write_outputs(args, accelerator, model, tokenizer, splits: Splits, results: dict, state: TrainState) -> None:
    """The Hub-ready folder: model, results, code descriptions, model card and the Endpoint handler."""
    output_dir = Path(args.output_dir)
    save_coding_model(accelerator, model, tokenizer, output_dir, merge_lora=args.merge_lora)
    if not accelerator.is_main_process:
        return
    for split, name in (("validation", "eval_results.json"), ("test", "test_results.json")):
        if split in results:
            (output_dir / name).write_text(json.dumps(results[split], indent=2) + "\n")
    make_pipeline_ready(output_dir)  # the icd-coding pipeline and the codes' descriptions travel with the model
    shutil.copyfile(HANDLER_SOURCE, output_dir / "handler.py")
    config = coding_config(accelerator.unwrap_model(model))
    card = render_model_card(
        MODEL_CARD_TEMPLATE,
        repo_id=args.hub_model_id or output_dir.resolve().name,
        results=results,
        base_model=Path(args.model_name_or_path).name if args.model_name_or_path else None,
        num_labels=f"{len(splits.labels):,}",
        label_space=f"codes of --label_file {Path(args.label_file).name}" if args.label_file
        else f"training codes seen at least {args.min_code_count} time(s)",
        num_unseen=sum(sum(getattr(splits, split).report.outside_label_space.values()) for split in results),
        threshold=f"{config.threshold:.2f}",
        max_note_length=f"{config.max_note_length:,}",
        chunk_length=config.max_position_embeddings,
        num_train_notes=f"{len(splits.train):,}",
        steps=f"{state.step:,}",
        best_step=f"{state.best_step:,}",
        learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate,
        batch_size=f"{args.per_device_train_batch_size} x {accelerator.num_processes} x "
        f"{args.gradient_accumulation_steps}",
        fine_tuning=(f"LoRA (r={args.lora_r}, alpha={args.lora_alpha}, {', '.join(args.lora_target_modules)}; "
                     f"{'merged' if args.merge_lora else 'adapter'}) + full head" if args.use_lora else "full"),
    )
    card.save(output_dir / "README.md")
    logger.info(f"Results (threshold tuned on validation):\n{format_table(results)}")


def run(args: argparse.Namespace) -> None:
    prepare_output_dir(args)
    accelerator = setup_accelerator(args, "bert-xml-train")
    splits = load_splits(args, accelerator)
    tokenizer = load_tokenizer(args)
    model = build_coding_model(args, splits.labels, tokenizer)
    max_length = min(args.max_seq_length or model.config.max_note_length, model.config.max_note_length)
    tokenizer.model_max_length = max_length  # pipelines called with truncation=True cut notes where training did
    loaders = build_dataloaders(args, splits, tokenizer, max_length, tokenizer.pad_token_id)
    if accelerator.is_main_process:
        for notes in (splits.train, splits.validation, splits.test):
            if notes is not None:
                log_report(notes, max_length)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if args.use_lora:
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    model, optimizer, scheduler, loaders, state, max_steps = prepare_training(args, accelerator, model, loaders)
    train(args, accelerator, model, optimizer, scheduler, loaders, splits, state, max_steps)
    results = final_evaluation(args, accelerator, model, loaders, splits)
    write_outputs(args, accelerator, model, tokenizer, splits, results, state)
    if accelerator.is_main_process:
        push_from_args(args, args.output_dir)
    accelerator.end_training()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except (
        NotesError, NonFiniteLossError, OutputWriteError, HubPushError, IdentifiersFoundError, PermissionError,
        FileExistsError,
    ) as error:
        # Expected failures of a run: the message (file, line, field; or what to do), not a traceback.
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
