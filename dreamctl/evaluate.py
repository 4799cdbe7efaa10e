"""Evaluation episodes: the actor's mode (greedy) under the run's own env protocol, env copies in parallel.

Each env copy plays a fixed quota of episodes (copy i plays episodes i, i + n, ...), so short episodes are not
over-represented the way "first N episodes to finish" would over-represent them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamctl.agent import Agent
from dreamctl.envs import BatchedEnv, make_env
from dreamctl.registry import Registry, Run
from dreamctl.scores import human_normalized
from dreamctl.video import check_output, to_rgb, upscale, write_video

MAX_EVAL_ENVS = 8


@dataclass
class Playback:
    returns: list[float]
    lengths: list[int]
    frames: np.ndarray | None  # the first episode of copy 0, uint8 (T, H, W, C), when recorded


def play(agent: Agent, env: BatchedEnv, episodes: int, greedy: bool = True, record: bool = False) -> Playback:
    n = env.num_envs
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    done = np.zeros(n, int)
    returns, lengths = [], []
    ep_return, ep_length = np.zeros(n), np.zeros(n, int)
    state = agent.initial_act_state(n)
    step = env.reset()
    frames = [step.obs[0]] if record else None
    recording = record
    while (done < quota).any():
        obs = torch.from_numpy(step.obs).to(agent.device)
        first = torch.from_numpy(step.is_first).to(agent.device)
        action_t, state = agent.policy(obs, first, state, greedy=greedy)
        action = (action_t.argmax(-1) if env.spec.discrete else action_t).cpu().numpy()
        step = env.step(action)
        ep_return[step.is_first], ep_length[step.is_first] = 0.0, 0
        ep_return += step.reward
        ep_length += ~step.is_first
        if recording:
            frames.append(step.obs[0])
            recording = not step.is_last[0]
        for i in np.flatnonzero(step.is_last):
            if done[i] < quota[i]:
                returns.append(float(ep_return[i]))
                lengths.append(int(ep_length[i]))
                done[i] += 1
    return Playback(returns, lengths, np.stack(frames) if record else None)


def summarize(returns: list[float], game: str, atari100k: bool) -> dict[str, Any]:
    values = np.asarray(returns, np.float64)
    mean = float(values.mean())
    normalized = human_normalized(game, mean, atari100k)
    return {"episodes": len(returns), "returns": [float(r) for r in returns], "mean": mean,
            "std": float(values.std()), "min": float(values.min()), "max": float(values.max()),
            "human_normalized": None if normalized is None else float(normalized)}


def evaluate_agent(agent: Agent, run_meta: dict[str, Any], episodes: int, seed: int,
                   video: Path | None = None) -> dict[str, Any]:
    from dreamctl.config import from_dict

    cfg = from_dict(run_meta["config"])
    env = make_env(cfg.env, seed, num_envs=min(episodes, MAX_EVAL_ENVS))
    try:
        playback = play(agent, env, episodes, greedy=True, record=video is not None)
    finally:
        env.close()
    if video is not None:
        write_video(video, upscale(to_rgb(playback.frames), 4), fps=15)
    return summarize(playback.returns, run_meta["env"], run_meta.get("preset") == "atari100k")


def load_agent(run: Run, checkpoint: str | int, device: str = "auto") -> tuple[Agent, dict[str, Any], int]:
    """The run's agent with a checkpoint's weights (verified); returns (agent, run.yaml, checkpoint step)."""
    from dreamctl.agent import resolve_device
    from dreamctl.config import from_dict

    meta = run.meta()
    entry = run.find_checkpoint(checkpoint, meta)
    tensors, _ = run.load_checkpoint(entry)
    cfg = from_dict(meta["config"])
    spec = meta["env_spec"]
    dev = resolve_device(device)
    agent = Agent(cfg, tuple(spec["obs_shape"]), spec["action_dim"], spec["discrete"], dev)
    weights = {k[len("agent/"):]: v.to(dev) for k, v in tensors.items() if k.startswith("agent/")}
    agent.load_state_dict(weights)
    agent.eval()
    return agent, meta, entry["step"]


def evaluate(ref: str, home: str | Path | None = None, episodes: int = 10, checkpoint: str | int = "latest",
             video: str | Path | None = None, seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """Play `episodes` greedy episodes with a run's checkpoint; the result is appended to run.yaml's evals."""
    run = Registry(home).resolve(ref)
    video_path = check_output(Path(video)) if video else None
    agent, meta, step = load_agent(run, checkpoint, device)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        result = evaluate_agent(agent, meta, episodes, seed, video_path)
    record = {"step": step, **{k: v for k, v in result.items() if k != "returns"}}
    run.update(lambda m: m.setdefault("evals", []).append(record))
    return {"run": run.ref, "checkpoint_step": step, **result}
