"""The library's entry points for training: `train` (config in, run out) and `resume`.

They glue the registry to the trainer: create or lock the run, build env and trainer, stream chunks,
checkpoints, logs and evaluations into the run folder, and record how the run ended in run.yaml.

A process that torchrun started as one of N ranks (`dreamctl train --nproc N`) joins the others here: rank 0
does all of the above for the whole job, the other ranks train beside it and pass their chunks and state through
it (runs/sharded.py).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamctl.config import SAFE_RESUME_KEYS, Config, apply_overrides, from_dict, override_keys
from dreamctl.envs import EnvSpec, check_new_run_env
from dreamctl.errors import DreamctlError, SecondSignal, StoppedAtOnce, UsageError
from dreamctl.runs.metrics import MetricsLogger, read_jsonl
from dreamctl.runs.registry import Registry
from dreamctl.runs.run import Run, now, obs_space_of
from dreamctl.runs.run_hooks import RunHooks, collapse_recorded, progress_of, save_checkpoint
from dreamctl.runs.sharded import (
    chunk_reader,
    env_seed,
    follow,
    raise_refusal,
    rank_trainer,
    resume_follower,
    scatter_state,
)
from dreamctl.runs.system import (
    parameter_count,
    precision_label,
    preflight,
    prepare,
    versions,
)
from dreamctl.training.launched import launched_ranks
from dreamctl.training.ranks import RankLost, Ranks, host_name, join, leaving
from dreamctl.training.state import NOT_SAVEABLE, restore_trainer
from dreamctl.training.trainer import Progress, Trainer


@dataclass
class Outcome:
    run: Run | None  # None on ranks other than 0, which know no run
    finished: bool  # False when stopped early (signal)
    env_steps: int
    last_return: float | None
    ranks: int = 1  # data-parallel ranks, which a resume must use again


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
    """Create a run in the registry and train it to cfg.train.steps agent steps (as one of torchrun's ranks when
    it started this process)."""
    cfg = prepare(cfg)
    check_new_run_env(cfg)
    ranks = join() if launched_ranks() else None
    with leaving(ranks):
        rank, world = (0, 1) if ranks is None else (ranks.rank, ranks.world)
        params = 0

        def count_and_fit(spec: EnvSpec) -> None:
            nonlocal params
            params = parameter_count(cfg, spec.obs_space, spec.action_dim, spec.discrete, spec.num_agents)
            preflight(cfg, spec.obs_space, params, spec.num_agents, world)

        with rank_trainer(cfg, env_seed(cfg, 0, False, rank, world), ranks, count_and_fit, new_run=True) as trainer:
            hosts = [host_name()] if ranks is None else ranks.all_gather(host_name())
            if ranks is not None and not ranks.is_root:
                created: dict[str, Any] = ranks.broadcast(None)
                raise_refusal(created)  # rank 0 created the run, or says why it could not
                ranks.resume_command = created["resume_command"]
                return Outcome(None, follow(cfg, trainer, ranks, should_stop), trainer.env_steps, trainer.last_return)
            meta = _new_run_meta(cfg, trainer.env.spec, preset, command, trainer.device, hosts, params)
            try:
                run = Registry(home).create(meta, name)
            except Exception as exc:
                _tell_followers(ranks, exc, "create the run")
                raise
            if ranks is not None:
                ranks.resume_command = run.resume_command(world)
                ranks.broadcast({"resume_command": ranks.resume_command})
            if on_created:
                on_created(run)
            with run.locked():
                logger = MetricsLogger(run.path)
                trainer.hooks = RunHooks(run, cfg, logger, progress, ranks)
                return _execute(run, cfg, trainer, logger, should_stop)


def _new_run_meta(
    cfg: Config,
    spec: EnvSpec,
    preset: str,
    command: Sequence[str] | None,
    device: torch.device,
    hosts: list[str],
    params: int,
) -> dict[str, Any]:
    """run.yaml of a run about to be created."""
    return {
        "env": cfg.env.name,
        "preset": preset,
        "seed": cfg.train.seed,
        "command": " ".join(command if command is not None else sys.argv),
        "versions": versions(),
        "device": str(device),
        "precision": precision_label(cfg, device),
        "ranks": {"world_size": len(hosts), "hosts": hosts},
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
    }


def resume(
    ref: str,
    home: str | Path | None = None,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    checkpoint: str | int = "latest",
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    warn: Callable[[str], None] = lambda text: None,
) -> Outcome:
    """Continue a run from a checkpoint (default: its latest) to `steps` total agent steps, with as many ranks as
    trained it. `warn` hears, in one sentence, of episodes that could not be continued where the env saves them."""
    ranks = join() if launched_ranks() else None
    with leaving(ranks):
        if ranks is not None and not ranks.is_root:
            trainer, finished = resume_follower(ranks, should_stop)
            return Outcome(None, finished, trainer.env_steps, trainer.last_return)
        return _resume(ref, home, steps, overrides, checkpoint, progress, should_stop, warn, ranks)


def _resume(
    ref: str,
    home: str | Path | None,
    steps: int | None,
    overrides: Sequence[str],
    checkpoint: str | int,
    progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool],
    warn: Callable[[str], None],
    ranks: Ranks | None,
) -> Outcome:
    world = 1 if ranks is None else ranks.world
    with contextlib.ExitStack() as held:
        try:
            run = Registry(home).resolve(ref)
            apply_overrides(Config(), overrides)  # a mistyped or malformed override is named as such first
            keys = override_keys(overrides)
            unsafe = [k for k in keys if k not in SAFE_RESUME_KEYS]
            if unsafe:
                raise UsageError(
                    f"{unsafe[0]} cannot change on resume because it changes what the run computes (only "
                    f"{', '.join(sorted(SAFE_RESUME_KEYS))} may); start a new run with `dreamctl train` instead."
                )
            held.enter_context(run.locked())
            run.remove_temp_files()
            meta = run.meta()
            trained_by = int(meta.get("ranks", {}).get("world_size", 1))
            if trained_by != world:
                how = "without --nproc" if trained_by == 1 else f"with --nproc {trained_by}"
                raise UsageError(
                    f"{run.ref} was trained by {trained_by} rank{'s' * (trained_by > 1)} and each rank's replay "
                    f"and envs are in its checkpoints, so it resumes only {how}."
                )
            cfg = apply_overrides(from_dict(meta["config"], source=f"{run.ref}'s run.yaml"), overrides)
            # A run killed before its first checkpoint restarts from step 0, which computes the same run again.
            listed = meta.get("checkpoints") or checkpoint != "latest"
            entry = run.find_checkpoint(checkpoint, meta) if listed else None
            start = entry["step"] if entry else 0
            if steps is None and "train.steps" not in keys:
                steps = int(meta.get("target_steps", cfg.train.steps))
            target = cfg.train.steps if steps is None else steps
            if target <= start:
                raise UsageError(
                    f"{run.ref} is already at {start} agent steps; pass --steps above that to train it further."
                )
            cfg.train.steps = target
            cfg = prepare(cfg)
            spec, obs_space = meta["env_spec"], obs_space_of(meta)
            agents = int(spec.get("agents", 1))
            params = meta.get("parameters") or parameter_count(
                cfg, obs_space, spec["action_dim"], spec["discrete"], agents
            )
            preflight(cfg, obs_space, int(params), agents, world, resuming=True)
            tensors, metadata = run.load_checkpoint(entry) if entry else ({}, {})
            if entry:
                run.check_chunks(entry, world)
        except Exception as exc:
            _tell_followers(ranks, exc)
            raise
        resumes = sum(1 for h in meta.get("history", []) if h.get("event") == "resumed")
        resume_command = run.resume_command(world)
        plan = {
            "config": cfg.to_dict(),
            "resumes": resumes,
            "restore": entry is not None,
            "metadata": metadata,
            "resume_command": resume_command,
        }
        if ranks is not None:
            ranks.resume_command = resume_command
            ranks.broadcast(plan)
        with rank_trainer(cfg, env_seed(cfg, resumes, entry is not None, 0, world), ranks) as trainer:
            device = trainer.device
            event = {
                "event": "resumed",
                "time": now(),
                "from_step": start,
                "target_steps": target,
                "overrides": list(overrides),
                "device": str(device),
            }
            if entry:
                if ranks is not None:
                    tensors = scatter_state(ranks, tensors)
                reason = restore_trainer(trainer, tensors, metadata, chunk_reader(run, ranks))
                event["env_restored"] = reason is None
                if reason is not None:
                    event["note"] = f"{reason}, so new episodes were started"
                    if reason != NOT_SAVEABLE:  # a surprise, where the other is the env's design
                        warn(f"{run.ref}: {event['note']}.")
            else:
                event["note"] = "no checkpoint had been written, so training restarted from step 0"
                for chunk in run.replay_dir.glob("chunk-*.bin"):
                    chunk.unlink()
            # The later checkpoints go before the logs are cut back to `start`: a resume that dies in between then
            # leaves log rows that the next resume cuts, never cut logs beside checkpoints that would continue them.
            run.drop_checkpoints_after(start)
            logger = MetricsLogger(run.path, resume_step=start)
            warned = collapse_recorded(run.meta().get("warnings") or [], trainer)
            trainer.hooks = RunHooks(run, cfg, logger, progress, ranks, warned)

            def mark(m: dict[str, Any]) -> None:
                m.update(status="running", error=None, target_steps=target, config=cfg.to_dict(), device=str(device))
                m["progress"] = progress_of(trainer)
                m["precision"] = precision_label(cfg, device)  # `auto` may resolve otherwise on another device
                m.setdefault("history", []).append(event)

            run.update(mark)
            return _execute(run, cfg, trainer, logger, should_stop)


def _tell_followers(ranks: Ranks | None, exc: Exception, doing: str = "resume the run") -> None:
    """Send rank 0's refusal or failure before the plan to the other ranks, which raise it too (and stay silent:
    rank 0 says it), rather than wait for a plan that will not come."""
    if ranks is not None:
        relayed = exc if isinstance(exc, DreamctlError) else DreamctlError(f"rank 0 could not {doing}: {exc}")
        ranks.broadcast({"error": relayed})
        relayed.every_rank = True  # as the copies the others receive are (raise_refusal)


def _execute(
    run: Run, cfg: Config, trainer: Trainer, logger: MetricsLogger, should_stop: Callable[[], bool] = lambda: False
) -> Outcome:
    try:
        finished = trainer.run(cfg.train.steps, should_stop)
        save_checkpoint(run, trainer, cfg, logger)
        status = "finished" if finished else "interrupted"

        def close(m: dict[str, Any]) -> None:
            m.update(status=status, progress=progress_of(trainer))
            if finished and cfg.train.score_window_frames:
                m["score"] = window_score(run, trainer, cfg)

        run.update(close)
        return Outcome(run, finished, trainer.env_steps, trainer.last_return, trainer.world)
    except SecondSignal as exc:  # the last checkpoint stands
        message = (
            f"{run.ref} stopped at once at {trainer.env_steps:,} agent steps; `{run.resume_command(trainer.world)}` "
            "continues it from its last checkpoint."
        )
        run.update(lambda m: m.update(status="interrupted", error=message, progress=progress_of(trainer)))
        raise StoppedAtOnce(message, exc.signum) from None
    except BaseException as exc:
        message = str(exc) if isinstance(exc, DreamctlError) else f"{type(exc).__name__}: {exc}"
        status = "interrupted" if isinstance(exc, RankLost) else "failed"  # a lost rank is no fault of the run's
        run.update(lambda m: m.update(status=status, error=message, progress=progress_of(trainer)))
        raise
    finally:
        logger.close()


def window_score(run: Run, trainer: Trainer, cfg: Config) -> dict[str, Any]:
    """Atari100k's score: mean return of the training episodes that end in the last `window` frames."""
    end = trainer.frames()
    start = end - cfg.train.score_window_frames
    returns = [e["return"] for e in read_jsonl(run.path / "episodes.jsonl") if start < e["frame"] <= end]
    if not returns:
        return {"value": None, "episodes": 0, "rule": f"no training episode ended in frames ({start}, {end}]"}
    return {
        "value": float(np.mean(returns)),
        "episodes": len(returns),
        "rule": f"mean return of training episodes ending in frames ({start}, {end}]",
    }
