"""Remote code: travels with every saved model; imports only torch, transformers and its siblings.

BERT-XML configuration: BERT's arguments plus note chunking and the label-attention head, and optionally the config
of another transformers encoder (RoBERTa, ModernBERT, ...) to use instead of the built-in BERT."""

import hashlib
import json

from transformers import AutoConfig, BertConfig, PretrainedConfig

AUTO_MAP = {
    "AutoConfig": "configuration_bertxml.BertXMLConfig",
    "AutoModel": "modeling_bertxml.BertXMLForMultiLabelCoding",
    "AutoModelForSequenceClassification": "modeling_bertxml.BertXMLForMultiLabelCoding",
    "AutoModelForMaskedLM": "modeling_bertxml.BertXMLForMaskedLM",
}
CODING_ARCHITECTURE = "BertXMLForMultiLabelCoding"
ENCODER = "modeling_bertxml.BertXMLModel"

# The code systems a label space can be read in (bert-xml's `code_systems` module implements them).
CODE_SYSTEMS = ("icd10cm", "icd10pcs", "icd10", "icd9cm", "any")
LABEL_ATTENTION_IMPLEMENTATIONS = ("auto", "blocks", "sdpa")
# Encoders whose position ids start after the padding id (RoBERTa's `create_position_ids_from_input_ids`): a table of
# `max_position_embeddings` rows holds `max_position_embeddings - pad_token_id - 1` tokens.
POSITIONS_AFTER_PADDING = (
    "camembert", "data2vec-text", "ibert", "mpnet", "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl",
    "xmod",
)  # fmt: skip
# What the chunking and the head read from the top-level config: with a backbone, its values (checked, not settable).
BACKBONE_VALUES = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "pad_token_id",
    "max_position_embeddings",
)  # fmt: skip


def vocab_fingerprint(vocab: dict[str, int]) -> str:
    """A short hash of a vocabulary's tokens in id order (`tokenizer.get_vocab()`): the same for a tokenizer saved and
    reloaded, another for another run's tokenizer of the same size, whose ids name other tokens."""
    tokens = sorted(vocab, key=vocab.get)
    return hashlib.sha256(json.dumps(tokens, ensure_ascii=False).encode()).hexdigest()[:16]


