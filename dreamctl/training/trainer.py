"""The training loop: random prefill -> collect with the policy -> replay -> an update every N agent steps.

Nothing here knows about files, Typer or rich: the caller passes `Hooks` that receive progress, metrics,
finished episodes, filled replay chunks and checkpoint requests. Every stateful part of the loop (agent,
optimisers, RNGs, envs, acting state, the replay tail) round-trips through `training.state`, so a resumed run
continues bit for bit where the checkpoint left it.

With several data-parallel ranks (training/ranks.py) every rank runs this loop in step with the others: agent steps
and updates count the whole job's, each rank samples its share of the batch, the ranks stop together, and rank 0's
hooks hear of every rank's episodes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dreamctl.config import Config
from dreamctl.envs.base import BatchedEnv, Step
from dreamctl.keys import ACTION_MASK_KEY
from dreamctl.model.agent import Agent
from dreamctl.training.ranks import Ranks
from dreamctl.training.replay import Replay
from dreamctl.training.rollout import EpisodeTracker, act


@dataclass
class Episode:
    env_index: int
    ret: float
    length: int  # agent steps
    frames: int
    capped: bool  # ended by the frame cap rather than by the game
    end_step: int  # the run's agent-step counter when it ended
    end_frame: int
    wall_time: float  # the run's training seconds when it ended (resumes continue the count)
    won: bool | None = None  # envs of battles (smax:): whether the battle was won; None elsewhere


COLLAPSE_KL = 0.1
"""Nats: a world model whose KL stays below this for COLLAPSE_UPDATES updates in a row has collapsed."""
COLLAPSE_UPDATES = 1000


def collapse_warning(low_kl_updates: int) -> str | None:
    """The one-sentence warning for a world model whose posterior has collapsed onto its prior, or None.

    Args:
        low_kl_updates: how many of the latest updates in a row measured a KL (posterior to prior) below COLLAPSE_KL.
    """
    if low_kl_updates < COLLAPSE_UPDATES:
        return None
    return (
        f"the world model has collapsed: its KL stayed below {COLLAPSE_KL} nats for {COLLAPSE_UPDATES:,} updates in a "
        f"row, so its latents carry almost nothing of the observations and the policy learns from empty dreams; raise "
        f"model.free_nats (the pixels and dmc presets use 1.0) or model.kl_scale, or lower model.reward_scale."
    )


@dataclass
class Progress:
    env_steps: int
    total_steps: int
    updates: int
    episodes: int
    last_return: float | None
    wall_time: float
    prefill: bool
    warning: str | None = None  # collapse_warning() as of the last metrics flush
    stopping: bool = False  # the run stops here early, asked to (every rank agreed); a checkpoint follows
    frames: int = 0  # Trainer.frames()


class Hooks:
    """Callbacks from the loop; the defaults do nothing."""

    def on_progress(self, progress: Progress) -> None: ...
    def on_metrics(self, step: int, scalars: dict[str, float]) -> None: ...
    def on_episode(self, episode: Episode) -> None: ...
    def on_chunk(self, index: int, rows: dict[str, np.ndarray]) -> None: ...
    def on_checkpoint(self, trainer: Trainer) -> None: ...
    def on_eval(self, trainer: Trainer) -> None: ...


def seed_everything(seed: int, rank: int = 0) -> np.random.Generator:
    """Seed Python and torch alike on every rank (the ranks' networks start equal and draw their noise in step,
    see model/noise.py); the numpy generator, which picks prefill actions and replay samples, is the rank's own."""
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed if rank == 0 else [seed, rank])


