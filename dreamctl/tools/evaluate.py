"""`dreamctl eval`: episodes of a run's checkpoint under the run's own env protocol, recorded in run.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dreamctl.config import from_dict
from dreamctl.errors import DreamctlError, UsageError
from dreamctl.model.agent import Agent
from dreamctl.runs.evals import evaluation_result, record_evaluation
from dreamctl.runs.registry import Registry
from dreamctl.runs.run import Run, obs_space_of
from dreamctl.runs.system import inference_precision, resolve_device
from dreamctl.tools.video import check_output, write_video
from dreamctl.training.rollout import evaluation_episodes


def load_agent(run: Run, checkpoint: str | int, device: str = "auto") -> tuple[Agent, dict[str, Any], int]:
    """The run's agent with a checkpoint's weights (verified); returns (agent, run.yaml, checkpoint step)."""
    meta = run.meta()
    entry = run.find_checkpoint(checkpoint, meta)
    tensors, _ = run.load_checkpoint(entry)
    cfg = from_dict(meta["config"])
    spec = meta["env_spec"]
    dev = resolve_device(device)
    agent = Agent(
        cfg,
        obs_space_of(meta),
        spec["action_dim"],
        spec["discrete"],
        dev,
        inference_precision(cfg.run.precision, dev),
        spec.get("agents", 1),
    )
    agent.load_state_dict({k[len("agent/") :]: v.to(dev) for k, v in tensors.items() if k.startswith("agent/")})
    agent.eval()
    return agent, meta, entry["step"]


def evaluate(
    ref: str,
    home: str | Path | None = None,
    episodes: int = 10,
    checkpoint: str | int = "latest",
    video: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    sample: bool = False,
) -> dict[str, Any]:
    """Play `episodes` episodes with a run's checkpoint; the result is appended to run.yaml's evals.

    Args:
        ref: the run (`run-42`, `42`, its name or `latest`).
        home: the registry root (default: `dreamctl.runs.registry.default_home()`).
        episodes: how many episodes, spread over up to 8 env copies.
        checkpoint: a checkpoint step, `latest` or `best`.
        video: where to write the first episode (.mp4 or .gif), or None.
        seed: seeds the evaluation envs and the policy's sampling of latents (and of actions, with `sample`).
        device: `auto`, `cpu` or `cuda[:i]`.
        sample: act by sampling the actor (MAMBA's protocol on SMAC, whose win rates are those of the sampling
            policy) instead of taking its mode (DreamerV2's evaluation).
    """
    run = Registry(home).resolve(ref)
    if not os.access(run.path, os.W_OK):  # found before the episodes are played, not after
        raise DreamctlError(f"{run.ref}'s folder {run.path} is read-only; the evaluation could not be recorded.")
    video_path = check_output(Path(video)) if video else None
    agent, meta, step = load_agent(run, checkpoint, device)
    record = None
    if video_path is not None:
        images = [key for key, shape in obs_space_of(meta).items() if len(shape) == 3]
        if not images:
            fix = (
                "; train with --set env.render_pixels=true to observe the rendered frames too"
                if str(meta.get("env", "")).startswith("gym:")
                else ""
            )
            raise UsageError(f"{run.ref} observes no images, so --video has nothing to show{fix}.")
        record = images[0]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        playback = evaluation_episodes(agent, from_dict(meta["config"]).env, episodes, seed, record, sample)
    if video_path is not None and playback.frames is not None:
        write_video(video_path, playback.frames, fps=15, scale=4)
    result = evaluation_result(playback, meta, sample)
    record_evaluation(run, step, result)
    return {"run": run.ref, "checkpoint_step": step, **result}
