"""The recurrent state-space model: a deterministic GRU path h and a stochastic path of categorical latents z.

    h_t = f(h_{t-1}, z_{t-1}, a_{t-1})        recurrent step (`recurrent`)
    z_t ~ p(z_t | h_t)                         prior (`prior`, sampled by `img_step`)
    z_t ~ q(z_t | h_t, e_t)                    posterior from the image's embedding e_t (`posterior`, `obs_step`)

The prior is all imagination ever sees; the posterior also sees the observation. Latents are `stoch` one-hot
variables of `classes` classes each, sampled with straight-through gradients (paper §2.1, Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers import Linear, reformulated
from dreamctl.layers.linear import linear, weight_layout
from dreamctl.layers.one_hot import OneHotColumns, OneHotFeature
from dreamctl.layers.unroll import UnrolledLinear
from dreamctl.model.distributions import OneHotDist, at_least_float32
from dreamctl.model.networks import LayerNormGRUCell, init_keras_


class State(NamedTuple):
    """Model state; every field has the same leading batch axes."""

    deter: Tensor  # (..., deter)
    stoch: Tensor  # (..., stoch * classes), one-hot samples flattened
    logits: Tensor  # (..., stoch, classes), the distribution the sample came from

    def feat(self) -> Tensor:
        """The feature every head reads: concat(flatten(z), h), (..., stoch * classes + deter)."""
        return torch.cat([self.stoch, self.deter.to(self.stoch.dtype)], -1)

    def map(self, fn: Callable[[Tensor], Tensor]) -> State:
        return State(*(fn(x) for x in self))

    @staticmethod
    def stack(states: list[State], dim: int) -> State:
        return State(*(torch.stack(xs, dim) for xs in zip(*states)))


class RSSM(nn.Module):
    """Prior and posterior steps of DreamerV2's RSSM (`dreamerv2/common/nets.py`, EnsembleRSSM with one member).

    Args:
        embed_dim: width of the observation embedding e_t.
        action_dim: width of the action vector (one-hot for discrete actions).
        deter: width of the GRU state h.
        hidden: width of the layers between the inputs, the GRU and the logits.
        stoch: number of categorical latent variables in z.
        classes: classes per latent variable.
        norm_eps: the GRU's LayerNorm epsilon (Keras' 1e-3).
        communication: where several agents share a world, a module mixing their GRU inputs (N, hidden) ->
            (N, hidden) across each world's agents (MAMBA's attention, `attention.AgentAttention`); None: none.
    """

    def __init__(
        self,
        embed_dim: int,
        action_dim: int,
        deter: int = 600,
        hidden: int = 600,
        stoch: int = 32,
        classes: int = 32,
        norm_eps: float = 1e-3,
        communication: nn.Module | None = None,
    ):
        super().__init__()
        self.deter_dim, self.stoch, self.classes = deter, stoch, classes
        latent = stoch * classes
        self.img_in = Linear(latent + action_dim, hidden)
        self.gru = LayerNormGRUCell(hidden, deter, eps=norm_eps)
        self.img_out = Linear(deter, hidden)
        self.prior_logits = Linear(hidden, latent)
        self.obs_out = Linear(deter + embed_dim, hidden)
        self.post_logits = Linear(hidden, latent)
        self.communication = communication
        init_keras_(self)

    @property
    def feat_dim(self) -> int:
        return self.stoch * self.classes + self.deter_dim

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        """The all-zero state that every episode starts from, in the parameters' dtype."""
        dtype = self.img_in.weight.dtype
        return State(
            torch.zeros(batch, self.deter_dim, device=device, dtype=dtype),
            torch.zeros(batch, self.stoch * self.classes, device=device, dtype=dtype),
            torch.zeros(batch, self.stoch, self.classes, device=device, dtype=dtype),
        )

    def recurrent(
        self, state: State, action: Tensor, ones: OneHotColumns | None = None, present: Tensor | None = None
    ) -> Tensor:
        """h_t = GRU(x, h_{t-1}), x = communicate(elu(Linear(concat(z_{t-1}, a_{t-1})))): (...) -> (..., deter).

        `ones`, where given, locates the ones of concat(z, a)'s leading one-hot columns (z's, and a's too when
        they cover it), so that the input layer sums weight rows instead of multiplying by zeros. `present` (...),
        where given, says which agents are still in their world's episode (see `communicate`).
        """
        if ones is None:
            x = self.img_in(torch.cat([state.stoch, action.to(state.stoch.dtype)], -1))
        else:
            rest = action[..., ones.width - state.stoch.shape[-1] :].to(state.deter.dtype)
            x = self.img_in(OneHotFeature(ones, rest))
        return self.gru(self.communicate(F.elu(x), present), state.deter)

    def communicate(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """The GRU's input of every agent (..., hidden), mixed across each world's agents where there is
        communication; agents whose `present` (...) is 0 finished early, and the others do not attend to them."""
        return x if self.communication is None else self.communication(x, present)

    def prior(self, deter: Tensor) -> Tensor:
        """Logits of p(z_t | h_t): (..., deter) -> (..., stoch, classes)."""
        return self._logits(self.prior_logits(F.elu(self.img_out(deter))))

    def posterior(self, deter: Tensor, embed: Tensor) -> Tensor:
        """Logits of q(z_t | h_t, e_t): (..., deter), (..., embed) -> (..., stoch, classes)."""
        return self._logits(self.post_logits(F.elu(self.obs_out(torch.cat([deter, embed.to(deter.dtype)], -1)))))

    def img_step(
        self, state: State, action: Tensor, ones: OneHotColumns | None = None, present: Tensor | None = None
    ) -> State:
        """Prior step: (z_{t-1}, a_{t-1}, h_{t-1}) -> h_t and a sample of p(z_t | h_t).

        state: fields (N, ...); action: (N, A); ones: where the ones of concat(z_{t-1}, a_{t-1}) are, when known (the
        first layer then gathers weight rows); present: (N,) or None, for the attention across agents.
        """
        deter = self.recurrent(state, action, ones, present)
        logits = self.prior(deter)
        return State(deter, OneHotDist(logits).sample().flatten(-2), logits)

    def obs_step(
        self, state: State, action: Tensor, embed: Tensor, is_first: Tensor, present: Tensor | None = None
    ) -> State:
        """Posterior step: (z_{t-1}, a_{t-1}, h_{t-1}), e_t -> h_t and a sample of q(z_t | h_t, e_t).

        Where `is_first` (...) is set an episode starts: the previous state and action are taken as zeros.
        """
        keep = (1.0 - is_first.float()).unsqueeze(-1)
        state = State(state.deter * keep, state.stoch * keep, state.logits)
        deter = self.recurrent(state, action * keep, present=present)
        logits = self.posterior(deter, embed)
        return State(deter, OneHotDist(logits).sample().flatten(-2), logits)

    def observe(
        self,
        embed: Tensor,
        action: Tensor,
        is_first: Tensor,
        state: State | None = None,
        present: Tensor | None = None,
    ) -> State:
        """`obs_step` over the T steps of a (B, T) batch; returns the posterior states (B, T, ...). present: (B, T)
        or None, see `communicate`.

        Computed in an unrolled form with the same maths (tests compare it with the loop of `obs_step`): only
        what depends on the previous step runs in the loop; the action's and the embedding's shares of the layer
        inputs are computed for all T steps in one product each before it, and the loop's weight gradients in
        one product per layer (`UnrolledLinear`), not one per step. The prior is not read inside the loop, so
        callers that need it take `prior(post.deter)` for all steps at once. Nothing in the loop syncs with the
        host.
        """
        batch, length = embed.shape[:2]
        if state is None:
            state = self.initial(batch, embed.device)
        if not reformulated():
            steps = []
            for t in range(length):
                at = None if present is None else present[:, t]
                state = self.obs_step(state, action[:, t], embed[:, t], is_first[:, t], at)
                steps.append(state)
            return State.stack(steps, 1)
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
            x = self.communicate(F.elu(img_in(stoch)), None if present is None else present[:, t])
            deter = self.gru.gates(gru_in(torch.cat([x, deter.to(x.dtype)], -1)), deter)
            logits = self._logits(post_logits(F.elu(obs_out(deter))))
            stoch = OneHotDist(logits).sample().flatten(-2)
            posts.append(State(deter, stoch, logits))
        return State.stack(posts, 1)

    def _split_columns(self, key: str, weight: Tensor, cut: int) -> tuple[Tensor, Tensor]:
        """A layer's weight for its first `cut` inputs and for the rest, each contiguous (kept while acting)."""
        return weight_layout(self, key, weight, lambda w: (w[:, :cut].contiguous(), w[:, cut:].contiguous()))

    def _logits(self, flat: Tensor) -> Tensor:
        return at_least_float32(flat).unflatten(-1, (self.stoch, self.classes))
