"""Convolutions computed by faster formulations of nn.Conv2d's maths, and an ELU that saves memory.

Each layer keeps the parameters and state-dict names of nn.Conv2d, and a float64 test compares outputs and
gradients with it. The formulations were chosen by measurement on 2-core AVX-512 CPUs at the paper's batch
(docs/performance.md); the code is device-agnostic. Transposed convolutions are in `deconv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers.linear import linear, mm_t, weight_layout
from dreamctl.layers.switch import reformulated


class _EluInPlace(torch.autograd.Function):
    """ELU that overwrites its input in the forward pass and its saved output in the backward pass.

    ELU's derivative is a function of its output (1 above zero, output + 1 below), and once the gradient
    reaches this node every consumer of the output has run its own backward, so the output's buffer can
    receive the input gradient. That saves one activation-sized allocation per layer in the backward pass
    (docs/performance.md has the sizes). The graph can be backpropagated only once: a second pass would find the
    saved output modified and raise.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = F.elu(x, inplace=True)
        ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward.grad_input(grad, 1.0, 1, 1, True, out, grad_input=out)


def channels_last_elu(x: Tensor) -> Tensor:
    """ELU on a channels_last activation: oneDNN's strided convs run faster on that layout on CPU than on NCHW."""
    x = x.contiguous(memory_format=torch.channels_last)
    if torch.is_grad_enabled() and x.requires_grad:
        return _EluInPlace.apply(x)
    return F.elu(x, inplace=True)  # the pre-activation is not needed


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts products to on this device type now, or None (also on devices without autocast,
    such as `meta`, where the tests run the update to prove it never reads a value back to the host)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def apply_outside_autocast(function: type[torch.autograd.Function], *args):
    """function.apply(*args) with its tensors cast as autocast would cast a layer's inputs, and autocast off inside,
    so that the function's own products run in one dtype and its backward receives gradients of that dtype."""
    device_type = next(a for a in args if isinstance(a, Tensor)).device.type
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return function.apply(*args)
    args = tuple(a.to(dtype) if isinstance(a, Tensor) else a for a in args)
    with torch.autocast(device_type, enabled=False):
        return function.apply(*args)


BACKWARD_SLICES = 8
"""Batch slices in which the layers after the two largest activations make their input gradients."""


def sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype partial products are summed in: float32 for bfloat16 and float16, which would round at every add
    (a library's convolution sums in float32 and rounds once), else their own."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def batch_slices(n: int) -> list[slice]:
    """At most BACKWARD_SLICES equal slices covering range(n), the last one possibly shorter."""
    step = -(-n // BACKWARD_SLICES)
    return [slice(start, start + step) for start in range(0, n, step)]


class Conv2dSpaceToDepth(nn.Conv2d):
    """A stride-2, kernel-4 conv computed as a stride-1, kernel-2 conv over 2x2 pixel blocks.

    Same parameters (and state-dict names) as nn.Conv2d. The encoder's first layer sees 1 or 3 input
    channels, which oneDNN's strided conv handles poorly on CPU; regrouping each 2x2 block of pixels into
    4C channels gives the same sums in a layout it runs faster, forward and backward (docs/performance.md).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 4, stride: int = 2):
        if (kernel_size, stride) != (4, 2):
            raise ValueError("Conv2dSpaceToDepth supports kernel 4 with stride 2")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def blocks(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, 4C, H/2, W/2), channels_last, channels in (c, row in block, column in block) order:
        pixel_unshuffle's order. It and a layout copy are faster than one 6-d permuted copy at acting's batch sizes."""
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # a valid conv never reads an odd last row
        return F.pixel_unshuffle(x, 2).contiguous(memory_format=torch.channels_last)

    def block_weight(self) -> Tensor:
        """The weight as a kernel-2 conv over `blocks`."""
        o, c = self.out_channels, self.in_channels
        return weight_layout(
            self,
            "blocks",
            self.weight,
            lambda w: (
                w.reshape(o, c, 2, 2, 2, 2)
                .permute(0, 1, 3, 5, 2, 4)
                .reshape(o, 4 * c, 2, 2)
                .contiguous(memory_format=torch.channels_last)
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        if not reformulated():
            return super().forward(x)
        return F.conv2d(self.blocks(x), self.block_weight(), self.bias)


class Conv2dChannelsLast(nn.Conv2d):
    """nn.Conv2d that reads a channels_last copy of its weight while no gradient is recorded (acting, evaluation,
    the `imagine` command), kept until the weight changes.

    Given an NCHW weight and a channels_last input, oneDNN reorders the weight at every call. At the batch sizes of
    acting that reorder is a large share of the layer. In training, at batch 800, a kept channels_last weight
    gained nothing, so training reads the weight as it is (docs/performance.md has the timings).
    """

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or not reformulated():
            return super().forward(x)
        weight = weight_layout(
            self, "channels_last", self.weight, lambda w: w.contiguous(memory_format=torch.channels_last)
        )
        return self._conv_forward(x, weight, self.bias)


def _activated_stem(blocks: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.elu(F.conv2d(blocks, weight, bias).contiguous(memory_format=torch.channels_last), inplace=True)


class _ConvOfRecomputedStem(torch.autograd.Function):
    """conv(elu(stem(blocks))) that keeps only `blocks` for the backward pass and computes the stem again there.

    The encoder's first activation is its largest (31x31x48 per image) and would be held from the forward pass
    through the update's memory peak, at the start of the decoder's backward. The first conv reads only 16
    inputs per output, so computing it and its ELU again costs a small fraction of an update, while the peak
    memory falls by the activation's size (docs/performance.md). The backward writes the activation's gradient
    into the recomputed activation, in batch slices, so it allocates no second copy.
    """

    @staticmethod
    def forward(
        ctx,
        blocks: Tensor,
        stem_weight: Tensor,
        stem_bias: Tensor | None,
        weight: Tensor,
        bias: Tensor | None,
        stride: int,
    ) -> Tensor:
        ctx.save_for_backward(blocks, stem_weight, stem_bias, weight)
        ctx.stride, ctx.bias_sizes = stride, None if bias is None else [bias.shape[0]]
        return F.conv2d(_activated_stem(blocks, stem_weight, stem_bias), weight, bias, stride)

    @staticmethod
    def backward(ctx, grad: Tensor):
        blocks, stem_weight, stem_bias, weight = ctx.saved_tensors
        need_stem_weight, need_stem_bias, need_weight, need_bias = ctx.needs_input_grad[1:5]
        act = _activated_stem(blocks, stem_weight, stem_bias)
        conv = (ctx.bias_sizes, [ctx.stride] * 2, [0, 0], [1, 1], False, [0, 0], 1)
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, act, weight, *conv, [False, need_weight, need_bias]
        )
        grad_stem_weight = grad_stem_bias = None
        if need_stem_weight or need_stem_bias:
            for rows in batch_slices(act.shape[0]):
                grad_act = torch.ops.aten.convolution_backward(
                    grad[rows], act[rows], weight, *conv, [True, False, False]
                )[0]
                torch.ops.aten.elu_backward.grad_input(grad_act, 1.0, 1, 1, True, act[rows], grad_input=act[rows])
            _, grad_stem_weight, grad_stem_bias = torch.ops.aten.convolution_backward(
                act,
                blocks,
                stem_weight,
                None if stem_bias is None else [stem_bias.shape[0]],
                [1, 1],
                [0, 0],
                [1, 1],
                False,
                [0, 0],
                1,
                [False, need_stem_weight, need_stem_bias],
            )
        return None, grad_stem_weight, grad_stem_bias, grad_weight, grad_bias, None


def conv_of_recomputed_stem(x: Tensor, stem: Conv2dSpaceToDepth, conv: nn.Conv2d) -> Tensor:
    """conv(elu(stem(x))) for training: the same maths, holding only the image until the backward pass.

    `conv` must be unpadded; autocast is applied here as it would be to the two convs."""
    return apply_outside_autocast(
        _ConvOfRecomputedStem, stem.blocks(x), stem.block_weight(), stem.bias, conv.weight, conv.bias, conv.stride[0]
    )


def _windows(x: Tensor, k: int, stride: int, out_h: int, out_w: int) -> Tensor:
    """The k x k windows of a valid strided conv: (N, H, W, C) -> (N, out_h * out_w, k, k, C)."""
    return torch.stack(
        [x[:, i * stride : i * stride + k, j * stride : j * stride + k] for i in range(out_h) for j in range(out_w)], 1
    )


def _fold_windows(grad: Tensor, x_shape: torch.Size, k: int, stride: int, out_h: int, out_w: int) -> Tensor:
    """The gradient of `_windows` with respect to x: each window's gradient added into one (N, H, W, C) buffer
    (autograd would give each window its own zero-filled input-sized tensor and add them up)."""
    grad_x = grad.new_zeros(x_shape, dtype=sum_dtype(grad.dtype))
    for p in range(out_h * out_w):
        i, j = divmod(p, out_w)
        grad_x[:, i * stride : i * stride + k, j * stride : j * stride + k] += grad[:, p]
    return grad_x.to(grad.dtype)


class _PatchProduct(torch.autograd.Function):
    """y = windows(x) @ W.T + b, saving x rather than its windows.

    The encoder's last layer has overlapping windows (kernel 4, stride 2 on a 6x6 input), so its four 4x4
    patches take nearly twice the memory of its input, held until the backward pass, where the update's memory
    use peaks. Its input is the preceding ELU's output, which that ELU saves anyway, so the backward makes the
    windows again (a cheap copy) instead.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        geometry: tuple[int, int, int, int],
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        return linear(_windows(x, *geometry).reshape(-1, weight.shape[1]), weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if need_x:
            k = ctx.geometry[0]
            grad_patches = mm_t(grad, weight.t()).view(x.shape[0], -1, k, k, x.shape[-1])
            grad_x = _fold_windows(grad_patches, x.shape, *ctx.geometry)
        if need_weight:
            patches = _windows(x, *ctx.geometry).reshape(-1, weight.shape[1])
            grad_weight = mm_t(grad.t(), patches.t())
        if need_bias:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias, None


class Conv2dByPatches(nn.Conv2d):
    """A conv with few output positions, computed as one matrix product over its input patches.

    Same parameters as nn.Conv2d (no padding, no dilation). The encoder's last layer has 2x2 outputs, so
    this is a single GEMM of (4N x k*k*C) by (k*k*C x out), which CPUs run faster than the conv kernel, whose
    tiling suits large outputs (docs/performance.md).
    Patches are read from the channels_last input in (row, column, channel) order, so each patch row is
    one contiguous run of memory.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not reformulated():
            return super().forward(x)
        k, stride = self.kernel_size[0], self.stride[0]
        geometry = (k, stride, (x.shape[-2] - k) // stride + 1, (x.shape[-1] - k) // stride + 1)
        pixels = x.permute(0, 2, 3, 1)
        weight = weight_layout(self, "patches", self.weight, lambda w: w.permute(0, 2, 3, 1).reshape(w.shape[0], -1))
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, self.bias)):
            y = apply_outside_autocast(_PatchProduct, pixels, weight, self.bias, geometry)
        else:
            y = linear(_windows(pixels, *geometry).reshape(-1, weight.shape[1]), weight, self.bias)
        return y.reshape(x.shape[0], geometry[2], geometry[3], self.out_channels).permute(0, 3, 1, 2)
