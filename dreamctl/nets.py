"""The networks' building blocks: conv encoder and decoder, MLPs, the layer-norm GRU, and distributions.

Shapes and activations follow DreamerV2's released code (SPEC.md §1): valid-padded convs with ELU, Keras'
Glorot-uniform weights and zero biases, LayerNorm eps 1e-3. Distributions compute in float32 even under
autocast, because log-probabilities, entropies and KLs lose too much in bfloat16.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_keras_(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases, the initialisation the paper's Keras layers used."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class _EluInPlace(torch.autograd.Function):
    """ELU that overwrites its input in the forward pass and its saved output in the backward pass.

    ELU's derivative is a function of its output (1 above zero, output + 1 below), and once the gradient
    reaches this node every consumer of the output has run its own backward, so the output's buffer can
    receive the input gradient. That saves one activation-sized allocation per layer at the backward's
    memory peak (138 MB for the decoder's 30x30 layer at the paper batch). The graph can be backpropagated
    only once: a second pass would find the saved output modified and raise.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        out = F.elu(x, inplace=True)
        ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward.grad_input(grad, 1.0, 1, 1, True, out, grad_input=out)


def channels_last_act(x: Tensor) -> Tensor:
    """ELU on a channels_last activation: oneDNN's strided convs run 1.3-1.6x faster on that layout on CPU."""
    x = x.contiguous(memory_format=torch.channels_last)
    if torch.is_grad_enabled() and x.requires_grad:
        return _EluInPlace.apply(x)
    return F.elu(x, inplace=True)  # the pre-activation is not needed


class SpaceToDepthConv2d(nn.Conv2d):
    """A stride-2, kernel-4 conv computed as a stride-1, kernel-2 conv over 2x2 pixel blocks.

    Same parameters (and state-dict names) as nn.Conv2d. The encoder's first layer sees 1 or 3 input
    channels, which oneDNN's strided conv handles poorly on CPU; regrouping each 2x2 block of pixels into
    4C channels gives the same sums in a layout it runs about 1.4x faster (forward and backward).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 4, stride: int = 2):
        if (kernel_size, stride) != (4, 2):
            raise ValueError("SpaceToDepthConv2d supports kernel 4 with stride 2")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # a valid conv never reads an odd last row
        n, c, h, w = x.shape
        blocks = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
        blocks = blocks.reshape(n, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)  # channels_last, channel (c, i, j)
        o = self.out_channels
        weight = self.weight.reshape(o, c, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(o, 4 * c, 2, 2)
        return F.conv2d(blocks, weight, self.bias)


class _Patches(torch.autograd.Function):
    """The k x k windows of a valid strided conv: (N, H, W, C) -> (N, out_h * out_w, k, k, C).

    Autograd would give each window's gradient as its own zero-filled input-sized tensor and add them up;
    this backward adds the windows' gradients into one buffer, in the input's channels_last layout.
    """

    @staticmethod
    def forward(ctx, x: Tensor, k: int, stride: int, out_h: int, out_w: int) -> Tensor:  # type: ignore[override]
        ctx.x_shape, ctx.geometry = x.shape, (k, stride, out_h, out_w)
        return torch.stack([x[:, i * stride:i * stride + k, j * stride:j * stride + k]
                            for i in range(out_h) for j in range(out_w)], 1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        k, stride, out_h, out_w = ctx.geometry
        grad_x = grad.new_zeros(ctx.x_shape)
        for p in range(out_h * out_w):
            i, j = divmod(p, out_w)
            grad_x[:, i * stride:i * stride + k, j * stride:j * stride + k] += grad[:, p]
        return grad_x, None, None, None, None


class PatchConv2d(nn.Conv2d):
    """A conv with few output positions, computed as one matrix product over its input patches.

    Same parameters as nn.Conv2d (no padding, no dilation). The encoder's last layer has 2x2 outputs, so
    this is a single GEMM of (4N x k*k*C) by (k*k*C x out): about 2x faster on CPU than the conv kernel.
    Patches are read from the channels_last input in (row, column, channel) order, so each patch row is
    one contiguous run of memory.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        k, stride = self.kernel_size[0], self.stride[0]
        out_h, out_w = (x.shape[-2] - k) // stride + 1, (x.shape[-1] - k) // stride + 1
        patches = _Patches.apply(x.permute(0, 2, 3, 1), k, stride, out_h, out_w)
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
        y = patches.reshape(-1, weight.shape[1]) @ weight.t() + self.bias
        return y.reshape(x.shape[0], out_h, out_w, self.out_channels).permute(0, 3, 1, 2)


class Encoder(nn.Module):
    """Four stride-2 valid convs (kernel 4): 64x64 -> 2x2 x (8 * depth) channels, flattened."""

    def __init__(self, in_channels: int, depth: int):
        super().__init__()
        channels = [in_channels, depth, 2 * depth, 4 * depth, 8 * depth]
        self.convs = nn.ModuleList([SpaceToDepthConv2d(channels[0], channels[1], 4, stride=2)])
        self.convs.extend(nn.Conv2d(a, b, 4, stride=2) for a, b in zip(channels[1:-2], channels[2:-1]))
        self.convs.append(PatchConv2d(channels[-2], channels[-1], 4, stride=2))
        self.out_dim = 8 * depth * 2 * 2
        init_keras_(self)

    def forward(self, image: Tensor) -> Tensor:
        """image: (..., C, 64, 64) float in [-0.5, 0.5] -> (..., out_dim)."""
        batch = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            x = channels_last_act(conv(x))
        return x.reshape(*batch, self.out_dim)


class ConvTranspose1x1(nn.ConvTranspose2d):
    """A transposed conv applied to a 1x1 input, computed as the matrix product it is.

    Same parameters (and state-dict names) as nn.ConvTranspose2d; on CPU the matmul is ~5x faster than
    the generic transposed-conv kernel for the decoder's first layer.
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if x.shape[-2:] != (1, 1):
            return super().forward(x)
        cin, cout, kh, kw = self.weight.shape
        out = x.reshape(-1, cin) @ self.weight.reshape(cin, cout * kh * kw)
        out = out + self.bias.repeat_interleave(kh * kw)
        return out.reshape(-1, cout, kh, kw)


class _ConvTransposeBiasGradBySum(torch.autograd.Function):
    """A transposed conv (no padding) whose backward takes the bias gradient as a sum over the output gradient.

    oneDNN folds the bias gradient into its weight-gradient kernel for transposed convs, and on CPU that adds
    about half the kernel's time (77 ms of 240 for the decoder's 96 -> 48 layer at the paper batch); a separate
    sum over the output gradient costs 4 ms.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: tuple[int, int]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return F.conv_transpose2d(x, weight, bias, stride=stride)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, ctx.stride, [0, 0], [1, 1], True, [0, 0], 1, [need_x, need_weight, False])
        grad_bias = _sum_over_positions(grad) if need_bias else None
        return grad_x, grad_weight, grad_bias, None


