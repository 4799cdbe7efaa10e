"""System setup for a run: device, precision, threads, the memory allocator, and the memory preflight.

Everything here answers "can this machine run this config, and how": it reads the hardware and the config and
never trains.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch

from dreamctl.config import Config, get_value
from dreamctl.config_rules import check_device, validate
from dreamctl.envs import ObsSpace, is_image, resolve
from dreamctl.errors import DreamctlError, UsageError
from dreamctl.model.actor_critic import ActorCritic
from dreamctl.model.world_model import WorldModel

MODEL_BYTES_PER_PARAM = 16  # weights, gradients and Adam's two moments, in float32


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA where there is a GPU, else the CPU), `cpu` or `cuda[:i]`."""
    check_device(name, "--device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' was asked for but this machine has no CUDA GPU; use --device cpu.")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full float32. `auto` takes bf16 on a GPU whose units compute it (Ampere and
    later), not on one where torch would only emulate it, many times slower than float32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and computes_bf16(device) else None
    if precision == "16" and device.type != "cuda":
        raise UsageError("precision 16 needs a CUDA device; use --precision bf16 or 32 on the CPU.")
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]


def inference_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """resolve_precision for playing a trained agent: a float16 run, trained on a GPU, plays in float32 where there
    is none (float16 needs CUDA for its loss scaling, which playing does not use)."""
    return resolve_precision("32" if precision == "16" and device.type != "cuda" else precision, device)


def computes_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 rather than torch emulating it, many times slower than float32: a GPU from
    Ampere on, a CPU with the instructions of `cpu_computes_bf16`."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_computes_bf16()


