"""What one evaluation reports and what run.yaml keeps of it: one builder for `dreamctl eval` and for the
evaluations training makes every `run.eval_every` agent steps, so both record the same fields."""

from __future__ import annotations

from typing import Any

import numpy as np

from dreamctl.envs import random_and_optimal
from dreamctl.runs.run import Run
from dreamctl.scores import dreamerv2_record, summarize
from dreamctl.training.rollout import Playback


def evaluation_result(playback: Playback, meta: dict[str, Any], sample: bool) -> dict[str, Any]:
    """The returns' summary (`dreamctl.scores.summarize`) with what to read them against and how they were played.

    Args:
        playback: the evaluation's episodes.
        meta: the run's run.yaml (its `env` and `preset`).
        sample: whether the actor's samples were played (MAMBA's protocol) rather than its mode.

    Returns:
        The summary plus `policy` (`sample` or `greedy`), `reward_threshold` (gym's solved line), `random` and
        `optimal` (built-in games), `dreamerv2` (DreamerV2's published DMC return and its frames), `agents` (each
        agent's returns, with several) and `win_rate` (battles); a key that does not apply to the env holds None.
    """
    env = meta["env"]
    result = summarize(playback.returns, env, meta.get("preset") == "atari100k")
    result["policy"] = "sample" if sample else "greedy"
    result["reward_threshold"] = None
    if env.startswith("gym:"):
        from dreamctl.envs.gym_env import reward_threshold  # here: it imports gymnasium

        result["reward_threshold"] = reward_threshold(env[len("gym:") :])
    result["random"], result["optimal"] = random_and_optimal(env) or (None, None)
    result["dreamerv2"] = dreamerv2_record(env)
    result["agents"] = None
    if len(playback.agent_returns[0]) > 1:
        per_agent = np.array(playback.agent_returns).T  # (agents, episodes)
        result["agents"] = [
            {"agent": i, "mean": float(r.mean()), "returns": r.tolist()} for i, r in enumerate(per_agent)
        ]
    result["win_rate"] = None if playback.wins is None else float(np.mean(playback.wins))
    return result


def record_evaluation(run: Run, step: int, result: dict[str, Any]) -> None:
    """Append an evaluation of the checkpoint at agent step `step` to run.yaml's evals: the result without the team's
    list of returns (the episodes' count, mean and spread stay, and so do each agent's returns)."""
    entry = {"step": step, **{k: v for k, v in result.items() if k != "returns"}}
    run.update(lambda m: m.setdefault("evals", []).append(entry))
