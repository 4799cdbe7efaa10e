"""Linear layers whose input starts with one-hot columns, computed by summing the weight rows that meet the ones.

Imagination's features concat(z, h) start with z, 32 one-hot variables of 32 classes (1,024 of the paper's 1,624
columns), and with discrete actions the RSSM's input concat(z, a) is one-hot throughout: a product multiplies by
zero 31 times in 32 there. `embedding_bag` sums the rows instead. With rho = 1 imagination runs without autograd
through the dynamics, so its features can travel as `OneHotFeature`s, which every head's first `Linear` reads
this way, faster on the CPU in float32 (docs/performance.md). Under bfloat16 autocast the update was slower with
them (their weight gradients are float32 products where the AMX ones are bfloat16), and on GPUs they are
unmeasured, so only float32 on the CPU takes the route (`gathers_active`). The benchmarks count the dense
products, as the layer shapes say, and report how much of that count ran as gathers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers.linear import linear, mm_t, weight_layout


class OneHotColumns(NamedTuple):
    """Where the ones are in an input's leading `width` columns, all of which are 0 except one per group."""

    index: Tensor  # type: ignore[assignment]  # (..., groups) long: the column of each group's one
    width: int

    @staticmethod
    def of(x: Tensor, classes: int) -> OneHotColumns:
        """The ones of `x` (..., groups * classes), which must hold exactly one 1 per group of `classes` columns
        (sampled latents, discrete actions). One small product finds them: exact, as the positions are small
        integers, and faster than an argmax over groups of 32."""
        position = x.detach().unflatten(-1, (-1, classes)) @ torch.arange(classes, dtype=x.dtype, device=x.device)
        offset = torch.arange(0, x.shape[-1], classes, device=x.device)
        return OneHotColumns(position.long() + offset, x.shape[-1])

    def then(self, other: OneHotColumns) -> OneHotColumns:
        """The ones of concat(this block, other block)."""
        return OneHotColumns(torch.cat([self.index, other.index + self.width], -1), self.width + other.width)

    def dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The block written out: (..., width), 1 at each index and 0 elsewhere."""
        zeros = torch.zeros(*self.index.shape[:-1], self.width, dtype=dtype, device=self.index.device)
        return zeros.scatter_(-1, self.index, 1.0)


@dataclass(frozen=True)
class OneHotFeature:
    """concat(one-hot block, rest) without the one-hot block written out. Indexing over the leading (time, batch)
    axes, `detach` and `shape` act as on the dense feature, so heads take either."""

    ones: OneHotColumns
    rest: Tensor  # (..., rest columns); may have none

    def __getitem__(self, key) -> OneHotFeature:
        return OneHotFeature(OneHotColumns(self.ones.index[key], self.ones.width), self.rest[key])

    def detach(self) -> OneHotFeature:
        return OneHotFeature(self.ones, self.rest.detach())

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.rest.shape[:-1], self.ones.width + self.rest.shape[-1]))

    @property
    def device(self) -> torch.device:
        return self.rest.device

    def dense(self) -> Tensor:
        """The feature written out: (..., ones.width + rest columns)."""
        return torch.cat([self.ones.dense(self.rest.dtype), self.rest], -1)

    def times(self, layer: nn.Linear) -> Tensor:
        """layer(self.dense()), with the one-hot block's share summed from weight rows."""
        weight, bias, width = layer.weight, layer.bias, self.ones.width
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (self.rest, weight, bias)):
            return _OneHotLinear.apply(self.ones.index, width, self.rest, weight, bias)
        rows, rest_weight = weight_layout(layer, "one_hot", weight, lambda w: _split(w, width))
        return _gathered_product(self, rows, rest_weight, bias)

    @staticmethod
    def stack(features: list[OneHotFeature], dim: int) -> OneHotFeature:
        index = torch.stack([f.ones.index for f in features], dim)
        return OneHotFeature(OneHotColumns(index, features[0].ones.width), torch.stack([f.rest for f in features], dim))


Feature = Tensor | OneHotFeature
"""An input that starts with one-hot columns: written out as a tensor, or as an OneHotFeature."""


def stack_features(features: Sequence[Feature], dim: int) -> Feature:
    """torch.stack for features all of one kind."""
    if isinstance(features[0], OneHotFeature):
        return OneHotFeature.stack(cast(list[OneHotFeature], list(features)), dim)
    return torch.stack(cast(list[Tensor], list(features)), dim)


_gathers = True


@contextlib.contextmanager
def use_gathers(enabled: bool):
    """Let imagination pass `OneHotFeature`s (where `gathers_active`) within the block, or not."""
    global _gathers
    before, _gathers = _gathers, enabled
    try:
        yield
    finally:
        _gathers = before


def gathers_active(x: Tensor) -> bool:
    """Whether features like `x` travel as `OneHotFeature`s: float32 on the CPU outside autocast."""
    return _gathers and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def _split(weight: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The one-hot block's weight columns as contiguous rows (embedding_bag's table), and the rest's columns."""
    return weight[:, :width].t().contiguous(), weight[:, width:].contiguous()


def _gathered_product(feature: OneHotFeature, rows: Tensor, rest_weight: Tensor, bias: Tensor | None) -> Tensor:
    """feature.dense() @ W.T + bias (..., out): the one-hot block's share as the sum of the weight rows `rows`
    (width, out) its ones pick, the rest's through `rest_weight` (out, rest columns)."""
    index = feature.ones.index
    out = F.embedding_bag(index.reshape(-1, index.shape[-1]), rows, mode="sum").view(*index.shape[:-1], -1)
    if feature.rest.shape[-1]:
        out += linear(feature.rest, rest_weight)
    return out if bias is None else out.add_(bias)


class _OneHotLinear(torch.autograd.Function):
    """Forward by gathers; the weight gradient as one product with the input written out (autograd's own
    embedding_bag gradient adds row by row, slower than that product at the paper's sizes)."""

    @staticmethod
    def forward(
        ctx,
        index: Tensor,
        width: int,
        rest: Tensor,
        weight: Tensor,
        bias: Tensor | None,
    ) -> Tensor:
        ctx.save_for_backward(index, rest, weight)
        ctx.width = width
        return _gathered_product(OneHotFeature(OneHotColumns(index, width), rest), *_split(weight, width), bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, rest, weight = ctx.saved_tensors
        width = ctx.width
        need_rest, need_weight, need_bias = ctx.needs_input_grad[2:]
        rows = grad.reshape(-1, grad.shape[-1])
        grad_rest = mm_t(grad, weight[:, width:].t().contiguous()) if need_rest else None
        grad_weight = None
        if need_weight:
            x = OneHotFeature(OneHotColumns(index, width), rest).dense().reshape(-1, weight.shape[1])
            grad_weight = mm_t(rows.t(), x.t())
        grad_bias = rows.sum(0) if need_bias else None
        return None, None, grad_rest, grad_weight, grad_bias
