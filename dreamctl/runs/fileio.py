"""Crash-safe file writes: a reader sees the old file or the new one, never half of either.

Write to a temp file in the same folder, flush, fsync, os.replace over the target, then fsync the folder so
the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dreamctl.errors import DreamctlError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
"""What an attempt to write into a run folder raises where it may not: no permission, or a read-only mount."""

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def full_disk_said(doing: str, after: str = "") -> Iterator[None]:
    """A full disk met inside the block becomes the one sentence of `disk_full`; any other OSError passes."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full(doing, after) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    with full_disk_said(f"writing {path}"):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with full_disk_said(f"writing {path}", " (nothing was overwritten)"):
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_line(path: Path, line: str) -> None:
    """Append one line to a log (metrics.jsonl, episodes.jsonl), which is appended to rather than replaced."""
    with full_disk_said(f"appending to {path}"), open(path, "a") as f:
        f.write(line + "\n")


def disk_full(doing: str, after: str = "") -> DreamctlError:
    """The one sentence of a write that found the disk full; `doing` names the write."""
    return DreamctlError(f"the disk is full while {doing}; free some space and try again{after}.")


def make_folder(folder: Path) -> None:
    """mkdir that lasts through a power cut: a new folder's entry in its parent is flushed as a file's is."""
    if not folder.is_dir():
        with full_disk_said(f"making {folder}"):
            folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


def fsync_file(path: Path) -> None:
    """Flush what was appended to a file (a log) onto the disk; a file not made yet has nothing to flush."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