def _sum_over_positions(grad: Tensor) -> Tensor:
    """grad.sum((0, 2, 3)); a channels_last gradient is summed as one matrix-vector product, ~3x faster on CPU."""
    if not grad.is_contiguous(memory_format=torch.channels_last):
        return grad.sum((0, 2, 3))
    rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
    return grad.new_ones(rows.shape[0]) @ rows


class BiasSumConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (no padding) with the bias gradient computed apart from the weight gradient; same
    parameters and maths, about 1.3x faster backward on CPU for the decoder's middle layers."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        weight, bias = self.weight, self.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return _ConvTransposeBiasGradBySum.apply(x, weight, bias, self.stride)


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    """A stride-2 transposed conv computed as one regular 3x3 conv producing the four output phases.

    Output pixel 2m + a only receives kernel taps a, a + 2, a + 4, so each of the four (row, column) phases is
    an ordinary correlation of the input with a 3x3 slice of the (zero-padded, flipped) kernel. Same parameters
    and state-dict names as nn.ConvTranspose2d; on CPU the decoder's last layer (48 -> 1 channels) runs about
    2x faster this way, because the generic transposed-conv kernel handles one output channel poorly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2):
        if stride != 2 or kernel_size > 6:
            raise ValueError("SubpixelConvTranspose2d supports stride 2 and kernels up to 6")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        cin, cout, k, _ = self.weight.shape
        n, _, h, w = x.shape
        taps = F.pad(self.weight, (0, 6 - k, 0, 6 - k)).reshape(cin, cout, 3, 2, 3, 2)
        phase_weight = taps.permute(3, 5, 1, 0, 2, 4).flip(-1, -2).reshape(4 * cout, cin, 3, 3)
        y = F.conv2d(x, phase_weight, None, padding=2)
        y = y.reshape(n, 2, 2, cout, h + 2, w + 2).permute(0, 3, 4, 1, 5, 2).reshape(n, cout, 2 * h + 4, 2 * w + 4)
        size_h, size_w = 2 * h + k - 2, 2 * w + k - 2
        return y[:, :, :size_h, :size_w] + self.bias.reshape(1, -1, 1, 1)


class Decoder(nn.Module):
    """Linear to a 1x1 x (32 * depth) map, then transposed convs (kernels 5, 5, 6, 6): 1 -> 5 -> 13 -> 30 -> 64.

    Returns the mean image; the likelihood is a unit-variance Normal summed over pixels. The first and last
    layers are computed by faster but mathematically identical formulations (tests compare them).
    """

    def __init__(self, feat_dim: int, depth: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(feat_dim, 32 * depth)
        channels = [32 * depth, 4 * depth, 2 * depth, depth, out_channels]
        kernels = [5, 5, 6, 6]
        self.deconvs = nn.ModuleList([ConvTranspose1x1(channels[0], channels[1], kernels[0], stride=2)])
        self.deconvs.extend(
            BiasSumConvTranspose2d(channels[i], channels[i + 1], kernels[i], stride=2) for i in range(1, 3)
        )
        self.deconvs.append(SubpixelConvTranspose2d(channels[3], channels[4], kernels[3], stride=2))
        init_keras_(self)

    def forward(self, feat: Tensor) -> Tensor:
        """feat: (..., feat_dim) -> mean image (..., C, 64, 64)."""
        batch = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        x = x.reshape(x.shape[0], -1, 1, 1)
        for i, deconv in enumerate(self.deconvs):
            x = deconv(x)
            if i < len(self.deconvs) - 1:
                x = channels_last_act(x)
        return x.reshape(*batch, *x.shape[1:])


FAST_LAYERS = (SpaceToDepthConv2d, PatchConv2d, ConvTranspose1x1, BiasSumConvTranspose2d, SubpixelConvTranspose2d)
"""Layers computed by a faster formulation of their torch base class's maths (benchmarks count FLOPs by the base)."""


