"""What every environment looks like to the trainer: N copies stepped together, a dict of observations out.

Observations are named arrays: images are uint8 (H, W, C), vectors float32 (size,); the rank tells them apart
(`is_image`). Autoreset follows Gymnasium's "next step" rule: after a copy reports `is_last`, its next `step`
ignores the action, restarts the episode and returns the first observation with `is_first` set and reward 0. Every
call thus yields exactly one stored step per copy, so the replay can be written in lockstep.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

ObsSpace = dict[str, tuple[int, ...]]
"""Observation key -> shape of one copy's array: (H, W, C) for a uint8 image, (size,) for a float32 vector."""

RESERVED_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal", "is_present")
"""Names a replay row already uses; no observation key may take them."""


def is_image(shape: tuple[int, ...]) -> bool:
    """Images are (H, W, C) and read by the conv encoder; vectors are (size,) and read by the MLP encoder."""
    return len(shape) == 3


@dataclass(frozen=True)
class EnvSpec:
    name: str  # canonical name: "catch", "atari:pong", "gym:<id>"
    obs_space: ObsSpace
    action_dim: int  # number of discrete actions, or continuous dimensions
    discrete: bool
    action_repeat: int  # emulator frames per agent step
    num_agents: int = 1  # agents per world; a world's agents are adjacent copies (envs/agents.py)


class Step(NamedTuple):
    obs: dict[str, np.ndarray]  # key -> (N, *shape): uint8 images, float32 vectors
    reward: np.ndarray  # float32 (N,)
    is_first: np.ndarray  # bool (N,)
    is_last: np.ndarray  # bool (N,)
    is_terminal: np.ndarray  # bool (N,): ended by the game, not by a time limit
    # bool (N,), or None where every copy is: whether each agent is still in its world's episode. An agent that
    # finishes before the others of its world (its last step is not is_last; it is is_terminal if the env terminated
    # it, neither if the env truncated it) is absent from then on until the world's episode ends: its rows are
    # padding, masked from every loss.
    is_present: np.ndarray | None = None


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

    @property
    def won(self) -> np.ndarray | None:
        """Envs of battles (smax:): bool (worlds,), whether each world's last battle to end was won; None elsewhere."""
        return None

    def state_fits(self, state: dict[str, np.ndarray]) -> str | None:
        """Why a state `get_state` saved does not fit this env (written under other versions of its libraries), or
        None where `set_state` can take it. Changes nothing."""
        return None

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue the episodes `get_state` saved (a state that `state_fits` accepted)."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - envs without resources need not close anything
        pass


def first_step(obs: dict[str, np.ndarray]) -> Step:
    n = next(iter(obs.values())).shape[0]
    return Step(obs, np.zeros(n, np.float32), np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool))


def encoder_of(key: str, shape: tuple[int, ...], cnn_keys: str, mlp_keys: str) -> str | None:
    """Which encoder reads an observation: `cnn` (an image whose key matches cnn_keys), `mlp` (a vector whose key
    matches mlp_keys) or None. Patterns match at the key's start, as in DreamerV2's released code."""
    if is_image(shape):
        return "cnn" if re.match(cnn_keys, key) else None
    return "mlp" if re.match(mlp_keys, key) else None


class SelectedKeys(BatchedEnv):
    """An env seen through the observation keys the model reads; everything else passes through."""

    def __init__(self, env: BatchedEnv, keys: list[str]):
        self.env, self.keys, self.num_envs = env, keys, env.num_envs
        self.spec = EnvSpec(
            env.spec.name,
            {k: env.spec.obs_space[k] for k in keys},
            env.spec.action_dim,
            env.spec.discrete,
            env.spec.action_repeat,
            env.spec.num_agents,
        )

    @property
    def saveable(self) -> bool:  # type: ignore[override]
        return self.env.saveable

    @property
    def won(self) -> np.ndarray | None:
        return self.env.won

    def reset(self) -> Step:
        return self._select(self.env.reset())

    def step(self, action: np.ndarray) -> Step:
        return self._select(self.env.step(action))

    def get_state(self) -> dict[str, np.ndarray]:
        return self.env.get_state()

    def state_fits(self, state: dict[str, np.ndarray]) -> str | None:
        return self.env.state_fits(state)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.env.set_state(state)

    def close(self) -> None:
        self.env.close()

    def _select(self, step: Step) -> Step:
        return step._replace(obs={k: step.obs[k] for k in self.keys})


class VectorEnvAdapter(BatchedEnv):
    """A Gymnasium-API vector env with next-step autoreset (ale-py's or gymnasium's), seen through `Step`.

    Subclasses set `self.env` and `self.spec` and convert observations and actions.
    """

    env: Any  # the Gymnasium-API vector env

    def __init__(self, num_envs: int, seed: int):
        self.num_envs, self.seed = num_envs, seed
        self.last = np.zeros(num_envs, bool)

    def reset(self) -> Step:
        obs, _ = self._copies(lambda: self.env.reset(seed=self.seed))
        self.last[:] = False
        return first_step(self._observations(obs))

    def step(self, action: np.ndarray) -> Step:
        env_action = self._env_action(action)
        obs, reward, terminated, truncated, _ = self._copies(lambda: self.env.step(env_action))
        first = self.last.copy()  # the copies that ended last step have just been reset
        self.last = np.asarray(terminated | truncated, bool)
        return Step(
            self._observations(obs),
            np.asarray(reward, np.float32),
            first,
            self.last.copy(),
            np.asarray(terminated, bool).copy(),
        )

    def close(self) -> None:
        self.env.close()

    @abstractmethod
    def _observations(self, obs: Any) -> dict[str, np.ndarray]:
        """The vector env's observations -> key -> (N, *shape) arrays of the spec's obs_space."""

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, np.int64)

    def _copies(self, call: Callable[[], Any]) -> Any:
        """call() on the vector env itself (its reset, step or call), where a subclass may watch for its failures."""
        return call()


def rng_state_bytes(rng: np.random.Generator) -> np.ndarray:
    """A numpy Generator's exact state as uint8 bytes (JSON inside), so it can live in a safetensors file."""
    return np.frombuffer(json.dumps(rng.bit_generator.state).encode(), dtype=np.uint8).copy()


def restore_rng(rng: np.random.Generator, data: np.ndarray) -> None:
    rng.bit_generator.state = json.loads(bytes(np.asarray(data, dtype=np.uint8)).decode())


def convert_frames(frames: np.ndarray, size: int, grayscale: bool, resize: str) -> np.ndarray:
    """uint8 (N, H, W[, C]) -> uint8 (N, size, size, 1 or 3): colour conversion, then resizing.

    `area` averages the covered pixels by torch's area mode (the mean of each output pixel's block of whole input
    pixels), which equals cv2's INTER_AREA (DreamerV2's) where the size divides evenly; where it does not, as from
    210x160 Atari frames, edges differ by up to tens of grey levels (Atari runs resize in ALE, with cv2 itself).
    `bilinear` is antialiased bilinear, which matches Pillow's BILINEAR (DreamerV3's Atari100k runs).
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
