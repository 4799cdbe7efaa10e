"""The distributions of DreamerV2's latents and actions.

They compute in float32 even under autocast, because log-probabilities, entropies and KLs lose too much in
bfloat16.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from dreamctl.model.noise import uniform_like


def at_least_float32(x: Tensor) -> Tensor:
    """x in float32, or in float64 where it is (the tests check the maths in float64)."""
    return x if x.dtype == torch.float64 else x.float()


class OneHotDist:
    """Categorical over the last axis whose samples are one-hot with straight-through gradients.

    sample = onehot + (p - sg(p)): the forward value is exactly one-hot, the backward pass sees softmax(logits).
    Sampling inverts the CDF with one uniform number per variable (Gumbel-max would need one per class, and
    at the paper's imagination size that random generation alone costs more than the RSSM's matmuls).
    """

    def __init__(self, logits: Tensor):
        self.logits = at_least_float32(logits)

    @functools.cached_property
    def log_probs(self) -> Tensor:
        return self.logits.log_softmax(-1)

    @functools.cached_property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    def sample(self) -> Tensor:
        """A one-hot draw (..., K) whose gradient is softmax's (straight-through)."""
        cdf = self.probs.detach().cumsum(-1)
        u = uniform_like(cdf[..., :1]) * cdf[..., -1:]
        index = torch.searchsorted(cdf, u, right=True).clamp_max(cdf.shape[-1] - 1)
        return self._straight_through(index)

    def mode(self) -> Tensor:
        """The most likely class, one-hot (..., K), with the same straight-through gradient as a sample."""
        return self._straight_through(self.logits.argmax(-1, keepdim=True))

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(value) for one-hot values (..., K) -> (...)."""
        return (value * self.log_probs).sum(-1)

    def entropy(self) -> Tensor:
        """(...,): -sum_k p_k log p_k over the last axis."""
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
        self.mean, self.std = at_least_float32(mean), at_least_float32(std)
        self.low, self.high = low, high
        self.alpha = (low - self.mean) / self.std
        self.beta = (high - self.mean) / self.std
        self.cdf_alpha = torch.special.ndtr(self.alpha)
        self.mass = (torch.special.ndtr(self.beta) - self.cdf_alpha).clamp_min(1e-12)

    def sample(self) -> Tensor:
        """A reparameterised draw (..., A) through the inverse CDF of the truncated normal."""
        u = uniform_like(self.mean)
        p = (self.cdf_alpha + u * self.mass).clamp(1e-7, 1 - 1e-7)
        x = self.mean + self.std * torch.special.ndtri(p)
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    def mode(self) -> Tensor:
        """The mean (..., A), the truncated normal's mode, kept 1e-6 inside the bounds."""
        return self.mean.clamp(self.low + self.clip, self.high - self.clip)

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(value) for values inside the bounds, summed over the action axis: (..., A) -> (...)."""
        z = (value.to(self.mean.dtype) - self.mean) / self.std
        log_pdf = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - self.std.log() - self.mass.log()
        return log_pdf.sum(-1)

    def entropy(self) -> Tensor:
        """The closed form of the truncated normal's entropy, summed over the action axis: (...,). Exact, so the
        actor's entropy bonus needs no sample (TFP's TruncatedNormal has the same form)."""
        pdf_a = torch.exp(-0.5 * self.alpha**2) / math.sqrt(2 * math.pi)
        pdf_b = torch.exp(-0.5 * self.beta**2) / math.sqrt(2 * math.pi)
        ent = (
            0.5 * math.log(2 * math.pi * math.e)
            + self.std.log()
            + self.mass.log()
            + (self.alpha * pdf_a - self.beta * pdf_b) / (2 * self.mass)
        )
        return ent.sum(-1)
