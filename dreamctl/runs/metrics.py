"""Run logs: metrics.jsonl and episodes.jsonl always, TensorBoard event files in tb/ when available.

Scalar names are grouped by prefix (loss/..., train/..., episode/..., eval/...), which TensorBoard shows as
sections. After a resume, log lines newer than the checkpoint are dropped so the logs tell one history.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dreamctl.runs.fileio import append_line, atomic_write_text, fsync_dir, fsync_file, full_disk_said


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSON-lines log; a torn last line (the writer was killed mid-write) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_jsonl(path: Path, step: int) -> None:
    if path.is_file():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLogger:
    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.metrics_path, self.episodes_path = run_dir / "metrics.jsonl", run_dir / "episodes.jsonl"
        if resume_step is not None:
            truncate_jsonl(self.metrics_path, resume_step)
            truncate_jsonl(self.episodes_path, resume_step)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        # TensorBoard hides events at purge_step and later; those at the checkpoint's step stay, as in the jsonl.
        purge_step = None if resume_step is None else resume_step + 1
        with full_disk_said(f"making the TensorBoard log in {run_dir / 'tb'}"):
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._append(self.metrics_path, {"step": step, "time": time.time(), **values})
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def episode(self, step: int, record: dict[str, Any]) -> None:
        self._append(self.episodes_path, {"step": step, **record})
        if self.writer:
            self.writer.add_scalar("episode/return", record["return"], step)
            self.writer.add_scalar("episode/length", record["length"], step)

    def flush(self) -> None:
        if self.writer:
            self.writer.flush()

    def sync(self) -> None:
        """Put the logs on the disk, as a checkpoint is: a resume cuts them back to its checkpoint's step, so the
        rows up to that step must survive a power cut along with it."""
        self.flush()
        for path in (self.metrics_path, self.episodes_path):
            fsync_file(path)
        fsync_dir(self.metrics_path.parent)

    def close(self) -> None:
        if self.writer:
            self.writer.close()

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        append_line(path, json.dumps(record))
