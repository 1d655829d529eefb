"""The coding model of `train.py` (not remote code): build it on a pretrained encoder, add LoRA, save and reload it.

Model construction is one small function so that other ways to start the head (e.g. label queries initialised from
code descriptions) plug in at one place. LoRA follows the setup that works for a custom head: adapters on the
encoder's attention, the whole label-attention head trained and saved (`modules_to_save`), and no PEFT `task_type`,
because `SEQ_CLS` would only unfreeze a module named `classifier` and leave the head random.
"""

import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase
from transformers.dynamic_module_utils import custom_object_save

from ..model.configuration_bertxml import BertXMLConfig
from ..data.code_systems import code_descriptions
from .label_init import init_label_queries_from_descriptions
from ..model.modeling_bertxml import BertXMLForMultiLabelCoding, backbone_init_kwargs
from .checkpointing import save_model_folder
from .loop import ConfigError, is_backbone_checkpoint, load_config

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
    allow_random_encoder: bool = False,
    mlm_loss_weight: float = 0.0,
) -> BertXMLForMultiLabelCoding:
    """The encoder of `model_name_or_path` (a pretrain.py output, a coder, any BERT checkpoint, or a checkpoint of
    another transformers encoder, which becomes the backbone: `training.is_backbone_checkpoint`) with a head for
    `labels`.

    Starting from a coder, each code it already knows keeps its own head row (matched by code, not by position);
    other codes start fresh. Without `model_name_or_path` the encoder starts from scratch (`config_name` /
    `config_overrides`), which only makes sense for tests and baselines. `code_system` (what the labels are) is
    stored in the config; `init_from_descriptions` starts each new code's query from its official description
    (`label_init`). Weights load in float32 whatever the checkpoint's dtype: mixed precision is Accelerate's job,
    and the optimizer needs float32 master weights. `label_frequencies` (share of training notes carrying each
    code) start new codes at their prior. A checkpoint whose encoder weights do not all load (weights named for
    another model than its config.json says) is refused with `EncoderMismatchError` unless `allow_random_encoder`:
    fine-tuning would silently start from random weights. `mlm_loss_weight` keeps the masked-LM loss (and the
    checkpoint's MLM head, `cls`) while coding: `BertXMLConfig.mlm_loss_weight`.
    """
    id2label = dict(enumerate(labels))
    config = load_config(
        config_name or model_name_or_path, config_overrides, tokenizer,
        id2label=id2label, label2id={code: i for i, code in id2label.items()}, code_system=code_system,
        mlm_loss_weight=mlm_loss_weight,
    )  # fmt: skip
    known: list[str] = []
    if model_name_or_path is None:
        logger.warning("No --model_name_or_path: the encoder starts from random weights (no pretraining)")
        model = BertXMLForMultiLabelCoding(config)
    elif config.backbone_config is not None and is_backbone_checkpoint(model_name_or_path):
        model = BertXMLForMultiLabelCoding(config)
        loading = load_backbone_weights(model, model_name_or_path)
        check_encoder_loaded(model_name_or_path, loading, allow_random_encoder)
    else:
        # ignore_mismatched_sizes: a checkpoint that already has a head for another label space gets a new one.
        model, loading = BertXMLForMultiLabelCoding.from_pretrained(
            model_name_or_path, config=config, dtype=torch.float32, ignore_mismatched_sizes=True,
            output_loading_info=True,
        )  # fmt: skip
        check_encoder_loaded(model_name_or_path, loading, allow_random_encoder)
        known = reuse_head_rows_by_code(model, model_name_or_path)
    new = [code for code in labels if code not in set(known)]
    if label_frequencies is not None:
        init_output_bias_from_priors(model, {code: label_frequencies[code] for code in new})
    if init_from_descriptions:
        descriptions = code_descriptions(new, code_system=code_system)
        initialised = init_label_queries_from_descriptions(model, tokenizer, descriptions)
        logger.info(f"{len(initialised)} of {len(new)} new label queries start from their official descriptions")
    return model


def load_backbone_weights(model: BertXMLForMultiLabelCoding, source: str | os.PathLike) -> dict:
    """Load checkpoint `source` of the backbone's own model type (its bare model or masked-LM model, loaded as
    transformers loads either into `AutoModel`) into `model`'s backbone, in float32. Returns the loading info with the
    backbone's names as `model` spells them (`bert.backbone.*`), as `check_encoder_loaded` reads it."""
    backbone = model.bert.backbone
    loaded, loading = type(backbone).from_pretrained(
        source, config=copy.deepcopy(backbone.config), dtype=torch.float32, output_loading_info=True,
        ignore_mismatched_sizes=True, **backbone_init_kwargs(backbone.config),
    )  # fmt: skip
    backbone.load_state_dict(loaded.state_dict())
    prefix = "bert.backbone."
    return {
        "missing_keys": [prefix + key for key in loading["missing_keys"]],
        "mismatched_keys": [prefix + (entry[0] if isinstance(entry, (tuple, list)) else entry)
                            for entry in loading["mismatched_keys"]],
        "unexpected_keys": list(loading["unexpected_keys"]),
    }  # fmt: skip


_ENCODER_PARTS = ("embeddings", "encoder", "layers")


class EncoderMismatchError(ConfigError):
    """The checkpoint's weights do not fit BERT-XML's encoder: training would start from a random one."""


