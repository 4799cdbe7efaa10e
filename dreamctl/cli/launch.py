"""`--nproc N`: run the same command as N data-parallel ranks on this machine through torch.distributed's elastic
launcher, the machinery behind `torchrun` (`torchrun --nnodes M --nproc-per-node N ... -m dreamctl train ...` spans
machines with the same code: each process finds its rank in the environment torchrun sets).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

from dreamctl.training.launched import LAUNCHER_PID

SHUTDOWN_SECONDS = 120
"""How long the launcher waits, once stopped, for the ranks to write their last checkpoint before killing them."""


def without_nproc(argv: Sequence[str]) -> list[str]:
    """The command line with its `--nproc N` / `--nproc=N` removed: what each rank runs."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m dreamctl <argv>` as `nproc` ranks here; returns the exit status for the whole job: 0; rank 0's
    status where it failed (it says why in one sentence; `kill_reports` says which ranks killed by a signal are
    named here), else 1 where a rank failed; or 128 + the signal that stopped the launcher (130 for SIGINT, after the
    ranks wrote one last checkpoint)."""
    os.environ.setdefault("LOGLEVEL", "ERROR")  # torch's elastic agent logs every shutdown as a warning
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks stop when this process dies (stop_with_launcher)
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    extra: dict[str, Any] = {}
    if "shutdown_timeout" in LaunchConfig.__dataclass_fields__:  # older torch waits its fixed 30 s
        extra["shutdown_timeout"] = SHUTDOWN_SECONDS
    try:
        # The elastic agent makes a folder for the ranks' log files (it stays without files: their output goes to the
        # terminal), by default a new /tmp/torchelastic_* each job that it never removes; this one goes with the job.
        with tempfile.TemporaryDirectory(prefix="dreamctl-launch-") as logs:
            config = LaunchConfig(
                min_nodes=1,
                max_nodes=1,
                nproc_per_node=nproc,
                logs_specs=DefaultLogsSpecs(log_dir=logs),
                run_id=uuid.uuid4().hex,
                rdzv_backend="c10d",
                rdzv_endpoint="localhost:0",  # a free port, as `torchrun --standalone` picks
                max_restarts=0,  # a failed rank stops the job; `dreamctl resume` continues it from its last checkpoint
                monitor_interval=0.5,
                **extra,
            )
            elastic_launch(config, sys.executable)("-m", "dreamctl", *argv)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        exits = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        for line in kill_reports(exits, nproc):
            print(line, file=sys.stderr)
        own = exits.get(0)
        return own if own is not None and own > 0 else 1
    return 0


def kill_reports(exits: dict[int, int], nproc: int) -> list[str]:
    """One sentence for each rank a signal killed, from the failed ranks' exit codes (negative: the signal).

    A rank that failed on its own says why in one sentence, while a killed one cannot, so the launcher names its
    signal. Once one rank fails the launcher stops the others with SIGTERM; those ranks are named only where every
    failure was a SIGTERM (something outside the job stopped it), as otherwise they would bury the real reason under
    a consequence, or not, depending on which rank the launcher saw exit first. A survivor that ignores the SIGTERM
    and is killed after the launcher's grace period is named by its SIGKILL.
    """
    stopped_from_outside = all(code == -signal.SIGTERM for code in exits.values())
    return [
        f"error: rank {rank} of {nproc} was killed by {_signal_name(-code)}."
        for rank, code in sorted(exits.items())
        if code < 0 and (stopped_from_outside or code != -signal.SIGTERM)
    ]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"
