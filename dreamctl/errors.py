"""Errors a user can cause or meet, each carrying its own exit status.

Everything below the CLI raises these with one sentence that names the problem and the fix; the CLI prints
that sentence and exits, without a traceback unless DREAMCTL_DEBUG=1.
"""

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `options` to a mistyped `word`, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class DreamctlError(Exception):
    """A failure the user should read about, not debug: exit status 1."""

    exit_code = 1
    said_elsewhere = False
    """Set where another process already told the user (rank 0 of a job relays its refusal to the other ranks)."""
    every_rank = False
    """Set where every rank of a job raises it together (rank 0's refusal, relayed), so they can leave together."""


class UsageError(DreamctlError):
    """The user asked for something that cannot be done as asked: exit status 2."""

    exit_code = 2


class RunBusyError(DreamctlError):
    """Another process holds the run's lock."""


class CheckpointError(DreamctlError):
    """A checkpoint is missing, truncated or does not match its recorded sha256."""


class SecondSignal(BaseException):
    """Raised by the CLI's handler at a second SIGINT or SIGTERM (`dreamctl.terminal.stop_signals`): stop now.

    A BaseException, so that no `except Exception` swallows it, and not a KeyboardInterrupt, which Typer turns into
    its own exit 130 wherever it arises (a second SIGTERM before training began then exited 130, unexplained)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StoppedAtOnce(DreamctlError):
    """A second SIGINT or SIGTERM stopped training before its next checkpoint: exit status 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
