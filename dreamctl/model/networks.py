"""DreamerV2's networks: the conv encoder and decoder, MLPs, the layer-norm GRU and the action head.

Shapes and activations follow DreamerV2's released code (`dreamerv2/common/nets.py`; docs/architecture.md):
valid-padded convs with ELU, Keras' Glorot-uniform weights and zero biases, LayerNorm eps 1e-3. The layers are
`dreamctl.layers`' formulations of nn.Conv2d, nn.ConvTranspose2d and nn.Linear, which compute the same maths.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers import (
    Conv2dByPatches,
    Conv2dChannelsLast,
    Conv2dSpaceToDepth,
    ConvTranspose2dAfterElu,
    ConvTranspose2dBiasBySum,
    ConvTranspose2dOn1x1,
    Linear,
    reformulated,
)
from dreamctl.layers.conv import autocast_dtype, channels_last_elu, conv_of_recomputed_stem
from dreamctl.layers.deconv import PRODUCTS_MIN_CHANNELS
from dreamctl.layers.one_hot import Feature
from dreamctl.model.distributions import OneHotDist, TruncNormalDist, at_least_float32


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
    (`conv_of_recomputed_stem`), unless the layers run as plain torch layers (`dreamctl.layers.plain_layers`).
    """

    def __init__(self, in_channels: int, depth: int):
        super().__init__()
        channels = [in_channels, depth, 2 * depth, 4 * depth, 8 * depth]
        self.convs = nn.ModuleList(
            [
                Conv2dSpaceToDepth(channels[0], channels[1], 4, stride=2),
                Conv2dChannelsLast(channels[1], channels[2], 4, stride=2),
                Conv2dChannelsLast(channels[2], channels[3], 4, stride=2),
                Conv2dByPatches(channels[3], channels[4], 4, stride=2),
            ]
        )
        self.out_dim = 8 * depth * 2 * 2
        init_keras_(self)

    def forward(self, image: Tensor) -> Tensor:
        """image: (..., C, 64, 64) float in [-0.5, 0.5] -> (..., out_dim)."""
        batch = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).contiguous(memory_format=torch.channels_last)
        convs: list[nn.Module] = list(self.convs)
        if reformulated() and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            stem, second = self.convs[0], self.convs[1]
            assert isinstance(stem, Conv2dSpaceToDepth) and isinstance(second, nn.Conv2d)
            x = channels_last_elu(conv_of_recomputed_stem(x, stem, second))  # = elu(conv1(elu(conv0(x))))
            convs = convs[2:]
        for conv in convs:
            x = channels_last_elu(conv(x))
        return x.reshape(*batch, self.out_dim)


class Decoder(nn.Module):
    """Linear to a 1x1 x (32 * depth) map, then transposed convs (kernels 5, 5, 6, 6): 1 -> 5 -> 13 -> 30 -> 64.

    Returns the mean image; the likelihood is a unit-variance Normal summed over pixels. ELU follows every
    transposed conv but the last; the last layer applies the ELU before it to its own input.
    """

    def __init__(self, feat_dim: int, depth: int, out_channels: int):
        super().__init__()
        self.linear = Linear(feat_dim, 32 * depth)
        channels = [32 * depth, 4 * depth, 2 * depth, depth, out_channels]
        kernels = [5, 5, 6, 6]
        self.deconvs = nn.ModuleList([ConvTranspose2dOn1x1(channels[0], channels[1], kernels[0], stride=2)])
        self.deconvs.extend(
            ConvTranspose2dBiasBySum(
                channels[i],
                channels[i + 1],
                kernels[i],
                stride=2,
                forward_by_products=i == 1 and channels[i] >= PRODUCTS_MIN_CHANNELS,
            )
            for i in range(1, 3)
        )
        self.deconvs.append(ConvTranspose2dAfterElu(channels[3], channels[4], kernels[3], stride=2))
        init_keras_(self)

    def forward(self, feat: Tensor) -> Tensor:
        """feat: (..., feat_dim) -> mean image (..., C, 64, 64)."""
        batch = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        x = x.reshape(x.shape[0], -1, 1, 1)
        first, second, third, last = self.deconvs
        x = channels_last_elu(first(x))
        x = channels_last_elu(second(x))
        x = last(third(x))  # last = ConvTranspose2dAfterElu: conv_transpose(elu(x))
        return x.reshape(*batch, *x.shape[1:])


def elu_layers(in_dim: int, layers: int, units: int) -> nn.Sequential:
    """`layers` Linear+ELU layers of `units` (no norm, as in the paper); as many as there are, the MLPs' body."""
    dims = [in_dim] + [units] * layers
    return nn.Sequential(*[m for a, b in itertools.pairwise(dims) for m in (Linear(a, b), nn.ELU())])


