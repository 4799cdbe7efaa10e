"""The small-group encoder layer equals nn.TransformerEncoderLayer: outputs and gradients in float64; its attention
worked by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamctl.layers import TransformerEncoderLayer, reformulations
from dreamctl.layers.attention import (
    SUMS_MAX_AGENTS,
    SUMS_MAX_AGENTS_WITHOUT_GRAD,
    _attend_by_matmuls,
    _attend_by_sums,
)


def _outputs_and_grads(layer, x, blocked, probe):
    x = x.clone().requires_grad_()
    y = layer(x, blocked)
    grads = torch.autograd.grad((y * probe).sum(), [x, *layer.parameters()])
    return y.detach(), grads


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 6),
    agents=st.integers(1, SUMS_MAX_AGENTS + 2),  # elementwise sums up to SUMS_MAX_AGENTS, matmuls above
    heads=st.sampled_from([1, 2, 4]),
    head_width=st.integers(1, 4),
    masked=st.booleans(),
)
def test_small_group_layer_equals_torchs_encoder_layer(groups, agents, heads, head_width, masked):
    torch.manual_seed(groups * 100 + agents * 10 + heads)
    width = heads * head_width
    layer = TransformerEncoderLayer(width, heads, feedforward=width + 3).double()
    x = torch.randn(groups, agents, width, dtype=torch.float64)
    blocked = None
    if masked:  # random keys blocked, never a query's own
        blocked = (torch.rand(groups, agents, agents) < 0.5) & ~torch.eye(agents, dtype=torch.bool)
    probe = torch.randn(groups, agents, width, dtype=torch.float64)
    fast = _outputs_and_grads(layer, x, blocked, probe)
    with reformulations(False):
        plain = _outputs_and_grads(layer, x, blocked, probe)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-10, atol=1e-10)
    for got, expected in zip(fast[1], plain[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_a_blocked_key_changes_nothing_for_the_queries_it_is_blocked_from():
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(8, 2, feedforward=8).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    blocked = torch.zeros(1, 3, 3, dtype=torch.bool)
    blocked[0, :2, 2] = True  # agents 0 and 1 may not see agent 2
    changed = x.clone()
    changed[0, 2] += 5.0
    torch.testing.assert_close(layer(changed, blocked)[0, :2], layer(x, blocked)[0, :2])
    assert not torch.allclose(layer(changed)[0, :2], layer(x)[0, :2])


@pytest.mark.parametrize("agents", [2, SUMS_MAX_AGENTS_WITHOUT_GRAD, SUMS_MAX_AGENTS_WITHOUT_GRAD + 1])
def test_without_autograd_the_layer_equals_torchs_on_either_side_of_the_sums_limit(agents):
    torch.manual_seed(agents)
    layer = TransformerEncoderLayer(8, 2, feedforward=8).double()
    x = torch.randn(3, agents, 8, dtype=torch.float64)
    blocked = (torch.rand(3, agents, agents) < 0.5) & ~torch.eye(agents, dtype=torch.bool)
    with torch.no_grad():
        fast = layer(x, blocked)
        with reformulations(False):
            plain = layer(x, blocked)
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("attend", [_attend_by_sums, _attend_by_matmuls])
def test_multi_head_attention_worked_by_hand(attend):
    """Two agents, two heads of width 2 (scores scaled by 1 / sqrt 2). Head 0: agent 0's query (1, 0) meets the keys
    0 and (sqrt(2) ln 3, 0), scores 0 and ln 3, softmax 1/4 and 3/4 of the values (4, 0) and (8, 0): (7, 0). Head 1's
    queries are 0, so it averages (0, 2) and (0, 6): (0, 4). Agent 1's queries are all 0: (6, 0) and (0, 4). With agent
    0 blocked from agent 1, agent 0 reads only its own values: (4, 0, 0, 2)."""
    k1 = 2**0.5 * math.log(3.0)
    qkv = torch.tensor(
        [
            [1.0, 0, 0, 0] + [0.0, 0, 0, 0] + [4.0, 0, 0, 2],  # agent 0: query | key | value, each (head 0, head 1)
            [0.0, 0, 0, 0] + [k1, 0, 0, 0] + [8.0, 0, 0, 6],
        ],
        dtype=torch.float64,
    )[None]
    torch.testing.assert_close(attend(qkv, 2, None)[0], torch.tensor([[7.0, 0, 0, 4], [6.0, 0, 0, 4]]).double())
    blocked = torch.tensor([[[False, True], [False, False]]])
    torch.testing.assert_close(attend(qkv, 2, blocked)[0], torch.tensor([[4.0, 0, 0, 2], [6.0, 0, 0, 4]]).double())
