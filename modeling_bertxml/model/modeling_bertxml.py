"""Remote code: travels with every saved model; imports only torch, transformers and its siblings.

BERT-XML (Zhang, Liu and Razavian, ClinicalNLP 2020): BERT for multi-label ICD coding of whole clinical notes.

Everything that is not listed here is transformers' BERT, module for module (embeddings, SDPA self-attention, layers,
MLM head), so BERT checkpoints and BERT-XML checkpoints share weight names. What BERT-XML changes:

1. Long notes (`BertXMLModel`): `input_ids` of up to `max_chunks * max_position_embeddings` tokens are split into
   chunks of `max_position_embeddings` (positions restart in every chunk), all chunks of the batch are encoded as one
   batch, and the token states are concatenated back into one sequence per note (segment pooling, as BERT-XML and
   PLM-ICD). Chunks that hold only padding are not encoded.
2. Label attention (`BertXMLForMultiLabelCoding`): one learned query per code attends over all tokens of the note,
   with padding masked out (PLM-ICD's released code forgets the mask), with float32 scores so fp16/bf16 cannot
   overflow the softmax. Each code's document vector goes through its own output weight and bias. Codes are
   processed in blocks of `label_block_size` (by a fused attention kernel, or as two matmuls per block on CUDA), so
   the (batch, codes, tokens) score tensor never exists whole: the full ICD-10-CM set (74,736 codes) fits in bounded
   memory. An optional LAAT projection (`label_attention_dim`) scores `tanh(W h)`.
3. Rotary positions (`position_embedding_type="rotary"`, what pretrain.py and train.py build from scratch): BERT's
   self-attention with RoFormer's rotary embedding on queries and keys, so attention knows token distances from
   the first step instead of waiting for a random position table to organise (the MLM "unigram plateau").
4. There is no pooler and no next-sentence head.
5. Other encoders (`config.backbone_config`): any transformers encoder (RoBERTa, ModernBERT, ...) built with
   `AutoModel.from_config`, without its pooler, takes the place of BERT's embeddings and layers under the same
   chunking and label attention; chunks hold as many tokens as its position table allows.
6. `from_pretrained` also loads a LoRA adapter folder of `train.py` (base named by Hub id, the folder's own config and
   head), which transformers' adapter detection alone would build with the base's config and number of codes.
7. The masked-LM loss of a batch with no masked token is 0 (`masked_lm_loss`), not BERT's NaN (a mean over nothing).
"""

import inspect
import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss
from transformers import AutoModel, PretrainedConfig
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertEncoder,
    BertOnlyMLMHead,
    BertPreTrainedModel,
    BertSelfAttention,
    eager_attention_forward,
)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.processing_utils import Unpack
from transformers.utils import CONFIG_NAME, TransformersKwargs, can_return_tuple, cached_file, find_adapter_config_file
from transformers.utils.output_capturing import capture_outputs

from .configuration_bertxml import BertXMLConfig


@dataclass
class MultiLabelCodingOutput(SequenceClassifierOutput):
    r"""
    label_attentions (`torch.FloatTensor` of shape `(batch_size, num_labels, sequence_length)`, *optional*):
        Each code's attention over the note's tokens (rows sum to 1, padding gets exactly 0): the evidence for the
        code. Returned when `output_label_attentions=True`.
    mlm_loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        The masked-LM loss on `mlm_labels` (unweighted; `loss` holds it weighted), returned when they are given.
    """

    label_attentions: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the masked tokens (`labels` -100 elsewhere); 0, with no gradient, when none is: a
    short block or a batch of one can draw no mask, and a NaN there would read as a diverged run."""
    labels = labels.view(-1)
    total = CrossEntropyLoss(reduction="sum")(logits.view(-1, logits.shape[-1]), labels)
    return total / (labels != -100).sum().clamp(min=1)


def _to_chunks(tensor: torch.Tensor | None, chunk_length: int, fill: float) -> torch.Tensor | None:
    """(batch, length, ...) -> (batch * num_chunks, chunk_length, ...), padding the last chunk with `fill`."""
    if tensor is None:
        return None
    pad = -tensor.shape[1] % chunk_length
    if pad:
        tensor = torch.cat([tensor, tensor.new_full((tensor.shape[0], pad, *tensor.shape[2:]), fill)], dim=1)
    return tensor.reshape(-1, chunk_length, *tensor.shape[2:])


def backbone_init_kwargs(config: PretrainedConfig) -> dict:
    """What `AutoModel` needs to build `config`'s encoder without a pooler: the label attention reads token states,
    and a pooler would be a weight that masked-LM checkpoints lack and that no gradient reaches (DDP refuses that)."""
    signature = inspect.signature(MODEL_MAPPING[type(config)].__init__)
    return {"add_pooling_layer": False} if "add_pooling_layer" in signature.parameters else {}


class BertXMLRotarySelfAttention(BertSelfAttention):
    """BERT's self-attention (same weights, any attention implementation) with rotary positions on queries and keys.

    Why: with BERT's learned position table, which starts random, attention cannot tell a token's neighbours from
    the rest of a 512-token block until that table has organised itself, and MLM sits at the unigram plateau
    (predicting token frequencies) for thousands of steps. Rotary positions (RoFormer) make every query-key score a
    function of the tokens' distance from the first step. Positions restart in every chunk, as the chunks are rows.
    """

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kwargs.pop("cache", None)  # an encoder: nothing to cache
        input_shape = hidden_states.shape[:-1]
        shape = (*input_shape, -1, self.attention_head_size)
        query, key, value = (
            layer(hidden_states).view(shape).transpose(1, 2) for layer in (self.query, self.key, self.value)
        )
        cos, sin = self._rotary(input_shape[1], hidden_states.device, query.dtype)
        query, key = apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=0)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(
            self, query, key, value, attention_mask, dropout=self.dropout.p if self.training else 0.0,
            scaling=self.scaling, **kwargs,
        )  # fmt: skip
        return output.reshape(*input_shape, -1).contiguous(), weights

    def _rotary(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of position x frequency, (length, head_size), with RoPE's base 10,000."""
        even = torch.arange(0, self.attention_head_size, 2, device=device, dtype=torch.float32)
        frequencies = 10_000.0 ** (-even / self.attention_head_size)
        angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), frequencies)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


