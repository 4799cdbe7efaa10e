"""Time the paper-config update on a 16x50 batch of real Pong frames and report its MFU.

    python benchmarks/update.py --preset atari [--precision 32|bf16] [--device cpu|cuda] [--updates 10]

Prints one JSON line: seconds per update (median, min, max), the time split by phase, parameter count, the
model FLOPs of one update, this machine's same-precision matmul peak measured in the same run, and MFU.
FLOPs are counted by torch's FlopCounterMode over one real update: every matmul and convolution by its
shapes, forward for everything and backward for what is trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dreamctl.agent import Agent, resolve_device
from dreamctl.config import load_config

from common import PhaseClock, matmul_peak, pong_batch, sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="atari")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    cfg = load_config(args.preset, ["env.name=pong", f"run.precision={args.precision}", *args.overrides])
    device = resolve_device(args.device)
    torch.manual_seed(0)
    batch = pong_batch(cfg, device)
    agent = Agent(cfg, tuple(batch["image"].shape[2:]), batch["action"].shape[-1], True, device)
    for _ in range(args.warmup):
        agent.train_step(batch)

    with FlopCounterMode(display=False) as counter:
        agent.train_step(batch)
    flops = counter.get_total_flops()

    clock = PhaseClock(device)
    times = []
    for _ in range(args.updates):
        sync(device)
        began = time.perf_counter()
        agent.train_step(batch, clock=clock.clock)
        sync(device)
        times.append(time.perf_counter() - began)

    dtype = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}[args.precision]
    peak = matmul_peak(dtype, device)
    median = statistics.median(times)
    print(json.dumps({
        "benchmark": "update", "preset": args.preset, "precision": args.precision, "device": str(device),
        "threads": torch.get_num_threads(), "batch": [cfg.train.batch_size, cfg.train.batch_length],
        "seconds_per_update": {"median": round(median, 4), "min": round(min(times), 4), "max": round(max(times), 4),
                               "n": len(times)},
        "updates_per_second": round(1 / median, 3),
        "split_seconds": {k: round(v / len(times), 4) for k, v in clock.totals.items()},
        "parameters": sum(p.numel() for p in agent.parameters() if p.requires_grad),
        "gflop_per_update": round(flops / 1e9, 1),
        "matmul_peak_gflops": round(peak, 1),
        "mfu": round(flops / median / (peak * 1e9), 3),
    }))


if __name__ == "__main__":
    main()
