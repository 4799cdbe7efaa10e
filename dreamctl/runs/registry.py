"""The store of runs under one root: run ids and names, references (`run-42`, `42`, a name, `latest`), creating a
run and listing them. One run's folder is `run.py`'s `Run`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import filelock

from dreamctl.errors import DreamctlError, UsageError, did_you_mean
from dreamctl.runs.fileio import fsync_dir, make_folder
from dreamctl.runs.run import SCHEMA_VERSION, Run, now

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")


def default_home() -> Path:
    if os.environ.get("DREAMCTL_HOME"):
        return Path(os.environ["DREAMCTL_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "dreamctl"


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or name == "latest" or re.fullmatch(r"run-\d+", name):
        raise UsageError(
            f"run name '{name}' is not allowed; use a letter followed by letters, digits, '.', "
            f"'_' or '-' (not 'latest' or 'run-<N>')."
        )
    return name


class Registry:
    def __init__(self, home: Path | str | None = None):
        self.root = Path(home).expanduser() if home else default_home()
        self.runs_dir = self.root / "runs"

    def check_home(self) -> None:
        """Refuse, in one sentence, a root where no run can be made: under a file, or in a folder where this process
        cannot make one (asked before a new run's env and time estimate, not after). The deepest folder that exists is
        probed by making and removing a folder in it: the access bits do not bind root, and /proc or a read-only mount
        refuse a folder whatever they say. Nothing is left behind, so a command refused later changes nothing."""
        for folder in (self.runs_dir, *self.runs_dir.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise DreamctlError(
                        f"cannot create the registry at {self.root} ({folder} is a file); pass a writable --home."
                    )
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise DreamctlError(
                        f"cannot create the registry at {self.root} ({folder} is read-only); pass a writable --home."
                    )
                try:
                    os.rmdir(tempfile.mkdtemp(prefix=".dreamctl-probe-", dir=folder))
                except OSError as exc:
                    raise DreamctlError(
                        f"cannot create the registry at {self.root} ({folder}: {exc.strerror}); pass a writable --home."
                    ) from None
                return

    def create(self, meta: dict[str, Any], name: str | None) -> Run:
        """Allocate the next run id atomically (mkdir either succeeds or sees the other process's folder)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            make_folder(self.runs_dir)
            with filelock.FileLock(str(self.root / "registry.lock"), is_singleton=False):
                return self._create_locked(meta, name)
        except OSError as exc:  # a full disk writing run.yaml is said by atomic_write_text
            raise DreamctlError(
                f"cannot create the registry at {self.root} ({exc.strerror}); pass a writable --home."
            ) from None

    def _create_locked(self, meta: dict[str, Any], name: str | None) -> Run:
        """create()'s work under the registry lock."""
        self.check_new_name(name)
        number = max((r.id for r in self.all_runs()), default=0) + 1
        while True:
            path = self.runs_dir / f"run-{number}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                number += 1
        run = Run(path)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "id": run.ref,
            "name": name,
            "status": "running",
            "created": now(),
            "updated": now(),
            **meta,
        }
        try:
            run.write_meta(meta)
        except BaseException:  # a full disk: no empty folder may stay behind as the latest run
            shutil.rmtree(path, ignore_errors=True)
            raise
        fsync_dir(self.runs_dir)  # the new run's entry, as run.yaml's is in it
        return run

    def check_new_name(self, name: str | None) -> None:
        """Refuse, in one sentence, a name that a new run may not take: malformed or already another run's."""
        if name is None:
            return
        validate_name(name)
        if any(r.meta().get("name") == name for r in self._readable_runs()):
            raise UsageError(f"a run named '{name}' already exists; pick another --name.")

    def resolve(self, ref: str) -> Run:
        """A run is `run-42`, `42`, its name, or `latest` (the highest id)."""
        ref = ref.strip()
        if "/" in ref or "\\" in ref or ref in ("", ".", ".."):
            raise UsageError(f"'{ref}' is not a run reference; name a run as run-<N>, <N>, its name or latest.")
        runs = self.all_runs()
        if ref == "latest":
            if not runs:
                raise UsageError(
                    f"there are no runs under {self.root}; start one with `dreamctl train catch --preset debug`."
                )
            return max(runs, key=lambda r: r.id)
        match = re.fullmatch(r"(?:run-)?(\d+)", ref)
        if match:
            for run in runs:
                if run.id == int(match.group(1)):
                    return run
        named = {run.meta().get("name"): run for run in self._readable_runs()}
        if not match and ref in named:
            return named[ref]
        candidates = [name for name in named if name] + [run.path.name for run in runs] + ["latest"]
        hint = "" if match else did_you_mean(ref, candidates)
        raise UsageError(f"no run '{ref}' under {self.root}{hint}; `dreamctl list` shows the runs there.")

    def all_runs(self) -> list[Run]:
        """Every run folder, readable or not, by id; none where the registry has not been made yet."""
        for folder in (self.root, self.runs_dir):
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"{folder} is a file, not a dreamctl registry; pass the registry's folder as --home.")
        if not self.runs_dir.is_dir():
            return []
        found = [Run(p) for p in self.runs_dir.iterdir() if p.is_dir() and re.fullmatch(r"run-\d+", p.name)]
        return sorted(found, key=lambda r: r.id)

    def _readable_runs(self) -> list[Run]:
        """Runs whose run.yaml parses; a damaged folder must not make every other run unreachable."""
        out = []
        for run in self.all_runs():
            try:
                run.meta()
            except DreamctlError:
                continue
            out.append(run)
        return out
