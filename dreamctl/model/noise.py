"""The uniform noise that every sample of a latent or an action is drawn from, the same rows on one or N ranks.

Data-parallel training (training/ranks.py) splits each batch row-wise across N ranks. For N ranks to compute the
update one process computes on the union of their batches, a row must meet the same random numbers wherever it
is computed. So every rank draws the noise of the whole batch, (N * rows, ...) from the same generator state, and
keeps its own block of rows: rank r's rows r * rows ... (r + 1) * rows - 1, which is where its sequences sit in the
union (rank-major, as the ranks' acting envs and imagination starts also are). Every rank's generator then
advances exactly as the single process's would, so the ranks stay in step without exchanging anything.
"""

from __future__ import annotations

import torch
from torch import Tensor

_shard = (0, 1)  # (this process's rank, ranks)


def set_row_shard(rank: int, ranks: int) -> None:
    """Make this process rank `rank` of `ranks`: from now on it keeps its block of every draw (see the module)."""
    if not 0 <= rank < ranks:
        raise ValueError(f"rank {rank} is not one of {ranks} ranks")
    global _shard
    _shard = (rank, ranks)


def uniform_like(x: Tensor) -> Tensor:
    """U[0, 1) noise shaped as x (rows along dim 0): this rank's block of the whole batch's draw."""
    rank, ranks = _shard
    if ranks == 1:
        return torch.rand_like(x)
    rows = x.shape[0]
    whole = torch.rand((rows * ranks, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return whole[rank * rows : (rank + 1) * rows]
