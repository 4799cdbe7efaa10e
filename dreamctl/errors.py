"""Errors a user can cause or meet, each carrying its own exit status.

Everything below the CLI raises these with one sentence that names the problem and the fix; the CLI prints
that sentence and exits, without a traceback unless DREAMCTL_DEBUG=1.
"""


class DreamctlError(Exception):
    """A failure the user should read about, not debug: exit status 1."""

    exit_code = 1


class UsageError(DreamctlError):
    """The user asked for something that cannot be done as asked: exit status 2."""

    exit_code = 2


class RunBusyError(DreamctlError):
    """Another process holds the run's lock."""


class CheckpointError(DreamctlError):
    """A checkpoint is missing, truncated or does not match its recorded sha256."""
