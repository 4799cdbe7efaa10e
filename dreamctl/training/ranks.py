"""Data-parallel training across processes on torch.distributed: what the ranks of one run exchange.

Each rank steps its own env copies into its own replay shard and samples batch_size / N sequences; after each of
the three backward passes (world model, actor, critic) the gradients are averaged across the ranks, one
all_reduce per optimiser step, before clipping. N ranks so compute the update that one process computes on the
union of their batches (with the row-consistent noise of model/noise.py), except for the two terms that are means
taken per rank first (docs/distributed.md): the free-nats floor and the average over agents still present.

Gradients are averaged by hand rather than by DistributedDataParallel: DreamerV2 trains three modules in
alternation and the actor's loss backpropagates through a frozen world model, while DDP's reducer expects every
parameter it wraps to receive a gradient in every backward pass it observes (else errors or
find_unused_parameters' extra traversal) and would need three wrappers with their own buckets. One flattened
all_reduce per optimiser is the same communication without the bookkeeping, and it sits exactly where clipping
must see the averaged gradient.

A collective that fails (another rank died) raises RankLost: the caller records the run as interrupted.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from dreamctl.errors import DreamctlError
from dreamctl.model.noise import set_row_shard
from dreamctl.training.launched import launched_ranks, stop_with_launcher

T = TypeVar("T")

TIMEOUT = datetime.timedelta(minutes=30)
"""How long a rank waits for the others in one collective; a lost rank is found sooner, by its closed connection."""
EVALUATION_TIMEOUT = datetime.timedelta(days=1)
"""How long the other ranks wait while rank 0 plays a run's evaluation episodes alone (`Ranks.wait_for_root`):
as long as the episodes may take, which TIMEOUT does not bound (100 Atari episodes, a slow env's rendering)."""


class RankLost(DreamctlError):
    """Another rank of the job stopped, so no collective can complete."""


class Ranks:
    """This process's place among the N ranks of a run, and the collectives training uses.

    Args:
        rank: this process's rank, 0 ... N - 1; rank 0 alone reads and writes the run's files.
        world: N, the number of ranks.
        local_world: ranks on this machine (they share its CPU threads).
    """

    def __init__(self, rank: int, world: int, local_world: int = 1, evaluation_group: Any = None):
        """evaluation_group: the process group with EVALUATION_TIMEOUT (`join` makes it); None: the default group."""
        self.rank, self.world, self.local_world = rank, world, local_world
        self.evaluation_group = evaluation_group
        self.resume_command: str | None = None
        """The command that continues the job's run, once the run exists: a lost rank's message names it."""

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """Replace each parameter's .grad by its mean over the ranks (one all_reduce; parameters without a
        gradient keep none: the graph is the same on every rank, so they are the same parameters everywhere)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._call(dist.all_reduce, flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, values: Tensor) -> Tensor:
        """The element-wise mean of a tensor over the ranks."""
        values = values.clone()
        self._call(dist.all_reduce, values)
        return values / self.world

    def any(self, flag: bool) -> bool:
        """Whether any rank says yes: the ranks stop together, at the same step, when one was asked to."""
        value = torch.tensor([int(flag)])
        self._call(dist.all_reduce, value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        self._call(dist.all_gather_object, out, obj)
        return out

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's `obj` in rank order on rank 0; None elsewhere."""
        out: list[Any] | None = [None] * self.world if self.is_root else None
        self._call(dist.gather_object, obj, out, dst=0)
        return out

    def scatter(self, objs: Sequence[T] | None) -> T:
        """Rank r receives objs[r] from rank 0 (objs is read on rank 0 only)."""
        out: list[Any] = [None]
        self._call(dist.scatter_object_list, out, list(objs) if self.is_root and objs is not None else None, src=0)
        return out[0]

    def broadcast(self, obj: T | None) -> T:
        """Rank 0's `obj` on every rank."""
        box = [obj if self.is_root else None]
        self._call(dist.broadcast_object_list, box, src=0)
        return box[0]  # type: ignore[return-value]

    def wait_for_root(self) -> None:
        """Meet rank 0 once it has played its evaluation episodes: the other ranks wait here, up to
        EVALUATION_TIMEOUT, instead of in their next collective, which would give up after TIMEOUT."""
        self._call(dist.barrier, group=self.evaluation_group)

    def close(self, together: bool = True) -> None:
        """Leave the job: together (a barrier first), as a rank that tore its group down while another still used it
        aborted at exit ("terminate called without an active exception"), failing a run that had finished; or at
        once (`together=False`), where the others may be inside a collective this rank will never join."""
        if not dist.is_initialized():
            return
        if together:
            try:
                dist.barrier()
            except (RuntimeError, ConnectionError):
                pass  # another rank is gone already: nothing left to wait for
        dist.destroy_process_group()

    def _call(self, collective: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            collective(*args, **kwargs)
        except (RuntimeError, ConnectionError) as exc:
            # The job is over: the launcher's SIGTERM to the survivors, due any moment, must neither ask for a
            # checkpoint that can no longer be gathered nor kill this process before it has said why it stopped.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            resume = self.resume_command
            then = "" if resume is None else f"; `{resume}` continues the run from its latest checkpoint"
            raise RankLost(
                f"another rank of this {self.world}-rank job stopped ({_first_sentence(exc)}), so this one stops "
                f"too{then}."
            ) from None


@contextlib.contextmanager
def leaving(ranks: Ranks | None) -> Iterator[None]:
    """Leave the job when the block ends (nothing to leave in a single process): together when it ends normally or
    with a refusal every rank raises (`every_rank`), at once otherwise. A rank stopped at once (a second signal) or
    failing on its own leaves the others bound for a collective it will never join; at a barrier it would wait with
    them for the collectives' 30-minute timeout, where leaving closes its connections and their collective fails
    (RankLost)."""
    if ranks is None:
        yield
        return
    try:
        yield
    except BaseException as exc:
        ranks.close(together=getattr(exc, "every_rank", False))
        raise
    ranks.close()


def join() -> Ranks:
    """Join the job torchrun started: gloo for CPU tensors and, where this local rank has a GPU, nccl for CUDA
    tensors (one GPU per rank on each machine: the local rank's). Object exchanges go through gloo."""
    launched = launched_ranks()
    assert launched is not None, "join() runs only in a process that torchrun started"
    stop_with_launcher()
    if torch.cuda.is_available() and launched.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(launched.local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    evaluation_group = dist.new_group(backend="gloo", timeout=EVALUATION_TIMEOUT)
    set_row_shard(launched.rank, launched.world)
    return Ranks(launched.rank, launched.world, launched.local_world, evaluation_group)


def host_name() -> str:
    return socket.gethostname()


def _first_sentence(exc: BaseException) -> str:
    """The failure's first sentence without the source location gloo puts before it ("[.../pair.cc:553] Connection
    closed by peer [127.0.0.1]:27884. This is typically caused by ..." gives "Connection closed by peer
    [127.0.0.1]:27884")."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]\s]+:\d+\]\s*", "", lines[0]) if lines else ""
    text = text.split(". ")[0].rstrip(".")
    return text[:200] or type(exc).__name__
