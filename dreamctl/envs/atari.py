"""Atari through ale-py's vectorised env (C++ threads), configured to the published protocols
(docs/architecture.md).

Every protocol setting of the config's `env` section maps onto an AtariVectorEnv argument: action repeat
with max-pooling over the last two frames, sticky actions, 0 to `noop_max` no-ops at reset, the frame cap,
the minimal or full action set, the life-loss signal and reward clipping; FIRE is never pressed for the
agent and frames are not stacked. With `resize: area` the env itself resizes (area interpolation, as
DreamerV2's code did with cv2.INTER_AREA). With `resize: bilinear` (Atari100k as run by DreamerV3, which
used Pillow's bilinear filter) the env returns full 210x160 frames and they are resized here with
antialiased bilinear interpolation, which matches Pillow's.

ALE's vectorised env cannot clone its emulators, so its state is not saved: a resumed run starts new episodes.
"""

from __future__ import annotations

import os

import numpy as np

from dreamctl.config import EnvConfig
from dreamctl.envs.base import EnvSpec, VectorEnvAdapter, convert_frames
from dreamctl.envs.names import rom_id

NATIVE_SIZE = (210, 160)


class Atari(VectorEnvAdapter):
    saveable = False

    def __init__(self, game: str, cfg: EnvConfig, num_envs: int, seed: int):
        from ale_py import AtariVectorEnv

        super().__init__(num_envs, seed)
        self.cfg = cfg
        self.resize_here = cfg.resize == "bilinear"
        height, width = NATIVE_SIZE if self.resize_here else (cfg.image_size, cfg.image_size)
        self.env = AtariVectorEnv(
            rom_id(game),
            num_envs,
            num_threads=min(num_envs, os.cpu_count() or 1),
            img_height=height,
            img_width=width,
            grayscale=cfg.grayscale,
            stack_num=1,
            frameskip=cfg.action_repeat,
            maxpool=cfg.max_pool,
            noop_max=cfg.noop_max + 1,  # ale-py draws 0 to its noop_max - 1 no-ops; the config means 0 to noop_max
            repeat_action_probability=cfg.sticky_actions,
            full_action_space=cfg.action_set == "full",
            max_num_frames_per_episode=cfg.max_frames,
            episodic_life=cfg.life_loss,
            reward_clipping=cfg.reward_clip,
            use_fire_reset=False,
            autoreset_mode="NextStep",
        )
        actions = int(self.env.single_action_space.n)
        channels = 1 if cfg.grayscale else 3
        self.spec = EnvSpec(
            game, {"image": (cfg.image_size, cfg.image_size, channels)}, actions, True, cfg.action_repeat
        )

    def _observations(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 1, H, W[, 3]) uint8 -> image (N, size, size, C) uint8."""
        frames = obs[:, 0]
        if not self.resize_here:
            return {"image": np.ascontiguousarray(frames if frames.ndim == 4 else frames[..., None])}
        return {"image": convert_frames(frames, self.cfg.image_size, self.cfg.grayscale, "bilinear")}
