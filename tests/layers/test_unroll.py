"""UnrolledLinear: one weight-gradient product for a whole unroll equals step-by-step autograd."""

import pytest
import torch
import torch.nn.functional as F

from dreamctl.layers.linear import use_onednn
from dreamctl.layers.unroll import UnrolledLinear


def _unroll(step, h0: torch.Tensor, length: int) -> torch.Tensor:
    h, outs = h0, []
    for t in range(length):
        h = torch.tanh(step(t, h))
        outs.append(h)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("onednn", [True, False])
def test_unrolled_linear_gives_the_gradients_of_step_by_step_autograd(onednn):
    with use_onednn(onednn):
        _check_unrolled_linear_against_step_by_step_autograd()


def _check_unrolled_linear_against_step_by_step_autograd():
    torch.manual_seed(0)
    weight = torch.randn(4, 4, requires_grad=True)
    offset = torch.randn(3, 5, 4, requires_grad=True)
    h0 = torch.randn(3, 4, requires_grad=True)
    probe = torch.randn(3, 5, 4)
    plain = _unroll(lambda t, h: F.linear(h, weight) + offset[:, t], h0, 5)
    expected = torch.autograd.grad((plain * probe).sum(), (weight, offset, h0))
    linear = UnrolledLinear(weight, offset)
    fast = _unroll(lambda t, h: linear(h), h0, 5)
    got = torch.autograd.grad((fast * probe).sum(), (weight, offset, h0))
    torch.testing.assert_close(fast, plain)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_unrolled_linear_without_autograd_records_nothing():
    weight, offset = torch.randn(4, 4, requires_grad=True), torch.randn(3, 5, 4)
    with torch.no_grad():
        linear = UnrolledLinear(weight, offset)
        out = _unroll(lambda t, h: linear(h), torch.randn(3, 4), 5)
    assert not out.requires_grad and linear.inputs == []
