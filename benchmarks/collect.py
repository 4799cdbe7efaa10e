"""Agent-steps per second while collecting experience, by default with the paper's model on Pong.

    python -m benchmarks.collect --preset atari [--env pong] [--copies 1,8] [--device cpu|cuda] [--seconds 20]
    python -m benchmarks.collect --preset dmc --env dmc:humanoid_walk --copies 1,4

For each number of env copies (default 1 and 8), times the loop the trainer runs between updates: one batched
policy pass for all copies (inference mode), the env step, and the replay write; and the same loop during random
prefill.
The four loops take turns in short rounds, so that a machine whose speed drifts within minutes (these VMs' does:
docs/performance.md) slows them alike; each rate is the median over its rounds. Prints one JSON line with
agent-steps/s for each, and the most-copies / 1-copy ratio with the policy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.common import device_name
from dreamctl.config import load_config
from dreamctl.envs import make_env, resolve
from dreamctl.runs.system import keep_freed_memory, resolve_device, resolve_precision
from dreamctl.training.trainer import Trainer


def collector(preset: str, env: str, num_envs: int, policy: bool, device: torch.device, precision: str) -> Trainer:
    cfg = load_config(
        preset,
        [
            f"env.name={resolve(env)}",
            f"env.num_envs={num_envs}",
            f"run.precision={precision}",
            "train.replay_capacity=100000",
            f"train.prefill={0 if policy else 10**9}",
        ],
    )
    trainer = Trainer(cfg, make_env(cfg.env, seed=0), device, resolve_precision(precision, device))
    trainer.start()
    for _ in range(5):
        trainer.collect_step()
    return trainer


def steps_per_second(trainer: Trainer, seconds: float) -> float:
    steps, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        trainer.collect_step()
        steps += trainer.env.num_envs
    return steps / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="atari")
    parser.add_argument("--env", default="pong", help="any name `dreamctl train` takes")
    parser.add_argument("--copies", default="1,8", help="comma-separated numbers of env copies")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    parser.add_argument("--seconds", type=float, default=20.0, help="policy time per loop, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()  # as `dreamctl train` does
    device = resolve_device(args.device)
    result = {
        "benchmark": "collect",
        "preset": args.preset,
        "env": args.env,
        "device": str(device),
        "device_name": device_name(device),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
    }
    copies = sorted({int(n) for n in args.copies.split(",")})
    loops = {
        f"{kind}_{envs}_env": collector(args.preset, args.env, envs, kind == "policy", device, args.precision)
        for envs in copies
        for kind in ("policy", "prefill")
    }
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, trainer in loops.items():
            share = 1.0 if name.startswith("policy") else 0.5
            rates[name].append(steps_per_second(trainer, share * args.seconds / args.rounds))
    for name, trainer in loops.items():
        trainer.env.close()
        result[name] = round(statistics.median(rates[name]), 1)
    least, most = copies[0], copies[-1]
    ratio = result[f"policy_{most}_env"] / result[f"policy_{least}_env"]
    result[f"policy_ratio_{most}_to_{least}"] = round(ratio, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