class MLP(nn.Module):
    """`layers` hidden Linear+ELU layers of `units`, then a linear output (no norm, as in the paper)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int):
        super().__init__()
        dims = [in_dim] + [units] * layers
        body: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.ELU()]
        self.body = nn.Sequential(*body)
        self.out = nn.Linear(dims[-1], out_dim)
        init_keras_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU: one fused Linear, LayerNorm over all gates, update-gate bias -1.

    Gate order is reset, candidate, update and the reset gate scales the candidate's pre-activation;
    this is not torch.nn.GRUCell, whose maths differ.
    """

    def __init__(self, in_dim: int, size: int, eps: float = 1e-3):
        super().__init__()
        self.size = size
        self.linear = nn.Linear(in_dim + size, 3 * size)
        self.norm = nn.LayerNorm(3 * size, eps=eps)
        init_keras_(self)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return self.gates(self.linear(torch.cat([x, h], -1)), h)

    def gates(self, parts: Tensor, h: Tensor) -> Tensor:
        """The cell after its Linear: h' from the gates' pre-activations `parts` and h."""
        parts = F.layer_norm(parts.float(), (3 * self.size,), self.norm.weight, self.norm.bias, self.norm.eps)
        reset, cand, update = parts.split(self.size, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return (update * cand + (1.0 - update) * h.float()).to(h.dtype)


class OneHotDist:
    """Categorical over the last axis whose samples are one-hot with straight-through gradients.

    sample = onehot + (p - sg(p)): the forward value is exactly one-hot, the backward pass sees softmax(logits).
    Sampling inverts the CDF with one uniform number per variable (Gumbel-max would need one per class, and
    at the paper's imagination size that random generation alone costs more than the RSSM's matmuls).
    """

    def __init__(self, logits: Tensor):
        self.logits = logits.float()

    @functools.cached_property
    def log_probs(self) -> Tensor:
        return self.logits.log_softmax(-1)

    @functools.cached_property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    def sample(self) -> Tensor:
        cdf = self.probs.detach().cumsum(-1)
        u = torch.rand_like(cdf[..., :1]) * cdf[..., -1:]
        index = torch.searchsorted(cdf, u, right=True).clamp_max(cdf.shape[-1] - 1)
        return self._straight_through(index)

    def mode(self) -> Tensor:
        return self._straight_through(self.logits.argmax(-1, keepdim=True))

    def log_prob(self, value: Tensor) -> Tensor:
        return (value * self.log_probs).sum(-1)

    def entropy(self) -> Tensor:
        return -(self.probs * self.log_probs).sum(-1)

    def _straight_through(self, index: Tensor) -> Tensor:
        one_hot = torch.zeros_like(self.logits).scatter_(-1, index, 1.0)
        if not self.logits.requires_grad:
            return one_hot  # the straight-through term is exactly zero and nothing would read its gradient
        return one_hot + (self.probs - self.probs.detach())


class TruncNormalDist:
    """Normal(mean, std) truncated to [-1, 1], factorised over the last axis (TFP's TruncatedNormal).

    Samples are reparameterised through the inverse CDF, so gradients reach mean and std (rho < 1), and are
    clipped 1e-6 inside the bounds with a straight-through gradient, as DreamerV2's TruncNormalDist does.
    """

    clip = 1e-6

    def __init__(self, mean: Tensor, std: Tensor, low: float = -1.0, high: float = 1.0):
        self.mean, self.std = mean.float(), std.float()
        self.low, self.high = low, high
        self.alpha = (low - self.mean) / self.std
        self.beta = (high - self.mean) / self.std
        self.cdf_alpha = torch.special.ndtr(self.alpha)
        self.mass = (torch.special.ndtr(self.beta) - self.cdf_alpha).clamp_min(1e-12)

    def sample(self) -> Tensor:
        u = torch.rand_like(self.mean)
        p = (self.cdf_alpha + u * self.mass).clamp(1e-7, 1 - 1e-7)
        x = self.mean + self.std * torch.special.ndtri(p)
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    def mode(self) -> Tensor:
        return self.mean.clamp(self.low + self.clip, self.high - self.clip)

    def log_prob(self, value: Tensor) -> Tensor:
        z = (value.float() - self.mean) / self.std
        log_pdf = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - self.std.log() - self.mass.log()
        return log_pdf.sum(-1)

    def entropy(self) -> Tensor:
        pdf_a = torch.exp(-0.5 * self.alpha**2) / math.sqrt(2 * math.pi)
        pdf_b = torch.exp(-0.5 * self.beta**2) / math.sqrt(2 * math.pi)
        ent = (0.5 * math.log(2 * math.pi * math.e) + self.std.log() + self.mass.log()
               + (self.alpha * pdf_a - self.beta * pdf_b) / (2 * self.mass))
        return ent.sum(-1)


class ActionHead(nn.Module):
    """Actor MLP with a one-hot categorical (discrete) or truncated-normal (continuous) output."""

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, layers: int, units: int):
        super().__init__()
        self.discrete = discrete
        self.net = MLP(feat_dim, action_dim if discrete else 2 * action_dim, layers, units)

    def forward(self, feat: Tensor) -> OneHotDist | TruncNormalDist:
        return self.dist(self.net(feat).float())

    def dist(self, out: Tensor) -> OneHotDist | TruncNormalDist:
        """The action distribution from the network's raw output (logits, or raw mean and std)."""
        if self.discrete:
            return OneHotDist(out)
        raw_mean, raw_std = out.chunk(2, -1)
        return TruncNormalDist(torch.tanh(raw_mean), 2 * torch.sigmoid(raw_std / 2) + 0.1)