class Trainer:
    """Args:
    cfg: the run's config.
    env: the batched env to collect from; its copies are stepped together.
    device: where the agent trains.
    amp_dtype: the autocast dtype of training (bfloat16, float16) or None for float32.
    hooks: receivers of progress, metrics, episodes, replay chunks and checkpoint requests.
    ranks: this process's place among data-parallel ranks, or None for a single process.
    """

    def __init__(
        self,
        cfg: Config,
        env: BatchedEnv,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        hooks: Hooks | None = None,
        ranks: Ranks | None = None,
    ):
        self.cfg, self.env, self.device = cfg, env, device
        self.hooks = hooks or Hooks()
        self.ranks = ranks
        self.world = 1 if ranks is None else ranks.world
        self.rng = seed_everything(cfg.train.seed, 0 if ranks is None else ranks.rank)
        spec = env.spec
        m = spec.num_agents
        average = None if ranks is None else ranks.average_gradients
        self.agent = Agent(cfg, spec.obs_space, spec.action_dim, spec.discrete, device, amp_dtype, m, average)
        self.replay = Replay(  # this rank's shard: the job's replay holds replay_capacity rows in all
            cfg.train.replay_capacity // self.world, env.num_envs, spec.obs_space, spec.action_dim, spec.discrete, m
        )
        n = env.num_envs
        self.env_steps = self.updates = self.episodes = 0
        self.wall_time = 0.0
        self.last_return: float | None = None
        self.act_state = self.agent.initial_act_state(n)
        self.episodes_running = EpisodeTracker(n)
        self.obs: Step | None = None
        self._unshared: list[Episode] = []  # this rank's episodes that rank 0 has not heard of yet
        self.metric_sums: dict[str, torch.Tensor] = {}  # of the updates since the last metrics flush
        self.metric_count = 0
        # Updates in a row whose KL was below COLLAPSE_KL, counted on the device (read at each metrics flush).
        self.low_kl_updates = torch.zeros((), dtype=torch.int64, device=device)
        self.warning: str | None = None
        self._clock = time.perf_counter()
        self._log_mark = (0, 0, time.perf_counter())  # (agent steps, updates, time) where the log interval began

    # ---------------------------------------------------------------- the loop

    def start(self) -> None:
        """Begin the first episodes; the reset frames are stored like every other step."""
        self._store(self.env.reset(), None)

    def run(self, total_steps: int, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Train until `total_steps` agent steps; returns False if `should_stop` ended it early."""
        self._log_mark = (self.env_steps, self.updates, time.perf_counter())  # a resumed run's speeds start here
        before = self.env_steps  # new episodes' first frames count as steps: the first tick's crossings include them
        if self.obs is None:
            self.start()
        self._clock = time.perf_counter()
        while self.env_steps < total_steps:
            stop = should_stop()
            if self.ranks is not None:
                stop = self.ranks.any(stop)
            if stop:
                self.share_episodes()
                self.hooks.on_progress(self.progress(total_steps, stopping=True))
                return False
            self.collect_step()
            while self.updates < self._updates_due():
                self.update()
            self._after_tick(before, total_steps)
            before = self.env_steps
        return True

    def collect_step(self) -> None:
        """One batched env step: random actions during prefill, else one policy pass for all copies."""
        spec, n = self.env.spec, self.env.num_envs
        if self.env_steps < self.cfg.train.prefill:
            mask = None if self.obs is None else self.obs.obs.get(ACTION_MASK_KEY)
            if mask is not None:  # uniform among the actions allowed now, as the actor would choose
                action = np.argmax(np.where(mask > 0.5, self.rng.random((n, spec.action_dim)), -1.0), axis=1)
            elif spec.discrete:
                action = self.rng.integers(0, spec.action_dim, size=n)
            else:
                action = self.rng.uniform(-1.0, 1.0, size=(n, spec.action_dim)).astype(np.float32)
        else:
            assert self.obs is not None
            action, _, self.act_state = act(self.agent, self.obs, self.act_state)
        self._store(self.env.step(action), action)

    def _store(self, step: Step, action: np.ndarray | None) -> None:
        """Append one row (the action that led to each frame; none where an episode starts) and count it."""
        n, spec = self.env.num_envs, self.env.spec
        if spec.discrete:
            stored = np.full(n, -1, np.int32) if action is None else np.where(step.is_first, -1, action)
        else:
            stored = np.zeros((n, spec.action_dim), np.float32)
            if action is not None:
                stored = np.where(step.is_first[:, None], 0.0, action).astype(np.float32)
        self.replay.add(
            {
                **step.obs,
                "action": stored,
                "reward": step.reward,
                "is_first": step.is_first,
                "is_last": step.is_last,
                "is_terminal": step.is_terminal,
                **({} if step.is_present is None else {"is_present": step.is_present}),
            }
        )
        self.obs = step
        self.env_steps += n * self.world
        self._track_episodes(step)
        chunk = self.cfg.run.replay_chunk
        if self.replay.cursor % chunk == 0:
            index = self.replay.cursor // chunk - 1
            self.hooks.on_chunk(index, self.replay.rows(index * chunk, self.replay.cursor))

    def _track_episodes(self, step: Step) -> None:
        repeat, agents, won = self.env.spec.action_repeat, self.env.spec.num_agents, self.env.won
        for done in self.episodes_running.update(step):
            episode = Episode(
                done.env_index,
                done.ret,
                done.length,
                done.length * repeat,
                bool(not step.is_terminal[done.env_index]),
                self.env_steps,
                self.frames(),
                self.wall_time,
                None if won is None else bool(won[done.env_index // agents]),
            )
            if self.ranks is None:
                self._count_episode(episode)
            else:
                self._unshared.append(episode)

    def _count_episode(self, episode: Episode) -> None:
        self.episodes += 1
        self.last_return = episode.ret
        self.hooks.on_episode(episode)

    def share_episodes(self) -> None:
        """Every rank counts every rank's finished episodes (env indices numbered across the ranks, rank-major)
        and rank 0's hooks hear of them; called by all ranks at the same step, before metrics and checkpoints.

        They are counted in the order they ended (by agent step, then env index), as one process with every rank's
        copies counts them: so the last return is the latest episode's, and where a stop adds a share between two
        log steps, a resumed run still logs its episodes in the uninterrupted run's order.
        """
        if self.ranks is None:
            return
        n = self.env.num_envs
        shared = []
        for rank, episodes in enumerate(self.ranks.all_gather(self._unshared)):
            for episode in episodes:
                episode.env_index += rank * n
                shared.append(episode)
        for episode in sorted(shared, key=lambda e: (e.end_step, e.env_index)):
            self._count_episode(episode)
        self._unshared = []

    def _updates_due(self) -> int:
        t = self.cfg.train
        if self.env_steps < t.prefill or not self.replay.can_sample(t.batch_length):
            return 0
        return t.pretrain + (self.env_steps - t.prefill) // t.train_every

    def update(self) -> None:
        """One update on a batch sampled from the replay, its metrics summed for the next flush."""
        t = self.cfg.train
        rows = t.batch_size // self.world  # this rank's share of the batch
        batch = self.replay.to_torch(self.replay.sample(rows, t.batch_length, self.rng), self.device)
        metrics = self.agent.train_step(batch)
        self.updates += 1
        self.low_kl_updates = torch.where(metrics["loss/kl"].detach() < COLLAPSE_KL, self.low_kl_updates + 1, 0)
        for key, value in metrics.items():
            value = value.detach().float()
            self.metric_sums[key] = self.metric_sums[key] + value if key in self.metric_sums else value
        self.metric_count += 1

    def _after_tick(self, before: int, total_steps: int) -> None:
        run = self.cfg.run
        now = time.perf_counter()
        self.wall_time += now - self._clock
        self._clock = now
        logs = _crossed(before, self.env_steps, run.log_every)
        flush = logs or self.env_steps >= total_steps
        saves = _crossed(before, self.env_steps, run.eval_every) or _crossed(
            before, self.env_steps, run.checkpoint_every
        )
        if flush or saves:
            self.share_episodes()
        # First, so that the progress carries its warning. The last row of a stint that ends between log steps
        # leaves the interval open: a resumed run's next row then averages what the uninterrupted run's does.
        scalars = self.flush_metrics(close=logs) if flush else None
        self.hooks.on_progress(self.progress(total_steps))
        if scalars is not None:
            self.hooks.on_metrics(self.env_steps, scalars)
        if self.env_steps >= total_steps:
            # The caller writes the final checkpoint. No evaluation here, as in the official code's loop (it evaluates
            # before each stint of eval_every steps): a failed evaluation after the last checkpoint would leave a run
            # at its target that could not be finished. `dreamctl eval` evaluates the trained policy.
            return
        if _crossed(before, self.env_steps, run.eval_every):
            # Evaluation samples latents too; a forked RNG keeps the training stream, and so resume, exact.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self.hooks.on_eval(self)  # also writes a checkpoint, so the evaluated weights can be kept as best
        elif _crossed(before, self.env_steps, run.checkpoint_every):
            self.hooks.on_checkpoint(self)

    def progress(self, total_steps: int, stopping: bool = False) -> Progress:
        return Progress(
            self.env_steps,
            total_steps,
            self.updates,
            self.episodes,
            self.last_return,
            self.wall_time,
            self.env_steps < self.cfg.train.prefill,
            self.warning,
            stopping,
            self.frames(),
        )

    def frames(self) -> int:
        """Env frames so far, summed over the worlds: a world's agents decide together, so its frames are its agents'
        steps divided among them, each step `action_repeat` frames."""
        spec = self.env.spec
        return self.env_steps // spec.num_agents * spec.action_repeat

    def flush_metrics(self, close: bool = True) -> dict[str, float]:
        """Means of the update metrics since the last closed log interval, plus speeds; one host sync per flush.
        close: start the next interval here (every log step); False reports the interval so far and keeps it open."""
        steps0, updates0, time0 = self._log_mark
        now = time.perf_counter()
        sums = self.metric_sums
        names = sorted(sums)  # one order on every rank (a restored rank's sums come in its checkpoint's order)
        stacked = torch.stack([sums[k] for k in names]) if names else torch.zeros(0, device=self.device)
        if self.ranks is not None and names:  # every rank flushes at the same step, after the same updates
            stacked = self.ranks.mean(stacked)
        # One read from the device: the sums (float32, exact in float64) and the low-KL count.
        *values, low_kl = torch.cat([stacked.double(), self.low_kl_updates.double().reshape(1)]).tolist()
        read = dict(zip(names, values, strict=True))
        scalars = {k: read[k] / self.metric_count for k in sums} if self.metric_count else {}
        scalars["train/updates"] = float(self.updates)
        scalars["train/wall_time"] = self.wall_time
        low_kl_updates = int(low_kl)
        scalars["model/low_kl_updates"] = float(low_kl_updates)
        self.warning = collapse_warning(low_kl_updates)
        scalars["train/agent_steps_per_s"] = (self.env_steps - steps0) / max(now - time0, 1e-9)
        scalars["train/updates_per_s"] = (self.updates - updates0) / max(now - time0, 1e-9)
        if close:
            self.metric_sums, self.metric_count = {}, 0
            self._log_mark = (self.env_steps, self.updates, now)
        return scalars

    def chunks_needed(self, replay_cursor: int) -> range:
        """Indices of the chunk files that hold rows still in memory at `replay_cursor`."""
        chunk = self.cfg.run.replay_chunk
        first_row = max(0, replay_cursor - self.replay.rows_per_env)
        return range(first_row // chunk, replay_cursor // chunk)


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every