class BertXMLLabelWiseHead(nn.Module):
    """Per-code attention over token states, then a per-code linear output (BERT-XML's multi-label head).

    Exactly 4 * codes * hidden_size FLOPs per token (scores, then weighted states), so the win is in how they run.
    Two exact paths (`config.label_attention_implementation`, chosen per device by `_path`):
    - "sdpa": each block of codes is one fused `scaled_dot_product_attention` call (queries = codes, keys = values =
      token states, scale 1) whose kernels keep the scores in float32 accumulators and store no (batch, codes,
      tokens) tensor, not even for the backward pass. The CPU's path.
    - "blocks": one block's scores at a time are formed explicitly in the compute dtype and soft-maxed in float32.
      On CUDA two large matmuls per block beat SDPA, whose only kernel for a head as wide as 768 is the
      memory-efficient one (4x faster at 8,000 codes on an H200, benchmarks/README.md). A float16 matmul would
      overflow past 65,504 (bf16 cannot), so float16 keeps SDPA.
    `attention` gives the explicit path's weights for chosen codes only (the pipeline's evidence).

    Every code owns one row of `output_weight` and `output_bias` and `config.label_queries_per_code` consecutive rows
    of `queries` (MSMN's synonym queries: the code's score is the best of its queries', each query attending on its
    own). The head starts, moves and counts those rows itself (`init_code_rows`, `set_prior_bias`,
    `set_rows_from_vectors`, `reindex_codes`, `flops_per_token`), so that training code never names its parameters.
    """

    def __init__(self, config: BertXMLConfig):
        super().__init__()
        self.block_size = config.label_block_size
        self.implementation = config.label_attention_implementation
        query_size = config.label_attention_dim or config.hidden_size
        self.projection = nn.Linear(config.hidden_size, query_size) if config.label_attention_dim else None
        self.queries_per_code = config.label_queries_per_code
        self.queries = nn.Parameter(torch.empty(config.attention_labels * self.queries_per_code, query_size))
        self.output_weight = nn.Parameter(torch.empty(config.attention_labels, config.hidden_size))
        self.output_bias = nn.Parameter(torch.empty(config.attention_labels))

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (batch, tokens, hidden), attention_mask (batch, tokens) -> logits (batch, codes)."""
        hidden_states, keep = self._zero_padding(hidden_states, attention_mask)
        if self._path(hidden_states, output_attentions) == "sdpa":
            return self._fused_logits(hidden_states, keep), None
        keys = self._keys(hidden_states)
        logits, attentions = [], []
        for queries, output_weight, output_bias in self._blocks():
            # Batched queries, so that the scores come out (batch, block, tokens) without a transposing copy.
            weights = self._weights(queries.expand(keys.shape[0], -1, -1), keys, keep)
            documents = torch.matmul(weights.to(hidden_states.dtype), hidden_states)  # (batch, block queries, hidden)
            scores, best = self._best_queries(documents, output_weight)
            logits.append(scores + output_bias)
            if output_attentions:
                attentions.append(self._rows_of(weights, best))
        return torch.cat(logits, dim=-1), torch.cat(attentions, dim=1) if output_attentions else None

    def attention(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The label attention of `codes` (batch, k) over the tokens, (batch, k, tokens) in float32: the rows that
        `forward(..., output_attentions=True)` returns for those codes, without a (batch, all codes, tokens) tensor."""
        hidden_states, keep = self._zero_padding(hidden_states, attention_mask)
        weights = self._weights(self.queries[self._query_rows(codes)], self._keys(hidden_states), keep)
        if self.queries_per_code == 1:
            return weights
        documents = torch.matmul(weights.to(hidden_states.dtype), hidden_states)  # (batch, k * per_code, hidden)
        _, best = self._best_queries(documents, self.output_weight[codes])  # the attention of its best-scoring query
        return self._rows_of(weights, best)

    def init_code_rows(self, queries: torch.Tensor, output_weight: torch.Tensor, output_bias: torch.Tensor) -> None:
        """Start per-code rows (this head's parameters, or new rows of the same widths) where the head can leave the
        code-prior plateau by itself. With BERT's std 0.02, every query gives near-uniform attention over a
        ~1,000-token note, whose mean carries almost nothing of the few tokens that name a code, and output weights
        that small cannot use it. Queries of std 1/sqrt(size) give unit-scale scores on LayerNorm'd states, and each
        output weight starts as its query (same width), so the tokens a code attends to are the ones that raise its
        score (docs/learning.md, "What mattered"). Biases start at 0; `set_prior_bias` starts them at each code's
        prior. Weights loaded from a checkpoint are left as they are (transformers' `initialization` helpers)."""
        init.normal_(queries, mean=0.0, std=queries.shape[1] ** -0.5)
        if self.projection is None:
            init.copy_(output_weight, queries.unflatten(0, (-1, self.queries_per_code))[:, 0])  # a code's first query
        else:
            init.normal_(output_weight, mean=0.0, std=output_weight.shape[1] ** -0.5)
        init.zeros_(output_bias)

    @torch.no_grad()
    def set_prior_bias(self, rows: torch.Tensor, priors: torch.Tensor) -> None:
        """Start the codes of `rows` at their prior: output bias = log odds of `priors` (the share of notes carrying
        each code), so that the first steps are not spent learning that a code is rare (a zero bias starts every
        code at probability 0.5; RetinaNet's prior initialisation)."""
        self.output_bias[rows] = torch.logit(priors.float().clamp(1e-6, 1 - 1e-6)).to(self.output_bias.dtype)

    @torch.no_grad()
    def set_rows_from_vectors(
        self,
        rows: torch.Tensor,
        vectors: torch.Tensor,
        output_norm: float | None,
        query_vectors: torch.Tensor | None = None,
    ) -> None:
        """Start the codes of `rows` attending to text like `vectors` (one hidden-size vector per row, e.g. the
        encoder's embedding of the code's description), or each of a code's queries like its own vector of
        `query_vectors` (rows, queries per code, hidden). A query is its vector (through the LAAT projection
        `tanh(W v)` when there is one, so that it lives where the keys live) at unit norm: scores are then |key| x
        cosine, the temperature of scaled dot-product attention. With `output_norm`, the output weight takes the
        vector's direction at that norm, so a note that reads like the text starts with a higher score."""
        if query_vectors is None:
            query_vectors = vectors[:, None].expand(-1, self.queries_per_code, -1)
        queries = query_vectors.flatten(0, 1).to(self.queries.dtype)
        queries = queries if self.projection is None else torch.tanh(self.projection(queries))
        self.queries[self._query_rows(rows)] = nn.functional.normalize(queries.float(), dim=-1).to(self.queries.dtype)
        if output_norm is not None:
            weights = nn.functional.normalize(vectors.float(), dim=-1) * output_norm
            self.output_weight[rows] = weights.to(self.output_weight.dtype)

    @torch.no_grad()
    def reindex_codes(self, rows: list[int | None]) -> None:
        """Answer for another list of codes: code i keeps this head's row `rows[i]` (query, output weight and bias),
        or starts a fresh row (`init_code_rows`) where `rows[i]` is None. Not-per-code weights (the LAAT projection)
        stay."""
        parameters = (self.queries, self.output_weight, self.output_bias)
        sizes = (len(rows) * self.queries_per_code, len(rows), len(rows))
        fresh = [parameter.new_empty(size, *parameter.shape[1:]) for parameter, size in zip(parameters, sizes)]
        self.init_code_rows(*fresh)
        kept = [i for i, row in enumerate(rows) if row is not None]
        sources = [rows[i] for i in kept]
        for new, old in zip(fresh, parameters):  # grouped by code: a code's queries move together
            new.unflatten(0, (len(rows), -1))[kept] = old.unflatten(0, (len(self.output_bias), -1))[sources]
        self.queries, self.output_weight, self.output_bias = (nn.Parameter(values) for values in fresh)

    @property
    def flops_per_token(self) -> int:
        """Forward FLOPs per note token: each query's score (query . key) and weighted state (queries x hidden), plus
        the LAAT projection. The work is fixed by the math, whichever path runs it."""
        queries, query_size = self.queries.shape
        projection = 2 * self.projection.weight.numel() if self.projection is not None else 0
        return 2 * queries * (query_size + self.output_weight.shape[1]) + projection

    @staticmethod
    def _zero_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded states zeroed with `where` (not a product), so that NaN from an all-padding chunk cannot leak."""
        keep = attention_mask.bool()
        return torch.where(keep[..., None], hidden_states, torch.zeros_like(hidden_states)), keep

    def _keys(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.projection(hidden_states)) if self.projection is not None else hidden_states

    @staticmethod
    def _weights(queries: torch.Tensor, keys: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(batch, codes, query), (batch, tokens, query) -> float32 softmax over kept tokens, (batch, codes, tokens)."""
        scores = torch.matmul(queries, keys.transpose(1, 2)).float()
        return scores.masked_fill_(~keep[:, None, :], torch.finfo(torch.float32).min).softmax(dim=-1)

    def _path(self, hidden_states: torch.Tensor, output_attentions: bool) -> str:
        """"blocks" or "sdpa". SDPA returns no weights and needs keys as wide as values (no LAAT projection). "auto":
        CUDA takes the blocks unless the compute dtype is float16; the CPU takes SDPA except for bf16 inference, where
        the blocks run faster than PyTorch's CPU flash kernel (benchmarks/README.md)."""
        if output_attentions or self.projection is not None:
            return "blocks"
        if self.implementation != "auto":
            return self.implementation
        device = hidden_states.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden_states.dtype
        if device == "cuda":
            return "sdpa" if dtype == torch.float16 else "blocks"
        cpu_bf16_inference = device == "cpu" and dtype == torch.bfloat16 and not torch.is_grad_enabled()
        return "blocks" if cpu_bf16_inference else "sdpa"

    def _fused_logits(self, hidden_states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # A note without tokens attends to all its (zeroed) states, as in the explicit path, so that no kernel meets
        # a row with nothing to attend to (some return NaN there).
        keep = keep | ~keep.any(dim=-1, keepdim=True)
        states = hidden_states[:, None]  # one "head": (batch, 1, tokens, hidden)
        logits = []
        for queries, output_weight, output_bias in self._blocks():
            documents = nn.functional.scaled_dot_product_attention(
                queries.expand(states.shape[0], 1, -1, -1), states, states, attn_mask=keep[:, None, None, :], scale=1.0
            )
            logits.append(self._best_queries(documents[:, 0], output_weight)[0] + output_bias)
        return torch.cat(logits, dim=-1)

    def _best_queries(self, documents: torch.Tensor, output_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents (batch, codes x queries per code, hidden) and output weights (..., codes, hidden) -> each code's
        score, the best of its queries' (batch, codes), and which query it is. `amax`: queries that tie (a code with
        one text starts all its queries from it) share the gradient and stay one query."""
        scores = (documents.unflatten(1, (-1, self.queries_per_code)) * output_weight.unsqueeze(-2)).sum(-1)
        return scores.amax(-1), scores.argmax(-1)

    def _query_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (..., k) -> their rows of `queries` (..., k x queries per code), a code's consecutive."""
        per_code = self.queries_per_code
        return (codes[..., None] * per_code + torch.arange(per_code, device=codes.device)).flatten(-2)

    def _rows_of(self, weights: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
        """(batch, codes x queries per code, tokens) attention -> (batch, codes, tokens): each code's `best` query's."""
        weights = weights.unflatten(1, (-1, self.queries_per_code))
        return weights.gather(2, best[..., None, None].expand(-1, -1, 1, weights.shape[-1])).squeeze(2)

    def _blocks(self) -> zip:
        """(queries, output weight, output bias) per block of codes. `split`, not indexing: the backward pass then
        assembles each parameter's gradient once, instead of zero-filling a full-size gradient for every block."""
        queries = self.queries.split(self.block_size * self.queries_per_code)
        return zip(queries, self.output_weight.split(self.block_size), self.output_bias.split(self.block_size))


class BertXMLDescriptionMatch(nn.Module):
    """A lexical channel beside label attention: how much the note reads like each code's official texts.

    Label attention learns where to look from the notes that carry a code; a code seen in a handful of notes, or in
    none, has little or nothing to learn from, yet its description and inclusion terms still name it. Each code's
    logit gains `scale` x the cosine between the note's TF-IDF vector over the vocabulary (sublinear counts of its
    tokens, times `idf`) and the code's (its texts' tokens, same weighting), and a code without attention rows (the
    last `num_labels - num_attention_labels`) is scored by `bias` plus that alone. On CodiEsp's real reports it raised
    validation MAP and scored codes no training note carries (docs/learning.md). Fixed tables, set by
    `set_tables` from the training notes and the code texts (`training/label_init.py`):
    - `idf` (vocab,): smoothed inverse document frequency of each token in the training notes, 0 for special tokens;
    - `term_ids`, `term_weights` (codes, `description_terms`): each code's heaviest tokens and their weights in its
      unit-norm TF-IDF vector (zero-padded): a gather, dense and exportable, instead of a sparse product.
    """

    def __init__(self, config: BertXMLConfig):
        super().__init__()
        self.block_size = config.label_block_size
        terms = config.description_terms
        self.register_buffer("idf", torch.zeros(config.vocab_size))
        self.register_buffer("term_ids", torch.zeros(config.num_labels, terms, dtype=torch.int32))  # 4 bytes: 75k codes
        self.register_buffer("term_weights", torch.zeros(config.num_labels, terms))
        self.register_buffer("bias", torch.zeros(config.num_labels - config.attention_labels))
        self.scale = nn.Parameter(torch.tensor(float(config.description_scale)))

    def forward(self, attention_logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(batch, attention codes) logits of label attention -> (batch, all codes) logits with the match added."""
        notes = self.note_vectors(input_ids, attention_mask)
        bias = self.bias.to(attention_logits.dtype).expand(attention_logits.shape[0], -1)
        logits = torch.cat([attention_logits, bias], dim=-1)
        matches = [
            (notes[:, term_ids] * term_weights).sum(-1)  # (batch, block, terms) -> (batch, block)
            for term_ids, term_weights in zip(
                self.term_ids.split(self.block_size), self.term_weights.split(self.block_size)
            )
        ]
        return logits + self.scale * torch.cat(matches, dim=-1).to(logits.dtype)

    def note_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) -> (batch, vocab) unit-norm TF-IDF vectors, sublinear counts (1 + log n) of kept tokens."""
        return self._vectors(self._counts(input_ids, attention_mask))

    def _counts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, vocab): how often each token occurs among the kept tokens of each note."""
        counts = torch.zeros(input_ids.shape[0], self.idf.shape[0], device=input_ids.device)
        return counts.scatter_add_(1, input_ids, attention_mask.float())

    def _vectors(self, counts: torch.Tensor) -> torch.Tensor:
        weights = torch.where(counts > 0, 1 + counts.clamp(min=1).log(), 0.0) * self.idf
        return nn.functional.normalize(weights, dim=-1)

    def evidence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Each token's share of the match of `codes` (batch, k): (batch, k, tokens), each row summing to 1 (or 0
        where the note shares no token with the code), the counterpart of label attention for the pipeline."""
        counts = self._counts(input_ids, attention_mask)
        notes = self._vectors(counts)
        weights = torch.zeros(*codes.shape, notes.shape[1], device=notes.device)
        weights.scatter_(2, self.term_ids[codes], self.term_weights[codes])  # the code's vector, dense
        per_token = notes[:, None, :] * weights  # (batch, k, vocab): each shared token's part of the cosine
        tokens = per_token.gather(2, input_ids[:, None, :].expand(-1, codes.shape[1], -1)) * attention_mask[:, None]
        # A term repeated in the note shares its product among its occurrences.
        tokens = tokens / counts.gather(1, input_ids).clamp(min=1)[:, None, :]
        return tokens / tokens.sum(-1, keepdim=True).clamp(min=torch.finfo(tokens.dtype).tiny)

    @torch.no_grad()
    def set_tables(
        self, idf: torch.Tensor, term_ids: torch.Tensor, term_weights: torch.Tensor, bias: torch.Tensor
    ) -> None:
        """The fixed tables, in the shapes the config gives (see the class docstring)."""
        for name, values in (("idf", idf), ("term_ids", term_ids), ("term_weights", term_weights), ("bias", bias)):
            buffer = getattr(self, name)
            if values.shape != buffer.shape:
                raise ValueError(f"{name} must have shape {tuple(buffer.shape)}, got {tuple(values.shape)}")
            buffer.copy_(values)


class BertXMLPreTrainedModel(BertPreTrainedModel):
    config: BertXMLConfig
    config_class = BertXMLConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Also loads a LoRA adapter folder (`train.py --use_lora`), whichever way it is reached: the Auto classes,
        the pipelines, an Inference Endpoint.

        Such a folder holds the model's config (its codes, threshold, pipeline) and the adapter with the trained head,
        not the encoder. transformers' adapter detection would build the model from the base's config, with the
        base's number of codes (and, for `AutoModel` on a Hub adapter, the base's class), and the saved head would not
        fit: here the model class and config come from the adapter folder, the weights from the base named in its
        `adapter_config.json`, then transformers loads the adapter (peft).
        """
        adapter_kwargs = dict(kwargs.get("adapter_kwargs") or {})
        # Set by the Auto classes when they found an adapter (and then point us at the base already).
        adapter, revision = adapter_kwargs.get("_adapter_model_path"), adapter_kwargs.get("revision")
        download = {key: kwargs[key] for key in ("cache_dir", "token", "local_files_only") if key in kwargs}
        # None: weights from `state_dict`, no folder (as transformers, ask nothing: offline, the Hub retries 31 s).
        if adapter is None and pretrained_model_name_or_path is not None:
            revision = kwargs.get("revision")
            if find_adapter_config_file(str(pretrained_model_name_or_path), revision=revision, **download):
                adapter = pretrained_model_name_or_path
        config_file = adapter and cached_file(
            adapter, CONFIG_NAME, revision=revision, _raise_exceptions_for_missing_entries=False, **download
        )
        if not config_file:  # not an adapter, or one without our config: nothing to add
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        config = cls.config_class.from_json_file(config_file)
        # The adapter's model, as a full folder's `architectures` decide (AutoModel of a coder is the coder).
        ours = [globals().get(name) for name in config.architectures]
        model_class = next((c for c in ours if isinstance(c, type) and issubclass(c, BertXMLPreTrainedModel)), cls)
        with open(find_adapter_config_file(str(adapter), revision=revision, **download), encoding="utf-8") as file:
            base = json.load(file)["base_model_name_or_path"]
        if str(base) != str(pretrained_model_name_or_path):
            kwargs.pop("revision", None)  # the adapter's revision, not the base's
        kwargs.update(config=config, adapter_kwargs={**adapter_kwargs, "_adapter_model_path": adapter})
        if revision is not None:
            kwargs["adapter_kwargs"]["revision"] = revision
        kwargs.setdefault("ignore_mismatched_sizes", True)  # the base's own head, if any, is for other codes
        return super(BertXMLPreTrainedModel, model_class).from_pretrained(base, *model_args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BertEmbeddings) and self.config.position_embedding_type == "rotary":
            init.zeros_(module.position_embeddings.weight)  # rotary attention has the positions; this learns extras
        if isinstance(module, BertXMLLabelWiseHead):
            module.init_code_rows(module.queries, module.output_weight, module.output_bias)
        if isinstance(module, BertXMLDescriptionMatch):
            init.constant_(module.scale, self.config.description_scale)


class BertXMLModel(BertXMLPreTrainedModel):
    """BERT encoder (or `config.backbone_config`'s) that reads notes longer than `max_position_embeddings` by encoding
    them in chunks."""

    _no_split_modules = ["BertEmbeddings", "BertLayer"]

    def __init__(self, config: BertXMLConfig):
        super().__init__(config)
        if config.backbone_config is not None:
            backbone_config = config.backbone_config
            self.backbone = AutoModel.from_config(backbone_config, **backbone_init_kwargs(backbone_config))
            # Token types only reach encoders that have them (ModernBERT has none: a tokenizer's zeros say nothing).
            self._backbone_token_types = "token_type_ids" in inspect.signature(self.backbone.forward).parameters
        else:
            self.embeddings = BertEmbeddings(config)
            self.encoder = BertEncoder(config)
            if config.position_embedding_type == "rotary":
                for index, layer in enumerate(self.encoder.layer):
                    layer.attention.self = BertXMLRotarySelfAttention(config, layer_idx=index)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        if self.config.backbone_config is not None:
            return self.backbone.get_input_embeddings()
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if self.config.backbone_config is not None:
            self.backbone.set_input_embeddings(value)
        else:
            self.embeddings.word_embeddings = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids of whole notes; `sequence_length` may be up to `max_chunks * max_position_embeddings`.
        position_ids (`torch.LongTensor`, *optional*):
            Only for notes of one chunk; chunked notes restart positions at 0 in every chunk.

        `last_hidden_state` is note-shaped, (batch_size, sequence_length, hidden_size). `hidden_states` and `attentions`
        (`output_hidden_states`/`output_attentions=True`) are per encoded chunk, (encoded_chunks, chunk_length, ...), as
        the layers see them; a note of one chunk gives the usual BERT shapes (the backbone's, with a backbone).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        reference = input_ids if input_ids is not None else inputs_embeds
        batch_size, length = reference.shape[:2]
        if length > self.config.max_note_length:
            raise ValueError(
                f"Got {length} tokens but the model reads at most max_chunks * max_position_embeddings = "
                f"{self.config.max_note_length}; truncate when tokenising (the tokenizer's model_max_length)."
            )
        chunk_length = min(length, self.config.max_position_embeddings)
        if position_ids is not None and length > chunk_length:
            raise ValueError("position_ids are only supported for notes of a single chunk")
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, length, dtype=torch.long, device=reference.device)

        chunk_mask = _to_chunks(attention_mask, chunk_length, 0)
        # Always encode a note's first chunk (an empty note still gets states); skip chunks that are all padding. With
        # one chunk per note (MLM blocks, short notes) every chunk is encoded: no boolean indexing, whose unknown
        # output size would make the host wait for the device.
        if chunk_mask.shape[0] == batch_size:
            encode = slice(None)
        else:
            encode = chunk_mask.bool().any(-1)
            encode.view(batch_size, -1)[:, 0] = True
        chunks = {
            "input_ids": _to_chunks(input_ids, chunk_length, self.config.pad_token_id or 0),
            "attention_mask": chunk_mask,
            "token_type_ids": _to_chunks(token_type_ids, chunk_length, 0),
            "inputs_embeds": _to_chunks(inputs_embeds, chunk_length, 0.0),
        }
        chunks = {name: chunk[encode] for name, chunk in chunks.items() if chunk is not None}
        encode_chunks = self._encode_with_backbone if self.config.backbone_config is not None else self._encode
        outputs = encode_chunks(position_ids=position_ids, **chunks, **kwargs)
        states = outputs.last_hidden_state
        if isinstance(encode, torch.Tensor):
            # Each chunk reads its row of the encoded ones, a skipped chunk the zero row after them: a gather by one
            # index per chunk. (Writing back through the boolean mask exports to ONNX as an index per element of the
            # states: a quarter of ONNX Runtime's time on the demo model.)
            rows = torch.where(encode, encode.long().cumsum(0) - 1, states.shape[0])
            states = torch.cat([states, states.new_zeros(1, *states.shape[1:])])[rows]
        return BaseModelOutput(
            last_hidden_state=states.reshape(batch_size, -1, states.shape[-1])[:, :length],
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @capture_outputs
    def _encode(
        self,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """The built-in BERT on a batch of chunks. Outputs are captured here, not in `forward`, so that they are the
        layers' (per chunk) whichever encoder runs."""
        embeddings = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=embeddings, attention_mask=attention_mask)
        states = self.encoder(embeddings, attention_mask=mask, **kwargs).last_hidden_state
        return BaseModelOutput(last_hidden_state=states)

    def _encode_with_backbone(
        self, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        """The backbone on a batch of chunks; it captures its own layers' outputs (asked here or in our config)."""
        if token_type_ids is not None and self._backbone_token_types:
            kwargs["token_type_ids"] = token_type_ids
        for name in ("output_hidden_states", "output_attentions"):
            kwargs.setdefault(name, getattr(self.config, name, False))
        return self.backbone(attention_mask=attention_mask, return_dict=True, **kwargs)


class BertXMLForMaskedLM(BertXMLPreTrainedModel):
    """BERT-XML encoder with BERT's masked-language-modelling head, for pretraining from scratch on notes."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: BertXMLConfig):
        if config.backbone_config is not None:
            raise ValueError(
                f"BertXMLForMaskedLM pretrains the built-in BERT; a {config.backbone_config.model_type} backbone is "
                "pretrained with its own masked-LM model (AutoModelForMaskedLM), then fine-tuned with train.py"
            )
        super().__init__(config)
        self.bert = BertXMLModel(config)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids to predict at masked positions; -100 elsewhere.
        """
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = masked_lm_loss(logits, labels)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class BertXMLForMultiLabelCoding(BertXMLPreTrainedModel):
    """BERT-XML: the chunked encoder with a label-wise attention head that assigns codes to whole notes."""

    head_name = "label_head"  # the head's attribute: its weights are saved under it (label_head.queries, ...)

    def __init__(self, config: BertXMLConfig):
        # Checked here, not in the config, which the encoder and the MLM model share (and peer tools build freely).
        if config.problem_type != "multi_label_classification":
            raise ValueError(
                f"BERT-XML codes notes with multi-hot labels (problem_type='multi_label_classification'); got "
                f"problem_type={config.problem_type!r}"
            )
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertXMLModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.label_head = BertXMLLabelWiseHead(config)
        self.description_match = BertXMLDescriptionMatch(config) if config.description_terms else None
        # The masked-LM loss kept while coding (`config.mlm_loss_weight`): the pretraining model's head, same names,
        # so a pretrain.py checkpoint's `cls.*` weights load into it.
        self.cls = BertOnlyMLMHead(config) if config.mlm_loss_weight else None
        self._tied_weights_keys = BertXMLForMaskedLM._tied_weights_keys if self.cls is not None else None
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_label_attentions: bool = False,
        mlm_labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MultiLabelCodingOutput:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
            Multi-hot targets: 1 where the note carries the code, 0 elsewhere. Gives a binary cross-entropy loss.
        mlm_labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            With `config.mlm_loss_weight`: the original ids of the masked tokens of `input_ids`, -100 elsewhere. The
            loss becomes the coding loss plus `mlm_loss_weight` times the masked-LM loss (`mlm_loss`).
        output_label_attentions (`bool`, defaults to `False`):
            Also return each code's attention over the tokens (`label_attentions`), the evidence for the code.
        """
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.long)
        logits, label_attentions = self.label_head(
            self.dropout(hidden_states), attention_mask, output_attentions=output_label_attentions
        )
        logits = self._with_description_match(logits, input_ids, attention_mask)
        loss = mlm_loss = None
        if labels is not None:
            # Codes without attention rows learn nothing from the notes (no training note carries them): the loss
            # is label attention's, as without them.
            attention_codes = self.config.attention_labels
            loss = BCEWithLogitsLoss()(logits[:, :attention_codes], labels[:, :attention_codes].to(logits.dtype))
        if mlm_labels is not None:
            if self.cls is None:
                raise ValueError("mlm_labels need a model built with config.mlm_loss_weight > 0 (it has no MLM head)")
            mlm_logits = self.cls(hidden_states)
            mlm_loss = masked_lm_loss(mlm_logits, mlm_labels)
            loss = self.config.mlm_loss_weight * mlm_loss + (loss if loss is not None else 0.0)
        return MultiLabelCodingOutput(
            loss=loss,
            mlm_loss=mlm_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            label_attentions=label_attentions,
        )

    def code_logits(
        self, hidden_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(batch, codes) logits of the encoder's token states, as `forward` computes them (the pipeline's scores)."""
        logits, _ = self.label_head(hidden_states, attention_mask)
        return self._with_description_match(logits, input_ids, attention_mask)

    def code_evidence(
        self, hidden_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """(batch, k, tokens) weights of the tokens that make the case for `codes` (batch, k): a code's label
        attention, or for a code without attention rows its share of the description match."""
        attention_codes = self.config.attention_labels
        weights = self.label_head.attention(hidden_states, attention_mask, codes.clamp(max=attention_codes - 1))
        if self.description_match is None or (codes < attention_codes).all():
            return weights
        matched = self.description_match.evidence(input_ids, attention_mask, codes)
        return torch.where((codes >= attention_codes)[..., None], matched, weights)

    def _with_description_match(
        self, logits: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        if self.description_match is None:
            return logits
        if input_ids is None:
            raise ValueError("the description match reads the note's tokens: pass input_ids, not inputs_embeds")
        return self.description_match(logits, input_ids, attention_mask)

    def set_codes(self, codes: list[str]) -> list[str]:
        """Make the model code `codes` (its `id2label` in that order), each with label-attention rows: each code it
        already knows keeps its learnt head row, matched by code rather than by position; every other code starts a
        fresh row. Returns the codes that kept a row. `from_pretrained` with other `id2label` matches rows by
        position, which is wrong as soon as the codes are another set or order: load a coder with its own codes, then
        set the new ones. A description match is removed (its tables are the old codes'; `add_description_match`)."""
        attention_codes = [self.config.id2label[i] for i in range(self.config.attention_labels)]
        if self.description_match is None and list(codes) == attention_codes:
            return list(codes)  # every row is where it belongs
        row = {code: i for i, code in enumerate(attention_codes)}
        self.label_head.reindex_codes([row.get(code) for code in codes])
        self.description_match = None
        self.config.num_attention_labels, self.config.description_terms = None, 0
        self._set_labels(codes)
        return [code for code in codes if code in row]

    def add_description_match(
        self, codes: list[str], idf: torch.Tensor, term_ids: torch.Tensor, term_weights: torch.Tensor,
        bias: torch.Tensor,
    ) -> None:
        """Add the description match (`BertXMLDescriptionMatch`) to every code's logit, and code `codes` too, after
        the codes with attention rows and scored by the match alone (`bias`: their logit on a note that matches
        nothing). `term_ids` and `term_weights` hold every code's terms, attention codes first."""
        attention_codes = [self.config.id2label[i] for i in range(self.config.attention_labels)]
        self.config.num_attention_labels = len(attention_codes)
        self.config.description_terms = term_ids.shape[1]
        self._set_labels(attention_codes + list(codes))
        self.description_match = BertXMLDescriptionMatch(self.config).to(self.device)
        self.description_match.set_tables(idf, term_ids, term_weights, bias)

    def _set_labels(self, codes: list[str]) -> None:
        self.config.id2label = dict(enumerate(codes))
        self.config.label2id = {code: i for i, code in enumerate(codes)}
        self.num_labels = len(codes)

__all__ = [
    "backbone_init_kwargs",
    "BertXMLForMaskedLM",
    "BertXMLDescriptionMatch",
    "BertXMLForMultiLabelCoding",
    "BertXMLLabelWiseHead",
    "BertXMLModel",
    "BertXMLPreTrainedModel",
    "BertXMLRotarySelfAttention",
    "MultiLabelCodingOutput",
]
