"""What the built-in games share: every copy simulated at once in numpy, one 64x64 grey frame, a saveable state."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from dreamctl.envs.base import BatchedEnv, EnvSpec, Step, first_step, restore_rng, rng_state_bytes


class BuiltinGame(BatchedEnv):
    """A game whose whole state is the arrays named in `state_keys` and its random generator, so it saves exactly.

    Args:
        name: the game's name, as `dreamctl train` takes it.
        num_envs: copies simulated together.
        seed: seeds the game's generator.
        image_size: must be 64, the size the games draw.
        action_dim: discrete actions, or continuous dimensions.
        discrete: whether actions are discrete.
    """

    saveable = True
    state_keys: tuple[str, ...] = ()

    def __init__(self, name: str, num_envs: int, seed: int, image_size: int, action_dim: int, discrete: bool):
        if image_size != 64:
            raise ValueError(f"{name} draws 64x64 frames, got image size {image_size}")
        self.num_envs = num_envs
        self.spec = EnvSpec(name, {"image": (64, 64, 1)}, action_dim, discrete, 1)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> Step:
        self._start(np.ones(self.num_envs, bool))
        return first_step(self._render())

    def get_state(self) -> dict[str, np.ndarray]:
        return {**{key: getattr(self, key).copy() for key in self.state_keys}, "rng": rng_state_bytes(self.rng)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for key in self.state_keys:
            getattr(self, key)[:] = state[key]
        restore_rng(self.rng, state["rng"])

    @abstractmethod
    def _start(self, mask: np.ndarray) -> None:
        """Begin a new episode in the copies where `mask` (N,) is set."""

    @abstractmethod
    def _render(self) -> dict[str, np.ndarray]:
        """{"image": uint8 (N, 64, 64, 1)}, every copy's current frame."""
