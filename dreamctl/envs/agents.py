"""Several agents in one world, seen by the trainer as env copies: agent a of world w is copy w * M + a.

One world model with shared weights serves every agent (MAMBA's design, Egorov & Shpilman 2022, without its
communication block): each agent observes the world's observations plus `agent`, the one-hot of its index (the
agent-index input, read by the MLP encoder), keeps its own latent state, and chooses its own action from its own
features, so the team acts without communication. The world's team reward is every agent's reward. Because agents
are copies, the replay, the acting loop, checkpoints and exact resume work unchanged; a world's copies are adjacent,
so its agents stay in lockstep (they start and end their episodes together).
"""

from __future__ import annotations

import numpy as np

from dreamctl.envs.base import BatchedEnv, EnvSpec, Step

AGENT_KEY = "agent"


def agent_one_hots(worlds: int, agents: int) -> np.ndarray:
    """The `agent` observation of every copy, world-major: float32 (worlds * agents, agents)."""
    return np.tile(np.eye(agents, dtype=np.float32), (worlds, 1))


class AgentsAsCopies(BatchedEnv):
    """Args:
    world: a game of `world.num_envs` worlds, whose `step` takes int actions (worlds, agents) and returns one team
        reward per world.
    num_agents: the agents of each world.
    """

    def __init__(self, world: BatchedEnv, num_agents: int):
        self.world, self.num_agents = world, num_agents
        self.num_envs = world.num_envs * num_agents
        spec = world.spec
        self.spec = EnvSpec(
            spec.name,
            {**spec.obs_space, AGENT_KEY: (num_agents,)},
            spec.action_dim,
            spec.discrete,
            spec.action_repeat,
            num_agents,
        )
        self.identity = agent_one_hots(world.num_envs, num_agents)

    @property
    def saveable(self) -> bool:  # type: ignore[override]
        return self.world.saveable

    def reset(self) -> Step:
        return self._per_agent(self.world.reset())

    def step(self, action: np.ndarray) -> Step:
        """action: (W * M,) or (W * M, A), world-major."""
        action = np.asarray(action)
        return self._per_agent(self.world.step(action.reshape(self.world.num_envs, self.num_agents, *action.shape[1:])))

    def get_state(self) -> dict[str, np.ndarray]:
        return self.world.get_state()

    def state_fits(self, state: dict[str, np.ndarray]) -> str | None:
        return self.world.state_fits(state)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.world.set_state(state)

    def close(self) -> None:
        self.world.close()

    def _per_agent(self, step: Step) -> Step:
        """Every (W, ...) array of the world repeated for its M agents, world-major, plus the agents' one-hots."""
        m = self.num_agents
        obs = {key: np.repeat(value, m, axis=0) for key, value in step.obs.items()}
        obs[AGENT_KEY] = self.identity
        return Step(
            obs,
            np.repeat(step.reward, m),
            np.repeat(step.is_first, m),
            np.repeat(step.is_last, m),
            np.repeat(step.is_terminal, m),
        )
