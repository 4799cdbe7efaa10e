"""One run's folder: its run.yaml, its checkpoints and its replay chunks (the training lock: `run_lock.py`; the
store of all runs: `registry.py`).

A run's layout: runs/run-<N>/{run.yaml, checkpoints/step-<S>.safetensors, replay/chunk-<K>.bin, metrics.jsonl,
episodes.jsonl, tb/, videos/}. Every file is written atomically; checkpoints are listed in run.yaml with their sha256,
and only listed, verified checkpoints are ever read. Safetensors only: loading a file never executes code stored in it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import yaml
from safetensors import SafetensorError

from dreamctl.errors import CheckpointError, DreamctlError, UsageError
from dreamctl.runs.fileio import READ_ONLY, atomic_write_bytes, atomic_write_text, make_folder, sha256_bytes
from dreamctl.runs.run_lock import RunLock

if TYPE_CHECKING:  # tensors are read and written only by the commands that train or load a model
    import numpy as np
    import torch

SCHEMA_VERSION = 2
"""The layout of run.yaml this dreamctl writes; it reads every version up to this one."""
CHECKPOINT_FORMAT = 2
"""The checkpoint contents this dreamctl writes (the safetensors header's `format_version`); it reads up to this."""
STATUSES = ("running", "finished", "interrupted", "failed")


def check_version(what: str, kind: str, version: Any, supported: int) -> None:
    """Refuse, in one sentence, a file whose version this dreamctl does not know."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DreamctlError(f"{what} has an invalid {kind} version {version!r}; restore the file or delete the run.")
    if version > supported:
        raise DreamctlError(
            f"{what} was written by a newer dreamctl ({kind} version {version}; this dreamctl reads "
            f"up to {supported}); read it with that dreamctl or a newer one."
        )


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def eval_policy(entry: dict[str, Any]) -> str:
    """An evaluation's policy in run.yaml: `greedy` (the actor's mode) or `sample` (`eval --sample`); evaluations
    recorded before the field existed were greedy."""
    return entry.get("policy", "greedy")


def obs_space_of(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """A run's observation keys and shapes from its run.yaml (schema 1 runs observed one image)."""
    spec = meta["env_spec"]
    if "obs" in spec:
        return {key: tuple(shape) for key, shape in spec["obs"].items()}
    return {"image": tuple(spec["obs_shape"])}


META_SHAPES: dict[str, type] = {
    "config": dict,
    "versions": dict,
    "ranks": dict,
    "progress": dict,
    "env_spec": dict,
    "score": dict,
    "checkpoints": list,
    "evals": list,
    "history": list,
    "warnings": list,
}
"""The run.yaml fields that every reader walks into: a hand-edited file with one of them of another shape is
unreadable (said in one sentence, and `list` shows it as such) rather than a TypeError wherever it is read."""


def _has_shape(value: Any, kind: type) -> bool:
    if kind is dict:
        return isinstance(value, dict)
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