class MLP(nn.Module):
    """`layers` hidden Linear+ELU layers of `units`, then a linear output (no norm, as in the paper).

    The output layer computes in float32 even under autocast: what it gives (values, rewards, discount and action
    logits) would keep only bfloat16's 8 significant bits otherwise, a value near 100 in steps of 0.5. The paper's
    mixed precision computes that layer in float16 (11 bits, 8 times finer) and casts its output to float32.
    """

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int):
        super().__init__()
        self.body = elu_layers(in_dim, layers, units)
        self.out = Linear(units if layers else in_dim, out_dim)
        init_keras_(self)

    def forward(self, x: Feature) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim), the output layer in float32 under autocast."""
        hidden = self.body(x)
        if isinstance(hidden, Tensor) and autocast_dtype(hidden.device.type) is not None:
            with torch.autocast(hidden.device.type, enabled=False):
                return self.out(hidden.float())
        return self.out(hidden)


class VectorEncoder(nn.Module):
    """DreamerV2's MLP encoder: the vector observations, concatenated, through `layers` Linear+ELU of `units`; the
    last hidden layer is the embedding (no output layer)."""

    def __init__(self, in_dim: int, layers: int, units: int):
        super().__init__()
        self.body = elu_layers(in_dim, layers, units)
        self.out_dim = units if layers else in_dim
        init_keras_(self)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return self.body(x)


class VectorDecoder(nn.Module):
    """DreamerV2's MLP decoder: `layers` Linear+ELU of `units` from the feature, then one linear output per vector
    key, the mean of a unit-variance Normal over that key."""

    def __init__(self, feat_dim: int, sizes: Mapping[str, int], layers: int, units: int):
        super().__init__()
        self.body = elu_layers(feat_dim, layers, units)
        self.keys = list(sizes)
        self.heads = nn.ModuleList(Linear(units if layers else feat_dim, sizes[key]) for key in self.keys)
        init_keras_(self)

    def forward(self, feat: Feature, only: str | None = None) -> dict[str, Tensor]:
        """feat: (..., feat_dim) -> key -> mean (..., size), in float32; just the key `only` where given."""
        hidden = self.body(feat)
        return {
            key: head(hidden).float()
            for key, head in zip(self.keys, self.heads, strict=True)
            if only is None or key == only
        }


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
        """x: (..., in_dim), h: (..., size) -> h' (..., size)."""
        return self.gates(self.linear(torch.cat([x, h], -1)), h)

    def gates(self, parts: Tensor, h: Tensor) -> Tensor:
        """The cell after its Linear: h' (..., size) from the gates' pre-activations `parts` (..., 3 * size: reset,
        candidate, update) and h (..., size)."""
        parts = F.layer_norm(at_least_float32(parts), (3 * self.size,), self.norm.weight, self.norm.bias, self.norm.eps)
        reset, cand, update = parts.split(self.size, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return (update * cand + (1.0 - update) * at_least_float32(h)).to(h.dtype)


class ActionHead(nn.Module):
    """Actor MLP with a one-hot categorical (discrete) or truncated-normal (continuous) output."""

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, layers: int, units: int):
        super().__init__()
        self.discrete = discrete
        self.net = MLP(feat_dim, action_dim if discrete else 2 * action_dim, layers, units)
        if not discrete:
            # DreamerV2's DistLayer draws the mean's and the std's weights as two Dense layers of action_dim outputs;
            # one Linear of 2 * action_dim outputs gets Glorot's narrower range, widened here to theirs.
            fan_in = self.net.out.in_features
            with torch.no_grad():
                self.net.out.weight.mul_(math.sqrt((fan_in + 2 * action_dim) / (fan_in + action_dim)))

    def forward(self, feat: Feature, available: Tensor | None = None) -> OneHotDist | TruncNormalDist:
        """feat: (..., feat_dim) -> the action distribution over (..., action_dim)."""
        return self.dist(self.net(feat).float(), available)

    def dist(self, out: Tensor, available: Tensor | None = None) -> OneHotDist | TruncNormalDist:
        """The action distribution from the network's raw output `out`: logits (..., action_dim), or the raw mean
        and std (..., 2 * action_dim), squashed as DreamerV2's DistLayer does (mean tanh, std 2 sigmoid(x / 2) + 0.1).

        available: bool (..., action_dim) or None, the discrete actions allowed now (`dreamctl.keys.ACTION_MASK_KEY`):
        the others get probability 0 (a logit of -1e9, so that log-probabilities and the entropy stay finite). A row
        that allows nothing is taken to allow everything.
        """
        if self.discrete:
            if available is not None:
                allowed = available | ~available.any(-1, keepdim=True)
                out = out.masked_fill(~allowed, -1e9)
            return OneHotDist(out)
        raw_mean, raw_std = out.chunk(2, -1)
        return TruncNormalDist(torch.tanh(raw_mean), 2 * torch.sigmoid(raw_std / 2) + 0.1)
