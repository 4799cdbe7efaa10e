"""Transposed convolutions computed by faster formulations of nn.ConvTranspose2d's maths.

Each layer keeps the parameters and state-dict names of nn.ConvTranspose2d, and a float64 test compares outputs
and gradients with it. The formulations were chosen by measurement on 2-core AVX-512 CPUs at the paper's batch
(docs/performance.md); the code is device-agnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers.conv import apply_outside_autocast, batch_slices, sum_dtype
from dreamctl.layers.linear import linear, mm_t
from dreamctl.layers.switch import reformulated


class ConvTranspose2dOn1x1(nn.ConvTranspose2d):
    """A transposed conv applied to a 1x1 input, computed as the matrix product it is.

    Same parameters (and state-dict names) as nn.ConvTranspose2d; on CPU the matmul runs several times faster
    than the generic transposed-conv kernel for the decoder's first layer (docs/performance.md).
    """

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if x.shape[-2:] != (1, 1) or output_size is not None or not reformulated():
            return super().forward(x, output_size)
        cin, cout, kh, kw = self.weight.shape
        weight = self.weight.reshape(cin, cout * kh * kw).t()
        bias = None if self.bias is None else self.bias.repeat_interleave(kh * kw)
        out = linear(x.reshape(-1, cin), weight, bias)
        return out.reshape(-1, cout, kh, kw)


class _ConvTransposeBiasGradBySum(torch.autograd.Function):
    """A transposed conv (no padding) whose backward takes the bias gradient as a sum over the output gradient.

    oneDNN folds the bias gradient into its weight-gradient kernel for transposed convs, and on CPU that adds
    a large share of the kernel's time, where a separate sum over the output gradient is cheap
    (docs/performance.md).
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        stride: tuple[int, int],
        by_products: bool,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        if by_products:
            return _transposed_conv_by_products(x, weight, bias, stride[0])
        return F.conv_transpose2d(x, weight, bias, stride=stride)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, ctx.stride, [0, 0], [1, 1], True, [0, 0], 1, [need_x, need_weight, False]
        )
        grad_bias = _sum_over_positions(grad) if need_bias else None
        return grad_x, grad_weight, grad_bias, None, None


def _transposed_conv_by_products(x: Tensor, weight: Tensor, bias: Tensor, stride: int) -> Tensor:
    """F.conv_transpose2d (no padding) as one GEMM per batch slice, giving every input pixel's contribution to
    each kernel tap, and k * k strided adds of those contributions into the (channels_last) output."""
    n, cin, h, w = x.shape
    cout, k = weight.shape[1], weight.shape[2]
    taps = weight.permute(2, 3, 1, 0).reshape(k * k * cout, cin)  # rows (row tap, column tap, out channel)
    size = (n, cout, (h - 1) * stride + k, (w - 1) * stride + k)
    dtype = sum_dtype(x.dtype)
    out = torch.empty(size, dtype=dtype, device=x.device, memory_format=torch.channels_last).zero_()
    pixels = x.permute(0, 2, 3, 1)
    span_h, span_w = stride * (h - 1) + 1, stride * (w - 1) + 1
    for rows in batch_slices(n):
        products = mm_t(pixels[rows].reshape(-1, cin), taps).view(-1, h, w, k, k, cout)
        region = out[rows].permute(0, 2, 3, 1)
        for i in range(k):
            for j in range(k):
                region[:, i : i + span_h : stride, j : j + span_w : stride] += products[:, :, :, i, j]
    return out.add_(bias.reshape(1, -1, 1, 1)).to(x.dtype)


def _sum_over_positions(grad: Tensor) -> Tensor:
    """grad.sum((0, 2, 3)); a channels_last gradient is summed as one matrix-vector product, faster on CPU."""
    if not grad.is_contiguous(memory_format=torch.channels_last):
        return grad.sum((0, 2, 3))
    rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
    return grad.new_ones(rows.shape[0]) @ rows


PRODUCTS_MIN_CHANNELS = 128
"""Input channels from which a transposed conv's forward pass pays as products (`forward_by_products`)."""


