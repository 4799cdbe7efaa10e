"""Float32 linear layers (x @ W.T + b) computed by oneDNN's CPU kernels where the BLAS is slow.

torch multiplies float32 matrices on the CPU with MKL, and MKL runs its AVX2 kernels on AMD processors even
where they have AVX-512, far below what such a CPU does; oneDNN, the library behind torch's CPU
convolutions and bfloat16 matmuls, runs its AVX-512 kernels there, with float32 arithmetic throughout (no
reduced-precision math mode). On Intel processors MKL takes its AVX-512 kernels and is the faster of the two,
and on processors without AVX-512 MKL's AVX2 kernels are all the machine has and also the faster. So the
oneDNN route is the default only on non-Intel x86 processors with AVX-512, and on torch builds without MKL
(the measurements are in docs/performance.md); small products (`SMALL_PRODUCT`) stay on the BLAS even there.
Every Linear of the model goes through `linear`, so the world model, imagination, actor and critic all take the
route; its results equal F.linear's to float32 rounding (tests compare them in float64).

oneDNN handles a sliced weight (a column slice of a wider matrix) very slowly, so weights reach it contiguous
or as the transpose of a contiguous matrix (which it reads well at training batch sizes, and which spares a
weight-sized copy); callers that reuse a sliced weight many times (the RSSM unroll, acting)
make it contiguous once.
On CUDA, under autocast, and for other dtypes `linear` is F.linear. `use_onednn(False)` turns the route off,
for the benchmarks' FLOP count (torch's counter knows aten's matmuls, not oneDNN's op) and for comparisons.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _onednn_linear_op():
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def _blas_is_slow(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether torch's float32 BLAS runs below this CPU's speed: MKL picks AVX-512 kernels on Intel CPUs only,
    so it is slow on other CPUs that have AVX-512."""
    if not torch.backends.mkl.is_available():
        return True
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return False
    return fields.get("vendor_id", "") != "GenuineIntel" and "avx512f" in fields.get("flags", "").split()


T = TypeVar("T")
_OP = _onednn_linear_op()
_enabled = _OP is not None and _blas_is_slow()


@contextlib.contextmanager
def use_onednn(enabled: bool):
    """Route float32 CPU linears through oneDNN (where torch has it) or through torch's BLAS, within the block,
    whichever this CPU would take by default."""
    global _enabled
    before, _enabled = _enabled, enabled and _OP is not None
    try:
        yield
    finally:
        _enabled = before


def onednn_active(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear(x, weight)` would run on oneDNN: float32 on the CPU, outside autocast."""
    return (
        _enabled
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )


SMALL_PRODUCT = 8 * 2**20
"""Multiply-adds below which a product with a small right-hand matrix goes to torch's BLAS even where oneDNN is the
route: oneDNN's fixed cost per call outweighs its faster kernels there (the small presets' per-step RSSM products,
acting); measured in docs/performance.md."""
SMALL_WEIGHT = 2**18
"""Elements of the right-hand matrix (the weight) from which oneDNN keeps the product however few its rows: with a
weight this large, its matrix-vector kernels beat the BLAS's (acting with the paper's networks)."""


def _mm_t(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ b.T (+ bias) on oneDNN, or on torch's BLAS if it is small; `a` may have leading batch axes."""
    if a.numel() * b.shape[0] < SMALL_PRODUCT and b.numel() < SMALL_WEIGHT:
        return F.linear(a, b, bias)
    return _OP(a, b, bias, "none", [], "")


def mm_t(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T without autograd of its own, on oneDNN where active."""
    return _mm_t(a, b) if onednn_active(a, b) else a @ b.t()


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _mm_t(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = _mm_t(grad, weight.t()) if need_x else None  # a transposed view is fine at training batch sizes
        grad_weight = _mm_t(rows.t(), x.reshape(-1, x.shape[-1]).contiguous().t()) if need_weight else None
        grad_bias = rows.sum(0) if need_bias else None
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias), on oneDNN for float32 CPU tensors."""
    if not onednn_active(x, weight):
        return F.linear(x, weight, bias)
    if not (weight.is_contiguous() or weight.t().is_contiguous()):
        weight = weight.contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _OneDnnLinear.apply(x, weight, bias)
    return _mm_t(x, weight, bias)


def weight_layout(module: nn.Module, key: str, weight: Tensor, make: Callable[[Tensor], T]) -> T:
    """make(weight): a weight re-laid out for a kernel (a contiguous slice, a permuted copy).

    While no gradient is recorded (acting, evaluation, imagination without autograd) the result is kept on
    `module` and made again only when the weight changes (an optimiser step or a load bumps its version):
    acting at one env copy otherwise spent most of its time copying weights.
    """
    if torch.is_grad_enabled():
        return make(weight)
    stamp = (weight._version, weight.data_ptr(), weight.device, weight.dtype)
    cache = module.__dict__.setdefault("_weight_layouts", {})
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        hit = cache[key] = (stamp, make(weight.detach()))
    return hit[1]


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict names) computed by `linear`. An input that is not a tensor
    computes the product itself (`dreamctl.layers.one_hot.OneHotFeature.times`)."""

    def forward(self, x) -> Tensor:
        if isinstance(x, Tensor):
            return linear(x, self.weight, self.bias)
        return x.times(self)
