"""A run trained by several data-parallel ranks: what passes through rank 0, which alone touches the run's files.

Ranks 1 ... N-1 never read or write the registry, so ranks on other machines need no shared file system. Rank 0
receives their replay chunks as they fill and their per-rank state at each checkpoint, and sends them back on
resume:

- a checkpoint holds the networks and optimisers once (equal on every rank) and each rank's own state (RNGs,
  envs, acting state, last observation, running episodes, replay tail): rank 0's under the single-process names,
  rank r's under `rank<r>/`; so eval and imagine read it like any other checkpoint;
- rank r's replay chunk k is `replay/chunk-<k>-rank<r>.bin` (rank 0's keeps the single-process name).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dreamctl.config import Config, from_dict
from dreamctl.envs import BatchedEnv, EnvSpec, make_env
from dreamctl.errors import DreamctlError
from dreamctl.runs.system import configure_torch, prepare, resolve_precision
from dreamctl.training.ranks import Ranks
from dreamctl.training.state import restore_trainer, trainer_state
from dreamctl.training.trainer import Hooks, Trainer

if TYPE_CHECKING:
    from dreamctl.runs.run import Run

SHARED_PREFIXES = ("agent/", "optim/")
"""Checkpoint entries that are the same on every rank, stored once."""


def rank_prefix(rank: int) -> str:
    return "" if rank == 0 else f"rank{rank}/"


def gather_state(ranks: Ranks, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Every rank's checkpoint tensors merged into one dict on rank 0 (None on the others)."""
    own = {k: v for k, v in tensors.items() if not k.startswith(SHARED_PREFIXES)}
    gathered = ranks.gather(own)
    if gathered is None:
        return None
    merged = dict(tensors)
    for rank, state in enumerate(gathered[1:], start=1):
        merged.update({rank_prefix(rank) + k: v for k, v in state.items()})
    return merged


def scatter_state(ranks: Ranks, merged: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The inverse of `gather_state`: each rank receives the shared entries and its own under the plain names."""
    views = None
    if merged is not None:
        views = [_view(merged, rank, ranks.world) for rank in range(ranks.world)]
    return ranks.scatter(views)


def _view(merged: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    others = tuple(rank_prefix(r) for r in range(1, world))
    view = {k: v for k, v in merged.items() if k.startswith(SHARED_PREFIXES)}
    if rank == 0:
        view.update({k: v for k, v in merged.items() if not k.startswith(SHARED_PREFIXES + others)})
    else:
        prefix = rank_prefix(rank)
        view.update({k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)})
    return view


class FollowerHooks(Hooks):
    """The hooks of ranks 1 ... N-1: they take part in rank 0's collectives (chunks, checkpoints) and write
    nothing; progress, metrics and episodes are rank 0's to report."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks

    def on_chunk(self, index: int, rows: dict[str, np.ndarray]) -> None:
        self.ranks.gather(rows)

    def on_checkpoint(self, trainer: Trainer) -> None:
        gather_state(self.ranks, trainer_state(trainer)[0])

    def on_eval(self, trainer: Trainer) -> None:
        self.on_checkpoint(trainer)
        self.ranks.wait_for_root()  # while rank 0 plays the evaluation episodes alone


def resume_follower(ranks: Ranks, should_stop: Callable[[], bool]) -> tuple[Trainer, bool]:
    """Rank r > 0 of a resume: rank 0 sends the run's config and this rank's state (or its refusal, which this rank
    raises too); the rank trains beside it. Returns the trainer and whether it finished."""
    plan: dict[str, Any] = ranks.broadcast(None)
    raise_refusal(plan)
    ranks.resume_command = plan["resume_command"]
    cfg = prepare(from_dict(plan["config"], source="rank 0's run.yaml"))
    with rank_trainer(cfg, env_seed(cfg, plan["resumes"], plan["restore"], ranks.rank, ranks.world), ranks) as trainer:
        if plan["restore"]:
            tensors = scatter_state(ranks, None)
            restore_trainer(trainer, tensors, plan["metadata"], chunk_reader(None, ranks))
        return trainer, follow(cfg, trainer, ranks, should_stop)


@contextlib.contextmanager
def rank_trainer(
    cfg: Config,
    seed: int,
    ranks: Ranks | None,
    check: Callable[[EnvSpec], None] = lambda spec: None,
    new_run: bool = False,
) -> Iterator[Trainer]:
    """This process's env (its first copy seeded `seed`) and trainer, made in one step that the ranks end together
    (`agreed`); `check(spec)` may refuse the env before the trainer allocates anything. The env closes when the block
    ends. new_run: the env is checked as a new run's (`make_env`)."""
    env: BatchedEnv | None = None
    try:
        with agreed(ranks):
            device = configure_torch(cfg)
            env = make_env(cfg.env, seed, new_run=new_run)
            check(env.spec)
            trainer = Trainer(cfg, env, device, resolve_precision(cfg.run.precision, device), ranks=ranks)
        yield trainer
    finally:
        if env is not None:
            env.close()


@contextlib.contextmanager
def agreed(ranks: Ranks | None) -> Iterator[None]:
    """A step of setup that every rank of a job takes at the same point (making its env and trainer), ended
    together: where any rank meets a refusal or failure (a DreamctlError), every rank raises the first such rank's
    and only that rank says it. Otherwise each rank would print the same sentence, or the ones that passed would stop
    at their next collective with no more than that another rank was lost. Other exceptions (bugs) go up at once
    with their traceback. Nothing is agreed in a single process."""
    if ranks is None:
        yield
        return
    failure: DreamctlError | None = None
    try:
        yield
    except DreamctlError as exc:
        failure = exc
    failures = ranks.all_gather(failure)
    first = next((rank for rank, f in enumerate(failures) if f is not None), None)
    if first is None:
        return
    said = failure if first == ranks.rank else failures[first]  # this rank's own keeps its traceback
    assert said is not None
    said.every_rank = True
    said.said_elsewhere = first != ranks.rank
    raise said from None


def raise_refusal(word: dict[str, Any]) -> None:
    """On a rank r > 0: raise the refusal or failure rank 0 sent (`{"error": ...}`) instead of its plan, marked as
    said by rank 0."""
    if "error" in word:
        word["error"].said_elsewhere = word["error"].every_rank = True
        raise word["error"]


def env_seed(cfg: Config, resumes: int, restored: bool, rank: int, world: int) -> int:
    """The seed of this rank's first env copy (copy i takes this + i). Each start of a run's training, the first and
    every resume, takes its own block of world * num_envs seeds, so envs that cannot be restored start new episodes
    from seeds no earlier start of the run has used."""
    start = resumes + 1 if restored else 0
    return cfg.train.seed + (start * world + rank) * cfg.env.num_envs


def chunk_reader(run: Run | None, ranks: Ranks | None) -> Callable[[int], dict[str, np.ndarray]]:
    """Chunk k of this rank's replay: read by rank 0, which sends each rank its own."""
    if ranks is None:
        assert run is not None
        return run.read_chunk

    def read(index: int) -> dict[str, np.ndarray]:
        rows = None if run is None else [run.read_chunk(index, rank) for rank in range(ranks.world)]
        return ranks.scatter(rows)

    return read


def follow(cfg: Config, trainer: Trainer, ranks: Ranks, should_stop: Callable[[], bool]) -> bool:
    """Rank r > 0: train in step with rank 0, then take part in its final checkpoint; whether it finished."""
    trainer.hooks = FollowerHooks(ranks)
    finished = trainer.run(cfg.train.steps, should_stop)
    trainer.hooks.on_checkpoint(trainer)
    return finished
