"""What the command line shows in the terminal: the consoles, the training progress bar, the stop signals and
the closing lines of a training command."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from dreamctl.errors import SecondSignal
from dreamctl.training.launched import LAUNCHER_GONE, launched_ranks


class _Console(Console):
    """A rich console that goes quiet when its reader goes away (`dreamctl train catch | head -1`) instead of exiting 1
    as rich's does, which left a run created but never trained, or failed a command that had done its work."""

    def on_broken_pipe(self) -> None:
        self.silence()

    def silence(self) -> None:
        """From now on print nothing, and point the file's descriptor at /dev/null, so that other writers to it
        (a final flush at exit) succeed and go nowhere."""
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.file.fileno())
        finally:
            os.close(devnull)

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except OSError as exc:  # EIO: a terminal that hung up under a process that outlives it (a rank of --nproc)
            if exc.errno != errno.EIO:
                raise
            self.on_broken_pipe()


out = _Console(soft_wrap=True)
err = _Console(stderr=True, soft_wrap=True)


def print_json(value: Any) -> None:
    """One JSON document on stdout, as it is (no markup, highlighting or wrapping); like every line of `out`, it
    goes nowhere once the reader has gone (`dreamctl list --json | head -c 100`) instead of failing the command."""
    out.out(json.dumps(value), highlight=False)


STOPPING = "[yellow]stopping after the current step and writing a checkpoint...[/yellow]"


def stop_signals() -> tuple[dict[str, int | None], Any]:
    """First SIGINT/SIGTERM: finish the current step, checkpoint, exit. A second one stops at once. A single
    process says so at once. Data-parallel ranks do not: the launcher also stops the survivors of a rank that died,
    and they must not promise a checkpoint that can no longer be gathered; rank 0's ProgressView says it once the
    ranks have agreed to stop. A rank whose launcher died (LAUNCHER_GONE) stops as at a first SIGTERM.

    SIGHUP (the terminal closed, an SSH session dropped) stops as a first SIGTERM does, never at once, and silences
    what went to the terminal; under nohup (SIGHUP ignored from the start) it stays ignored."""
    caught: dict[str, int | None] = {"signal": None}
    announce = launched_ranks() is None

    def handler(signum, _frame):
        if caught["signal"] is not None:
            raise SecondSignal(signum)
        caught["signal"] = signum
        if announce:
            err.print(STOPPING)

    def launcher_gone(_signum, _frame):
        if caught["signal"] is None:
            caught["signal"] = signal.SIGTERM

    def hang_up(signum, _frame):
        for console in (out, err):  # the terminal is gone, and writing to it fails; a log file or a pipe stays
            try:
                if console.file.isatty():
                    console.silence()
            except (OSError, ValueError):
                pass  # no descriptor to redirect: the console's own checks handle what follows
        if caught["signal"] is None:
            caught["signal"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup the run is meant to outlive the terminal
        signal.signal(signal.SIGHUP, hang_up)
    if not announce:
        signal.signal(LAUNCHER_GONE, launcher_gone)
    return caught, lambda: caught["signal"] is not None


OBSERVED_ETA_AFTER = 20.0  # seconds of the training phase after which its observed rate replaces the estimate
OBSERVED_ETA_ALONE = 5.0  # the same without an estimate (a resumed run): the observed rate is all there is


class ProgressView:
    """A rich progress bar fed by the trainer's progress callback, refreshed at most 10 times a second; a warning
    the trainer raises (a collapsed world model) is printed above it once when it appears.

    In a data-parallel job, whose signal handlers stay silent (see stop_signals), it says that a checkpoint is
    coming when the trainer reports that the ranks stop early.

    The time left comes from `remaining(progress)` (the run's time estimate, which knows that training is slower
    than prefill) until the training phase has run `OBSERVED_ETA_AFTER` seconds, then from its observed rate;
    without an estimate, from that rate once it has run `OBSERVED_ETA_ALONE` seconds.
    """

    def __init__(self, console: Console, remaining: Callable[[Any], float] | None = None):
        self.announces_stop = launched_ranks() is not None
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} steps"),
            TextColumn("{task.fields[rates]}"),
            TextColumn("return {task.fields[ret]}"),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.warning: str | None = None
        self.last = 0.0
        self.mark = (0.0, 0, 0)
        self.remaining = remaining
        self.training_since: tuple[float, int] | None = None  # (time, agent steps) when prefill ended

    def __enter__(self):
        return self  # the bar appears with the first progress, so a command refused before it prints nothing

    def __exit__(self, *exc):
        if self.task is not None:
            self.bar.stop()

    def __call__(self, p) -> None:
        now = time.monotonic()
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(
                "prefill", total=p.total_steps, completed=p.env_steps, rates="", ret="-", eta=""
            )
            self.mark = (now, p.env_steps, p.updates)
        if not p.prefill and self.training_since is None:
            self.training_since = (now, p.env_steps)
        if p.warning != self.warning and p.warning is not None:
            self.bar.console.print(f"[yellow]warning: {p.warning}[/yellow]")
        self.warning = p.warning
        if p.stopping and self.announces_stop:
            err.print(STOPPING)
        if now - self.last < 0.1 and p.env_steps < p.total_steps:
            return
        t0, s0, u0 = self.mark
        rates = ""
        if now - t0 > 1.0:
            rates = f"{(p.env_steps - s0) / (now - t0):,.0f} steps/s, {(p.updates - u0) / (now - t0):.1f} upd/s"
        ret = "-" if p.last_return is None else f"{p.last_return:g}"
        left = self.time_left(p, now)
        eta = "" if left is None else f"{duration_label(left)} left"
        self.bar.update(
            self.task,
            completed=p.env_steps,
            description="prefill" if p.prefill else "train",
            rates=rates,
            ret=ret,
            eta=eta,
        )
        self.last = now

    def time_left(self, p, now: float) -> float | None:
        """Seconds to the end of the run: the training phase's observed rate once it has run long enough, else
        the estimate (None without one)."""
        if self.training_since is not None:
            t0, s0 = self.training_since
            wait = OBSERVED_ETA_AFTER if self.remaining is not None else OBSERVED_ETA_ALONE
            if now - t0 >= wait and p.env_steps > s0:
                return (p.total_steps - p.env_steps) * (now - t0) / (p.env_steps - s0)
        return None if self.remaining is None else self.remaining(p)