def cpu_computes_bf16() -> bool:
    """Whether this CPU has the instructions oneDNN computes bf16 with (AVX-512 or AMX). Without them torch
    emulates bf16, many times slower than float32 (docs/performance.md)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("dreamctl", "torch", "numpy", "gymnasium", "ale-py", "safetensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def estimate_memory(cfg: Config, obs_space: ObsSpace, params: int) -> dict[str, int]:
    """Bytes the run will need: the replay (full, or as far as the run's steps fill it), the model with its optimiser
    state, one batch's activations."""
    pixels = sum(int(np.prod(shape)) for shape in obs_space.values() if is_image(shape))
    vectors = sum(int(np.prod(shape)) for shape in obs_space.values() if not is_image(shape))
    step_bytes = pixels + 4 * vectors + 4 * 2 + 3
    replay = min(cfg.train.replay_capacity, cfg.train.steps) * step_bytes
    model = params * MODEL_BYTES_PER_PARAM
    t, m = cfg.train, cfg.model
    steps = t.batch_size * t.batch_length
    activations = steps * (4 * pixels * 12 + (4 * m.cnn_depth * 31 * 31 * 4 if pixels else 0))
    activations += steps * 4 * (vectors + m.mlp_units * m.mlp_layers) * 4
    activations += steps * cfg.behavior.horizon * 4 * (m.deter + m.stoch * m.classes) * 8
    return {"replay": replay, "model": model, "activations": activations, "total": replay + model + activations}


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def parameter_count(cfg: Config, obs_space: ObsSpace, action_dim: int, discrete: bool, agents: int = 1) -> int:
    """Trainable parameters plus the slow critic, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        world_model = WorldModel(cfg.model, obs_space, action_dim, cfg.behavior.discount, agents, cfg.multi)
        feat = world_model.rssm.feat_dim
        behavior = ActorCritic(cfg.behavior, cfg.model, feat, action_dim, discrete, agents, cfg.multi)
    return sum(p.numel() for p in [*world_model.parameters(), *behavior.parameters()])


def check_whole_worlds(cfg: Config, agents: int, ranks: int = 1) -> None:
    """Every batch holds whole worlds, and each data-parallel rank an equal share of them: refuse, in one
    sentence, a batch size that would split a world's agents or not divide among the ranks."""
    if cfg.train.batch_size % (agents * ranks):
        of = f"{agents} agent{'s' * (agents > 1)}"
        among = f"the env's {of}" if ranks == 1 else f"{agents * ranks} ({of} x {ranks} ranks)"
        why = "every batch holds whole worlds" + ("" if ranks == 1 else ", an equal number on each rank")
        raise UsageError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of {among}, since {why}.")


def check_replay_rows(cfg: Config, agents: int, ranks: int = 1) -> None:
    """A replay row is one step of each of a rank's env copies (every agent of every world): refuse, in one sentence,
    a replay too short for a training window (train.batch_length rows) or for one chunk file (run.replay_chunk)."""
    copies = cfg.env.num_envs * agents
    rows = cfg.train.replay_capacity // ranks // copies
    for key in ("train.batch_length", "run.replay_chunk"):
        if get_value(cfg, key) > rows:
            per = f"{copies} env copies" + ("" if ranks == 1 else f" on each of {ranks} ranks")
            raise UsageError(
                f"{key} ({get_value(cfg, key)}) must not exceed the {rows} rows the replay keeps for {per} "
                f"(train.replay_capacity {cfg.train.replay_capacity}); lower it or raise the capacity."
            )


def preflight(
    cfg: Config, obs_space: ObsSpace, params: int, agents: int = 1, ranks: int = 1, resuming: bool = False
) -> dict[str, int]:
    """Refuse, in one sentence, a run that cannot work here: batches that split a world's agents or do not divide
    among the data-parallel ranks, replay chunks longer than the replay, or more memory than the machine has (a
    resumed run, whose replay comes back whole and whose capacity cannot change, is told to move).
    Returns the memory estimate."""
    check_whole_worlds(cfg, agents, ranks)
    check_replay_rows(cfg, agents, ranks)
    need = estimate_memory(cfg, obs_space, params)
    have = available_memory()
    if have is not None and need["total"] > have:
        fitting = int(min(cfg.train.replay_capacity, cfg.train.steps) * have / need["total"] * 0.8)
        suggestion = max(cfg.train.batch_length * cfg.env.num_envs, fitting)
        fix = (
            "resume it on a machine with that much free memory"
            if resuming
            else f"lower train.replay_capacity (e.g. --set train.replay_capacity={suggestion})"
        )
        raise DreamctlError(
            f"this run needs about {need['total'] / 2**30:.1f} GiB (replay {need['replay'] / 2**30:.1f} GiB) but "
            f"only {have / 2**30:.1f} GiB is available; {fix}."
        )
    return need


def prepare(cfg: Config) -> Config:
    cfg = validate(cfg)
    cfg.env.name = resolve(cfg.env.name)
    return cfg


def precision_label(cfg: Config, device: torch.device) -> str:
    """The precision a run computes in, with `auto` resolved: 32, bf16 or 16."""
    dtype = resolve_precision(cfg.run.precision, device)
    return {None: "32", torch.bfloat16: "bf16", torch.float16: "16"}[dtype]


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    An update allocates and frees activations of 100+ MB. glibc serves blocks over 32 MB with mmap and unmaps
    them on free, so every update page-faults its activations in again (docs/performance.md measures the cost at
    the paper's batch). Serving everything from the heap and never trimming it removes the faults.
    Returns False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def configure_torch(cfg: Config) -> torch.device:
    """Threads, allocator and device of this process. A process that torchrun started as one of several ranks
    on a machine takes its share of the CPU's threads (unless run.threads says otherwise) and, on CUDA, the GPU
    of its local rank."""
    from dreamctl.training.launched import launched_ranks

    keep_freed_memory()
    launched = launched_ranks()
    threads = cfg.run.threads
    if not threads and launched is not None:
        threads = max(1, (os.cpu_count() or 1) // launched.local_world)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(cfg.run.device)
    if launched is not None and device.type == "cuda":
        if device.index is not None:
            raise UsageError(
                f"--device {device} puts every rank on one GPU; with several ranks each takes the GPU of its local "
                "rank, so pass --device cuda."
            )
        if launched.local_world > torch.cuda.device_count():  # every rank refuses, rank 0 too, so rank 0 says why
            raise UsageError(
                f"this machine has {torch.cuda.device_count()} GPU(s) for {launched.local_world} ranks; start at most "
                "one rank per GPU, or train on the CPU with --device cpu."
            )
        device = torch.device("cuda", launched.local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # so that what torch puts on "the" GPU (its context, a sync) goes to this one
    if (
        resolve_precision(cfg.run.precision, device) == torch.bfloat16
        and device.type == "cpu"
        and not cpu_computes_bf16()
    ):
        raise UsageError(
            "precision bf16 needs a CUDA GPU or a CPU with AVX-512 or AMX, and this CPU has neither "
            "(torch emulates bf16 there, several times slower than float32); use --precision 32."
        )
    return device