class ConvTranspose2dBiasBySum(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (no padding) with the bias gradient computed apart from the weight gradient; same
    parameters and maths, with a faster backward on CPU for the decoder's middle layers.

    `forward_by_products` computes the forward pass as matrix products and strided adds instead: for the
    decoder's 192 -> 96 layer (5x5 input) oneDNN's strided transposed-conv kernel runs far below the CPU's matmul
    speed, in float32 and still more in bfloat16, and the products run faster. On larger inputs (the 96 -> 48
    layer) the kernel wins, so the choice is per layer. The products' inner dimension is the input channels, and
    with few of them the k * k strided adds dominate and the kernel wins; PRODUCTS_MIN_CHANNELS is where the
    products took over in the measurements of docs/performance.md.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2, forward_by_products: bool = False
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        self.forward_by_products = forward_by_products

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or not reformulated():
            return super().forward(x, output_size)
        return apply_outside_autocast(
            _ConvTransposeBiasGradBySum, x, self.weight, self.bias, self.stride, self.forward_by_products
        )


class _EluThenTapProducts(torch.autograd.Function):
    """ELU in place, then a 3x3 correlation (padding 2) with few output channels, as matrix products.

    Each input pixel's products with the 9 taps of every output channel come from one GEMM over the input
    channels, and are added into the output at the 9 shifts; the backward gathers the output gradient's 9
    shifted windows and takes the input and weight gradients as two GEMMs. For the decoder's last layer (48
    input channels, 4 output phases) oneDNN's convolution kernels fall back to slow paths on AVX-512 AMD CPUs
    (an AVX2 weight gradient in float32, a plain GEMM-based one in bfloat16), and this form runs faster in both
    (docs/performance.md). Everything runs in batch slices, and the input gradient is written into the ELU's
    saved output, so no temporary is larger than a slice: the layer's input is the decoder's largest activation,
    and a fresh buffer that large, requested at the update's memory peak, found no free block of its size among
    the holes earlier updates left in the heap and grew the RSS.

    x: (N, C, H, W) channels_last pre-activation; weight: (9 * P, C), rows in (row tap, column tap, channel) order.
    Returns the output as (P, N, H + 2, W + 2), and the ELU output.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        out = F.elu(x, inplace=True)
        ctx.mark_dirty(x)
        ctx.save_for_backward(out, weight)
        return _tap_products(out, weight), out

    @staticmethod
    def backward(ctx, grad: Tensor, _out_grad: None):
        out, weight = ctx.saved_tensors
        n, c, h, w = out.shape
        pixels = out.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous
        grad_weight = torch.zeros_like(weight, dtype=sum_dtype(weight.dtype))
        for rows in batch_slices(n):
            windows = torch.stack(
                [grad[:, rows, 2 - i : 2 - i + h, 2 - j : 2 - j + w] for i in range(3) for j in range(3)]
            )
            windows = windows.reshape(weight.shape[0], -1)  # (9 * P, slice * H * W)
            grad_weight += mm_t(windows, pixels[rows].reshape(-1, c).t())
            grad_x = mm_t(windows.t(), weight.t().contiguous()).view(-1, h, w, c)
            torch.ops.aten.elu_backward.grad_input(grad_x, 1.0, 1, 1, True, pixels[rows], grad_input=pixels[rows])
        return out, grad_weight.to(weight.dtype)


def _tap_products(a: Tensor, weight: Tensor) -> Tensor:
    """The forward of _EluThenTapProducts on an activated input `a`: (P, N, H + 2, W + 2)."""
    n, c, h, w = a.shape
    outputs = weight.shape[0] // 9
    pixels = a.permute(0, 2, 3, 1)
    y = a.new_zeros(outputs, n, h + 2, w + 2, dtype=sum_dtype(a.dtype))
    for rows in batch_slices(n):
        products = mm_t(weight, pixels[rows].reshape(-1, c)).view(3, 3, outputs, -1, h, w)
        for i in range(3):
            for j in range(3):
                y[:, rows, 2 - i : 2 - i + h, 2 - j : 2 - j + w] += products[i, j]
    return y.to(a.dtype)


def elu_then_tap_products(x: Tensor, weight: Tensor) -> Tensor:
    """_EluThenTapProducts (autocast-aware, and without saving anything when no gradient is recorded)."""
    x = x.contiguous(memory_format=torch.channels_last)
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _tap_products(F.elu(x, inplace=True), weight.to(x.dtype))
    return apply_outside_autocast(_EluThenTapProducts, x, weight)[0]


class ConvTranspose2dAfterElu(nn.ConvTranspose2d):
    """A stride-2 transposed conv computed as one regular 3x3 correlation producing the four output phases.

    Output pixel 2m + a only receives kernel taps a, a + 2, a + 4, so each of the four (row, column) phases is
    an ordinary correlation of the input with a 3x3 slice of the (zero-padded, flipped) kernel. Same parameters
    and state-dict names as nn.ConvTranspose2d; for the decoder's last layer (48 -> 1 channels) the generic
    transposed-conv kernel handles one output channel poorly, and the correlation runs as matrix products
    (see _EluThenTapProducts). It computes nn.ConvTranspose2d(elu(x)) and overwrites x with elu(x): the ELU of its
    input is its own, so that the backward of both runs in batch slices.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2):
        if stride != 2 or kernel_size > 6:
            raise ValueError("ConvTranspose2dAfterElu supports stride 2 and kernels up to 6")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or not reformulated():
            return super().forward(F.elu(x), output_size)
        cin, cout, k, _ = self.weight.shape
        n, _, h, w = x.shape
        taps = F.pad(self.weight, (0, 6 - k, 0, 6 - k)).reshape(cin, cout, 3, 2, 3, 2)
        # (row tap, column tap, row phase, column phase, out channel) x in channel
        weight = taps.flip(2, 4).permute(2, 4, 3, 5, 1, 0).reshape(9 * 4 * cout, cin)
        y = elu_then_tap_products(x, weight)  # (row phase, column phase, out channel) x (N, h + 2, w + 2)
        y = y.reshape(2, 2, cout, n, h + 2, w + 2).permute(3, 2, 4, 0, 5, 1).reshape(n, cout, 2 * h + 4, 2 * w + 4)
        size_h, size_w = 2 * h + k - 2, 2 * w + k - 2
        y = y[:, :, :size_h, :size_w]
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
