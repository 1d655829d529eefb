"""The coding model of `train.py` (not remote code): build it on a pretrained encoder, add LoRA, save and reload it.

Model construction is one small function so that other ways to start the head (e.g. label queries initialised from
code descriptions) plug in at one place. LoRA follows the setup that works for a custom head: adapters on the
encoder's attention, the whole label-attention head trained and saved (`modules_to_save`), and no PEFT `task_type`,
because `SEQ_CLS` would only unfreeze a module named `classifier` and leave the head random.
"""

import argparse
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from .configuration_bertxml import BertXMLConfig
from .label_init import code_descriptions, init_label_queries_from_descriptions
from .modeling_bertxml import BertXMLForMultiLabelCoding
from .training import load_config, save_model

logger = logging.getLogger(__name__)

HEAD_MODULE = "label_head"
ADAPTER_CONFIG = "adapter_config.json"


def build_coding_model(
    args: argparse.Namespace, labels: list[str], tokenizer: PreTrainedTokenizerBase
) -> BertXMLForMultiLabelCoding:
    """The encoder of --model_name_or_path (a pretrain.py output or any BERT checkpoint) with a new head for `labels`.

    Without --model_name_or_path the encoder starts from scratch (--config_name / --config_overrides), which only
    makes sense for tests and baselines. Weights load in float32 whatever the checkpoint's dtype: mixed precision is
    Accelerate's job, and the optimizer needs float32 master weights.
    """
    id2label = dict(enumerate(labels))
    config = load_config(args, tokenizer, id2label=id2label, label2id={code: i for i, code in id2label.items()})
    if args.model_name_or_path is None:
        logger.warning("No --model_name_or_path: the encoder starts from random weights (no pretraining)")
        model = BertXMLForMultiLabelCoding(config)
    else:
        # ignore_mismatched_sizes: a checkpoint that already has a head for another label space gets a new one.
        model = BertXMLForMultiLabelCoding.from_pretrained(
            args.model_name_or_path, config=config, dtype=torch.float32, ignore_mismatched_sizes=True
        )
    if args.init_label_queries_from_descriptions:
        initialised = init_label_queries_from_descriptions(model, tokenizer, code_descriptions(labels))
        logger.info(f"{len(initialised)} of {len(labels)} label queries start from their ICD-10-CM descriptions")
    return model


def add_lora(
    model: BertXMLForMultiLabelCoding, r: int, alpha: int, dropout: float, target_modules: list[str]
) -> PeftModel:
    """LoRA adapters on `target_modules` of the encoder; the label-attention head stays fully trainable."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=[HEAD_MODULE],
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"LoRA: training {trainable:,} of {total:,} parameters (adapters and the whole {HEAD_MODULE})")
    return model


def head_prefix(model: torch.nn.Module) -> str:
    """Parameter-name prefix of the head, for its own learning rate (`training.create_optimizer(param_groups=...)`)."""
    return f"base_model.model.{HEAD_MODULE}." if isinstance(model, PeftModel) else f"{HEAD_MODULE}."


def coding_config(model: torch.nn.Module) -> BertXMLConfig:
    """The BertXMLConfig of a plain or LoRA-wrapped coding model (threshold, labels)."""
    return model.get_base_model().config if isinstance(model, PeftModel) else model.config


def save_coding_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    merge_lora: bool = False,
) -> None:
    """Save a loadable model folder: weights, config (labels, threshold, auto_map), code files and tokenizer.

    A LoRA model is merged into a plain model with `merge_lora` (loads anywhere, like full fine-tuning); otherwise
    the folder holds the adapter, which `load_coding_model` reloads on top of its base model with PEFT.
    """
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, PeftModel) and merge_lora:
        unwrapped = unwrapped.merge_and_unload()
    save_model(accelerator, unwrapped, tokenizer, str(output_dir))
    if isinstance(unwrapped, PeftModel) and accelerator.is_main_process:
        coding_config(unwrapped).save_pretrained(output_dir)  # labels and threshold travel with the adapter
    accelerator.wait_for_everyone()


def load_coding_model(folder: str | Path, **kwargs) -> torch.nn.Module:
    """Reload what `save_coding_model` wrote: a plain model, or base model + LoRA adapter (a `PeftModel`)."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        return BertXMLForMultiLabelCoding.from_pretrained(folder, **kwargs)
    base_path = PeftConfig.from_pretrained(folder).base_model_name_or_path
    config = BertXMLConfig.from_pretrained(folder)
    # The base checkpoint's head (if any) is for other labels: it is replaced by the adapter's saved head.
    base = BertXMLForMultiLabelCoding.from_pretrained(base_path, config=config, ignore_mismatched_sizes=True, **kwargs)
    return PeftModel.from_pretrained(base, folder)


__all__ = [
    "HEAD_MODULE",
    "add_lora",
    "build_coding_model",
    "coding_config",
    "head_prefix",
    "load_coding_model",
    "save_coding_model",
]
