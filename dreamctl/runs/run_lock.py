"""The lock a process holds while it trains a run: the file `lock` in the run folder, taken with an OS lock that dies
with its process, so a killed trainer never leaves a run blocked (its run shows as `interrupted`)."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from dreamctl.errors import DreamctlError, RunBusyError
from dreamctl.runs.fileio import READ_ONLY

PROBE_WAIT_SECONDS = 0.5
"""How long taking the lock waits before calling the run busy: `list` and `show` ask whether a run is held by taking a
shared lock for an instant (`is_held`), which must not look like a trainer to a `train` or `resume` starting then."""


class RunLock:
    """The training lock of the run folder `path`, named `ref` (`run-<N>`) in its errors."""

    def __init__(self, path: Path, ref: str):
        self.path = path / "lock"
        self.ref = ref
        self._lock = filelock.FileLock(str(self.path), is_singleton=False)

    def is_held(self) -> bool:
        """Whether a process holds the lock, asked without creating or writing anything, so that `list` and `show`
        work on a read-only registry and leave no lock file in a run folder being deleted."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False  # no lock file: no process ever took the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while another holds filelock's LOCK_EX
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            return self._held_by_another()  # no flock on this file system (ENOSYS): ask as the holder would lock
        finally:
            os.close(fd)  # and with it the shared lock
        return False

    def _held_by_another(self) -> bool:
        probe = filelock.FileLock(str(self.path), is_singleton=False)
        try:
            probe.acquire(timeout=0)
        except filelock.Timeout:
            return True
        probe.release()
        return False

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the `with` block; a run another process holds, or a read-only folder, is refused in one
        sentence."""
        try:
            self._lock.acquire(timeout=PROBE_WAIT_SECONDS)
        except filelock.Timeout:
            raise RunBusyError(
                f"{self.ref} is being trained by another process; wait for it to finish or stop it (Ctrl-C) first."
            ) from None
        except OSError as exc:
            if exc.errno not in READ_ONLY:
                raise
            folder = self.path.parent
            raise DreamctlError(f"{self.ref}'s folder {folder} is read-only, so it cannot be trained.") from None
        try:
            yield
        finally:
            self._lock.release()
