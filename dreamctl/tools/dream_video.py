"""`dreamctl imagine`: an open-loop video of the world model, real frames beside the model's dream.

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
from dreamctl.errors import UsageError
from dreamctl.model.agent import Agent
from dreamctl.model.rssm import State
from dreamctl.model.world_model import preprocess_image
from dreamctl.runs.registry import Registry
from dreamctl.tools.evaluate import load_agent
from dreamctl.tools.video import check_output, draw_number, to_rgb, upscale, write_video
from dreamctl.training.rollout import act

SCALE = 3
BORDER = 2


@torch.inference_mode()
def collect(agent: Agent, env: BatchedEnv, steps: int) -> dict[str, torch.Tensor]:
    """Play the (sampled) policy; returns image (K, T, H, W, C) uint8, action (K, T, A) one-hot, is_first."""
    state = agent.initial_act_state(env.num_envs)
    step = env.reset()
    images, actions, firsts = [step.obs], [np.zeros((env.num_envs, env.spec.action_dim), np.float32)], [step.is_first]
    for _ in range(steps - 1):
        action, action_t, state = act(agent, step, state)
        step = env.step(action)
        images.append(step.obs)
        actions.append(np.where(step.is_first[:, None], 0.0, action_t.cpu().numpy()))
        firsts.append(step.is_first)

    def stacked(xs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(xs, 1)).to(agent.device)

    return {"image": stacked(images), "action": stacked(actions).float(), "is_first": stacked(firsts).float()}


@torch.inference_mode()
def open_loop(agent: Agent, data: dict[str, torch.Tensor], context: int) -> np.ndarray:
    """Model frames (K, T, H, W, C) uint8: posterior reconstructions for t < C, prior dream afterwards."""
    wm = agent.world_model
    with agent.autocast():
        embed = wm.encoder(preprocess_image(data["image"][:, :context]))
        post = wm.rssm.observe(embed, data["action"][:, :context], data["is_first"][:, :context])
        state = State(*(x[:, -1] for x in post))
        prior = []
        for t in range(context, data["image"].shape[1]):
            state = wm.rssm.img_step(state, data["action"][:, t])
            prior.append(state.feat())
        feat = torch.cat([post.feat(), torch.stack(prior, 1)], 1)
        mean = wm.decoder(feat).float()
    image = ((mean + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(0, 1, 3, 4, 2).cpu().numpy()


def compose(truth: np.ndarray, model: np.ndarray, context: int) -> np.ndarray:
    """(K, T, H, W, C) truth and model -> (T, 3 rows x K columns) RGB video frames, upscaled and labelled."""
    error = ((model.astype(np.int16) - truth.astype(np.int16)) // 2 + 128).clip(0, 255).astype(np.uint8)
    rows = [to_rgb(x) for x in (truth, model, error)]
    k, t = truth.shape[:2]
    tiles = np.stack(rows, 0)  # (3, K, T, H, W, 3)
    tiles = upscale(tiles, SCALE)
    h, w = tiles.shape[-3:-1]
    grid = np.zeros((t, 3 * (h + 2 * BORDER), k * (w + 2 * BORDER), 3), np.uint8)
    for step in range(t):
        color = (0, 200, 0) if step < context else (220, 0, 0)
        for r in range(3):
            for c in range(k):
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
    """Write the open-loop video (default: <run>/videos/imagine-step-<S>.mp4); returns what was written."""
    for name, value, low in (("context", context, 1), ("horizon", horizon, 1), ("samples", samples, 1)):
        if value < low:
            raise UsageError(f"--{name} must be at least {low}, got {value}.")
    run = Registry(home).resolve(ref)
    out_path = check_output(Path(out)) if out is not None else None
    agent, meta, step = load_agent(run, checkpoint, device)
    if out_path is None:  # default: the run's own videos/ folder
        (run.path / "videos").mkdir(exist_ok=True)
        out_path = run.path / "videos" / f"imagine-step-{step}.mp4"
    cfg = from_dict(meta["config"])
    env = make_env(cfg.env, seed, num_envs=samples)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            data = collect(agent, env, context + horizon)
            model = open_loop(agent, data, context)
    finally:
        env.close()
    truth = data["image"].cpu().numpy()
    video = compose(truth, model, context)
    write_video(out_path, video, fps=10)
    dream_mse = float(((model[:, context:] / 255.0 - truth[:, context:] / 255.0) ** 2).mean())
    return {
        "run": run.ref,
        "checkpoint_step": step,
        "out": str(out_path),
        "frames": int(video.shape[0]),
        "context": context,
        "horizon": horizon,
        "samples": samples,
        "dream_mse": dream_mse,
    }
