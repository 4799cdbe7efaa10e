"""Prefill plays uniformly random actions; where the env restricts actions, only among those it allows now."""

import numpy as np
import torch
from conftest import tiny_config

from dreamctl.envs.base import BatchedEnv, EnvSpec, Step
from dreamctl.training.trainer import Trainer

ACTIONS = 5


class ShiftingMask(BatchedEnv):
    """Copies observing a vector and an `action_mask` that allows a different one or two actions at each step;
    it records every action it is given."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self.spec = EnvSpec("shifting-mask", {"state": (3,), "action_mask": (ACTIONS,)}, ACTIONS, True, 1)
        self.t = 0
        self.masks: list[np.ndarray] = []
        self.given: list[np.ndarray] = []

    def _step(self, first: bool) -> Step:
        n, t = self.num_envs, self.t
        mask = np.zeros((n, ACTIONS), np.float32)
        mask[np.arange(n), (np.arange(n) + t) % ACTIONS] = 1.0
        mask[np.arange(n)[t % 2 :: 2], (np.arange(n)[t % 2 :: 2] + 2 * t + 1) % ACTIONS] = 1.0
        self.masks.append(mask)
        obs = {"state": np.full((n, 3), t, np.float32), "action_mask": mask}
        return Step(obs, np.zeros(n, np.float32), np.full(n, first), np.zeros(n, bool), np.zeros(n, bool))

    def reset(self) -> Step:
        return self._step(first=True)

    def step(self, action: np.ndarray) -> Step:
        self.given.append(np.asarray(action).copy())
        self.t += 1
        return self._step(first=False)


def test_prefill_acts_only_among_the_actions_the_env_allows_and_uses_each_of_them():
    env = ShiftingMask(num_envs=6)
    cfg = tiny_config("train.prefill=400", "env.num_envs=6")
    Trainer(cfg, env, torch.device("cpu")).run(60)
    chosen = np.stack(env.given)  # (steps, copies)
    allowed = np.stack(env.masks[: len(chosen)])  # the mask each action was chosen under
    assert chosen.shape == (9, 6)  # the reset is the first of the 60 agent steps
    assert (np.take_along_axis(allowed, chosen[..., None], -1) == 1).all()
    two = allowed.sum(-1) == 2
    assert 0 < (chosen[two] == allowed[two].argmax(-1)).mean() < 1  # both allowed actions are played
