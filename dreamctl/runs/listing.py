"""One summary row per run, shared by `dreamctl list` and its --json output.

A run whose run.yaml cannot be read is still listed, with the status `unreadable` (its reason is in `dreamctl show`),
so that one damaged folder never hides a run; listing only reads.
"""

from __future__ import annotations

from typing import Any

from dreamctl.errors import DreamctlError
from dreamctl.runs.registry import Registry
from dreamctl.runs.run import Run, eval_policy
from dreamctl.scores import dreamerv2_record

UNREADABLE = "unreadable"


def run_rows(registry: Registry) -> list[dict[str, Any]]:
    return [run_row(run) for run in registry.all_runs()]


def run_row(run: Run) -> dict[str, Any]:
    try:
        meta = run.meta()
    except DreamctlError as exc:
        return _row(run, {}, UNREADABLE, str(exc))
    return _row(run, meta, run.status(meta), None)


def _row(run: Run, meta: dict[str, Any], status: str, reason: str | None) -> dict[str, Any]:
    progress = meta.get("progress") or {}
    evals = meta.get("evals") or []
    last = evals[-1] if evals else {}
    return {
        "id": run.ref,
        "name": meta.get("name"),
        "env": meta.get("env", "?"),
        "preset": meta.get("preset", "?"),
        "status": status,
        "env_steps": int(progress.get("env_steps", 0)),
        "updates": int(progress.get("updates", 0)),
        "time_trained_s": float(progress.get("wall_time", 0.0)),
        "eval_mean": last.get("mean"),
        "win_rate": last.get("win_rate"),  # battles won in the last evaluation (smax:), else None
        "eval_policy": eval_policy(last),
        "human_normalized": last.get("human_normalized"),
        "dreamerv2": dreamerv2_record(meta.get("env", "")),
        "score": (meta.get("score") or {}).get("value"),
        "updated": str(meta.get("updated", "")),
        "disk_bytes": run.disk_bytes(),
        "path": str(run.path),
        "reason": reason,
    }
