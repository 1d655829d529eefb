"""Batches of notes of similar length for train.py.

Clinical notes range from a few dozen to thousands of tokens, and a batch is padded to its longest note: in random
order most of a batch's tokens can be padding, and every padded chunk of 512 tokens is encoded for nothing. The
sampler composes transformers' `get_length_grouped_indices` (random mega-batches, each sorted by length), with the
order a function of (seed, epoch) alone, so that it is:
- reproducible and resumable: `accelerate.skip_first_batches` on the same epoch continues the same order;
- DDP-safe: every rank computes the same order and Accelerate deals its batches out (`BatchSamplerShard`), so each
  rank trains on whole batches of similar lengths and the ranks together cover the epoch.
"""

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


class LengthGroupedSampler(Sampler[int]):
    """Every index once per epoch, in an order where consecutive `batch_size` indices have similar `lengths`."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Accelerate's `DataLoaderShard.set_epoch` calls this at the start of each epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    def __len__(self) -> int:
        return len(self.lengths)


def padding_share(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of the tokens of padded batches (consecutive `batch_size` indices of `order`) that are padding."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded if padded else 0.0


__all__ = ["LengthGroupedSampler", "padding_share"]
