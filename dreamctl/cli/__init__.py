"""The dreamctl command line: thin over the library, with rich output and one-sentence errors."""

from __future__ import annotations

import os
import signal
import sys

from typer.exceptions import Abort, TyperException

from dreamctl.cli.app import app
from dreamctl.errors import DreamctlError, SecondSignal, UsageError
from dreamctl.terminal import err
from dreamctl.training.launched import is_follower

# Each module registers its commands on `app`, in the order `--help` lists them.
# isort: off
from dreamctl.cli import train, play, inspect  # noqa: F401
# isort: on


def main() -> None:
    """Entry point: every failure ends as one sentence and an exit status, never a traceback."""
    sys.exit(run())


def command_on_line(args: list[str]) -> str:
    """`dreamctl <command>` for the command the arguments name, else `dreamctl`: the help to point at where click's
    error carries no context (an option given without its value)."""
    names = {info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands if info.callback}
    first = next((arg for arg in args if not arg.startswith("-")), None)
    return f"dreamctl {first}" if first in names else "dreamctl"


def run() -> int:
    """Run the command on the command line; returns its exit status, having said why in one sentence if it failed."""
    debug = os.environ.get("DREAMCTL_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
    except DreamctlError as exc:
        if debug:
            raise
        # Rank 0 refuses the same command itself, and says what it relays to the other ranks; a refusal the ranks
        # agreed on (`every_rank`) is said by the rank that met it first, which may be another.
        if not (exc.said_elsewhere or (is_follower() and isinstance(exc, UsageError) and not exc.every_rank)):
            err.print(f"error: {exc}", markup=False, highlight=False)
        code = exc.exit_code
    except TyperException as exc:  # the command line itself is wrong: bad option, missing argument, bad value
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else command_on_line(sys.argv[1:])
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message:  # none where the help was the answer (`dreamctl` alone)
            joined = f"{message} See" if message.endswith("?") else f"{message.rstrip('.')}; see"  # did you mean ...?
            err.print(f"error: {joined} `{command} --help`.", markup=False, highlight=False)
        code = getattr(exc, "exit_code", 2)
    except (Abort, KeyboardInterrupt):
        err.print("error: stopped by the user.")
        code = 130
    except SecondSignal as exc:  # outside a run's training loop, which says itself which run stopped and where
        err.print(f"error: stopped at once by a second {signal.Signals(exc.signum).name}.")
        code = 128 + exc.signum
    except Exception as exc:
        if debug:
            raise
        said = " ".join(str(exc).split())  # one line, whatever the library put in its message
        err.print(
            f"error: unexpected {type(exc).__name__}: {said}; rerun with DREAMCTL_DEBUG=1 to see the traceback.",
            markup=False,
            highlight=False,
        )
        code = 1
    return code if isinstance(code, int) else 0
