"""Where this process stands in a job that torchrun or `--nproc` started, read from the environment torchrun sets.

Torch-free, so the command line can ask it before it imports the engine.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import NamedTuple

LAUNCHER_PID = "DREAMCTL_LAUNCHER_PID"
"""The environment variable in which `--nproc`'s launcher gives its ranks its process id."""

LAUNCHER_GONE = signal.SIGUSR2
"""The signal a rank receives when its launcher dies. Not SIGTERM: the kernel sends it again each time the rank
passes to another of the dying launcher's threads, and a second SIGTERM means "stop at once"; this one is a single
request to stop however often it comes (`dreamctl.terminal.stop_signals`)."""


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


def stop_with_launcher() -> None:
    """Have the kernel send this rank LAUNCHER_GONE when the process that started it dies (Linux's parent-death
    signal), so that a launcher killed without a chance to stop its ranks (SIGKILL, the OOM killer) does not leave
    them training on: they stop as at SIGTERM, together, after one last checkpoint. A launcher that died before this
    call (the rank's parent is no longer the pid `--nproc` gave it) gets the same signal at once."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(LAUNCHER_GONE), 0, 0, 0)
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is not None and os.getppid() != int(launcher):
        os.kill(os.getpid(), LAUNCHER_GONE)
