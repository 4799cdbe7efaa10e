"""The library's entry points for training: `train` (config in, run out) and `resume`.

They glue the registry to the trainer: create or lock the run, build env and trainer, stream chunks,
checkpoints, logs and evaluations into the run folder, and record how the run ended in run.yaml.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamctl.config import SAFE_RESUME_KEYS, Config, apply_overrides, from_dict, override_keys
from dreamctl.envs import make_env
from dreamctl.errors import DreamctlError, UsageError
from dreamctl.runs.metrics import MetricsLogger, read_jsonl
from dreamctl.runs.registry import Registry, Run, now
from dreamctl.runs.system import (
    configure_torch,
    parameter_count,
    precision_label,
    preflight,
    prepare,
    resolve_precision,
    versions,
)
from dreamctl.scores import summarize
from dreamctl.training.rollout import greedy_episodes
from dreamctl.training.state import restore_trainer, trainer_state
from dreamctl.training.trainer import Episode, Hooks, Progress, Trainer


@dataclass
class Outcome:
    run: Run
    finished: bool  # False when stopped early (signal)
    env_steps: int
    last_return: float | None


class RunHooks(Hooks):
    """Streams what the trainer produces into the run folder."""

    def __init__(self, run: Run, cfg: Config, logger: MetricsLogger, progress: Callable[[Progress], None] | None):
        self.run, self.cfg, self.logger, self.progress = run, cfg, logger, progress
        self.latest: Progress | None = None
        self.warned = False

    def on_progress(self, progress: Progress) -> None:
        self.latest = progress
        if self.progress:
            self.progress(progress)

    def on_metrics(self, step: int, scalars: dict[str, float]) -> None:
        """Logs, the progress in run.yaml (so `dreamctl list` stays current during a long run) and, when the world
        model collapses, the warning under run.yaml's `warnings`."""
        self.logger.scalars(step, scalars)
        self.logger.flush()
        p = self.latest  # reported just before, with the warning of this flush
        warning = p.warning if p is not None else None
        if warning and not self.warned:
            self.run.update(lambda m: m.setdefault("warnings", []).append({"step": step, "message": warning}))
        self.warned = warning is not None
        if p is not None:
            record = progress_record(p.env_steps, p.updates, p.wall_time, self.cfg.env.action_repeat)
            self.run.update(lambda m: m.update(progress=record))

    def on_episode(self, episode: Episode) -> None:
        self.logger.episode(
            episode.end_step,
            {
                "return": episode.ret,
                "length": episode.length,
                "frames": episode.frames,
                "capped": episode.capped,
                "frame": episode.end_frame,
                "wall_time": episode.wall_time,
                "env": episode.env_index,
            },
        )

    def on_chunk(self, index: int, rows: dict[str, np.ndarray]) -> None:
        self.run.write_chunk(index, rows)

    def on_checkpoint(self, trainer: Trainer) -> None:
        save_checkpoint(self.run, trainer, self.cfg)

    def on_eval(self, trainer: Trainer) -> None:
        save_checkpoint(self.run, trainer, self.cfg)
        meta = self.run.meta()
        playback = greedy_episodes(
            trainer.agent, self.cfg.env, self.cfg.run.eval_episodes, self.cfg.train.seed + 10_000
        )
        result = summarize(playback.returns, meta["env"], meta.get("preset") == "atari100k")
        record = {"step": trainer.env_steps, **{k: v for k, v in result.items() if k != "returns"}}
        self.run.update(lambda m: m.setdefault("evals", []).append(record))
        self.logger.scalars(trainer.env_steps, {"eval/return": result["mean"]})


def save_checkpoint(run: Run, trainer: Trainer, cfg: Config) -> None:
    tensors, metadata = trainer_state(trainer)
    first_chunk = trainer.chunks_needed(trainer.replay.cursor).start
    run.save_checkpoint(tensors, metadata, trainer.env_steps, {"updates": trainer.updates, "first_chunk": first_chunk})
    run.update(lambda m: m.update(progress=progress_of(trainer)))
    run.prune_checkpoints(cfg.run.keep_checkpoints)


def progress_record(env_steps: int, updates: int, wall_time: float, action_repeat: int) -> dict[str, Any]:
    return {
        "env_steps": env_steps,
        "frames": env_steps * action_repeat,
        "updates": updates,
        "wall_time": round(wall_time, 2),
    }


def progress_of(trainer: Trainer) -> dict[str, Any]:
    return progress_record(trainer.env_steps, trainer.updates, trainer.wall_time, trainer.env.spec.action_repeat)


