"""Any installed Gymnasium environment that shows pixels: `gym:<id>`.

The observation must be an image (uint8 H x W x C) or the env must render `rgb_array` frames, which then
become the observation. Actions must be Discrete or a 1-D Box (the agent's [-1, 1] is rescaled to the
box's bounds). Frames are converted to the configured gray/RGB and resized to the configured size. Copies
run in one process when there is one, in worker processes otherwise (gymnasium's AsyncVectorEnv), with
Gymnasium's next-step autoreset, which is the convention of envs/base.py.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

from dreamctl.config import EnvConfig
from dreamctl.envs.base import EnvSpec, VectorEnvAdapter, convert_frames
from dreamctl.errors import UsageError


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times, summing rewards, stopping early when the episode ends."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3)))
    )


def _make(env_id: str, use_render: bool, repeat: int) -> gym.Env:
    env = gym.make(env_id, render_mode="rgb_array") if use_render else gym.make(env_id)
    if use_render:
        env = gym.wrappers.AddRenderObservation(env, render_only=True)
    return ActionRepeat(env, repeat) if repeat > 1 else env


def inspect(env_id: str) -> tuple[bool, gym.Space]:
    """Decide how to get pixels from the env, trying it once; refuse, with the reason, what cannot work."""
    try:
        probe = gym.make(env_id)
    except gym.error.Error as exc:
        raise UsageError(
            f"gym:{env_id} could not be made ({exc}); check the id and that its package is installed."
        ) from None
    try:
        obs_space, action_space = probe.observation_space, probe.action_space
        render_modes = probe.metadata.get("render_modes", [])
    finally:
        probe.close()
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) != 1:
        raise UsageError(
            f"gym:{env_id} has a {action_space.shape}-shaped Box action space; dreamctl supports "
            f"Discrete and 1-D Box actions."
        )
    if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise UsageError(
            f"gym:{env_id} has {type(action_space).__name__} actions; dreamctl supports Discrete and 1-D Box actions."
        )
    if _is_image(obs_space):
        return False, action_space
    if "rgb_array" not in render_modes:
        raise UsageError(
            f"gym:{env_id} neither observes images (uint8 HxWxC) nor renders rgb_array frames; "
            f"dreamctl learns from pixels."
        )
    try:
        env = _make(env_id, True, 1)
        frame, _ = env.reset(seed=0)
        env.close()
    except Exception as exc:  # a renderer whose package is missing, a display it cannot open, ...
        raise UsageError(f"gym:{env_id} observes no images and rendering its frames failed ({exc}).") from None
    if not _is_image(gym.spaces.Box(0, 255, np.asarray(frame).shape, np.uint8)) or np.asarray(frame).dtype != np.uint8:
        raise UsageError(
            f"gym:{env_id} renders {np.asarray(frame).dtype} arrays of shape "
            f"{np.asarray(frame).shape}, not uint8 HxWxC frames."
        )
    return True, action_space


class GymEnv(VectorEnvAdapter):
    def __init__(self, env_id: str, cfg: EnvConfig, num_envs: int, seed: int):
        super().__init__(num_envs, seed)
        self.cfg = cfg
        use_render, action_space = inspect(env_id)
        make = functools.partial(_make, env_id, use_render, cfg.action_repeat)
        vector = gym.vector.AsyncVectorEnv if num_envs > 1 else gym.vector.SyncVectorEnv
        self.env = vector([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if isinstance(action_space, gym.spaces.Discrete):
            action_dim = int(action_space.n)
        else:
            assert isinstance(action_space, gym.spaces.Box)  # `inspect` refuses every other kind of action space
            action_dim = int(action_space.shape[0])
            self.low, self.high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
        channels = 1 if cfg.grayscale else 3
        self.spec = EnvSpec(
            f"gym:{env_id}", (cfg.image_size, cfg.image_size, channels), action_dim, self.discrete, cfg.action_repeat
        )

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        if self.discrete:
            return np.asarray(action, np.int64)
        return self.low + (np.clip(action, -1.0, 1.0) + 1.0) / 2.0 * (self.high - self.low)

    def _frames(self, obs: np.ndarray) -> np.ndarray:
        return convert_frames(obs, self.cfg.image_size, self.cfg.grayscale, self.cfg.resize)
