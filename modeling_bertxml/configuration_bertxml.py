"""Remote code: travels with every saved model; imports only torch, transformers and its siblings.

BERT-XML configuration: BERT's arguments plus note chunking and the label-attention head."""

from transformers import BertConfig

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

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
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
        if self.max_chunks < 1 or self.label_block_size < 1:
            raise ValueError("max_chunks and label_block_size must be positive")

    @property
    def max_note_length(self) -> int:
        """The longest note, in tokens, that the model codes without truncation."""
        return self.max_chunks * self.max_position_embeddings


__all__ = ["CODE_SYSTEMS", "BertXMLConfig"]
