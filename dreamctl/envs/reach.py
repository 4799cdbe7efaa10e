"""Reach: a tiny built-in continuous-control game from pixels, DreamerV2's dynamics-backpropagation actor in minutes.

The arena is the unit square, drawn as a 64x64 grey-scale frame. A target (a 12x12 grey square) and the agent (an 8x8
white square, drawn over it) start at uniform random places. The action is a velocity in [-1, 1]^2: each step moves
the agent by `SPEED` times the action along each axis, kept inside the arena. The reward after each move is minus
the Euclidean distance to the target (in arena units), a dense signal; every episode lasts `LENGTH` steps.

The optimal policy moves each axis at full speed until it is level with the target, `clip(d / SPEED, -1, 1)`: the
agent's reachable set after k steps is a square around its start, and the closest point of a square is reached
axis by axis, so this policy is nearest to the target at every step, which maximises every reward at once.
`RANDOM_RETURN` and `OPTIMAL_RETURN` are the mean returns of uniform random actions and of that policy, measured
over 100,000 episodes (a test re-measures them).
All copies are simulated together in numpy; the state (including the random generator) can be saved.
"""

from __future__ import annotations

import numpy as np

from dreamctl.envs.base import Step
from dreamctl.envs.builtin import BuiltinGame

SPEED = 0.05  # arena units per step at full velocity: 2.5 pixels
LENGTH = 50  # agent steps per episode
RANDOM_RETURN = -26.3
OPTIMAL_RETURN = -2.6


class Reach(BuiltinGame):
    state_keys = ("agent", "target", "steps", "ended")

    def __init__(self, num_envs: int = 1, seed: int = 0, image_size: int = 64):
        super().__init__("reach", num_envs, seed, image_size, 2, False)
        self.agent = np.zeros((num_envs, 2), np.float64)
        self.target = np.zeros((num_envs, 2), np.float64)
        self.steps = np.zeros(num_envs, np.int64)
        self.ended = np.zeros(num_envs, bool)

    def step(self, action: np.ndarray) -> Step:
        restart = self.ended.copy()
        self._start(restart)
        play = ~restart
        velocity = np.clip(np.asarray(action, np.float64).reshape(self.num_envs, 2), -1.0, 1.0)
        moved = np.clip(self.agent + SPEED * velocity, 0.0, 1.0)
        self.agent = np.where(play[:, None], moved, self.agent)
        self.steps += play
        reward = np.where(play, -self.distance(), 0.0).astype(np.float32)
        self.ended = play & (self.steps >= LENGTH)
        return Step(self._render(), reward, restart, self.ended.copy(), np.zeros(self.num_envs, bool))

    def distance(self) -> np.ndarray:
        """(N,) Euclidean distance from each agent to its target."""
        return np.linalg.norm(self.target - self.agent, axis=1)

    def optimal_action(self) -> np.ndarray:
        """(N, 2) the optimal policy's action for the current states."""
        return np.clip((self.target - self.agent) / SPEED, -1.0, 1.0)

    def _start(self, mask: np.ndarray) -> None:
        places = self.rng.uniform(0.0, 1.0, size=(self.num_envs, 2, 2))
        self.agent = np.where(mask[:, None], places[:, 0], self.agent)
        self.target = np.where(mask[:, None], places[:, 1], self.target)
        self.steps[mask] = 0
        self.ended[mask] = False

    def _render(self) -> dict[str, np.ndarray]:
        """Centres map to pixels 6..57; the target covers 12x12 pixels (grey 128), the agent 8x8 (white) over it."""
        pixel = np.arange(64)
        centre_agent = np.rint(6 + 51 * self.agent).astype(np.int64)
        centre_target = np.rint(6 + 51 * self.target).astype(np.int64)

        def square(centre: np.ndarray, half: int) -> np.ndarray:
            low, high = centre[:, :, None] - half, centre[:, :, None] + half  # (N, 2 axes, 1)
            inside = (pixel >= low) & (pixel < high)  # (N, 2 axes, 64)
            return inside[:, 1, :, None] & inside[:, 0, None, :]  # (N, y, x)

        frames = np.where(square(centre_agent, 4), 255, np.where(square(centre_target, 6), 128, 0)).astype(np.uint8)
        return {"image": frames[..., None]}
