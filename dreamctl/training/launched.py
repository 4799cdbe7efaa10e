"""Where this process stands in a job that torchrun or `--nproc` started, read from the environment torchrun sets.

Torch-free, so the command line can ask it before it imports the engine.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Launched(NamedTuple):
    rank: int
    """This process's rank in the job, 0 .. world - 1."""
    world: int
    """Ranks in the job."""
    local_world: int
    """Ranks on this machine."""
    local_rank: int
    """This process's rank on this machine: the GPU it takes, where there are GPUs."""


def launched_ranks() -> Launched | None:
    """This process's place in the job when torchrun or `--nproc` started it as one of several ranks, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Launched(
        int(os.environ.get("RANK", "0")),
        world,
        int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_follower() -> bool:
    """Whether this process is a rank other than 0, which prints nothing unless it fails on its own."""
    launched = launched_ranks()
    return launched is not None and launched.rank > 0
