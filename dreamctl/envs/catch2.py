"""Catch2: a built-in cooperative game from pixels for two agents, each moving one paddle under one shared frame.

The 64x64 screen has 8 columns (8 pixels wide) and 8 rows (8 pixels high). Two balls are in flight at once, each in
its own stream: when one lands on the bottom row, the next ball of its stream appears in a random column of the top
row; the streams start half a fall apart, so a ball lands every 3 or 4 steps. Each agent moves its own paddle
(left, stay, right) along the bottom row; paddles may share a column. A landing is a catch for the team (+1) when
either paddle is under the ball, else a miss (-1); both agents receive this team reward. An episode is `DROPS`
landings, its last a terminal step that the frame does not announce (as in catch). One paddle cannot catch every
ball (the next may land 7 columns away 3 steps later), but two can, each following its own stream (a ball gives 7
steps to cross at most 7 columns), so splitting the work pays.

`RANDOM_RETURN` and `OPTIMAL_RETURN` are the team returns of uniform random actions and of that division of labour,
measured over 20,000 episodes (a test re-measures them). All copies are simulated together in numpy; the state
(including the random generator) can be saved.
"""

from __future__ import annotations

import numpy as np

from dreamctl.envs.base import Step
from dreamctl.envs.builtin import BuiltinGame

COLUMNS, ROWS = 8, 8
AGENTS = 2
DROPS = 20  # landings per episode, both streams together
ACTIONS = ("LEFT", "STAY", "RIGHT")
RANDOM_RETURN = -10.6
OPTIMAL_RETURN = 20.0
PADDLE_GREYS = (200, 110)  # agent 0's paddle above agent 1's, so that each stays visible when they share a column


class Catch2(BuiltinGame):
    """Args:
    num_envs: games simulated together (each with `AGENTS` agents).
    seed: seeds the balls' columns.
    image_size: must be 64.
    """

    state_keys = ("ball_x", "ball_y", "paddle", "drops", "ended")

    def __init__(self, num_envs: int = 1, seed: int = 0, image_size: int = 64):
        super().__init__("catch2", num_envs, seed, image_size, len(ACTIONS), True)
        self.ball_x = np.zeros((num_envs, AGENTS), np.int64)  # one ball per stream
        self.ball_y = np.zeros((num_envs, AGENTS), np.int64)
        self.paddle = np.zeros((num_envs, AGENTS), np.int64)  # one paddle per agent
        self.drops = np.zeros(num_envs, np.int64)
        self.ended = np.zeros(num_envs, bool)

    def step(self, action: np.ndarray) -> Step:
        """action: int (N, AGENTS), each agent's move; returns the team's reward (N,)."""
        restart = self.ended.copy()
        self._start(restart)
        play = ~restart
        move = np.asarray(action, np.int64).reshape(self.num_envs, AGENTS) - 1
        self.paddle = np.where(play[:, None], np.clip(self.paddle + move, 0, COLUMNS - 1), self.paddle)
        self.ball_y = np.where(play[:, None], self.ball_y + 1, self.ball_y)
        landed = play[:, None] & (self.ball_y == ROWS - 1)  # (N, streams)
        under = (self.paddle[:, None, :] == self.ball_x[:, :, None]).any(-1)  # (N, streams): some paddle below
        reward = np.where(landed, np.where(under, 1.0, -1.0), 0.0).sum(-1).astype(np.float32)
        self.drops += landed.sum(-1)
        self.ended = play & (self.drops >= DROPS)
        self._new_balls(landed & ~self.ended[:, None], top=np.zeros(AGENTS, np.int64))
        return Step(self._render(), reward, restart, self.ended.copy(), self.ended.copy())

    def optimal_action(self) -> np.ndarray:
        """(N, AGENTS) each agent's move toward its own stream's ball: the division of labour that catches all."""
        return np.sign(self.ball_x - self.paddle) + 1

    def _start(self, mask: np.ndarray) -> None:
        self.paddle[mask] = (COLUMNS // 4, 3 * COLUMNS // 4 - 1)
        self.drops[mask] = 0
        self.ended[mask] = False
        # Stream 1's first ball starts 3 rows above the screen, so the landings alternate 3 and 4 steps apart.
        self._new_balls(np.repeat(mask[:, None], AGENTS, 1), top=np.array([0, 1 - ROWS // 2]))

    def _new_balls(self, mask: np.ndarray, top: np.ndarray) -> None:
        """New balls where `mask` (N, streams) is set, stream s starting on row top[s]."""
        columns = self.rng.integers(0, COLUMNS, size=(self.num_envs, AGENTS))
        self.ball_x = np.where(mask, columns, self.ball_x)
        self.ball_y = np.where(mask, top[None, :], self.ball_y)

    def _render(self) -> dict[str, np.ndarray]:
        """Balls: 6x6 white squares; paddles: 8-pixel bars on the bottom rows, agent 0's (y 58-60) above agent 1's
        (y 61-63)."""
        y = np.arange(64)[None, :, None]
        x = np.arange(64)[None, None, :]
        frames = np.zeros((self.num_envs, 64, 64), np.uint8)
        for agent, (low, grey) in enumerate(zip((58, 61), PADDLE_GREYS, strict=True)):
            px = self.paddle[:, agent, None, None]
            frames[(y >= low) & (y < low + 3) & (x >= 8 * px) & (x < 8 * px + 8)] = grey
        for stream in range(AGENTS):
            bx, by = self.ball_x[:, stream, None, None], self.ball_y[:, stream, None, None]
            frames[(y >= 8 * by + 1) & (y < 8 * by + 7) & (x >= 8 * bx + 1) & (x < 8 * bx + 7)] = 255
        return {"image": frames[..., None]}
