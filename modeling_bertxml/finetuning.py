"""The coding model of `train.py` (not remote code): build it on a pretrained encoder, add LoRA, save and reload it.

Model construction is one small function so that other ways to start the head (e.g. label queries initialised from
code descriptions) plug in at one place. LoRA follows the setup that works for a custom head: adapters on the
encoder's attention, the whole label-attention head trained and saved (`modules_to_save`), and no PEFT `task_type`,
because `SEQ_CLS` would only unfreeze a module named `classifier` and leave the head random.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from .configuration_bertxml import BertXMLConfig
from .label_init import code_descriptions, init_label_queries_from_descriptions
from .modeling_bertxml import BertXMLForMultiLabelCoding
from .checkpointing import save_model_folder
from .training import load_config

logger = logging.getLogger(__name__)

HEAD_MODULE = "label_head"
ADAPTER_CONFIG = "adapter_config.json"


def build_coding_model(
    labels: list[str],
    tokenizer: PreTrainedTokenizerBase,
    model_name_or_path: str | os.PathLike | None = None,
    config_name: str | os.PathLike | None = None,
    config_overrides: str | None = None,
    init_from_descriptions: bool = False,
    label_frequencies: dict[str, float] | None = None,
    code_system: str = "icd10",
) -> BertXMLForMultiLabelCoding:
    """The encoder of `model_name_or_path` (a pretrain.py output, a coder, or any BERT checkpoint) with a head for
    `labels`.

    Starting from a coder, each code it already knows keeps its own head row (matched by code, not by position);
    other codes start fresh. Without `model_name_or_path` the encoder starts from scratch (`config_name` /
    `config_overrides`), which only makes sense for tests and baselines. `code_system` (what the labels are) is
    stored in the config; `init_from_descriptions` starts each new code's query from its official description
    (`label_init`). Weights load in float32 whatever the checkpoint's dtype: mixed precision is Accelerate's job,
    and the optimizer needs float32 master weights. `label_frequencies` (share of training notes carrying each
    code) start new codes at their prior.
    """
    id2label = dict(enumerate(labels))
    config = load_config(
        config_name or model_name_or_path, config_overrides, tokenizer,
        id2label=id2label, label2id={code: i for i, code in id2label.items()}, code_system=code_system,
    )  # fmt: skip
    known: list[str] = []
    if model_name_or_path is None:
        logger.warning("No --model_name_or_path: the encoder starts from random weights (no pretraining)")
        model = BertXMLForMultiLabelCoding(config)
    else:
        # ignore_mismatched_sizes: a checkpoint that already has a head for another label space gets a new one.
        model = BertXMLForMultiLabelCoding.from_pretrained(
            model_name_or_path, config=config, dtype=torch.float32, ignore_mismatched_sizes=True
        )
        known = reuse_head_rows_by_code(model, model_name_or_path)
    new = [code for code in labels if code not in set(known)]
    if label_frequencies is not None:
        init_output_bias_from_priors(model, {code: label_frequencies[code] for code in new})
    if init_from_descriptions:
        descriptions = code_descriptions(new, code_system=code_system)
        initialised = init_label_queries_from_descriptions(model, tokenizer, descriptions)
        logger.info(f"{len(initialised)} of {len(new)} new label queries start from their official descriptions")
    return model


def init_output_bias_from_priors(model: BertXMLForMultiLabelCoding, frequencies: dict[str, float]) -> None:
    """Start each code's output bias at its log prior odds, so that the first steps are not spent learning that a
    code is rare (a zero bias starts every code at probability 0.5; RetinaNet's prior initialisation)."""
    rows = [model.config.label2id[code] for code in frequencies]
    share = torch.tensor(list(frequencies.values()), dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
    with torch.no_grad():
        model.label_head.output_bias[rows] = torch.logit(share)


def reuse_head_rows_by_code(model: BertXMLForMultiLabelCoding, source: str | os.PathLike) -> list[str]:
    """Give each code of `model` the head row (query, output weight, bias) that coder `source` learnt for the same
    code; every other code starts from a fresh row. Returns the codes that kept a learnt row.

    `from_pretrained` matches rows by position, which is wrong as soon as the codes are another set or order.
    """
    source_config = BertXMLConfig.from_pretrained(source)
    if BertXMLForMultiLabelCoding.__name__ not in (source_config.architectures or []):
        return []  # an encoder (MLM) checkpoint: no head to reuse
    codes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    source_codes = [source_config.id2label[i] for i in range(source_config.num_labels)]
    if codes == source_codes:
        return codes  # loaded row by row already
    source_row = {code: i for i, code in enumerate(source_codes)}
    known = [i for i, code in enumerate(codes) if code in source_row]
    source_head = BertXMLForMultiLabelCoding.from_pretrained(source, dtype=torch.float32).label_head
    fresh = type(model.label_head)(model.config)
    model._init_weights(fresh)
    rows, source_rows = torch.tensor(known, dtype=torch.long), torch.tensor(
        [source_row[codes[i]] for i in known], dtype=torch.long
    )
    with torch.no_grad():
        for name in ("queries", "output_weight", "output_bias"):
            values = getattr(fresh, name).detach().clone()
            values[rows] = getattr(source_head, name).detach()[source_rows]
            getattr(model.label_head, name).copy_(values)
    logger.info(f"{len(known)} of {len(codes)} codes keep the head rows learnt in {source}; the others start fresh")
    return [codes[i] for i in known]


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
    add_files: Callable[[Path], None] | None = None,
) -> None:
    """Write a loadable model folder once: weights, config (labels, threshold, auto_map), code files, tokenizer and
    whatever `add_files(folder)` adds (see `checkpointing.save_model_folder`).

    A LoRA model is merged into a plain model with `merge_lora` (loads anywhere, like full fine-tuning); otherwise
    the folder holds the adapter plus the coding config, which `load_coding_model` reloads on top of its base model.
    """
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, PeftModel) and merge_lora:
        unwrapped = unwrapped.merge_and_unload()
    save_model_folder(accelerator, unwrapped, tokenizer, output_dir, coding_config(unwrapped), add_files)


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
    "init_output_bias_from_priors",
    "load_coding_model",
    "save_coding_model",
]
