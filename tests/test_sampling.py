"""Length-grouped batches for train.py: every note once per epoch, less padding than random order, the same order
on every rank and after a resume, a new order each epoch."""

import random

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from torch.utils.data import DataLoader

from modeling_bertxml.data.sampling import LengthGroupedSampler, padding_share

BATCH = 4


@pytest.fixture
def lengths() -> list[int]:
    rng = random.Random(0)
    return [rng.choice([rng.randint(20, 120), rng.randint(400, 4096)]) for _ in range(203)]  # short and long notes


def loader(lengths: list[int], processes: int = 1, rank: int = 0) -> DataLoader:
    """Batches of note indices as Accelerate prepares train.py's loader on rank `rank` of `processes`."""
    plain = DataLoader(list(range(len(lengths))), batch_size=BATCH, sampler=LengthGroupedSampler(lengths, BATCH, 7))
    return prepare_data_loader(plain, num_processes=processes, process_index=rank, put_on_device=False)


def epoch(batches, number: int) -> list[list[int]]:
    batches.set_epoch(number)
    return [batch.tolist() for batch in batches]


def test_every_note_once_per_epoch_and_a_new_order_each_epoch(lengths: list[int]) -> None:
    sampler = LengthGroupedSampler(lengths, BATCH, seed=7)
    orders = []
    for number in range(3):
        sampler.set_epoch(number)
        orders.append(list(sampler))
        assert sorted(orders[-1]) == list(range(len(lengths)))
    assert orders[0] != orders[1] != orders[2]
    sampler.set_epoch(1)
    assert list(sampler) == orders[1]  # a function of (seed, epoch) only
    assert list(LengthGroupedSampler(lengths, BATCH, seed=8)) != orders[0]


def test_grouped_batches_carry_less_padding_than_random_order(lengths: list[int]) -> None:
    grouped = padding_share(lengths, list(LengthGroupedSampler(lengths, BATCH, seed=7)), BATCH)
    shuffled = padding_share(lengths, torch.randperm(len(lengths), generator=torch.Generator().manual_seed(7)), BATCH)
    assert grouped < 0.5 * shuffled, (grouped, shuffled)


def test_two_ranks_split_the_same_batches_and_together_cover_the_epoch(lengths: list[int]) -> None:
    single = epoch(loader(lengths), 2)
    ranks = [epoch(loader(lengths, processes=2, rank=rank), 2) for rank in range(2)]
    dealt = [batch for pair in zip(*ranks) for batch in pair]  # rank 0's first batch, rank 1's first, ...
    # Whole grouped batches, dealt out in the single process's order (Accelerate pads the short last one with
    # notes from the start, so that the ranks stay in step).
    assert dealt[: len(single) - 1] == single[:-1] and dealt[len(single) - 1][: len(single[-1])] == single[-1]
    assert {index for batches in ranks for batch in batches for index in batch} == set(range(len(lengths)))


def test_resuming_mid_epoch_continues_the_same_order(lengths: list[int]) -> None:
    uninterrupted = epoch(loader(lengths), 3)
    resumed = skip_first_batches(loader(lengths), 10)
    assert epoch(resumed, 3) == uninterrupted[10:]
