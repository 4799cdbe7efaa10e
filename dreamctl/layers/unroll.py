"""A linear layer applied at every step of a recurrent unroll, with its weight gradient taken once.

Autograd differentiates an unrolled `x_t @ W.T` step by step: for each of the T steps it forms x_t.T @ dy_t,
a product over only B rows that writes a whole weight-sized gradient and adds it to the running sum. For the
RSSM's posterior unroll (B = 16, T = 50) that means a weight-sized gradient written and re-read at every step,
which made the unroll's backward pass far slower than its FLOPs. Here the loop uses the weight detached, keeps
each step's input, and one product X.T @ dY over all B * T rows gives the same gradient (docs/performance.md
has the timings).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamctl.layers.conv import autocast_dtype
from dreamctl.layers.linear import mm_t, onednn_active


class _WeightGradTap(torch.autograd.Function):
    """Forward: a copy of `offset` (the part of every step's output computed outside the loop).
    Backward: offset's gradient as is, and the weight's from the inputs the loop recorded."""

    @staticmethod
    def forward(ctx, weight: Tensor, offset: Tensor, inputs: list[Tensor]) -> Tensor:
        ctx.inputs = inputs
        ctx.weight_dtype = weight.dtype
        return offset.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x = torch.stack(ctx.inputs, 1).to(grad.dtype)
        grad_weight = mm_t(grad.flatten(0, -2).t(), x.flatten(0, -2).t())
        return grad_weight.to(ctx.weight_dtype), grad, None


class _StepProduct(torch.autograd.Function):
    """x @ weight.T on oneDNN for one step, with the weight constant (its gradient comes from the tap); the
    input gradient uses the transposed weight that the unroll made contiguous once for all its steps."""

    @staticmethod
    def forward(ctx, x: Tensor, unrolled: UnrolledLinear) -> Tensor:
        ctx.unrolled = unrolled
        return mm_t(x, unrolled.weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return mm_t(grad, ctx.unrolled.weight_transposed()), None


class UnrolledLinear:
    """y_t = x_t @ weight.T + offset[:, t] for the steps t = 0, 1, ... of an unroll over axis 1.

    `offset` (B, T, out) carries the bias and any input share that does not depend on the recurrence (it was
    computed for all steps in one product). Call once per step, in order. Without autograd (acting, the
    `imagine` command's context) this is a plain product and add per step.
    """

    def __init__(self, weight: Tensor, offset: Tensor):
        self.inputs: list[Tensor] = []
        self.tracked = torch.is_grad_enabled() and weight.requires_grad
        if self.tracked:
            offset = _WeightGradTap.apply(weight, offset, self.inputs)
        self.offsets = offset.unbind(1)
        self.step = 0
        weight, dtype = weight.detach(), autocast_dtype(weight.device.type)
        if dtype is not None:
            weight = weight.to(dtype)
        self.weight = weight.contiguous()  # once for all steps: oneDNN reads a sliced weight very slowly
        self._weight_t: Tensor | None = None

    def weight_transposed(self) -> Tensor:
        if self._weight_t is None:
            self._weight_t = self.weight.t().contiguous()
        return self._weight_t

    def __call__(self, x: Tensor) -> Tensor:
        if self.tracked:
            self.inputs.append(x.detach())
        offset = self.offsets[self.step]
        self.step += 1
        if not onednn_active(x, self.weight):
            return torch.addmm(offset, x, self.weight.t())
        if torch.is_grad_enabled() and x.requires_grad:
            return _StepProduct.apply(x, self).add_(offset)
        return mm_t(x, self.weight).add_(offset)
