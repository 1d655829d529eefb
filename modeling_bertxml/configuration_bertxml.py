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
        threshold (`float`, defaults to 0.5):
            Decision threshold on the sigmoid scores, tuned on the validation split by `train.py`.
        position_embedding_type (`str`, defaults to `"absolute"`):
            `"absolute"`: BERT's learned position table (any BERT checkpoint loads). `"rotary"`: rotary positions
            (RoFormer's RoPE) in every self-attention, so attention sees how far apart two tokens are from the first
            step; pretrain.py and train.py build new models this way (the absolute table then starts at zero).
        label_descriptions (`dict[str, str]`, *optional*):
            The description of each code of the label space (ICD-10-CM's, from `simple-icd-10-cm`), stored with the
            model so that the `icd-coding` pipeline can show them to users who do not have that package.
    """

    model_type = "bertxml"

    max_chunks: int = 8
    label_attention_dim: int | None = None
    label_block_size: int = 1024
    threshold: float = 0.5
    position_embedding_type: str = "absolute"
    label_descriptions: dict[str, str] | None = None

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
        if self.max_chunks < 1 or self.label_block_size < 1:
            raise ValueError("max_chunks and label_block_size must be positive")

    @property
    def max_note_length(self) -> int:
        """The longest note, in tokens, that the model codes without truncation."""
        return self.max_chunks * self.max_position_embeddings


__all__ = ["BertXMLConfig"]
