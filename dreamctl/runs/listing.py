"""One summary row per run, shared by `dreamctl list` and its --json output."""

from __future__ import annotations

from typing import Any

from dreamctl.runs.registry import Registry
from dreamctl.scores import dreamerv2_record


def run_rows(registry: Registry) -> list[dict[str, Any]]:
    rows = []
    for run in registry.runs():
        meta = run.meta()
        progress = meta.get("progress") or {}
        evals = meta.get("evals") or []
        last = evals[-1] if evals else {}
        rows.append(
            {
                "id": run.ref,
                "name": meta.get("name"),
                "env": meta.get("env", "?"),
                "preset": meta.get("preset", "?"),
                "status": run.status(meta),
                "env_steps": int(progress.get("env_steps", 0)),
                "updates": int(progress.get("updates", 0)),
                "eval_mean": last.get("mean"),
                "human_normalized": last.get("human_normalized"),
                "dreamerv2": dreamerv2_record(meta.get("env", "")),
                "score": (meta.get("score") or {}).get("value"),
                "updated": str(meta.get("updated", "")),
                "disk_bytes": run.disk_bytes(),
                "path": str(run.path),
            }
        )
    return rows
