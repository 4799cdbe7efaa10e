"""Helpers shared by the benchmarks: batches of an env's random play, a same-run matmul peak, phase clocks."""

from __future__ import annotations

import contextlib
import copy
import time
from collections import defaultdict

import torch

from dreamctl.config import Config
from dreamctl.envs import make_env
from dreamctl.envs.base import EnvSpec
from dreamctl.layers.linear import linear, onednn_active, use_onednn
from dreamctl.training.trainer import Trainer


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


def random_play_batch(cfg: Config, device: torch.device) -> tuple[dict[str, torch.Tensor], EnvSpec]:
    """A (batch_size, batch_length) batch of `cfg.env.name` played as prefill plays it (uniformly among the allowed
    actions), sampled as training samples it (a world's agents in adjacent rows), and the env's spec."""
    cfg = copy.deepcopy(cfg)
    t = cfg.train
    t.prefill = 10**12  # every tick below plays random actions
    env = make_env(cfg.env, t.seed)
    try:
        trainer = Trainer(cfg, env, torch.device("cpu"))
        trainer.start()
        for _ in range(2 * (t.batch_length + 1)):
            trainer.collect_step()
        sample = trainer.replay.sample(t.batch_size, t.batch_length, trainer.rng)
        return trainer.replay.to_torch(sample, device), env.spec
    finally:
        env.close()


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
