"""A PettingZoo parallel env whose agents finish at different times, for the masking tests: three agents, each
observing (its index, the step, 1.0); agent `b` is terminated after step 2, `c` truncated after step 4, and the
episode ends after step 6. Each agent is rewarded its index + 1 per step. An action for an agent that has finished
is an error, as in envs that remove finished agents."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

TERMINATED_AFTER = {"b": 2}
TRUNCATED_AFTER = {"c": 4}
LENGTH = 6


class DyingWorld(ParallelEnv):
    metadata: ClassVar[dict] = {"name": "dying_v0", "render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None):
        self.possible_agents = ["a", "b", "c"]
        self.agents: list[str] = []
        self.render_mode = render_mode
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Box:
        return spaces.Box(-np.inf, np.inf, (3,), np.float32)

    def action_space(self, agent: str) -> spaces.Discrete:
        return spaces.Discrete(2)

    def _obs(self) -> dict[str, np.ndarray]:
        return {a: np.array([self.possible_agents.index(a), self.t, 1.0], np.float32) for a in self.agents}

    def reset(self, seed=None, options=None):
        self.agents, self.t = list(self.possible_agents), 0
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        if set(actions) != set(self.agents):
            raise ValueError(f"actions for {sorted(actions)}, agents {self.agents}")
        self.t += 1
        rewards = {a: float(self.possible_agents.index(a) + 1) for a in self.agents}
        terminated = {a: self.t == TERMINATED_AFTER.get(a) for a in self.agents}
        truncated = {a: self.t == TRUNCATED_AFTER.get(a, LENGTH) for a in self.agents}
        obs = self._obs()
        self.agents = [a for a in self.agents if not (terminated[a] or truncated[a])]
        return obs, rewards, terminated, truncated, {a: {} for a in obs}


def parallel_env(render_mode: str | None = None) -> DyingWorld:
    return DyingWorld(render_mode)


class KeepingWorld(DyingWorld):
    """The same agents and ends, but a finished agent stays in `agents` (and must be given an action) until the
    episode ends, as some envs do; `given_after_end` records the actions finished agents receive."""

    def reset(self, seed=None, options=None):
        self.done: set[str] = set()
        self.given_after_end: list = []
        return super().reset(seed, options)

    def step(self, actions):
        if set(actions) != set(self.agents):
            raise ValueError(f"actions for {sorted(actions)}, agents {self.agents}")
        self.given_after_end += [actions[a] for a in sorted(self.done)]
        self.t += 1
        live = [a for a in self.agents if a not in self.done]
        rewards = {a: float(self.possible_agents.index(a) + 1) * (a in live) for a in self.agents}
        terminated = {a: a in live and self.t == TERMINATED_AFTER.get(a) for a in self.agents}
        truncated = {a: a in live and self.t == TRUNCATED_AFTER.get(a, LENGTH) for a in self.agents}
        self.done |= {a for a in live if terminated[a] or truncated[a]}
        obs = self._obs()
        if self.done == set(self.possible_agents):
            self.agents = []
        return obs, rewards, terminated, truncated, {a: {} for a in obs}


class RewardingWorld(KeepingWorld):
    """KeepingWorld, but every listed agent is rewarded each step, finished ones included (a team reward)."""

    def step(self, actions):
        obs, rewards, terminated, truncated, info = super().step(actions)
        return obs, {a: float(self.possible_agents.index(a) + 1) for a in rewards}, terminated, truncated, info


class LateWorld(DyingWorld):
    """DyingWorld, but agent `c` joins only after the episode's first step: the reset does not observe it."""

    def reset(self, seed=None, options=None):
        obs, info = super().reset(seed, options)
        self.agents = ["a", "b"]
        return {a: obs[a] for a in self.agents}, {a: info[a] for a in self.agents}


class DictWorld(DyingWorld):
    """DyingWorld observing a Dict whose own key `agent` holds its 3 numbers."""

    def observation_space(self, agent: str) -> spaces.Dict:
        return spaces.Dict({"agent": spaces.Box(-np.inf, np.inf, (3,), np.float32)})

    def _obs(self) -> dict[str, dict[str, np.ndarray]]:
        return {a: {"agent": o} for a, o in super()._obs().items()}
