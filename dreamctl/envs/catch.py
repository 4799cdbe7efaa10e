"""Catch: a tiny built-in pixel game that a small DreamerV2 learns in minutes on a laptop CPU.

The 64x64 screen shows 5 columns (12 pixels wide) by 8 rows (8 pixels high). A ball appears in a random column
of the top row and falls one row per step; the paddle moves along the bottom row (actions: left, stay, right)
and keeps its place between drops. When the ball reaches the paddle's row it is a catch (+1) or a miss (-1) and
a new ball appears. An episode is 10 drops (70 steps), so returns lie in [-10, 10]; every ball is catchable, so
+10 is optimal, and any policy blind to the ball catches 1 in 5: a random policy scores -6 on average.
The 10th landing ends the game, a terminal step; the frame does not count the drops, so the world model's discount
head can only learn how often a landing is the last, and the values near a landing blend the two cases.
All copies are simulated together in numpy; the state (including the random generator) can be saved.
"""

from __future__ import annotations

import numpy as np

from dreamctl.envs.base import Step
from dreamctl.envs.builtin import BuiltinGame

COLUMNS, ROWS = 5, 8
DROPS = 10
ACTIONS = ("LEFT", "STAY", "RIGHT")
RANDOM_RETURN = -6.0  # 10 drops, each caught with probability 1/5: 10 * (1/5 - 4/5)
OPTIMAL_RETURN = 10.0


class Catch(BuiltinGame):
    state_keys = ("ball_x", "ball_y", "paddle", "drops", "ended")

    def __init__(self, num_envs: int = 1, seed: int = 0, image_size: int = 64):
        super().__init__("catch", num_envs, seed, image_size, len(ACTIONS), True)
        self.ball_x = np.zeros(num_envs, np.int64)
        self.ball_y = np.zeros(num_envs, np.int64)
        self.paddle = np.zeros(num_envs, np.int64)
        self.drops = np.zeros(num_envs, np.int64)
        self.ended = np.zeros(num_envs, bool)

    def step(self, action: np.ndarray) -> Step:
        restart = self.ended.copy()
        self._start(restart)
        play = ~restart
        move = np.asarray(action, np.int64).reshape(self.num_envs) - 1
        self.paddle = np.where(play, np.clip(self.paddle + move, 0, COLUMNS - 1), self.paddle)
        self.ball_y = np.where(play, self.ball_y + 1, self.ball_y)
        landed = play & (self.ball_y == ROWS - 1)
        reward = np.where(landed, np.where(self.ball_x == self.paddle, 1.0, -1.0), 0.0).astype(np.float32)
        self.drops += landed
        self.ended = landed & (self.drops >= DROPS)
        self._new_ball(landed & ~self.ended)
        return Step(self._render(), reward, restart, self.ended.copy(), self.ended.copy())

    def _start(self, mask: np.ndarray) -> None:
        self.paddle[mask] = COLUMNS // 2
        self.drops[mask] = 0
        self.ended[mask] = False
        self._new_ball(mask)

    def _new_ball(self, mask: np.ndarray) -> None:
        columns = self.rng.integers(0, COLUMNS, size=self.num_envs)
        self.ball_x = np.where(mask, columns, self.ball_x)
        self.ball_y = np.where(mask, 0, self.ball_y)

    def _render(self) -> dict[str, np.ndarray]:
        """Ball: an 8x8 white square; paddle: a 12x4 grey bar on the bottom row; 2-pixel side margins."""
        y = np.arange(64)[None, :, None]
        x = np.arange(64)[None, None, :]
        bx, by, px = (v[:, None, None] for v in (self.ball_x, self.ball_y, self.paddle))
        ball = (y // 8 == by) & (x >= 4 + 12 * bx) & (x < 12 + 12 * bx)
        paddle = (y >= 60) & (x >= 2 + 12 * px) & (x < 14 + 12 * px)
        frames = np.where(ball, 255, np.where(paddle, 160, 0)).astype(np.uint8)
        return {"image": frames[..., None]}
