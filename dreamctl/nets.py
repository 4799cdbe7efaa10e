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

from dreamctl.conv_layers import (ActingConv2d, PatchConv2d, SpaceToDepthConv2d, channels_last_act,
                                  conv_of_recomputed_stem)
from dreamctl.deconv_layers import (PRODUCTS_MIN_CHANNELS, BiasSumConvTranspose2d, ConvTranspose1x1,
                                     SubpixelConvTranspose2d)
from dreamctl.linear import Linear


FAST_LAYERS = (SpaceToDepthConv2d, PatchConv2d, ConvTranspose1x1, BiasSumConvTranspose2d, SubpixelConvTranspose2d)
"""Layers computed by a faster formulation of their torch base class's maths (benchmarks count FLOPs by the base);
those with `elu_input` apply the ELU to their input first."""


def init_keras_(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases, the initialisation the paper's Keras layers used."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class Encoder(nn.Module):
    """Four stride-2 valid convs (kernel 4): 64x64 -> 2x2 x (8 * depth) channels, flattened.

    In training the first activation is not kept for the backward pass but computed again there
    (`conv_of_recomputed_stem`); `recompute_stem = False` runs the layers one by one (the benchmarks count
    FLOPs that way).
    """

    recompute_stem = True

    def __init__(self, in_channels: int, depth: int):
        super().__init__()
        channels = [in_channels, depth, 2 * depth, 4 * depth, 8 * depth]
        self.convs = nn.ModuleList([SpaceToDepthConv2d(channels[0], channels[1], 4, stride=2),
                                    ActingConv2d(channels[1], channels[2], 4, stride=2),
                                    ActingConv2d(channels[2], channels[3], 4, stride=2),
                                    PatchConv2d(channels[3], channels[4], 4, stride=2)])
        self.out_dim = 8 * depth * 2 * 2
        init_keras_(self)

    def forward(self, image: Tensor) -> Tensor:
        """image: (..., C, 64, 64) float in [-0.5, 0.5] -> (..., out_dim)."""
        batch = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).contiguous(memory_format=torch.channels_last)
        convs = list(self.convs)
        if self.recompute_stem and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            x = channels_last_act(conv_of_recomputed_stem(x, convs[0], convs[1]))
            convs = convs[2:]
        for conv in convs:
            x = channels_last_act(conv(x))
        return x.reshape(*batch, self.out_dim)


class Decoder(nn.Module):
    """Linear to a 1x1 x (32 * depth) map, then transposed convs (kernels 5, 5, 6, 6): 1 -> 5 -> 13 -> 30 -> 64.

    Returns the mean image; the likelihood is a unit-variance Normal summed over pixels. The first and last
    layers are computed by faster but mathematically identical formulations (tests compare them).
    """

    def __init__(self, feat_dim: int, depth: int, out_channels: int):
        super().__init__()
        self.linear = Linear(feat_dim, 32 * depth)
        channels = [32 * depth, 4 * depth, 2 * depth, depth, out_channels]
        kernels = [5, 5, 6, 6]
        self.deconvs = nn.ModuleList([ConvTranspose1x1(channels[0], channels[1], kernels[0], stride=2)])
        self.deconvs.extend(
            BiasSumConvTranspose2d(channels[i], channels[i + 1], kernels[i], stride=2,
                                   forward_by_products=i == 1 and channels[i] >= PRODUCTS_MIN_CHANNELS)
            for i in range(1, 3)
        )
        self.deconvs.append(SubpixelConvTranspose2d(channels[3], channels[4], kernels[3], stride=2))
        init_keras_(self)

    def forward(self, feat: Tensor) -> Tensor:
        """feat: (..., feat_dim) -> mean image (..., C, 64, 64)."""
        batch = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        x = x.reshape(x.shape[0], -1, 1, 1)
        for deconv, next_deconv in zip(self.deconvs, [*self.deconvs[1:], None]):
            x = deconv(x)
            if next_deconv is not None and not getattr(next_deconv, "elu_input", False):
                x = channels_last_act(x)
        return x.reshape(*batch, *x.shape[1:])


class MLP(nn.Module):
    """`layers` hidden Linear+ELU layers of `units`, then a linear output (no norm, as in the paper)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int):
        super().__init__()
        dims = [in_dim] + [units] * layers
        body: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [Linear(a, b), nn.ELU()]
        self.body = nn.Sequential(*body)
        self.out = Linear(dims[-1], out_dim)
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
        self.linear = Linear(in_dim + size, 3 * size)
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
