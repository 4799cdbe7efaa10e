"""`dreamctl imagine`: an open-loop video of the world model, real frames beside the model's dream (and, for vector
observations, the figure of `dream_figure`).

K env copies play the run's policy for C + H steps. The model observes the first C real frames (its
posterior reconstructions are shown), then dreams H steps from its prior under the real actions. The video's
rows are truth / model / error, as in the official DreamerV2 open-loop videos; a green border marks the
observed context and a red border the dream, and the step index is printed in the corner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamctl.config import from_dict
from dreamctl.envs import BatchedEnv, make_env
from dreamctl.errors import DreamctlError, UsageError
from dreamctl.model.agent import Agent
from dreamctl.model.rssm import State
from dreamctl.runs.fileio import make_folder
from dreamctl.runs.registry import Registry
from dreamctl.runs.run import obs_space_of
from dreamctl.tools.dream_figure import FIGURE_FORMATS, write_vector_figure
from dreamctl.tools.evaluate import load_agent
from dreamctl.tools.video import FORMATS, check_output, draw_number, to_rgb, upscale, write_video
from dreamctl.training.rollout import act

SCALE = 3
BORDER = 2


@torch.inference_mode()
def collect(agent: Agent, env: BatchedEnv, steps: int) -> dict[str, torch.Tensor]:
    """Play the (sampled) policy; returns every observation key (K, T, ...), action (K, T, A) one-hot, is_first."""
    state = agent.initial_act_state(env.num_envs)
    step = env.reset()
    obs, actions = [step.obs], [np.zeros((env.num_envs, env.spec.action_dim), np.float32)]
    firsts = [step.is_first]
    for _ in range(steps - 1):
        action, action_t, state = act(agent, step, state)
        step = env.step(action)
        obs.append(step.obs)
        actions.append(np.where(step.is_first[:, None], 0.0, action_t.cpu().numpy()))
        firsts.append(step.is_first)

    def stacked(xs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(xs, 1)).to(agent.device)

    data = {key: stacked([o[key] for o in obs]) for key in obs[0]}
    return {**data, "action": stacked(actions).float(), "is_first": stacked(firsts).float()}


@torch.inference_mode()
def open_loop(agent: Agent, data: dict[str, torch.Tensor], context: int) -> dict[str, torch.Tensor]:
    """The model's mean of every observation key (K, T, ...): posterior reconstructions for t < C, the prior's
    dream afterwards. Images come back as uint8 (K, T, H, W, C), vectors as float32 (K, T, size)."""
    wm = agent.world_model
    length = data["action"].shape[1]
    with agent.autocast():
        seen = {key: value[:, :context] for key, value in data.items()}
        embed = wm.embed(wm.preprocess(seen))
        post = wm.rssm.observe(embed, data["action"][:, :context], data["is_first"][:, :context])
        state = State(*(x[:, -1] for x in post))
        prior = []
        for t in range(context, length):
            state = wm.rssm.img_step(state, data["action"][:, t])
            prior.append(state.feat())
        means = wm.decode(torch.cat([post.feat(), torch.stack(prior, 1)], 1))
    out = {key: means[key].float() for key in wm.vector_keys}
    for key in wm.image_keys:
        out[key] = ((means[key] + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
    return out


def compose(truth: np.ndarray, model: np.ndarray, context: int, agents: int = 1) -> np.ndarray:
    """(K, T, H, W, C) truth and model, K = worlds x agents (a world's agents adjacent) -> (T, 3 rows per agent x
    one column per world) RGB video frames, upscaled and labelled: agent 0's truth, model and error rows, then agent
    1's, and so on."""
    error = ((model.astype(np.int16) - truth.astype(np.int16)) // 2 + 128).clip(0, 255).astype(np.uint8)
    rows = [to_rgb(x) for x in (truth, model, error)]
    t = truth.shape[1]
    tiles = np.stack(rows, 0)  # (3, K, T, H, W, 3)
    tiles = np.moveaxis(tiles.reshape(3, -1, agents, *tiles.shape[2:]), 2, 0)  # (agents, 3, worlds, T, H, W, 3)
    tiles = upscale(tiles.reshape(3 * agents, *tiles.shape[2:]), SCALE)  # row a * 3 + (truth, model, error)
    n_rows, worlds = tiles.shape[:2]
    h, w = tiles.shape[-3:-1]
    grid = np.zeros((t, n_rows * (h + 2 * BORDER), worlds * (w + 2 * BORDER), 3), np.uint8)
    for step in range(t):
        color = (0, 200, 0) if step < context else (220, 0, 0)
        for r in range(n_rows):
            for c in range(worlds):
                top, left = r * (h + 2 * BORDER), c * (w + 2 * BORDER)
                grid[step, top : top + h + 2 * BORDER, left : left + w + 2 * BORDER] = color
                grid[step, top + BORDER : top + BORDER + h, left + BORDER : left + BORDER + w] = tiles[r, c, step]
        draw_number(grid[step], step, BORDER + 2, BORDER + 2)
    return grid


def imagine(
    ref: str,
    out: str | Path | None = None,
    home: str | Path | None = None,
    context: int = 5,
    horizon: int = 45,
    samples: int = 4,
    seed: int = 0,
    checkpoint: str | int = "latest",
    device: str = "auto",
) -> dict[str, Any]:
    """Write the open-loop video of a run's images (default: <run>/videos/imagine-step-<S>.mp4) and, for its vector
    observations, a figure beside it (.png; the only output of a run without images, where `out` may also be .svg,
    .pdf, or .mp4/.gif to draw it step by step); returns what was written."""
    for name, value, low in (("context", context, 1), ("horizon", horizon, 1), ("samples", samples, 1)):
        if value < low:
            raise UsageError(f"--{name} must be at least {low}, got {value}.")
    run = Registry(home).resolve(ref)
    shapes = obs_space_of(run.meta()).values()
    has_images = any(len(shape) == 3 for shape in shapes)
    formats = FORMATS if has_images else FIGURE_FORMATS + FORMATS
    out_path = check_output(Path(out), formats) if out is not None else None
    vectors = any(len(shape) == 1 for shape in shapes)
    if out_path is not None and has_images and vectors:  # the figure of the vectors goes beside the video
        try:
            check_output(out_path.with_suffix(".png"), FIGURE_FORMATS)
        except UsageError as exc:
            said = str(exc).rstrip(".")
            raise UsageError(f"{said} (the figure of the run's vector observations goes beside the video).") from None
    agent, meta, step = load_agent(run, checkpoint, device)
    wm = agent.world_model
    if out_path is None:  # default: the run's own videos/ folder
        try:
            make_folder(run.path / "videos")
        except OSError as exc:
            raise DreamctlError(
                f"cannot make {run.path / 'videos'} ({exc.strerror}); pass --out FILE to write the dream elsewhere."
            ) from None
        out_path = run.path / "videos" / f"imagine-step-{step}{'.mp4' if has_images else '.png'}"
    cfg = from_dict(meta["config"])
    env = make_env(cfg.env, seed, num_envs=samples)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            data = collect(agent, env, context + horizon)
            model = open_loop(agent, data, context)
    finally:
        env.close()
    result: dict[str, Any] = {
        "run": run.ref,
        "checkpoint_step": step,
        "out": str(out_path),
        "figure": None,
        "panels": 0,
        "frames": context + horizon,
        "context": context,
        "horizon": horizon,
        "samples": samples,
        "agents": env.spec.num_agents,
    }
    if wm.image_keys:
        key = wm.image_keys[0]
        truth, dream = data[key].cpu().numpy(), model[key].cpu().numpy()
        write_video(out_path, compose(truth, dream, context, env.spec.num_agents), fps=10)
        result["dream_mse"] = float(((dream[:, context:] / 255.0 - truth[:, context:] / 255.0) ** 2).mean())
    if wm.vector_keys:
        figure = out_path if not wm.image_keys else out_path.with_suffix(".png")
        truth_v = {key: data[key].cpu().numpy() for key in wm.vector_keys}
        dream_v = {key: model[key].cpu().numpy() for key in wm.vector_keys}
        result["figure"], result["panels"] = str(figure), write_vector_figure(figure, truth_v, dream_v, context)
        if not wm.image_keys:
            errors = [((dream_v[k] - truth_v[k])[:, context:] ** 2).mean() for k in wm.vector_keys]
            result["dream_mse"] = float(np.mean(errors))
    return result
