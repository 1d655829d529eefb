"""The models the scripts train, built from what --config_name, --model_name_or_path and --tokenizer_name name.

A checkpoint's config.json is read once (`Checkpoint`): whether it is another encoder (RoBERTa, ModernBERT, ...:
its encoder becomes the backbone), and for a coder its codes. `load_config` turns it (or BERT-base sizes, from scratch)
into a BERT-XML config checked against the tokenizer, and `build_coding_model` builds `train.py`'s model on it with
one load of the weights: a coder is loaded with its own codes, so that every head row loads where it was saved, then
each code keeps its row by code (`BertXMLForMultiLabelCoding.set_codes`). LoRA follows the setup that works for a
custom head: adapters on the encoder's attention, the whole label-attention head trained and saved
(`modules_to_save`), and no PEFT `task_type`, because `SEQ_CLS` would only unfreeze a module named `classifier` and
leave the head random.
"""

import copy
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..data.code_systems import code_descriptions
from ..model import MODEL_FILES, source_file
from ..model.configuration_bertxml import BertXMLConfig, vocab_fingerprint
from ..model.modeling_bertxml import BertXMLForMultiLabelCoding, backbone_init_kwargs
from .checkpointing import save_model_folder
from .label_init import init_label_queries_from_descriptions

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# Checkpoints whose weights load into the built-in BERT encoder; any other model type is used as a backbone.
BUILT_IN_MODEL_TYPES = ("bertxml", "bert")


class ConfigError(ValueError):
    """A config value (from --config_overrides or a config file) that BERT-XML cannot run."""


# ------------------------------------------------------------------------------------------- config and tokenizer
@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint (folder or Hub id) as its config.json describes it, read once."""

    name: str
    config: dict

    @classmethod
    def read(cls, name: str | os.PathLike) -> "Checkpoint":
        return cls(str(name), PretrainedConfig.get_config_dict(name)[0])

    @property
    def is_backbone(self) -> bool:
        """Another encoder (RoBERTa, ModernBERT, ...): its `model_type` is neither BERT-XML's nor BERT's. Its encoder
        becomes the coding model's backbone."""
        model_type = self.config.get("model_type")
        return model_type is not None and model_type not in BUILT_IN_MODEL_TYPES

    @property
    def codes(self) -> list[str]:
        """A coder's codes in the order of its head rows (a `train.py` folder, LoRA adapters included); none for an
        encoder."""
        if BertXMLForMultiLabelCoding.__name__ not in (self.config.get("architectures") or []):
            return []
        id2label = {int(i): code for i, code in self.config["id2label"].items()}
        return [id2label[i] for i in range(len(id2label))]

    def bertxml_config(self) -> BertXMLConfig:
        """Its config as BERT-XML's: a BERT-XML or BERT config as it is, another encoder's as the `backbone_config`."""
        values = copy.deepcopy(self.config)  # from_dict may consume what it reads
        if not self.is_backbone:
            return BertXMLConfig.from_dict(values)
        try:
            config = BertXMLConfig(backbone_config=CONFIG_MAPPING[values["model_type"]].from_dict(values))
        except (KeyError, ValueError) as error:
            raise ConfigError(f"{self.name}: {error}") from error
        logger.info(f"{self.name} is a {config.backbone_config.model_type} checkpoint: its encoder is the backbone")
        return config


def is_backbone_checkpoint(name: str | os.PathLike | None) -> bool:
    """Whether `name` is a checkpoint of another encoder (`Checkpoint.is_backbone`)."""
    return name is not None and Checkpoint.read(name).is_backbone


def load_config(
    name: "str | os.PathLike | Checkpoint | None" = None,
    config_overrides: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **values,
) -> BertXMLConfig:
    """The config of `name` (else BERT-base sizes), then `config_overrides` ("hidden_size=128,..."), then `values`.

    A config made from scratch (no `name`) has rotary positions (learned absolute ones keep MLM at the unigram
    plateau, see `BertXMLRotarySelfAttention`) and takes its vocabulary size and padding id from `tokenizer`; any
    other config must already agree with it (checked, with a clear error). The config then records the tokenizer's
    vocabulary (`vocab_fingerprint`), which a saved one must already have when it recorded one. The config of another
    encoder (`Checkpoint.is_backbone`) becomes the `backbone_config` of a BERT-XML config.
    """
    if name is None:
        config = BertXMLConfig(position_embedding_type="rotary")
        if tokenizer is not None:
            config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    else:
        config = (name if isinstance(name, Checkpoint) else Checkpoint.read(name)).bertxml_config()
    if config_overrides:
        logger.info(f"Overriding config: {config_overrides}")
        try:
            config.update_from_string(config_overrides)
        except ValueError as error:
            raise ConfigError(f"--config_overrides {config_overrides!r}: {error}") from error
    for key, value in values.items():
        setattr(config, key, value)
    try:
        config.check_values()
    except ValueError as error:
        where = f"--config_overrides {config_overrides!r}: " if config_overrides else ""
        raise ConfigError(f"{where}{error}") from error
    if tokenizer is not None:
        check_tokenizer_matches_config(tokenizer, config, tokenizer.name_or_path)
        config.vocab_fingerprint = vocab_fingerprint(tokenizer.get_vocab())
    return config


