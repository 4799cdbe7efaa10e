"""Attention across the agents of one world (MAMBA: Egorov & Shpilman, "Scalable Multi-Agent Model-Based
Reinforcement Learning", AAMAS 2022).

A world's M agents are M adjacent rows of every batch (envs/agents.py makes agent a of world w the env copy
w * M + a, and the replay samples whole worlds). Attention runs within each group of M adjacent rows, with no
positional encoding, so permuting a world's agents permutes the outputs and nothing else (the agents tell
themselves apart by their one-hot `agent` observation, not by their place in the group).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers import Linear
from dreamctl.layers.attention import TransformerEncoderLayer
from dreamctl.layers.one_hot import Feature
from dreamctl.model.networks import MLP, init_keras_


def agents_adjacent(x: Tensor, agents: int) -> Tensor:
    """A world-major batch (W * M, T, ...) -> (W * T * M, ...): each world's M agents adjacent at every step.

    With one agent this is x.flatten(0, 1), the order single-agent imagination starts from.
    """
    if agents == 1:
        return x.flatten(0, 1)
    return x.unflatten(0, (x.shape[0] // agents, agents)).transpose(1, 2).flatten(0, 2)


class AgentAttention(nn.Module):
    """Self-attention among each world's agents: (..., N, D) -> (..., N, D), N = worlds * agents, agents adjacent.

    Args:
        width: D, the width of each agent's vector.
        agents: M, the agents of one world.
        layers: transformer encoder layers (post-norm, a ReLU feed-forward block of width D, no dropout, as
            MAMBA's attention encoder).
        heads: attention heads; D must be a multiple of it.
    """

    def __init__(self, width: int, agents: int, layers: int, heads: int):
        super().__init__()
        self.agents = agents
        self.layers = nn.ModuleList(TransformerEncoderLayer(width, heads, feedforward=width) for _ in range(layers))

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """x: (..., N, D). present: None, or (...) up to broadcasting to x's leading axes, 0 for agents that finished
        their episode before the others of their world: no agent attends to them (they attend to themselves)."""
        groups = x.reshape(-1, self.agents, x.shape[-1])
        blocked = None
        if present is not None:
            absent = present.expand(x.shape[:-1]).reshape(-1, 1, self.agents) <= 0  # (G, 1, M): keys
            blocked = absent & ~torch.eye(self.agents, dtype=torch.bool, device=x.device)
        for layer in self.layers:
            groups = layer(groups, blocked)
        return groups.reshape(x.shape)


class CentralCritic(nn.Module):
    """A critic that sees the whole team: each agent's feature is embedded (Linear + ELU), attends over its world's
    agents (one encoder layer), and an MLP reads the result: (..., N, F) -> (..., N, 1), one value per agent.

    Args:
        feat_dim: F, the width of an agent's feature concat(z, h).
        agents: M, the agents of one world.
        layers: hidden layers of the MLP after the attention.
        units: the embedding's width and the MLP's; a multiple of `heads`.
        heads: attention heads.
    """

    def __init__(self, feat_dim: int, agents: int, layers: int, units: int, heads: int):
        super().__init__()
        self.embed = Linear(feat_dim, units)
        self.attention = AgentAttention(units, agents, 1, heads)
        self.head = MLP(units, 1, layers, units)
        init_keras_(self)

    def forward(self, feat: Feature, present: Tensor | None = None) -> Tensor:
        """feat: (..., N, F), N = worlds * agents with each world's agents adjacent -> (..., N, 1). present: None, or
        (N,) 0 for agents that finished early, whom the others do not attend to."""
        return self.head(self.attention(F.elu(self.embed(feat)), present))
