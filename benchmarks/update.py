"""Time one update of a preset on a batch of an env's random play (by default the paper config on a 16x50 batch of
real Pong frames) and report its MFU.

    python -m benchmarks.update --preset atari [--precision 32,bf16] [--layers fast,plain] [--device cpu|cuda]
                                [--updates 10] [--env pong]
    python -m benchmarks.update --preset catch2 --env catch2 --set multi.communication=attention

The env decides what the update sees: its observation keys, its actions and its agents (a multi-agent env's batch
holds each world's agents, so attention across agents and the central critic are timed as training runs them).

Prints one JSON line with, per precision (and kind of layers): seconds per update (median, min, max), the time split
by phase (on a GPU from further updates, since the clock's synchronisations would slow the timed ones), parameter
count, the model FLOPs of one update, this machine's same-precision matmul peak measured in the same run (the faster
of torch's matmul and, for float32 on the CPU, oneDNN's: both are listed), and MFU; and, when both were measured,
how much faster bf16 is than float32 in this run. `--layers fast,plain` also times the update with every
reformulated layer, linear and one-hot product run as torch's plain layer, and reports how much faster dreamctl's
layers are on this device (they were tuned on CPUs; on a GPU they are unmeasured). On a GPU it also records whether
float32 convolutions and products may run as TF32 (`tf32`), which the float32 peak does not. The peak is measured for
half a second after each timed update and its median taken: these VMs' speed drifts within minutes, and a peak
measured once after all the updates could land in a faster or slower moment than they did.
FLOPs are counted by torch's FlopCounterMode over one real update: every matmul and convolution by its
shapes, forward for everything and backward for what is trained. Layers that dreamctl computes by a faster
reformulation are counted as the plain torch layers they equal, the encoder's first layer once (training computes
it again in the backward pass), and linears as aten's matmuls (the count runs with the oneDNN route off), so
extra work (the subpixel deconv's padded borders, a recomputation) cannot raise the MFU. Products with one-hot
inputs are counted as the dense products the layer shapes say, and `gflop_gathered` says how much of that count
ran as gathers of weight rows instead (FLOPs this machine did not execute).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import PhaseClock, device_name, matmul_peaks, random_play_batch, sync
from dreamctl.config import Config, apply_overrides, load_config
from dreamctl.envs.base import EnvSpec
from dreamctl.layers import plain_layers, reformulations, use_onednn
from dreamctl.model.agent import Agent
from dreamctl.runs.system import keep_freed_memory, resolve_device, resolve_precision


def count_flops(agent: Agent, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """FLOPs of one update by the layer shapes, and how many of them ran as gathers of weight rows."""
    with plain_layers(), FlopCounterMode(display=False) as counter:
        agent.train_step(batch)
    flops = counter.get_total_flops()
    with reformulations(False), use_onednn(False), FlopCounterMode(display=False) as counter:
        agent.train_step(batch)
    return flops, flops - counter.get_total_flops()


def measure(
    cfg: Config,
    spec: EnvSpec,
    precision: str,
    layers: str,
    device: torch.device,
    batch: dict[str, torch.Tensor],
    updates: int,
    warmup: int,
) -> dict:
    cfg = apply_overrides(cfg, [f"run.precision={precision}"])
    torch.manual_seed(0)
    amp = resolve_precision(precision, device)
    agent = Agent(cfg, spec.obs_space, spec.action_dim, spec.discrete, device, amp, spec.num_agents)
    flops, gathered = count_flops(agent, batch)
    with plain_layers() if layers == "plain" else contextlib.nullcontext():
        return {
            "precision": precision,
            "layers": layers,
            **time_updates(agent, batch, precision, device, updates, warmup, flops, gathered),
        }


def time_updates(
    agent: Agent,
    batch: dict[str, torch.Tensor],
    precision: str,
    device: torch.device,
    updates: int,
    warmup: int,
    flops: int,
    gathered: int,
) -> dict:
    for _ in range(warmup):
        agent.train_step(batch)
    clock = PhaseClock(device)
    # On a GPU the clock's synchronisations would stop the CPU from queueing ahead at each phase boundary, so
    # the timed updates run without it and the split comes from as many further updates.
    split_apart = device.type != "cpu"
    dtype = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}[precision]
    times, peak_runs = [], []
    for _ in range(updates):
        sync(device)
        began = time.perf_counter()
        agent.train_step(batch, clock=None if split_apart else clock.clock)
        sync(device)
        times.append(time.perf_counter() - began)
        peak_runs.append(matmul_peaks(dtype, device, seconds=0.5))  # between updates, so both see the same drift
    for _ in range(updates if split_apart else 0):
        agent.train_step(batch, clock=clock.clock)
    peaks = {route: round(statistics.median(run[route] for run in peak_runs), 1) for route in peak_runs[0]}
    peak = max(peaks.values())
    median = statistics.median(times)
    return {
        "seconds_per_update": {
            "median": round(median, 4),
            "min": round(min(times), 4),
            "max": round(max(times), 4),
            "n": len(times),
        },
        "updates_per_second": round(1 / median, 3),
        "split_seconds": {k: round(v / updates, 4) for k, v in clock.totals.items()},
        "parameters": sum(p.numel() for p in agent.parameters() if p.requires_grad),
        "gflop_per_update": round(flops / 1e9, 1),
        "gflop_gathered": round(gathered / 1e9, 1),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peaks_gflops": peaks,
        "mfu": round(flops / median / (peak * 1e9), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="atari")
    parser.add_argument("--env", default="pong", help="the env whose random play fills the batch")
    parser.add_argument("--precision", default="32", help="one or more of 32, bf16, 16, comma-separated")
    parser.add_argument(
        "--layers",
        default="fast",
        help="fast (dreamctl's), plain (torch's), or fast,plain to measure what dreamctl's gain",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if not set(args.layers.split(",")) <= {"fast", "plain"}:
        parser.error(f"--layers takes fast, plain or fast,plain, not {args.layers!r}")
    if not set(args.precision.split(",")) <= {"32", "bf16", "16"}:
        parser.error(f"--precision takes one or more of 32, bf16, 16, comma-separated, not {args.precision!r}")

    device = resolve_device(args.device)
    keep_freed_memory()  # as `dreamctl train` does
    cfg = load_config(args.preset, [f"env.name={args.env}", *args.overrides])  # a batch of the overridden size
    batch, spec = random_play_batch(cfg, device)
    runs = [
        measure(cfg, spec, precision, layers, device, batch, args.updates, args.warmup)
        for precision in args.precision.split(",")
        for layers in args.layers.split(",")
    ]
    result = {
        "benchmark": "update",
        "preset": args.preset,
        "env": args.env,
        "agents": spec.num_agents,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "batch": [cfg.train.batch_size, cfg.train.batch_length],
        "runs": runs,
    }
    if device.type == "cuda":  # float32 convolutions run as TF32 where cuDNN allows it (torch's default)
        result["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    median = {(r["precision"], r["layers"]): r["seconds_per_update"]["median"] for r in runs}
    if ("32", "fast") in median and ("bf16", "fast") in median:
        result["bf16_speedup"] = round(median["32", "fast"] / median["bf16", "fast"], 2)
    gains = {
        precision: round(median[precision, "plain"] / median[precision, "fast"], 2)
        for precision, layers in median
        if layers == "fast" and (precision, "plain") in median
    }
    if gains:
        result["fast_layers_speedup"] = gains
    print(json.dumps(result))


if __name__ == "__main__":
    main()