def load_tokenizer(
    name: str | os.PathLike, config: BertXMLConfig | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer of `name` (a folder from tokenizer_training, a model folder or a Hub id), checked against
    `config` when given."""
    # Our own model dirs carry an auto_map; the tokenizer itself is a plain tokenizers backend, no remote code.
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # no such folder or repo; a file cut short (JSONDecodeError)
        raise ConfigError(
            f"tokenizer {name} cannot be read ({str(error).splitlines()[0]}): train it again, or give the folder "
            "the model was trained with"
        ) from None
    if config is not None:
        check_tokenizer_matches_config(tokenizer, config, str(name))
    return tokenizer


def check_tokenizer_matches_config(tokenizer: PreTrainedTokenizerBase, config: BertXMLConfig, name: str) -> None:
    """Refuse a tokenizer whose vocabulary or padding id is not the model's, before hours of compute.

    More tokens than embeddings fail later and opaquely (an index error on some batch); fewer mean another tokenizer
    whose ids name other words than the ones the model learnt (silently wrong), except in a backbone, whose table
    may be padded for speed (ModernBERT: 50,368 rows for 50,280 tokens); so does the same number of other tokens,
    which only the config's `vocab_fingerprint` tells (when it has one); another padding id is not masked.
    """
    padded_table = config.backbone_config is not None and len(tokenizer) < config.vocab_size
    if len(tokenizer) != config.vocab_size and not padded_table:
        raise ConfigError(
            f"tokenizer {name} has {len(tokenizer)} tokens but the config's vocab_size is {config.vocab_size}: "
            "use the tokenizer the model was trained with (a new model from scratch takes its vocab_size from the "
            "tokenizer)"
        )
    fingerprint = vocab_fingerprint(tokenizer.get_vocab())
    if config.vocab_fingerprint is not None and fingerprint != config.vocab_fingerprint:
        raise ConfigError(
            f"tokenizer {name} has the model's {len(tokenizer)} tokens but not its vocabulary (fingerprint "
            f"{fingerprint}, the model's {config.vocab_fingerprint}): its ids name other tokens than the model learnt; "
            "use the tokenizer the model was trained with"
        )
    if tokenizer.pad_token_id is not None and config.pad_token_id is not None:
        if tokenizer.pad_token_id != config.pad_token_id:
            raise ConfigError(
                f"tokenizer {name} pads with id {tokenizer.pad_token_id} ({tokenizer.pad_token}) but the config's "
                f"pad_token_id is {config.pad_token_id}: the tokenizer and the model do not belong together"
            )


# ------------------------------------------------------------------------------------------------ the coding model
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
    code_texts: dict[str, list[str]] | None = None,
    queries_per_code: int = 1,
) -> BertXMLForMultiLabelCoding:
    """The encoder of `model_name_or_path` (a pretrain.py output, a coder, any BERT checkpoint, or a checkpoint of
    another transformers encoder, which becomes the backbone) with a head for `labels`.

    Starting from a coder, each code it already knows keeps its own head row (matched by code, not by position);
    other codes start fresh. Without `model_name_or_path` the encoder starts from scratch (`config_name` /
    `config_overrides`), which only makes sense for tests and baselines. `code_system` (what the labels are) is
    stored in the config; `init_from_descriptions` starts each new code's query from its official description
    (`label_init`). Weights load in float32 whatever the checkpoint's dtype: mixed precision is Accelerate's job,
    and the optimizer needs float32 master weights. `label_frequencies` (share of training notes carrying each
    code) start new codes at their prior. A checkpoint whose encoder weights do not all load (weights named for
    another model than its config.json says) is refused with `EncoderMismatchError` unless `allow_random_encoder`:
    fine-tuning would silently start from random weights. `mlm_loss_weight` keeps the masked-LM loss (and the
    checkpoint's MLM head, `cls`) while coding: `BertXMLConfig.mlm_loss_weight`. `code_texts` (a user's texts of
    codes) replace the official ones of the codes they list. `queries_per_code`: `BertXMLConfig.label_queries_per_code`
    of a new head (a coder keeps its own).
    """
    checkpoint = Checkpoint.read(model_name_or_path) if model_name_or_path is not None else None
    # A coder is built with its own codes, so that every head row loads where it was saved; set_codes moves them.
    source_codes = checkpoint.codes if checkpoint is not None else []
    codes = source_codes or labels
    head = {} if source_codes else {"label_queries_per_code": queries_per_code}
    config = load_config(
        config_name or checkpoint, config_overrides, tokenizer,
        id2label=dict(enumerate(codes)), label2id={code: i for i, code in enumerate(codes)}, code_system=code_system,
        mlm_loss_weight=mlm_loss_weight, **head,
    )  # fmt: skip
    if checkpoint is None:
        logger.warning("No --model_name_or_path: the encoder starts from random weights (no pretraining)")
        model = BertXMLForMultiLabelCoding(config)
    else:
        model = load_checkpoint(checkpoint, config, allow_random_encoder)
    known = model.set_codes(labels) if source_codes else []
    if source_codes and source_codes != labels:
        logger.info(f"{len(known)} of {len(labels)} codes keep the head rows learnt in {checkpoint.name}; the others "
                    "start fresh")  # fmt: skip
    new = [code for code in labels if code not in set(known)]
    if label_frequencies is not None:
        rows = torch.tensor([model.config.label2id[code] for code in new], dtype=torch.long)
        model.label_head.set_prior_bias(rows, torch.tensor([label_frequencies[code] for code in new]))
    if init_from_descriptions:
        descriptions = code_descriptions(new, code_system=code_system, own=code_texts)
        initialised = init_label_queries_from_descriptions(model, tokenizer, descriptions)
        logger.info(f"{len(initialised)} of {len(new)} new label queries start from their official descriptions")
    return model


def load_checkpoint(
    checkpoint: Checkpoint, config: BertXMLConfig, allow_random_encoder: bool = False
) -> BertXMLForMultiLabelCoding:
    """The coding model built once, with `checkpoint`'s weights loaded once, in float32 (another encoder's under
    `backbone_key_mapping`); an encoder that did not load is refused (`check_encoder_loaded`). A weight of another
    shape than `config` says (the head of a BERT classifier, a LAAT projection set by --config_overrides) starts new
    (`ignore_mismatched_sizes`)."""
    backbone = config.backbone_config is not None and checkpoint.is_backbone
    model, loading = BertXMLForMultiLabelCoding.from_pretrained(
        checkpoint.name, config=config, dtype=torch.float32, ignore_mismatched_sizes=True, output_loading_info=True,
        key_mapping=backbone_key_mapping(config.backbone_config) if backbone else None,
    )  # fmt: skip
    if backbone:
        # transformers keeps a load's key mapping to save the weights back under the checkpoint's names; the coder
        # saves its own names (bert.backbone.*), as a model built from its config does (a dequantized model drops
        # its mapping the same way).
        del model._weight_conversions
    check_encoder_loaded(checkpoint.name, loading, allow_random_encoder)
    return model


def backbone_key_mapping(backbone_config: PretrainedConfig) -> dict[str, str]:
    """Where another encoder's checkpoint weights go in the coding model: its encoder's, saved bare (`embeddings.*`)
    or inside its masked-LM model (`roberta.embeddings.*`), to `bert.backbone.*`; the rest (its MLM head) stays
    unused. The encoder's top-level modules are its class's own, read from an instance on the meta device (no
    memory, no weights)."""
    with torch.device("meta"):
        encoder = AutoModel.from_config(backbone_config, **backbone_init_kwargs(backbone_config))
    parts = "|".join(re.escape(name) for name, _ in encoder.named_children())
    target = f"{BertXMLForMultiLabelCoding.base_model_prefix}.backbone"
    return {rf"^(?:{re.escape(encoder.base_model_prefix)}\.)?({parts})\.": rf"{target}.\1."}


_ENCODER_PARTS = ("embeddings", "encoder", "layers")


class EncoderMismatchError(ConfigError):
    """The checkpoint's weights do not fit BERT-XML's encoder: training would start from a random one."""


def check_encoder_loaded(source: str | os.PathLike, loading: dict, allow_random: bool = False, listed: int = 5) -> None:
    """Refuse (or, with `allow_random`, warn about) a checkpoint that left encoder weights random: missing ones, or
    ones of another shape. The head is expected to be new; unused checkpoint weights are named as the likely cause."""
    mismatched = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in loading["mismatched_keys"]]
    head = f"{BertXMLForMultiLabelCoding.head_name}."
    random = sorted(key for key in {*loading["missing_keys"], *mismatched} if not key.startswith(head))
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


# --------------------------------------------------------------------------------------------- LoRA, save, reload
def add_lora(
    model: BertXMLForMultiLabelCoding, r: int, alpha: int, dropout: float, target_modules: list[str]
) -> PeftModel:
    """LoRA adapters on `target_modules` of the encoder; the label-attention head stays fully trainable."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=[BertXMLForMultiLabelCoding.head_name],
    )
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(f"LoRA: training {trainable:,} of {total:,} parameters (adapters and the whole head)")
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
        for name in MODEL_FILES:
            shutil.copyfile(source_file(name), folder / name)
        adapter_config = folder / ADAPTER_CONFIG
        values = json.loads(adapter_config.read_text())
        values["auto_mapping"] = {
            "base_model_class": "AutoModelForSequenceClassification", "parent_library": "transformers"
        }
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
    "BUILT_IN_MODEL_TYPES",
    "Checkpoint",
    "ConfigError",
    "EncoderMismatchError",
    "adapter_base_id",
    "add_lora",
    "backbone_key_mapping",
    "build_coding_model",
    "check_encoder_loaded",
    "check_tokenizer_matches_config",
    "coding_config",
    "is_backbone_checkpoint",
    "load_coding_model",
    "load_config",
    "load_tokenizer",
    "save_coding_model",
]