class Run:
    """One run folder. Reads are cheap; writes to run.yaml go through `update`."""

    def __init__(self, path: Path):
        self.path = path
        self.id = int(path.name.split("-", 1)[1])
        self._lock = RunLock(path, self.ref)

    @property
    def ref(self) -> str:
        return f"run-{self.id}"

    def resume_command(self, ranks: int, steps: str = "") -> str:
        """The command that continues this run, with the `--nproc` of the ranks that trained it.

        Args:
            ranks: how many ranks trained the run (1: a plain single process).
            steps: a `--steps` value to show (e.g. "N"), or "" to continue to the run's own target.
        """
        steps_flag = f" --steps {steps}" if steps else ""
        nproc = f" --nproc {ranks}" if ranks > 1 else ""
        return f"dreamctl resume {self.ref}{steps_flag}{nproc}"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def replay_dir(self) -> Path:
        return self.path / "replay"

    # ------------------------------------------------------------------ metadata

    def meta(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load((self.path / "run.yaml").read_text())
        except FileNotFoundError:
            raise DreamctlError(f"{self.ref} has no run.yaml; the folder {self.path} is not a complete run.") from None
        except (yaml.YAMLError, UnicodeDecodeError):
            raise DreamctlError(f"{self.ref}'s run.yaml is not valid YAML; restore it or delete the run.") from None
        except OSError as exc:  # a folder in its place, no permission to read it, an I/O error
            raise DreamctlError(f"{self.ref}'s run.yaml cannot be read ({exc.strerror or exc}).") from None
        if not isinstance(data, dict):
            raise DreamctlError(f"{self.ref}'s run.yaml is not a mapping; restore it or delete the run.")
        check_version(f"{self.ref}'s run.yaml", "schema", data.get("schema_version", 1), SCHEMA_VERSION)
        for key, kind in META_SHAPES.items():
            value = data.get(key)
            if value is not None and not _has_shape(value, kind):
                what = "a mapping" if kind is dict else "a list of mappings"
                raise DreamctlError(f"{self.ref}'s run.yaml field `{key}` is not {what}; restore it or delete the run.")
        return data

    def write_meta(self, data: dict[str, Any]) -> None:
        data["updated"] = now()
        atomic_write_text(self.path / "run.yaml", yaml.safe_dump(data, sort_keys=False, width=120))

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write run.yaml under a short lock, so eval and training never lose each other's edits."""
        try:
            with self._edit_lock():
                data = self.meta()
                change(data)
                self.write_meta(data)
                return data
        except OSError as exc:
            if exc.errno not in READ_ONLY:
                raise
            raise DreamctlError(f"{self.ref}'s folder {self.path} is read-only; run.yaml cannot be updated.") from None

    def _edit_lock(self) -> filelock.FileLock:
        """The short lock around each edit of run.yaml (meta.lock), which eval and training both take."""
        return filelock.FileLock(str(self.path / "meta.lock"), is_singleton=False)

    def status(self, meta: dict[str, Any] | None = None) -> str:
        """`running` only while a process holds the lock; a killed trainer's run shows as `interrupted`."""
        status = (meta or self.meta()).get("status", "failed")
        if status == "running" and not self.is_locked():
            return "interrupted"
        return status

    # ------------------------------------------------------------------ locking

    def is_locked(self) -> bool:
        """Whether a process trains the run now (holds its lock); asking writes nothing."""
        return self._lock.is_held()

    def locked(self) -> AbstractContextManager[None]:
        """Hold the run's training lock for a `with` block (it dies with the process)."""
        return self._lock.hold()

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(
        self,
        tensors: dict[str, torch.Tensor],
        metadata: dict[str, str],
        step: int,
        extra: dict[str, Any],
        keep: int | None = None,
        progress: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write step-<step>.safetensors atomically and list it (with its sha256) in run.yaml, in one edit of
        run.yaml with the run's `progress` and, where `keep` is given, the pruning of older checkpoints and replay
        chunks (`_prune`). run.yaml stops listing a file before the file is deleted, so a kill in between leaves an
        orphan file (harmless) and never a listed checkpoint that is missing.

        A step already listed is not written again: training has not moved since (a stop right after a checkpoint,
        or before a resume's first step), and safetensors orders its header differently in every process, so new
        bytes would replace a listed file whose run.yaml entry still names the old sha256 until the update below.
        """
        from safetensors.torch import save as st_save

        listed = [entry for entry in self.meta().get("checkpoints", []) if entry["step"] == step]
        if listed:
            entry = listed[0]
        else:
            make_folder(self.checkpoints_dir)
            data = st_save(tensors, metadata={**metadata, "format_version": json.dumps(CHECKPOINT_FORMAT)})
            name = f"step-{step}.safetensors"
            atomic_write_bytes(self.checkpoints_dir / name, data)
            digest = sha256_bytes(data)
            entry = {"step": step, "file": f"checkpoints/{name}", "sha256": digest, "bytes": len(data), **extra}
        doomed: list[Path] = []

        def record(meta: dict[str, Any]) -> None:
            if not listed:
                meta["checkpoints"] = [c for c in meta.get("checkpoints", []) if c["step"] != step] + [entry]
            if progress is not None:
                meta["progress"] = progress
            if keep is not None:
                doomed.extend(self._prune(meta, keep))

        if not listed or progress is not None or keep is not None:
            self.update(record)
        for path in doomed:
            path.unlink(missing_ok=True)
        return entry

    def find_checkpoint(self, which: str | int = "latest", meta: dict[str, Any] | None = None) -> dict[str, Any]:
        meta = meta or self.meta()
        listed = sorted(meta.get("checkpoints", []), key=lambda c: c["step"])
        if not listed:
            raise CheckpointError(f"{self.ref} has no checkpoint yet; train it longer or resume it.")
        if which == "latest":
            return listed[-1]
        if which == "best":
            evals = [
                e
                for e in meta.get("evals", [])
                if eval_policy(e) == "greedy" and any(c["step"] == e["step"] for c in listed)
            ]  # a sampled evaluation (`eval --sample`) measures another policy
            if not evals:
                raise UsageError(
                    f"{self.ref} has no evaluated checkpoint; run `dreamctl eval {self.ref}` first "
                    f"or pick --checkpoint latest."
                )
            step = max(evals, key=lambda e: e["mean"])["step"]
        else:
            step = int(which)
        for entry in listed:
            if entry["step"] == step:
                return entry
        steps = ", ".join(str(c["step"]) for c in listed)
        raise UsageError(f"{self.ref} has no checkpoint at step {step}; it has: {steps}.")

    def load_checkpoint(self, entry: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Read a listed checkpoint after checking its size and sha256 (plain tensors: no code runs on load)."""
        from safetensors.torch import load as st_load

        path = self.path / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} is missing; pick another with --checkpoint STEP.")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror}).") from None
        if len(data) != entry["bytes"] or sha256_bytes(data) != entry["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} does not match the sha256 recorded in run.yaml (it is "
                f"truncated or corrupt); pick an older one with --checkpoint STEP."
            )
        try:
            tensors = st_load(data)
            header_size = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__", {})
        except (SafetensorError, ValueError):
            raise CheckpointError(
                f"checkpoint {path} cannot be read as safetensors; pick another with --checkpoint STEP."
            ) from None
        try:
            version = json.loads(metadata.pop("format_version", "1"))
        except ValueError:
            version = None
        check_version(f"checkpoint {path}", "format", version, CHECKPOINT_FORMAT)
        return tensors, metadata

    def _prune(self, meta: dict[str, Any], keep: int) -> list[Path]:
        """Keep the newest `keep` checkpoints and the best-evaluated one in run.yaml's `meta`, and return the files to
        delete once it is written: the other checkpoints, and the replay chunks none of the kept ones needs (a
        checkpoint needs the chunks from its `first_chunk` up to its `end_chunk`; one listed without an end, as before
        the end was recorded, needs every chunk from its first on). The chunks written since the newest checkpoint
        stay, since the next one will need them."""
        listed = sorted(meta.get("checkpoints", []), key=lambda c: c["step"])
        keep_steps = {c["step"] for c in listed[-keep:]}
        try:
            keep_steps.add(self.find_checkpoint("best", meta)["step"])
        except (CheckpointError, UsageError):  # no checkpoint yet, or none evaluated
            pass
        meta["checkpoints"] = kept = [c for c in listed if c["step"] in keep_steps]
        newest_end = max((c.get("end_chunk", math.inf) for c in kept), default=0)  # on from it: the next's

        def needed(index: int) -> bool:
            return index >= newest_end or any(
                c.get("first_chunk", 0) <= index < c.get("end_chunk", math.inf) for c in kept
            )

        chunks = [chunk for chunk in self.replay_dir.glob("chunk-*.bin") if not needed(int(chunk.stem.split("-")[1]))]
        return [self.path / c["file"] for c in listed if c["step"] not in keep_steps] + chunks

    def drop_checkpoints_after(self, step: int) -> None:
        """Resuming from an older checkpoint abandons the later ones, their evaluations and warnings, and the score
        of the finished run: they belong to a history being redone (a stale evaluation would otherwise vouch for the
        new checkpoint of its step as `best`, and the score averages episodes that the logs no longer hold)."""
        doomed: list[Path] = []

        def drop(meta: dict[str, Any]) -> None:
            doomed.extend(self.path / c["file"] for c in meta.get("checkpoints", []) if c["step"] > step)
            meta["checkpoints"] = [c for c in meta.get("checkpoints", []) if c["step"] <= step]
            meta["evals"] = [e for e in meta.get("evals", []) if e["step"] <= step]
            if meta.get("warnings"):
                meta["warnings"] = [w for w in meta["warnings"] if w["step"] <= step]
            if (meta.get("progress") or {}).get("env_steps", 0) > step:
                meta.pop("score", None)

        self.update(drop)
        for path in doomed:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ replay chunks

    def chunk_path(self, index: int, rank: int = 0) -> Path:
        """Replay chunk `index` of data-parallel rank `rank` (runs/sharded.py); rank 0 is a single process's."""
        return self.replay_dir / (f"chunk-{index}.bin" if rank == 0 else f"chunk-{index}-rank{rank}.bin")

    def write_chunk(self, index: int, rows: dict[str, np.ndarray], rank: int = 0) -> None:
        from dreamctl.training.replay import encode_chunk

        make_folder(self.replay_dir)
        atomic_write_bytes(self.chunk_path(index, rank), encode_chunk(rows))

    def read_chunk(self, index: int, rank: int = 0) -> dict[str, np.ndarray]:
        from dreamctl.training.replay import decode_chunk

        path = self.chunk_path(index, rank)
        try:
            return decode_chunk(path.read_bytes())
        except FileNotFoundError:
            raise _missing_chunk(path) from None
        except Exception:
            raise CheckpointError(f"replay chunk {path} is corrupt, so the replay cannot be restored.") from None

    def check_chunks(self, entry: dict[str, Any], ranks: int) -> None:
        """Refuse to resume from the checkpoint `entry` where a replay chunk it needs (`_prune`) is missing,
        before any rank starts on it: a job's rank 0 can still tell the others why, which it cannot once they wait for
        their chunks. A checkpoint listed without its `end_chunk`, as before the end was recorded, is left to the
        reads."""
        if "end_chunk" not in entry:
            return
        for index in range(entry.get("first_chunk", 0), entry["end_chunk"]):
            for rank in range(ranks):
                if not self.chunk_path(index, rank).is_file():
                    raise _missing_chunk(self.chunk_path(index, rank))

    def remove_temp_files(self) -> None:
        """Delete the leftovers of a killed trainer's writes, once the training lock is held: the temp files of
        checkpoints/, replay/ and the logs, which only the lock's holder writes, and run.yaml's under its edit lock.
        Other commands' temp files (eval's run.yaml edit, a video, a plot) may belong to writes under way."""
        leftovers = [*self.checkpoints_dir.glob(".*.tmp"), *self.replay_dir.glob(".*.tmp")]
        leftovers += [*self.path.glob(".metrics.jsonl.*.tmp"), *self.path.glob(".episodes.jsonl.*.tmp")]
        for tmp in leftovers:
            tmp.unlink(missing_ok=True)
        with self._edit_lock():
            for tmp in self.path.glob(".run.yaml.*.tmp"):
                tmp.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """The bytes of the run's files; a file a trainer replaces or prunes while they are counted is skipped."""
        total = 0
        for path in self.path.rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except FileNotFoundError:
                continue
        return total


def _missing_chunk(path: Path) -> CheckpointError:
    return CheckpointError(f"replay chunk {path} is missing, so the replay cannot be restored.")
