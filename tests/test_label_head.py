"""The fast label-attention head computes exactly what the naive one does, in bounded memory, also under autocast.

Both exact paths run here whatever the device would pick (`label_attention_implementation`): "sdpa", the CPU's
default, and "blocks", CUDA's (benchmarks/gpu_check.sh compares them with the naive head on a GPU)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.naive_head import naive_label_attention
from modeling_bertxml import BertXMLLabelWiseHead
from tests.conftest import assert_close_scaled, tiny_config

BATCH, TOKENS, CODES, BLOCK = 3, 50, 37, 8


IMPLEMENTATIONS = ["sdpa", "blocks"]


def random_head(
    label_attention_dim: int | None = None, block: int = BLOCK, codes: int = CODES, implementation: str = "auto",
    queries_per_code: int = 1,
) -> BertXMLLabelWiseHead:  # fmt: skip
    """A head with unit-scale weights, so that attention is peaked and a wrong mask or block visibly moves logits."""
    config = tiny_config(
        num_labels=codes, label_block_size=block, label_attention_dim=label_attention_dim,
        label_attention_implementation=implementation, label_queries_per_code=queries_per_code,
    )  # fmt: skip
    head = BertXMLLabelWiseHead(config)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_()
    return head


def random_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Notes of random lengths, one of them empty, with garbage (even NaN) in the padded states."""
    states = torch.randn(BATCH, TOKENS, 32)
    lengths = torch.tensor([TOKENS, 0, 17])
    mask = (torch.arange(TOKENS) < lengths[:, None]).long()
    states[mask == 0] = float("nan")
    return states, mask


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("label_attention_dim", [None, 8])
@pytest.mark.parametrize("block", [1, BLOCK, CODES, 64])
@pytest.mark.parametrize("queries_per_code", [1, 3])
def test_head_matches_naive_head_in_fp32(
    implementation: str, label_attention_dim: int | None, block: int, queries_per_code: int
) -> None:
    head = random_head(label_attention_dim, block, implementation=implementation, queries_per_code=queries_per_code)
    states, mask = random_batch()
    with torch.no_grad():
        expected = naive_label_attention(head, states, mask)
        logits, _ = head(states, mask)
        explicit, attentions = head(states, mask, output_attentions=True)
    assert torch.isfinite(expected).all()
    assert_close_scaled(logits, expected)
    assert_close_scaled(explicit, expected)
    torch.testing.assert_close(logits[1], head.output_bias.detach())  # the empty note: bias only
    assert torch.all(attentions[2, :, 17:] == 0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("label_attention_dim", [None, 8])
def test_head_gradients_match_naive_head(implementation: str, label_attention_dim: int | None) -> None:
    head = random_head(label_attention_dim, implementation=implementation)
    states, mask = random_batch()
    states = states.nan_to_num(0.0).requires_grad_()
    gradients = []
    for forward in (lambda: head(states, mask)[0], lambda: naive_label_attention(head, states, mask)):
        head.zero_grad()
        states.grad = None
        forward().square().sum().backward()
        gradients.append([states.grad] + [parameter.grad for parameter in head.parameters()])
    for fast, naive in zip(*gradients):
        assert_close_scaled(fast, naive, rtol=1e-4)


class LargestTensor(TorchDispatchMode):
    """Records the sizes of the tensors that operators create (views aside); `numel` is the largest."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    @property
    def numel(self) -> int:
        return max(self.sizes, default=0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            leaves = torch.utils._pytree.tree_leaves(out)
            self.sizes += [leaf.numel() for leaf in leaves if isinstance(leaf, torch.Tensor)]
        return out


@pytest.mark.parametrize("training", [False, True])
def test_fused_head_never_forms_a_codes_by_tokens_tensor(training: bool) -> None:
    codes, block = 100, 40  # one block of scores (batch x 40 x tokens) outweighs the states (batch x tokens x 32)
    head = random_head(block=block, codes=codes, implementation="sdpa")
    states, mask = random_batch()
    states = states.nan_to_num(0.0).requires_grad_(training)
    with torch.set_grad_enabled(training), LargestTensor() as largest:
        logits, _ = head(states, mask)
        if training:
            logits.sum().backward()
    # The largest legitimate tensors are the states and their gradient (batch x tokens x hidden).
    assert largest.numel <= BATCH * TOKENS * 32 < BATCH * block * TOKENS


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("label_attention_dim", [None, 8])
def test_backward_builds_each_parameter_gradient_once_not_once_per_block(
    implementation: str, label_attention_dim: int | None
) -> None:
    head = random_head(label_attention_dim, implementation=implementation)  # 37 codes in blocks of 8: 5 blocks
    states, mask = random_batch()
    logits, _ = head(states.nan_to_num(0.0), mask)
    with LargestTensor() as created:
        logits.sum().backward()
    full_size = head.queries.numel(), head.output_weight.numel()
    assert sum(size in full_size for size in created.sizes) == 2  # one gradient each for queries and output weights


@pytest.mark.parametrize("implementation", ["auto", "blocks"])  # auto: CPU bf16 inference takes the blocks
def test_bf16_inference_in_blocks_forms_one_block_of_scores_at_most(implementation: str) -> None:
    codes, block = 100, 40
    head = random_head(block=block, codes=codes, implementation=implementation)
    states, mask = random_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), LargestTensor() as largest:
        head(states, mask)
    assert largest.numel == BATCH * block * TOKENS < BATCH * codes * TOKENS


def test_training_in_blocks_keeps_one_block_of_scores_alive_per_block_not_the_whole_tensor_at_once() -> None:
    """The blocks path's memory: the forward creates one block's scores at a time (autograd keeps each block's
    weights for the backward, as the naive head keeps its one tensor: the GPU check measures that memory)."""
    codes, block = 100, 40
    head = random_head(block=block, codes=codes, implementation="blocks")
    states, mask = random_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16), LargestTensor() as largest:
        logits, _ = head(states.nan_to_num(0.0), mask)
    assert largest.numel == BATCH * block * TOKENS < BATCH * codes * TOKENS
    logits.sum().backward()
    assert torch.isfinite(head.queries.grad).all()


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("label_attention_dim", [None, 8])
def test_bf16_autocast_stays_close_to_fp32(
    implementation: str, label_attention_dim: int | None, training: bool
) -> None:
    head = random_head(label_attention_dim, implementation=implementation)
    states, mask = random_batch()
    with torch.no_grad():
        expected = naive_label_attention(head, states, mask)
    with torch.set_grad_enabled(training), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = head(states, mask)
    assert logits.dtype == torch.float32  # the per-code output runs against the float32 output weights
    # bf16 keeps 8 bits of mantissa: allow a few of its roundings (2**-8) on logits of size ~ sqrt(hidden).
    torch.testing.assert_close(logits, expected, atol=0.05 * expected.abs().max().item(), rtol=0)


def test_half_precision_scores_beyond_fp16_range_stay_finite() -> None:
    head = random_head()  # "auto" keeps float16 off the blocks, whose products would overflow
    states, mask = random_batch()
    with torch.no_grad():
        head.queries.mul_(1e4)  # scores of ~1e4 * sqrt(hidden): beyond fp16's 65,504
        assert torch.isinf(head.queries.half() @ states[0].half().T).any()  # a half-precision product overflows
        with torch.autocast("cpu", dtype=torch.float16):
            logits, _ = head(states, mask)
    assert torch.isfinite(logits).all()


def test_an_unknown_implementation_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="label_attention_implementation must be one of auto, blocks, sdpa"):
        tiny_config(label_attention_implementation="triton")


def test_moving_codes_moves_all_their_queries_and_a_new_code_starts_fresh() -> None:
    """A coder fine-tuned on another list of codes (`reindex_codes`): each code it knew keeps its queries, in order."""
    head = random_head(codes=3, queries_per_code=3)
    queries, weights = head.queries.detach().clone().unflatten(0, (3, 3)), head.output_weight.detach().clone()
    head.reindex_codes([2, None, 0])
    moved = head.queries.detach().unflatten(0, (3, 3))
    torch.testing.assert_close(moved[[0, 2]], queries[[2, 0]])
    torch.testing.assert_close(head.output_weight.detach()[[0, 2]], weights[[2, 0]])
    torch.testing.assert_close(head.output_weight.detach()[1], moved[1, 0])  # a fresh code's weight: its first query
