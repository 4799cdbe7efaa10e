"""What the command line shows in the terminal: the consoles, the training progress bar, the stop signals and
the closing lines of a training command."""

from __future__ import annotations

import signal
import time
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def stop_signals() -> tuple[dict[str, int | None], Any]:
    """First SIGINT/SIGTERM: finish the current step, checkpoint, exit. A second one stops at once."""
    caught: dict[str, int | None] = {"signal": None}

    def handler(signum, _frame):
        if caught["signal"] is not None:
            raise KeyboardInterrupt
        caught["signal"] = signum
        err.print("[yellow]stopping after the current step and writing a checkpoint...[/yellow]")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return caught, lambda: caught["signal"] is not None


class ProgressView:
    """A rich progress bar fed by the trainer's progress callback, refreshed at most 10 times a second; a warning
    the trainer raises (a collapsed world model) is printed above it once when it appears."""

    def __init__(self, console: Console):
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} steps"),
            TextColumn("{task.fields[rates]}"),
            TextColumn("return {task.fields[ret]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.warning: str | None = None
        self.last = 0.0
        self.mark = (0.0, 0, 0)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, p) -> None:
        now = time.monotonic()
        if self.task is None:
            self.task = self.bar.add_task("prefill", total=p.total_steps, completed=p.env_steps, rates="", ret="-")
            self.mark = (now, p.env_steps, p.updates)
        if p.warning != self.warning and p.warning is not None:
            self.bar.console.print(f"[yellow]warning: {p.warning}[/yellow]")
        self.warning = p.warning
        if now - self.last < 0.1 and p.env_steps < p.total_steps:
            return
        t0, s0, u0 = self.mark
        rates = ""
        if now - t0 > 1.0:
            rates = f"{(p.env_steps - s0) / (now - t0):,.0f} steps/s, {(p.updates - u0) / (now - t0):.1f} upd/s"
        ret = "-" if p.last_return is None else f"{p.last_return:g}"
        self.bar.update(
            self.task, completed=p.env_steps, description="prefill" if p.prefill else "train", rates=rates, ret=ret
        )
        self.last = now


def finish(outcome, caught, verb: str) -> None:
    """Say how a train or resume ended: what comes next, or (stopped by a signal) how to continue, exit 130/143."""
    run = outcome.run
    if not outcome.finished:
        code = 130 if caught["signal"] == signal.SIGINT else 143
        err.print(
            f"{run.ref} stopped at {outcome.env_steps:,} agent steps with a checkpoint; continue it with "
            f"`dreamctl resume {run.ref}`."
        )
        raise typer.Exit(code)
    ret = "-" if outcome.last_return is None else f"{outcome.last_return:g}"
    out.print(f"[green]{run.ref}[/green] {verb} {outcome.env_steps:,} agent steps; last episode return {ret}.")
    out.print(f"Files: {run.path}")
    out.print(
        f"Next: [bold]dreamctl eval {run.ref}[/bold] · [bold]dreamctl imagine {run.ref} --out dream.mp4[/bold]"
        f" · [bold]dreamctl resume {run.ref} --steps N[/bold]"
    )


def size_label(n: float) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
