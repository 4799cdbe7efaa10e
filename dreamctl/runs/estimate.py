"""How long a run will take on this machine, timed on this very config before it starts.

A run's time is the sum of three kinds of work: prefill ticks (one batched env step with random actions), policy
ticks (one batched env step plus one pass of the policy) and updates (one world-model, actor and critic step).
Their counts follow from the config; their costs are timed here on a throwaway trainer with the run's networks and
envs, a small replay and no I/O. The estimate covers training only, not evaluations.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dreamctl.config import Config
from dreamctl.envs import make_env
from dreamctl.model.agent import Agent
from dreamctl.runs.system import computes_bf16, configure_torch, prepare, resolve_precision
from dreamctl.training.trainer import Trainer

PRECISION_NAMES = {None: "float32", torch.bfloat16: "bf16", torch.float16: "float16"}


@dataclass(frozen=True)
class Costs:
    """Seconds per prefill tick, per policy tick and per update."""

    prefill_tick: float
    policy_tick: float
    update: float


@dataclass(frozen=True)
class TimeEstimate:
    """The timed costs of a config, and the same run's update cost in the other precision where it applies."""

    costs: Costs
    copies: int  # env copies stepped per tick: the worlds times their agents
    precision: str  # the run's: float32, bf16 or float16
    other_precision: str | None = None  # bf16 where a float32 run on this machine could use it
    other_update: float | None = None
    busy: tuple[float, int] | None = None  # (load average, cores) where other work filled the cores while timing

    def seconds(self, cfg: Config, env_steps: int = 0, updates: int = 0, update_cost: float | None = None) -> float:
        """Seconds from (`env_steps`, `updates`) to the end of the run (`cfg.train.steps`)."""
        ticks_left = work_left(cfg, self.copies, env_steps, updates)
        per_update = self.costs.update if update_cost is None else update_cost
        return (
            ticks_left["prefill"] * self.costs.prefill_tick
            + ticks_left["policy"] * self.costs.policy_tick
            + ticks_left["updates"] * per_update
        )

    def other_seconds(self, cfg: Config) -> float | None:
        return None if self.other_update is None else self.seconds(cfg, update_cost=self.other_update)


def work_left(cfg: Config, copies: int, env_steps: int, updates: int) -> dict[str, int]:
    """Prefill ticks, policy ticks and updates still to come from (`env_steps`, `updates`): the trainer steps all
    `copies` per tick (so it ends at the first multiple of `copies` from `steps` on), acts randomly below `prefill`
    agent steps, and from there on is due `pretrain + (env_steps - prefill) // train_every` updates in all."""
    t, n = cfg.train, copies
    total_ticks = math.ceil(t.steps / n)
    prefill_ticks = min(math.ceil(t.prefill / n), total_ticks)
    done_ticks = math.ceil(env_steps / n)
    final = total_ticks * n
    total_updates = t.pretrain + (final - t.prefill) // t.train_every if final >= t.prefill else 0
    return {
        "prefill": max(0, prefill_ticks - done_ticks),
        "policy": max(0, total_ticks - max(done_ticks, prefill_ticks)),
        "updates": max(0, total_updates - updates),
    }


def estimate_time(cfg: Config, budget: float = 2.0) -> TimeEstimate:
    """Time this config's prefill ticks, policy ticks and updates for about `budget` seconds in all.

    The global RNGs (Python's, torch's) are left as they were, so a run that starts afterwards is the same as
    without the estimate.
    """
    cfg = prepare(copy.deepcopy(cfg))
    t = cfg.train
    cfg.run.replay_chunk = 2**62  # no chunk is ever complete, so none is handed out to be saved
    device = configure_torch(cfg)
    amp = resolve_precision(cfg.run.precision, device)
    env = make_env(cfg.env, t.seed)
    # A small replay: enough rows for one batch; its size does not change what a tick or an update costs.
    t.replay_capacity = env.num_envs * (t.batch_length + 2)
    python_rng = random.getstate()
    busy = machine_busy()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if device.type == "cuda" else []):
            trainer = Trainer(cfg, env, device, amp)
            trainer.start()
            t.prefill = 10**12  # random actions, however long the timing takes
            sync = torch.cuda.synchronize if device.type == "cuda" else None
            prefill_tick = _time(trainer.collect_step, budget * 0.1, t.batch_length + 1, sync)
            t.prefill = 0
            policy_tick = _time(trainer.collect_step, budget * 0.2, 3, sync)
            update = _time(trainer.update, budget * 0.7 * (0.5 if amp is None else 1.0), 1, sync)
            other, other_update = None, None
            if amp is None and computes_bf16(device):
                other = "bf16"
                spec = env.spec
                agent = Agent(
                    cfg, spec.obs_space, spec.action_dim, spec.discrete, device, torch.bfloat16, spec.num_agents
                )
                trainer.agent = agent
                other_update = _time(trainer.update, budget * 0.35, 1, sync)
    finally:
        env.close()
        random.setstate(python_rng)
    costs = Costs(prefill_tick, policy_tick, update)
    return TimeEstimate(costs, env.num_envs, PRECISION_NAMES[amp], other, other_update, busy)


def machine_busy() -> tuple[float, int] | None:
    """(The last minute's load average, the cores this process may use) where the load fills those cores: other
    work then takes their time from the timing (oversubscribed threads can slow it many times over)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (load, cores) if load >= cores else None


def _time(work: Callable[[], None], budget: float, least: int, sync: Callable[[], None] | None) -> float:
    """Seconds per call of `work`: one untimed warm-up call (its first-call costs, such as oneDNN's kernel choices,
    would inflate the answer), then at least `least` timed calls and as many more as fit in `budget`
    seconds (no more once 50 are timed); `sync` waits for queued GPU work. A mean, not a median: the calls that
    end episodes cost more, and they are part of a run."""
    wait = sync or (lambda: None)
    work()
    wait()
    calls, began = 0, time.perf_counter()
    while calls < least or (time.perf_counter() - began < budget and calls < 50):
        work()
        calls += 1
    wait()
    return (time.perf_counter() - began) / calls
