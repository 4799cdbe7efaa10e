"""What every environment looks like to the trainer: N copies stepped together, uint8 images out.

Autoreset follows Gymnasium's "next step" rule: after a copy reports `is_last`, its next `step` ignores the
action, restarts the episode and returns the first frame with `is_first` set and reward 0. Every call thus
yields exactly one stored step per copy, so the replay can be written in lockstep.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    name: str  # canonical name: "catch", "atari:pong", "gym:<id>"
    obs_shape: tuple[int, int, int]  # (H, W, C)
    action_dim: int  # number of discrete actions, or continuous dimensions
    discrete: bool
    action_repeat: int  # emulator frames per agent step
    action_names: tuple[str, ...] = ()


class Step(NamedTuple):
    obs: np.ndarray  # uint8 (N, H, W, C)
    reward: np.ndarray  # float32 (N,)
    is_first: np.ndarray  # bool (N,)
    is_last: np.ndarray  # bool (N,)
    is_terminal: np.ndarray  # bool (N,): ended by the game, not by a time limit


class BatchedEnv(ABC):
    spec: EnvSpec
    num_envs: int
    # Whether get_state() captures everything, so that a resumed run continues the same episodes.
    saveable: bool = False

    @abstractmethod
    def reset(self) -> Step:
        """Start every copy's first episode (the seed was given at construction)."""

    @abstractmethod
    def step(self, action: np.ndarray) -> Step:
        """action: int (N,) for discrete envs, float (N, A) in [-1, 1] for continuous ones."""

    def get_state(self) -> dict[str, np.ndarray]:
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - envs without resources need not close anything
        pass


def first_step(obs: np.ndarray) -> Step:
    n = obs.shape[0]
    return Step(obs, np.zeros(n, np.float32), np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool))


class VectorEnvAdapter(BatchedEnv):
    """A Gymnasium-API vector env with next-step autoreset (ale-py's or gymnasium's), seen through `Step`.

    Subclasses set `self.env` and `self.spec` and convert frames and actions.
    """

    env: Any  # the Gymnasium-API vector env

    def __init__(self, num_envs: int, seed: int):
        self.num_envs, self.seed = num_envs, seed
        self.last = np.zeros(num_envs, bool)

    def reset(self) -> Step:
        obs, _ = self.env.reset(seed=self.seed)
        self.last[:] = False
        return first_step(self._frames(obs))

    def step(self, action: np.ndarray) -> Step:
        obs, reward, terminated, truncated, _ = self.env.step(self._env_action(action))
        first = self.last.copy()  # the copies that ended last step have just been reset
        self.last = np.asarray(terminated | truncated, bool)
        return Step(
            self._frames(obs),
            np.asarray(reward, np.float32),
            first,
            self.last.copy(),
            np.asarray(terminated, bool).copy(),
        )

    def close(self) -> None:
        self.env.close()

    @abstractmethod
    def _frames(self, obs: np.ndarray) -> np.ndarray:
        """The env's observations -> uint8 (N, size, size, C)."""

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, np.int64)


def rng_state_bytes(rng: np.random.Generator) -> np.ndarray:
    """A numpy Generator's exact state as uint8 bytes (JSON inside), so it can live in a safetensors file."""
    return np.frombuffer(json.dumps(rng.bit_generator.state).encode(), dtype=np.uint8).copy()


def restore_rng(rng: np.random.Generator, data: np.ndarray) -> None:
    rng.bit_generator.state = json.loads(bytes(np.asarray(data, dtype=np.uint8)).decode())


def convert_frames(frames: np.ndarray, size: int, grayscale: bool, resize: str) -> np.ndarray:
    """uint8 (N, H, W[, C]) -> uint8 (N, size, size, 1 or 3): colour conversion, then resizing.

    `area` averages the covered pixels (cv2's INTER_AREA, DreamerV2); `bilinear` is antialiased bilinear,
    which matches Pillow's BILINEAR (DreamerV3's Atari100k runs).
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(frames, np.uint8))
    if x.dim() == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2).float()
    if grayscale and x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif not grayscale and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        if resize == "bilinear":
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        else:
            x = F.interpolate(x, size=(size, size), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
