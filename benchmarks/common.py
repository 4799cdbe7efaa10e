"""Helpers shared by the benchmarks: real Pong batches, a same-run matmul peak, phase clocks."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import numpy as np
import torch

from dreamctl.config import Config
from dreamctl.envs import make_env
from dreamctl.layers.linear import linear, onednn_active, use_onednn
from dreamctl.training.replay import Replay


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pong_batch(cfg: Config, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A (batch_size, batch_length) batch of real Pong frames played by a random policy."""
    t = cfg.train
    env = make_env(cfg.env, seed, num_envs=t.batch_size)
    replay = Replay(
        t.batch_size * (t.batch_length + 1), t.batch_size, env.spec.obs_space, env.spec.action_dim, env.spec.discrete
    )
    rng = np.random.default_rng(seed)
    step = env.reset()
    action = np.full(t.batch_size, -1)
    for _ in range(t.batch_length + 1):
        replay.add(
            {
                **step.obs,
                "action": np.where(step.is_first, -1, action),
                "reward": step.reward,
                "is_first": step.is_first,
                "is_last": step.is_last,
                "is_terminal": step.is_terminal,
            }
        )
        action = rng.integers(0, env.spec.action_dim, t.batch_size)
        step = env.step(action)
    env.close()
    return replay.to_torch(replay.sample(t.batch_size, t.batch_length, rng), device)


def matmul_peaks(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """GFLOP/s of an n^3 matmul in this dtype on this device, measured now (machines of one kind differ), by each
    route torch has: its own matmul (MKL for float32 on the CPU) and, for float32 on the CPU, oneDNN's kernels,
    which dreamctl's linear layers take where MKL is slow. The machine's peak is the faster of the two."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def onednn_product() -> None:
        with use_onednn(True):
            linear(a, b)

    routes = {"torch_mm": lambda: a @ b}
    with use_onednn(True):
        if onednn_active(a, b):
            routes["onednn"] = onednn_product
    peaks = {}
    for name, product in routes.items():
        for _ in range(3):
            product()
        sync(device)
        reps, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            product()
            reps += 1
        sync(device)
        peaks[name] = round(2 * n**3 * reps / (time.perf_counter() - began) / 1e9, 1)
    return peaks


class PhaseClock:
    """Accumulates wall time per named phase; pass `clock` to Agent.train_step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def clock(self, phase: str):
        sync(self.device)
        began = time.perf_counter()
        yield
        sync(self.device)
        self.totals[phase] += time.perf_counter() - began
