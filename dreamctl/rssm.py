"""The recurrent state-space model: a deterministic GRU path h and a stochastic path of categorical latents z.

The prior p(z_t | h_t) is all imagination ever sees; the posterior q(z_t | h_t, x_t) also sees the image.
Both share h_t, computed from (z_{t-1}, a_{t-1}, h_{t-1}). Latents are `stoch` one-hot variables of
`classes` classes each, sampled with straight-through gradients (SPEC.md §1.3).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.linear import Linear, linear, weight_layout
from dreamctl.nets import LayerNormGRUCell, OneHotDist, init_keras_
from dreamctl.one_hot import OneHotColumns, OneHotFeature
from dreamctl.unroll import UnrolledLinear


class State(NamedTuple):
    """Model state; every field has the same leading batch axes."""

    deter: Tensor  # (..., deter)
    stoch: Tensor  # (..., stoch * classes), one-hot samples flattened
    logits: Tensor  # (..., stoch, classes), the distribution the sample came from

    def feat(self) -> Tensor:
        """The feature every head reads: concat(flatten(z), h)."""
        return torch.cat([self.stoch, self.deter.to(self.stoch.dtype)], -1)

    def map(self, fn) -> State:
        return State(*(fn(x) for x in self))

    @staticmethod
    def stack(states: list[State], dim: int) -> State:
        return State(*(torch.stack(xs, dim) for xs in zip(*states)))


class RSSM(nn.Module):
    def __init__(self, embed_dim: int, action_dim: int, deter: int = 600, hidden: int = 600,
                 stoch: int = 32, classes: int = 32, norm_eps: float = 1e-3):
        super().__init__()
        self.deter_dim, self.stoch, self.classes = deter, stoch, classes
        latent = stoch * classes
        self.img_in = Linear(latent + action_dim, hidden)
        self.gru = LayerNormGRUCell(hidden, deter, eps=norm_eps)
        self.img_out = Linear(deter, hidden)
        self.prior_logits = Linear(hidden, latent)
        self.obs_out = Linear(deter + embed_dim, hidden)
        self.post_logits = Linear(hidden, latent)
        init_keras_(self)

    @property
    def feat_dim(self) -> int:
        return self.stoch * self.classes + self.deter_dim

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        return State(
            torch.zeros(batch, self.deter_dim, device=device),
            torch.zeros(batch, self.stoch * self.classes, device=device),
            torch.zeros(batch, self.stoch, self.classes, device=device),
        )

    def img_step(self, state: State, action: Tensor, ones: OneHotColumns | None = None) -> State:
        """Prior step: (z_{t-1}, a_{t-1}, h_{t-1}) -> h_t and a sample of p(z_t | h_t).

        `ones`, where given, locates the ones of concat(z, a)'s leading one-hot columns (z's, and a's too when
        they cover it), so that the input layer sums weight rows instead of multiplying by zeros.
        """
        if ones is None:
            x = self.img_in(torch.cat([state.stoch, action.to(state.stoch.dtype)], -1))
        else:
            rest = action[..., ones.width - state.stoch.shape[-1]:].to(state.deter.dtype)
            x = self.img_in(OneHotFeature(ones, rest))
        x = F.elu(x)
        deter = self.gru(x, state.deter)
        logits = self.prior(deter)
        return State(deter, OneHotDist(logits).sample().flatten(-2), logits)

    def prior(self, deter: Tensor) -> Tensor:
        """Logits of p(z_t | h_t), (..., stoch, classes)."""
        return self._logits(self.prior_logits(F.elu(self.img_out(deter))))

    def obs_step(self, state: State, action: Tensor, embed: Tensor, is_first: Tensor) -> State:
        """Posterior step, for acting; resets the previous state and action to zero where an episode starts."""
        post = self.observe(embed[:, None], action[:, None], is_first[:, None], state)
        return post.map(lambda x: x[:, 0])

    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor, state: State | None = None) -> State:
        """Unroll the posterior over a (B, T) batch; returns posterior states on axis 1.

        Only what depends on the previous step runs in the loop: the action's and the image's shares of the
        layer inputs are computed for all T steps in one product each before it, and the loop's weight
        gradients in one product per layer (UnrolledLinear). The prior is not read inside the loop, so callers
        that need it take `prior(post.deter)` for all steps at once. Nothing in the loop syncs with the host.
        """
        batch, length = embed.shape[:2]
        if state is None:
            state = self.initial(batch, embed.device)
        keep = (1.0 - is_first.float()).unsqueeze(-1)
        stoch_w, action_w = self._split_columns("img_in", self.img_in.weight, self.stoch * self.classes)
        deter_w, embed_w = self._split_columns("obs_out", self.obs_out.weight, self.deter_dim)
        img_in = UnrolledLinear(stoch_w, linear(action * keep, action_w, self.img_in.bias))
        gru_in = UnrolledLinear(self.gru.linear.weight, self.gru.linear.bias.expand(batch, length, -1))
        obs_out = UnrolledLinear(deter_w, linear(embed, embed_w, self.obs_out.bias))
        post_logits = UnrolledLinear(self.post_logits.weight, self.post_logits.bias.expand(batch, length, -1))
        deter, stoch = state.deter, state.stoch
        posts = []
        for t in range(length):
            deter, stoch = deter * keep[:, t], stoch * keep[:, t]
            x = F.elu(img_in(stoch))
            deter = self.gru.gates(gru_in(torch.cat([x, deter.to(x.dtype)], -1)), deter)
            logits = self._logits(post_logits(F.elu(obs_out(deter))))
            stoch = OneHotDist(logits).sample().flatten(-2)
            posts.append(State(deter, stoch, logits))
        return State.stack(posts, 1)

    def _split_columns(self, key: str, weight: Tensor, cut: int) -> tuple[Tensor, Tensor]:
        """A layer's weight for its first `cut` inputs and for the rest, each contiguous (kept while acting)."""
        return weight_layout(self, key, weight, lambda w: (w[:, :cut].contiguous(), w[:, cut:].contiguous()))

    def _logits(self, flat: Tensor) -> Tensor:
        return flat.float().unflatten(-1, (self.stoch, self.classes))


def categorical_kl(post_logits: Tensor, prior_logits: Tensor) -> Tensor:
    """KL(q || p) of independent categoricals, summed over the latent variables."""
    log_q = post_logits.float().log_softmax(-1)
    log_p = prior_logits.float().log_softmax(-1)
    return (log_q.exp() * (log_q - log_p)).sum((-2, -1))


def kl_balance(post_logits: Tensor, prior_logits: Tensor, balance: float = 0.8, free: float = 0.0
               ) -> tuple[Tensor, Tensor]:
    """KL balancing (paper Eq. 2 and Alg. 2): train the prior toward the posterior `balance` times as hard
    as the posterior is regularised toward the prior. The free-nats floor applies to the batch mean.

    Returns (loss, mean KL value).
    """
    kl_prior = categorical_kl(post_logits.detach(), prior_logits).mean()
    kl_post = categorical_kl(post_logits, prior_logits.detach()).mean()
    loss = balance * kl_prior.clamp_min(free) + (1.0 - balance) * kl_post.clamp_min(free)
    return loss, kl_prior.detach()
