"""Agent-steps per second while collecting experience, with the paper's model on Pong.

    python benchmarks/collect.py --preset atari [--device cpu|cuda] [--seconds 20]

For 1 and 8 env copies, times the loop the trainer runs between updates: one batched policy pass for all
copies (inference mode), the env step, and the replay write; and the same loop during random prefill.
Prints one JSON line with agent-steps/s for each, and the 8-copy / 1-copy ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dreamctl.agent import resolve_device
from dreamctl.config import load_config
from dreamctl.envs import make_env
from dreamctl.trainer import Trainer

from common import device_name


def steps_per_second(preset: str, num_envs: int, policy: bool, seconds: float, device: torch.device,
                     precision: str) -> float:
    cfg = load_config(preset, ["env.name=pong", f"env.num_envs={num_envs}", f"run.precision={precision}",
                               "train.replay_capacity=100000", f"train.prefill={0 if policy else 10**9}"])
    env = make_env(cfg.env, seed=0)
    trainer = Trainer(cfg, env, device)
    trainer.start()
    for _ in range(5):
        trainer.collect_step()
    steps, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        trainer.collect_step()
        steps += num_envs
    rate = steps / (time.perf_counter() - began)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="atari")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    result = {"benchmark": "collect", "preset": args.preset, "device": str(device), "device_name": device_name(device),
              "precision": args.precision,
              "threads": torch.get_num_threads()}
    for envs in (1, 8):
        result[f"policy_{envs}_env"] = round(steps_per_second(args.preset, envs, True, args.seconds, device,
                                                              args.precision), 1)
        result[f"prefill_{envs}_env"] = round(steps_per_second(args.preset, envs, False, args.seconds / 2, device,
                                                               args.precision), 1)
    result["policy_ratio_8_to_1"] = round(result["policy_8_env"] / result["policy_1_env"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
