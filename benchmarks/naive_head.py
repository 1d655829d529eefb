"""The label-attention head written the direct way, as PLM-ICD's code does: one (batch, tokens, codes) score tensor.

It is the reference that tests/test_label_head.py holds the model's head to, and the comparison row of
bench_model.py: never a way to run the model, and written apart from the head's code on purpose, so that a mistake in
the head's shared helpers cannot pass unseen. It reads the parameters of a `BertXMLLabelWiseHead`, so both compute
the same function, and keeps the padding mask that PLM-ICD's released code forgets.
"""

import torch

from modeling_bertxml import BertXMLLabelWiseHead


def naive_label_attention(
    head: BertXMLLabelWiseHead, hidden_states: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """hidden_states (batch, tokens, hidden), attention_mask (batch, tokens) -> logits (batch, codes)."""
    keep = attention_mask.bool()[..., None]  # (batch, tokens, 1)
    states = hidden_states.masked_fill(~keep, 0.0)
    keys = torch.tanh(head.projection(states)) if head.projection is not None else states
    scores = (keys @ head.queries.T).float()  # (batch, tokens, codes): every code against every token at once
    weights = scores.masked_fill(~keep, torch.finfo(torch.float32).min).softmax(dim=1)
    documents = weights.transpose(1, 2).to(states.dtype) @ states  # (batch, queries, hidden)
    # A code's queries are consecutive rows; its score is the best of theirs (one query per code: that one's).
    documents = documents.unflatten(1, (-1, head.queries_per_code))  # (batch, codes, queries per code, hidden)
    return documents.mul(head.output_weight[:, None]).sum(dim=3).amax(dim=2).add(head.output_bias)
