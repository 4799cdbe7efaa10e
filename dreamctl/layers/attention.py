"""nn.TransformerEncoderLayer for many small groups (a world's few agents), computed with dreamctl's linears.

MAMBA's attention runs at every step of the RSSM over groups of M agents (M of 2 to 10), for thousands of groups
per update. torch's layer spends most of that time in multi_head_attention_forward's checks and reshapes and, on the
CPUs where `linear` takes oneDNN, in the slower BLAS. Here the same maths is a few batched products: one linear
for queries, keys and values, (groups, heads, M, M) scores by matmul, a masked softmax, one linear out, then the
post-norm residuals and the ReLU feed-forward block. Parameters and state-dict names are those of
nn.TransformerEncoderLayer, and `reformulations(False)` runs torch's own layer (tests compare the two in float64).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.layers.linear import linear
from dreamctl.layers.switch import reformulated


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
        groups, agents, width = x.shape
        head_width = width // self.heads
        qkv = linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)
        q, k, v = qkv.view(groups, agents, 3, self.heads, head_width).permute(2, 0, 3, 1, 4)  # (G, H, M, d) each
        scores = (q * head_width**-0.5) @ k.transpose(-1, -2)  # (G, H, M, M)
        if blocked is not None:
            scores = scores.masked_fill(blocked[:, None], float("-inf"))
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(groups, agents, width)
        x = self.norm1(x + linear(mixed, self.self_attn.out_proj.weight, self.self_attn.out_proj.bias))
        hidden = F.relu(linear(x, self.linear1.weight, self.linear1.bias))
        return self.norm2(x + linear(hidden, self.linear2.weight, self.linear2.bias))


def _per_head(blocked: Tensor, heads: int) -> Tensor:
    """(G, M, M) -> (G * heads, M, M), the 3-D attn_mask layout of torch's multi-head attention."""
    return blocked.repeat_interleave(heads, 0)
