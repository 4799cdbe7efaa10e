"""Replay bytes per stored step and the peak memory of a process holding a full replay and the paper model.

    python -m benchmarks.memory --preset atari --capacity 200000

Fills a replay of `capacity` steps with real Pong frames (played once, then cycled), builds the agent and runs
`--updates` updates (the heap grows over the first few, so the peak needs several), then prints one JSON line: bytes
per stored step, the replay's bytes, peak RSS, and peak RSS minus the replay (the rest of the process: torch, the
model, optimiser state, one batch's activations).
"""

from __future__ import annotations

import argparse
import json
import resource

import numpy as np
import torch

from dreamctl.config import load_config
from dreamctl.envs import make_env
from dreamctl.model.agent import Agent
from dreamctl.runs.system import keep_freed_memory
from dreamctl.training.replay import Replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="atari")
    parser.add_argument("--capacity", type=int, default=200_000)
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    keep_freed_memory()  # as `dreamctl train` does
    cfg = load_config(args.preset, ["env.name=pong", "run.precision=32"])
    env = make_env(cfg.env, seed=0, num_envs=1)  # the replay below takes one copy's rows, whatever the preset plays
    spec = env.spec
    rng = np.random.default_rng(0)
    rows, step = [], env.reset()
    for _ in range(2_000):
        rows.append(
            {
                **step.obs,
                "reward": step.reward,
                "is_first": step.is_first,
                "is_last": step.is_last,
                "is_terminal": step.is_terminal,
            }
        )
        action = rng.integers(0, spec.action_dim, 1)
        step = env.step(action)
        rows[-1]["action"] = action.astype(np.int32)
    env.close()

    replay = Replay(args.capacity, 1, spec.obs_space, spec.action_dim, spec.discrete)
    for i in range(args.capacity):
        replay.add(rows[i % len(rows)])
    agent = Agent(cfg, spec.obs_space, spec.action_dim, spec.discrete)
    t = cfg.train
    for _ in range(args.updates):
        agent.train_step(replay.to_torch(replay.sample(t.batch_size, t.batch_length, rng), torch.device("cpu")))

    per_key = replay.nbytes_per_step()
    per_step = sum(per_key.values())
    replay_bytes = sum(v.nbytes for v in replay.data.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "benchmark": "memory",
                "preset": args.preset,
                "capacity": args.capacity,
                "updates": args.updates,
                "bytes_per_step": per_step,
                "bytes_per_step_by_key": per_key,
                "kib_per_step": round(per_step / 1024, 3),
                "replay_gib": round(replay_bytes / 2**30, 3),
                "peak_rss_gib": round(peak / 2**30, 3),
                "peak_minus_replay_gib": round((peak - replay_bytes) / 2**30, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
