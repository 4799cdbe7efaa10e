"""nn.TransformerEncoderLayer for many small groups (a world's few agents), computed with dreamctl's linears.

MAMBA's attention runs at every step of the RSSM over groups of M agents (M of 2 to 10), for thousands of groups
per update. torch's layer spends most of that time in multi_head_attention_forward's checks and reshapes and, on the
CPUs where `linear` takes oneDNN, in the slower BLAS. Here the same maths is a few batched products: one linear
for queries, keys and values, (groups, heads, M, M) scores by matmul, a masked softmax, one linear out, then the
post-norm residuals and the ReLU feed-forward block. Parameters and state-dict names are those of
nn.TransformerEncoderLayer, and `reformulations(False)` runs torch's own layer (tests compare the two in float64).
With a few agents per group the scores and the mixing are elementwise products and sums instead of batched matmuls,
whose cost per (M, d) x (d, M) matrix dominates there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers.linear import linear
from dreamctl.layers.switch import reformulated

SUMS_MAX_AGENTS = 3
"""Agents per group up to which attention runs as elementwise products and sums where autograd records it; beyond
it their backward costs more than the matmuls' (measured in docs/performance.md)."""
SUMS_MAX_AGENTS_WITHOUT_GRAD = 10
"""The same without autograd (imagination with REINFORCE gradients, acting), where the sums stay faster longer."""


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """A post-norm encoder layer (ReLU feed-forward block, no dropout, batch first) over groups of agents.

    Args:
        width: D, the width of each agent's vector.
        heads: attention heads; D must be a multiple of it.
        feedforward: the width of the feed-forward block's hidden layer.
    """

    def __init__(self, width: int, heads: int, feedforward: int):
        super().__init__(width, heads, dim_feedforward=feedforward, dropout=0.0, batch_first=True)
        self.heads = heads

    def forward(self, x: Tensor, blocked: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x: (G, M, D) -> (G, M, D). blocked: bool (G, M, M) or None, True where query i may not attend to key j
        (each row needs at least one False)."""
        if not reformulated():
            return super().forward(x, src_mask=None if blocked is None else _per_head(blocked, self.heads))
        qkv = linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)
        recorded = torch.is_grad_enabled() and qkv.requires_grad
        if x.shape[1] <= (SUMS_MAX_AGENTS if recorded else SUMS_MAX_AGENTS_WITHOUT_GRAD):
            mixed = _attend_by_sums(qkv, self.heads, blocked)
        else:
            mixed = _attend_by_matmuls(qkv, self.heads, blocked)
        x = self.norm1(x + linear(mixed, self.self_attn.out_proj.weight, self.self_attn.out_proj.bias))
        hidden = F.relu(linear(x, self.linear1.weight, self.linear1.bias))
        return self.norm2(x + linear(hidden, self.linear2.weight, self.linear2.bias))


def _attend_by_matmuls(qkv: Tensor, heads: int, blocked: Tensor | None) -> Tensor:
    """Multi-head attention's mixed values (G, M, D) from the projected queries, keys and values (G, M, 3 * D)."""
    groups, agents, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    q, k, v = qkv.view(groups, agents, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # (G, H, M, d) each
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (G, H, M, M)
    if blocked is not None:
        scores = scores.masked_fill(blocked[:, None], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(groups, agents, width)


def _attend_by_sums(qkv: Tensor, heads: int, blocked: Tensor | None) -> Tensor:
    """_attend_by_matmuls as elementwise products and sums: (G, M, 3 * D) -> (G, M, D)."""
    q, k, v = qkv.unflatten(-1, (3, heads, -1)).unbind(2)  # (G, M, H, d) each
    scores = (q[:, :, None] * q.shape[-1] ** -0.5 * k[:, None]).sum(-1)  # (G, query, key, H)
    if blocked is not None:
        scores = scores.masked_fill(blocked[..., None], float("-inf"))
    return (scores.softmax(2)[..., None] * v[:, None]).sum(2).flatten(-2)  # (G, query, H, d) -> (G, M, D)


def _per_head(blocked: Tensor, heads: int) -> Tensor:
    """(G, M, M) -> (G * heads, M, M), the 3-D attn_mask layout of torch's multi-head attention."""
    return blocked.repeat_interleave(heads, 0)
