"""Everything `dreamctl show` says about one run, as one JSON-ready dict (reads only)."""

from __future__ import annotations

from typing import Any

from dreamctl.config import load_config, preset_names
from dreamctl.errors import DreamctlError
from dreamctl.runs.listing import UNREADABLE
from dreamctl.runs.run import Run
from dreamctl.scores import dreamerv2_record

SHA_DIGITS = 12  # a checkpoint's sha256 as shown: enough to tell files apart at a glance


def run_summary(run: Run) -> dict[str, Any]:
    """Status, env and protocol, config changes from the preset, progress and speed, scores, evaluations,
    checkpoints, resume history and the last error. A run whose run.yaml cannot be read gets its status
    `unreadable`, the reason, and what its folder holds."""
    try:
        meta = run.meta()
    except DreamctlError as exc:
        return {
            "id": run.ref,
            "path": str(run.path),
            "status": UNREADABLE,
            "reason": str(exc),
            "disk_bytes": run.disk_bytes(),
        }
    progress = meta.get("progress") or {}
    wall = float(progress.get("wall_time", 0.0))
    config = meta.get("config") or {}
    return {
        "id": run.ref,
        "name": meta.get("name"),
        "path": str(run.path),
        "status": run.status(meta),
        "reason": None,
        "env": meta.get("env"),
        "preset": meta.get("preset"),
        "seed": meta.get("seed"),
        "command": meta.get("command"),
        "created": str(meta.get("created", "")),
        "updated": str(meta.get("updated", "")),
        "device": meta.get("device"),
        "precision": meta.get("precision"),
        "parameters": meta.get("parameters"),
        "protocol": {**(config.get("env") or {}), **(meta.get("env_spec") or {})},
        "config_changes": config_changes(str(meta.get("preset", "")), config),
        "progress": {
            "env_steps": int(progress.get("env_steps", 0)),
            "target_steps": int(meta.get("target_steps", 0)),
            "frames": int(progress.get("frames", 0)),
            "updates": int(progress.get("updates", 0)),
        },
        "time_trained_s": wall,
        "agent_steps_per_s": int(progress.get("env_steps", 0)) / wall if wall > 0 else None,
        "updates_per_s": int(progress.get("updates", 0)) / wall if wall > 0 else None,
        "score": meta.get("score"),
        "dreamerv2": dreamerv2_record(str(meta.get("env", ""))),
        "evals": meta.get("evals") or [],
        "checkpoints": [
            {
                "step": c["step"],
                "bytes": c.get("bytes"),
                "sha256": str(c.get("sha256", ""))[:SHA_DIGITS],
                "updates": c.get("updates"),
            }
            for c in meta.get("checkpoints") or []
        ],
        "history": meta.get("history") or [],
        "warnings": meta.get("warnings") or [],
        "error": meta.get("error"),
        "disk_bytes": run.disk_bytes(),
    }


def config_changes(preset: str, config: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """`section.key` -> {"preset": value, "run": value} wherever the run's config differs from its bundled preset;
    None when the preset is not a bundled one (a user's file is not kept, so there is nothing to compare with)."""
    if preset not in preset_names():
        return None
    base = load_config(preset).to_dict()
    changes = {}
    for section, values in config.items():
        for key, value in (values or {}).items():
            default = (base.get(section) or {}).get(key)
            if default != value:
                changes[f"{section}.{key}"] = {"preset": default, "run": value}
    return changes