def finish(outcome, caught, verb: str) -> None:
    """Say how a train or resume ended: what comes next, or (stopped by a signal) how to continue, exit 128 + the
    signal."""
    run = outcome.run
    code = 128 + (caught["signal"] or signal.SIGTERM)  # 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP
    if run is None:  # a rank other than 0: rank 0 says how the job ended
        # A rank that only agreed to another's stop ends well: a signal's status would have the launcher take it for
        # a failure and send the others SIGTERM, a second signal to a rank 0 that was signalled itself.
        if not outcome.finished and caught["signal"] is not None:
            raise typer.Exit(code)
        return
    if not outcome.finished:
        err.print(
            f"{run.ref} stopped at {outcome.env_steps:,} agent steps with a checkpoint; continue it with "
            f"`{run.resume_command(outcome.ranks)}`."
        )
        raise typer.Exit(code)
    ended = "no episode ended yet" if outcome.last_return is None else f"last episode return {outcome.last_return:g}"
    out.print(f"[green]{run.ref}[/green] {verb} {outcome.env_steps:,} agent steps; {ended}.")
    out.print(f"Files: {run.path}")
    out.print(
        f"Next: [bold]dreamctl eval {run.ref}[/bold] · [bold]dreamctl imagine {run.ref} --out dream.mp4[/bold]"
        f" · [bold]{run.resume_command(outcome.ranks, steps='N')}[/bold]"
    )


def policy_label(policy: str | None) -> str:
    """An evaluation's policy (`greedy` or `sample`, as recorded) as a word for its episodes."""
    return "sampled" if policy == "sample" else "greedy"


def episodes_label(count: int, policy: str | None) -> str:
    """`1 greedy episode`, `20 sampled episodes`."""
    return f"{count} {policy_label(policy)} episode{'' if count == 1 else 's'}"


def size_label(n: float) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def duration_label(seconds: float) -> str:
    """A duration as `45 s`, `12 min`, `3.2 h` or `9 days`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def estimate_line(estimate, cfg) -> str:
    """A run's time estimate in words: `≈ 21 h of training here in float32, ≈ 10 h with --precision bf16`."""
    seconds = estimate.seconds(cfg)
    line = f"≈ {duration_label(seconds)} of training here in {estimate.precision}"
    other = estimate.other_seconds(cfg)
    if other is not None and other < 0.9 * seconds:
        line += f", ≈ {duration_label(other)} with --precision {estimate.other_precision}"
    if estimate.busy is not None:
        load, cores = estimate.busy
        line += f" (timed while other work kept the machine busy, load {load:.1f} on {cores} cores: it may be high)"
    return line