def check_encoder(backbone_config: PretrainedConfig) -> None:
    """Refuse a backbone that is not an encoder: BERT-XML reads every token's state, seen from both sides."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = backbone_config.model_type
    if (
        model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        or backbone_config.is_encoder_decoder
        or getattr(backbone_config, "is_decoder", False)
    ):
        raise ValueError(
            f"backbone_config is a {model_type!r} config, which is not an encoder: BERT-XML reads every token's state "
            "from a bidirectional encoder that has a masked-LM model in transformers (bert, roberta, modernbert, "
            "deberta-v2, electra, ...)"
        )


def backbone_chunk_length(backbone_config: PretrainedConfig) -> int:
    """The most tokens one chunk can hold in `backbone_config`'s encoder: its position table, less RoBERTa's offset."""
    offset = backbone_config.pad_token_id + 1 if backbone_config.model_type in POSITIONS_AFTER_PADDING else 0
    return backbone_config.max_position_embeddings - offset


class BertXMLConfig(BertConfig):
    r"""
    Configuration of a BERT-XML model. Every [`BertConfig`] argument keeps its meaning; the additions are:

    Args:
        max_chunks (`int`, defaults to 8):
            A note of up to `max_chunks * max_position_embeddings` tokens is coded whole: the encoder splits it into
            chunks of `max_position_embeddings` tokens and concatenates their token states.
        label_attention_dim (`int`, *optional*):
            LAAT's `d_a`: token states are projected to this size (`tanh(W h)`) before the per-code queries score
            them. `None` scores the token states directly, as BERT-XML does.
        label_block_size (`int`, defaults to 1024):
            Codes are scored in blocks of this many so that memory stays bounded for the full ICD-10-CM code set;
            the logits do not depend on it.
        label_attention_implementation (`str`, defaults to `"auto"`):
            How the exact head runs; every choice computes the same function. `"blocks"`: each block's scores are
            formed explicitly in the compute dtype and soft-maxed in float32. `"sdpa"`: one fused
            `scaled_dot_product_attention` call per block, which never stores a (batch, codes, tokens) tensor. `"auto"`
            picks per device: blocks on CUDA (except under float16, whose products overflow), SDPA on CPU except
            bf16 inference (benchmarks/README.md). Output attentions and a LAAT projection always take the blocks.
        threshold (`float`, defaults to 0.5):
            Decision threshold on the sigmoid scores, tuned on the validation split by `train.py`.
        position_embedding_type (`str`, defaults to `"absolute"`):
            `"absolute"`: BERT's learned position table (any BERT checkpoint loads). `"rotary"`: rotary positions
            (RoFormer's RoPE) in every self-attention, so attention sees how far apart two tokens are from the first
            step; pretrain.py and train.py build new models this way (the absolute table then starts at zero).
        label_descriptions (`dict[str, str]`, *optional*):
            The description of each code of the label space (the official one of its `code_system`), stored with the
            model so that the `icd-coding` pipeline can show them to users who have neither bert-xml nor the code lists.
        code_system (`str`, defaults to `"icd10"`):
            What the labels are: `"icd10cm"` (ICD-10-CM diagnoses), `"icd10pcs"` (ICD-10-PCS procedures), `"icd10"`
            (both), `"icd9cm"` (ICD-9-CM diagnoses and procedures, dotted) or `"any"` (a local code set).
        vocab_fingerprint (`str`, *optional*):
            `vocab_fingerprint(tokenizer.get_vocab())` of the tokenizer the model was trained with, recorded by
            pretrain.py and train.py; a tokenizer given separately (the pipeline's, train.py's `--tokenizer_name`) must
            have it. `None` (a model saved before it was recorded): not checked.
        num_attention_labels (`int`, *optional*):
            How many codes, the first of `id2label`, have label-attention rows. The others (e.g. every code of the
            code system that no training note carries) are scored by the description match alone. `None`: all.
        label_queries_per_code (`int`, defaults to 1):
            Label-attention queries of each attention code; its score is the best of theirs (MSMN's synonym queries,
            Yuan et al. 2022). `train.py` starts them from the code's texts, one each (its description, index terms,
            words of its notes), so that a note may name the code in any of those ways.
        description_terms (`int`, defaults to 0):
            Above 0 the coding model adds a description match to every code's logit: the cosine between the note's
            TF-IDF vector over the vocabulary and the code's TF-IDF vector over its official texts, of which the
            `description_terms` heaviest tokens are kept (`BertXMLDescriptionMatch`). 0: label attention alone.
        description_scale (`float`, defaults to 20.0):
            The description match's starting weight in the logit (learnt with the rest).
        mlm_loss_weight (`float`, defaults to 0.0):
            Above 0 the coding model keeps BERT's masked-LM head (`cls`, tied to the word embeddings, loaded from a
            `pretrain.py` checkpoint) and, when given `mlm_labels`, adds this weight times the masked-LM loss to the
            coding loss. It keeps a pretrained encoder's token states apart, which the coding loss alone pulled together
            within a few dozen steps from an encoder pretrained on `[MASK]` only; it measured no better MAP, so
            `train.py` leaves it off unless asked. Built-in BERT only.
        backbone_config (`dict` or [`PretrainedConfig`], *optional*):
            The config of another transformers encoder (any `model_type` with a masked-LM model, e.g. `"roberta"`,
            `"modernbert"`), built with `AutoModel.from_config` in place of the built-in BERT; the chunking and the
            label attention stay the same. `None` (the default) is the built-in BERT. With a backbone, `hidden_size`,
            `num_hidden_layers`, `num_attention_heads`, `intermediate_size`, `vocab_size` and `pad_token_id` are the
            backbone's, and `max_position_embeddings`, the chunk length, is its position limit (RoBERTa's 514 rows
            hold 512 tokens, ModernBERT's 8,192 tokens); they are set from it and cannot be set apart from it.
    """

    model_type = "bertxml"

    max_chunks: int = 8
    label_attention_dim: int | None = None
    label_block_size: int = 1024
    label_attention_implementation: str = "auto"
    threshold: float = 0.5
    position_embedding_type: str = "absolute"
    label_descriptions: dict[str, str] | None = None
    code_system: str = "icd10"
    vocab_fingerprint: str | None = None
    num_attention_labels: int | None = None
    label_queries_per_code: int = 1
    description_terms: int = 0
    description_scale: float = 20.0
    mlm_loss_weight: float = 0.0
    backbone_config: dict | PretrainedConfig | None = None

    # Plain `sub_configs` (not transformers' newer `sub_configs_defaults`, which routes the key `backbone_config`
    # through its vision-backbone helper): the attention implementation and dtype reach the backbone's config.
    sub_configs = {"backbone_config": AutoConfig}

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict):  # as read from config.json
            values = dict(self.backbone_config)
            self.backbone_config = AutoConfig.for_model(values.pop("model_type"), **values)
        super().__post_init__(**kwargs)
        if self.backbone_config is not None:
            check_encoder(self.backbone_config)
            for name, value in self._backbone_values().items():
                setattr(self, name, value)
        # Only the coding model needs multi-label (it checks); the encoder and MLM model share this config.
        if self.problem_type is None:
            self.problem_type = "multi_label_classification"
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        # Iterable, as transformers' Auto classes read it to pick the encoder or the coding model (None would raise).
        if self.architectures is None:
            self.architectures = []
        self.check_values()

    def to_dict(self) -> dict:
        """What `AutoModel` means follows the saved model: a coding folder gives the coding model (the product's
        entry point), any other (pretraining, encoder) the encoder, so feature extraction returns token states."""
        output = super().to_dict()
        coding = CODING_ARCHITECTURE in (output.get("architectures") or [])
        output["auto_map"] = {**output["auto_map"], "AutoModel": AUTO_MAP["AutoModel"] if coding else ENCODER}
        if output.get("backbone_config") is not None:
            output["backbone_config"].pop("_name_or_path", None)  # where the checkpoint was read: often a local path
        return output

    def check_values(self) -> None:
        """Refuse values BERT-XML cannot run (construction checks them; call it again after setting attributes, as
        `--config_overrides` does, since a typo like "rotry" would otherwise silently mean absolute positions)."""
        if self.position_embedding_type not in ("absolute", "rotary"):
            raise ValueError(
                f'position_embedding_type must be "absolute" or "rotary", got {self.position_embedding_type!r}'
            )
        if self.code_system not in CODE_SYSTEMS:
            raise ValueError(f"code_system must be one of {', '.join(CODE_SYSTEMS)}; got {self.code_system!r}")
        if self.label_attention_implementation not in LABEL_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"label_attention_implementation must be one of {', '.join(LABEL_ATTENTION_IMPLEMENTATIONS)}, got "
                f"{self.label_attention_implementation!r}"
            )
        if self.max_chunks < 1 or self.label_block_size < 1 or self.label_queries_per_code < 1:
            raise ValueError("max_chunks, label_block_size and label_queries_per_code must be positive")
        if self.num_attention_labels is not None and not 0 < self.num_attention_labels <= self.num_labels:
            raise ValueError(
                f"num_attention_labels must be between 1 and num_labels ({self.num_labels}), got "
                f"{self.num_attention_labels}"
            )
        if self.description_terms < 0:
            raise ValueError(f"description_terms must be 0 (no description match) or positive, got "
                             f"{self.description_terms}")  # fmt: skip
        if self.num_attention_labels not in (None, self.num_labels) and not self.description_terms:
            raise ValueError("codes without attention rows are scored by the description match: set description_terms")
        if self.mlm_loss_weight < 0:
            raise ValueError(f"mlm_loss_weight must be 0 (off) or positive, got {self.mlm_loss_weight}")
        if self.backbone_config is not None:
            self._check_backbone()
            if self.mlm_loss_weight:
                raise ValueError(
                    "mlm_loss_weight keeps BERT's masked-LM head, which a backbone_config encoder does not have: "
                    "set it to 0"
                )

    def _backbone_values(self) -> dict:
        """The top-level values a backbone fixes (`BACKBONE_VALUES`): its own, and its chunk length."""
        values = {name: getattr(self.backbone_config, name) for name in BACKBONE_VALUES}
        values["max_position_embeddings"] = backbone_chunk_length(self.backbone_config)
        return values

    def _check_backbone(self) -> None:
        """The values the chunking and the head read must still be the backbone's (`--config_overrides
        hidden_size=...` cannot resize a checkpoint's encoder)."""
        check_encoder(self.backbone_config)
        for name, value in self._backbone_values().items():
            if getattr(self, name) != value:
                raise ValueError(
                    f"{name} is the backbone's ({value}), got {getattr(self, name)}: with backbone_config, change the "
                    "backbone's own config instead"
                )

    @property
    def max_note_length(self) -> int:
        """The longest note, in tokens, that the model codes without truncation."""
        return self.max_chunks * self.max_position_embeddings

    @property
    def attention_labels(self) -> int:
        """How many codes (the first of `id2label`) have label-attention rows."""
        return self.num_labels if self.num_attention_labels is None else self.num_attention_labels


__all__ = ["CODE_SYSTEMS", "BertXMLConfig", "backbone_chunk_length", "vocab_fingerprint"]