def check_encoder_loaded(source: str | os.PathLike, loading: dict, allow_random: bool = False, listed: int = 5) -> None:
    """Refuse (or, with `allow_random`, warn about) a checkpoint that left encoder weights random: missing ones, or
    ones of another shape. The head is expected to be new; unused checkpoint weights are named as the likely cause."""
    mismatched = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in loading["mismatched_keys"]]
    random = sorted(
        key for key in {*loading["missing_keys"], *mismatched} if not key.startswith(f"{HEAD_MODULE}.")
    )
    if not random:
        return
    # The checkpoint's own encoder weights first: their names show what it is (roberta.*, model.layers.*).
    unused = sorted(loading["unexpected_keys"], key=lambda key: (not any(part in key for part in _ENCODER_PARTS), key))

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:listed]) + (f", ... ({len(keys)} in all)" if len(keys) > listed else "")

    message = (
        f"--model_name_or_path {source}: {len(random)} encoder weights did not load ({some(random)})"
        + (f"; {len(unused)} of the checkpoint's weights are unused ({some(unused)})" if unused else "")
        + ". Its weights are not named as its config.json says (weights of another model, or saved from a wrapper "
        "such as DDP's module.*), so fine-tuning would start from a random encoder. Use a checkpoint saved with "
        "save_pretrained (pretrain.py's output, or a BERT, RoBERTa, ModernBERT, ... model), or pass "
        "--allow_random_encoder to train from random weights anyway."
    )
    if not allow_random:
        raise EncoderMismatchError(message)
    logger.warning(message.replace(", or pass --allow_random_encoder to train from random weights anyway", ""))


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


def adapter_base_id(base_model_id: str | None, model_name_or_path: str | None) -> str:
    """The Hub id an adapter folder names as its base: `base_model_id`, else `model_name_or_path` when that is a Hub
    id. A local folder is refused (ValueError with what to pass instead): it resolves on no other machine."""
    if base_model_id:
        if os.path.isabs(base_model_id):
            raise ValueError(f"--base_model_id {base_model_id} is an absolute local path; give the base's Hub id")
        return base_model_id
    if model_name_or_path is None:
        raise ValueError("--use_lora adapts a pretrained encoder: pass --model_name_or_path")
    if os.path.exists(model_name_or_path):
        raise ValueError(
            f"--model_name_or_path {model_name_or_path} is a local folder, which the LoRA adapter cannot name as its "
            "base on other machines: pass --base_model_id org/name (its Hub repo, e.g. from pretrain.py "
            "--push_to_hub), or --merge_lora for a folder that needs no base"
        )
    return model_name_or_path


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
    base_model_id: str | None = None,
) -> None:
    """Write a loadable model folder once: weights, config (labels, threshold, auto_map), code files, tokenizer and
    whatever `add_files(folder)` adds (see `checkpointing.save_model_folder`).

    A LoRA model is merged into a plain model with `merge_lora` (loads anywhere, like full fine-tuning); otherwise
    the folder holds the adapter (LoRA weights and the whole head) plus the coding config and code, and names its
    base by `base_model_id` (a Hub id: a local path would not resolve on anyone else's machine).
    """
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, PeftModel) and merge_lora:
        unwrapped = unwrapped.merge_and_unload()
    config = coding_config(unwrapped)
    if isinstance(unwrapped, PeftModel):
        if not base_model_id:
            raise ValueError("An adapter folder must name its base model: pass base_model_id (a Hub id)")
        unwrapped.peft_config["default"].base_model_name_or_path = base_model_id
        add_files = _with_adapter_files(unwrapped, add_files)
    save_model_folder(accelerator, unwrapped, tokenizer, output_dir, config, add_files)


def _with_adapter_files(model: PeftModel, add_files: Callable[[Path], None] | None) -> Callable[[Path], None]:
    """What an adapter folder needs besides peft's two files to load the standard ways (see the coding model's
    `from_pretrained`): the coding config as the model's, the remote code, and an `auto_mapping` that names the
    transformers Auto class, so that `AutoPeftModel` needs no import of this package."""
    base = model.get_base_model()
    base.config.architectures = [type(base).__name__]

    def add(folder: Path) -> None:
        custom_object_save(base, folder)
        adapter_config = folder / ADAPTER_CONFIG
        values = json.loads(adapter_config.read_text())
        values["auto_mapping"] = {"base_model_class": "AutoModelForSequenceClassification", "parent_library": "transformers"}
        adapter_config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        if add_files is not None:
            add_files(folder)

    return add


def load_coding_model(folder: str | Path, **kwargs) -> torch.nn.Module:
    """Reload what `save_coding_model` wrote: a plain model, or base model + LoRA adapter (a `PeftModel`, as
    `PeftModel.from_pretrained` documents it: the base built with the folder's config, so the saved head fits)."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        return BertXMLForMultiLabelCoding.from_pretrained(folder, **kwargs)
    base_id = PeftConfig.from_pretrained(folder).base_model_name_or_path
    base = BertXMLForMultiLabelCoding.from_pretrained(
        base_id, config=BertXMLConfig.from_pretrained(folder), ignore_mismatched_sizes=True, **kwargs
    )
    return PeftModel.from_pretrained(base, folder)


__all__ = [
    "HEAD_MODULE",
    "EncoderMismatchError",
    "check_encoder_loaded",
    "adapter_base_id",
    "load_backbone_weights",
    "add_lora",
    "build_coding_model",
    "coding_config",
    "head_prefix",
    "init_output_bias_from_priors",
    "load_coding_model",
    "save_coding_model",
]