def train(
    cfg: Config,
    home: str | Path | None = None,
    name: str | None = None,
    preset: str = "custom",
    command: Sequence[str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_created: Callable[[Run], None] | None = None,
) -> Outcome:
    """Create a run in the registry and train it to cfg.train.steps agent steps."""
    cfg = prepare(cfg)
    device = configure_torch(cfg)
    env = make_env(cfg.env, cfg.train.seed)
    try:
        spec = env.spec
        params = parameter_count(cfg, spec.obs_space, spec.action_dim, spec.discrete, spec.num_agents)
        preflight(cfg, spec.obs_space, params, spec.num_agents)
        trainer = Trainer(cfg, env, device, resolve_precision(cfg.run.precision, device))
        run = Registry(home).create(
            {
                "env": cfg.env.name,
                "preset": preset,
                "seed": cfg.train.seed,
                "command": " ".join(command if command is not None else sys.argv),
                "versions": versions(),
                "device": str(device),
                "precision": precision_label(cfg, device),
                "target_steps": cfg.train.steps,
                "progress": {"env_steps": 0, "frames": 0, "updates": 0, "wall_time": 0.0},
                "env_spec": {
                    "obs": {key: list(shape) for key, shape in spec.obs_space.items()},
                    "action_dim": spec.action_dim,
                    "discrete": spec.discrete,
                    "action_repeat": spec.action_repeat,
                    "agents": spec.num_agents,
                },
                "parameters": params,
                "checkpoints": [],
                "evals": [],
                "history": [{"event": "created", "time": now()}],
                "error": None,
                "config": cfg.to_dict(),
            },
            name,
        )
        if on_created:
            on_created(run)
        with run.locked():
            logger = MetricsLogger(run.path)
            trainer.hooks = RunHooks(run, cfg, logger, progress)
            return _execute(run, cfg, trainer, logger, should_stop)
    finally:
        env.close()


def resume(
    ref: str,
    home: str | Path | None = None,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    checkpoint: str | int = "latest",
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Continue a run from a checkpoint (default: its latest) to `steps` total agent steps."""
    run = Registry(home).resolve(ref)
    unsafe = [k for k in override_keys(overrides) if k not in SAFE_RESUME_KEYS]
    if unsafe:
        raise UsageError(
            f"{unsafe[0]} cannot change on resume because it changes what the run computes; only "
            f"{', '.join(sorted(SAFE_RESUME_KEYS))} may. Start a new run with `dreamctl train` instead."
        )
    with run.locked():
        run.remove_temp_files()
        meta = run.meta()
        cfg = apply_overrides(from_dict(meta["config"], source=f"{run.ref}'s run.yaml"), overrides)
        # A run killed before its first checkpoint restarts from step 0, which computes the same run again.
        entry = run.find_checkpoint(checkpoint, meta) if meta.get("checkpoints") or checkpoint != "latest" else None
        start = entry["step"] if entry else 0
        target = steps if steps is not None else int(meta.get("target_steps", cfg.train.steps))
        if target <= start:
            raise UsageError(
                f"{run.ref} is already at {start} agent steps; pass --steps above that to train it further."
            )
        cfg.train.steps = target
        cfg = prepare(cfg)
        tensors, metadata = run.load_checkpoint(entry) if entry else ({}, {})
        device = configure_torch(cfg)
        resumes = sum(1 for h in meta.get("history", []) if h.get("event") == "resumed")
        env = make_env(cfg.env, cfg.train.seed + resumes + 1 if entry else cfg.train.seed)
        try:
            trainer = Trainer(cfg, env, device, resolve_precision(cfg.run.precision, device))
            event = {
                "event": "resumed",
                "time": now(),
                "from_step": start,
                "target_steps": target,
                "overrides": list(overrides),
                "device": str(device),
            }
            if entry:
                event["env_restored"] = restore_trainer(trainer, tensors, metadata, run.read_chunk)
                if not event["env_restored"]:
                    event["note"] = "the env cannot save its state, so new episodes were started"
            else:
                event["note"] = "no checkpoint had been written, so training restarted from step 0"
                for chunk in run.replay_dir.glob("chunk-*.bin"):
                    chunk.unlink()
            logger = MetricsLogger(run.path, resume_step=start)
            trainer.hooks = RunHooks(run, cfg, logger, progress)
            run.drop_checkpoints_after(start)

            def mark(m: dict[str, Any]) -> None:
                m.update(status="running", error=None, target_steps=target, config=cfg.to_dict(), device=str(device))
                m.setdefault("history", []).append(event)

            run.update(mark)
            return _execute(run, cfg, trainer, logger, should_stop)
        finally:
            env.close()


def _execute(
    run: Run, cfg: Config, trainer: Trainer, logger: MetricsLogger, should_stop: Callable[[], bool] = lambda: False
) -> Outcome:
    try:
        finished = trainer.run(cfg.train.steps, should_stop)
        save_checkpoint(run, trainer, cfg)
        status = "finished" if finished else "interrupted"

        def close(m: dict[str, Any]) -> None:
            m.update(status=status, progress=progress_of(trainer))
            if finished and cfg.train.score_window_frames:
                m["score"] = window_score(run, trainer, cfg)

        run.update(close)
        return Outcome(run, finished, trainer.env_steps, trainer.last_return)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, DreamctlError) else f"{type(exc).__name__}: {exc}"
        run.update(lambda m: m.update(status="failed", error=message, progress=progress_of(trainer)))
        raise
    finally:
        logger.close()


def window_score(run: Run, trainer: Trainer, cfg: Config) -> dict[str, Any]:
    """Atari100k's score: mean return of the training episodes that end in the last `window` frames."""
    end = cfg.train.steps * trainer.env.spec.action_repeat
    start = end - cfg.train.score_window_frames
    returns = [e["return"] for e in read_jsonl(run.path / "episodes.jsonl") if start < e["frame"] <= end]
    if not returns:
        return {"value": None, "episodes": 0, "rule": f"no training episode ended in frames ({start}, {end}]"}
    return {
        "value": float(np.mean(returns)),
        "episodes": len(returns),
        "rule": f"mean return of training episodes ending in frames ({start}, {end}]",
    }
