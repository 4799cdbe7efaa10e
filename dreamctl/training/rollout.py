"""Acting in batched envs: the one acting step and the episode bookkeeping that training, evaluation and the dream
video share, and greedy evaluation episodes.

Each env copy of an evaluation plays a fixed quota of episodes (copy i plays episodes i, i + n, ...), so short
episodes are not over-represented the way "the first N episodes to finish" would over-represent them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dreamctl.config import EnvConfig
from dreamctl.envs import BatchedEnv, Step, make_env
from dreamctl.model.agent import ActState, Agent

MAX_EVAL_ENVS = 8


def act(agent: Agent, step: Step, state: ActState, greedy: bool = False) -> tuple[np.ndarray, torch.Tensor, ActState]:
    """One policy decision for every env copy of `step`.

    Returns the env's action (indices (N,) for discrete actions, vectors (N, A) in [-1, 1] otherwise), the action
    vector the agent chose (one-hot for discrete actions), and the acting state to pass to the next call.
    """
    obs = {key: torch.from_numpy(value).to(agent.device) for key, value in step.obs.items()}
    first = torch.from_numpy(step.is_first).to(agent.device)
    present = None if step.is_present is None else torch.from_numpy(step.is_present).to(agent.device)
    action, state = agent.policy(obs, first, state, greedy=greedy, present=present)
    env_action = (action.argmax(-1) if agent.discrete else action).cpu().numpy()
    return env_action, action, state


@dataclass
class Finished:
    env_index: int
    ret: float
    length: int  # agent steps


class EpisodeTracker:
    """Each env copy's running return and length, restarted where `is_first` is set."""

    def __init__(self, num_envs: int):
        self.ret = np.zeros(num_envs, np.float64)
        self.length = np.zeros(num_envs, np.int64)

    def update(self, step: Step) -> list[Finished]:
        """Count one env step; returns the episodes that it ended. An agent that finished before the others of its
        world (`is_present` False) waits for them: its length stops growing, and its rewards are 0."""
        self.ret[step.is_first] = 0.0
        self.length[step.is_first] = 0
        self.ret += step.reward
        self.length += ~step.is_first if step.is_present is None else ~step.is_first & step.is_present
        return [Finished(int(i), float(self.ret[i]), int(self.length[i])) for i in np.flatnonzero(step.is_last)]


@dataclass
class Playback:
    returns: list[float]  # per episode; with several agents the team's: the mean of the agents' returns
    lengths: list[int]
    frames: np.ndarray | None  # the first episode of copy 0's image key, uint8 (T, H, W, C), when recorded
    agent_returns: list[list[float]]  # per episode, each agent's return
    wins: list[bool] | None  # per episode, whether the battle was won (envs of battles); None elsewhere


def play(agent: Agent, env: BatchedEnv, episodes: int, greedy: bool = True, record: str | None = None) -> Playback:
    """Play `episodes` episodes over the env's worlds, each world its quota; `record` names an image key whose
    frames of copy 0's first episode are kept. A world of M agents is M adjacent copies that end together."""
    n, m = env.num_envs, env.spec.num_agents
    worlds = n // m
    quota = np.array([episodes // worlds + (i < episodes % worlds) for i in range(worlds)])
    done = np.zeros(worlds, int)
    returns, lengths, agent_returns, wins = [], [], [], []
    tracker = EpisodeTracker(n)
    state = agent.initial_act_state(n)
    step = env.reset()
    frames = [step.obs[record][0]] if record else []
    recording = record is not None
    while (done < quota).any():
        env_action, _, state = act(agent, step, state, greedy)
        step = env.step(env_action)
        finished = tracker.update(step)
        if record is not None and recording:
            frames.append(step.obs[record][0])
            recording = not step.is_last[0]
        for first in range(0, len(finished), m):
            team = finished[first : first + m]  # one world's agents, in agent order
            world = team[0].env_index // m
            if done[world] < quota[world]:
                agent_returns.append([episode.ret for episode in team])
                returns.append(float(np.mean(agent_returns[-1])))
                lengths.append(max(episode.length for episode in team))
                if env.won is not None:
                    wins.append(bool(env.won[world]))
                done[world] += 1
    frames_kept = np.stack(frames) if record else None
    return Playback(returns, lengths, frames_kept, agent_returns, wins if env.won is not None else None)


def evaluation_episodes(
    agent: Agent, env_cfg: EnvConfig, episodes: int, seed: int, record: str | None = None, sample: bool = False
) -> Playback:
    """`episodes` episodes in up to MAX_EVAL_ENVS fresh env copies seeded with `seed`, with the actor's mode
    (greedy, DreamerV2's evaluation) or, with `sample`, with actions sampled from it (MAMBA's SMAC evaluation)."""
    env = make_env(env_cfg, seed, num_envs=min(episodes, MAX_EVAL_ENVS))
    try:
        return play(agent, env, episodes, greedy=not sample, record=record)
    finally:
        env.close()
