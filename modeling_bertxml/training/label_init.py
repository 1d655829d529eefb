"""Description-initialised label queries (as HiLAT and CoLa): each code starts out attending to text like its own
official description and inclusion terms, instead of a random direction.

A code seen in a handful of notes cannot learn where to look from them alone; starting from its description gives it
the right words before training. Used by `train.py --init_label_queries_from_descriptions`.
"""

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..model.modeling_bertxml import BertXMLForMultiLabelCoding

logger = logging.get_logger(__name__)


@torch.no_grad()
def embed_texts(
    model: BertXMLForMultiLabelCoding, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """(len(texts), hidden_size): the mean of the encoder's states over each text's tokens, special tokens excluded."""
    device = model.device
    pooled = []
    starts = range(0, len(texts), batch_size)  # 83,321 texts for every billable ICD-10-CM code: minutes on a CPU
    for start in tqdm(starts, desc="Embedding code descriptions", disable=len(starts) < 20, leave=False):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=model.config.max_position_embeddings,
            return_special_tokens_mask=True,
            return_tensors="pt",
        ).to(device)
        states = model.bert(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
        keep = (encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()).unsqueeze(-1)
        pooled.append((states * keep).sum(1) / keep.sum(1).clamp(min=1))
    return torch.cat(pooled).float()


@torch.no_grad()
def init_label_queries_from_descriptions(
    model: BertXMLForMultiLabelCoding,
    tokenizer: PreTrainedTokenizerBase,
    descriptions: dict[str, str | list[str]],
    init_output_weights: bool = True,
    batch_size: int = 64,
) -> list[str]:
    """Set each code's attention query (and output weight) from the model's own embedding of its description(s).

    A code's vector is the mean over its texts of `embed_texts`; the head starts the code's row from it
    (`BertXMLLabelWiseHead.set_rows_from_vectors`), with `init_output_weights` the output weight too, at the norm of
    BERT's random initialisation. Codes without a description keep their random query (a warning counts them).

    Returns the codes that were initialised.
    """
    codes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    known = [i for i, code in enumerate(codes) if descriptions.get(code)]
    if len(known) < len(codes):
        missing = [code for i, code in enumerate(codes) if not descriptions.get(code)]
        logger.warning(f"{len(missing)} codes have no description and keep a random query, e.g. {missing[:5]}")
    if not known:
        return []
    texts, owners = [], []
    for slot, i in enumerate(known):
        code_texts = descriptions[codes[i]]
        code_texts = [code_texts] if isinstance(code_texts, str) else code_texts
        texts.extend(code_texts)
        owners.extend([slot] * len(code_texts))

    was_training = model.training
    model.eval()  # dropout would make the embedding of a description random
    embeddings = embed_texts(model, tokenizer, texts, batch_size)
    model.train(was_training)
    owners = torch.tensor(owners, device=embeddings.device)
    vectors = torch.zeros(len(known), embeddings.shape[1], device=embeddings.device).index_add_(0, owners, embeddings)
    vectors /= torch.bincount(owners, minlength=len(known)).unsqueeze(-1)

    norm = model.config.initializer_range * math.sqrt(model.config.hidden_size) if init_output_weights else None
    model.label_head.set_rows_from_vectors(torch.tensor(known, device=embeddings.device), vectors, output_norm=norm)
    return [codes[i] for i in known]
