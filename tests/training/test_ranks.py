"""Data-parallel ranks: row-consistent noise, and one update of 2 gloo ranks on half-batches equals one process's
update on the whole batch."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from conftest import random_batch, tiny_config

from dreamctl.errors import SecondSignal
from dreamctl.model.agent import Agent
from dreamctl.model.noise import set_row_shard, uniform_like
from dreamctl.training import ranks as ranks_module
from dreamctl.training.ranks import RankLost, Ranks, _first_sentence, join, leaving
from dreamctl.training.trainer import Episode, Trainer

CASES = {
    "catch": ("train.batch_size=4",),
    "two agents, attention, central critic": (
        "train.batch_size=4",
        "multi.communication=attention",
        "multi.critic=central",
    ),
}
AGENTS = {"catch": 1, "two agents, attention, central critic": 2}

TOLERANCE = 1e-6
"""Parameters after one update, float32. The ranks compute the same rows as the single process, but the batch
reductions (loss means, weight gradients) sum in another order and the all_reduce adds the two halves' means, so
gradients differ by float32 round-off, ~1e-7 relative. Adam's first step moves every parameter by lr * g / (|g| +
eps) with lr <= 6e-4: a relative change of 1e-7 in g moves it by at most ~1e-10, and a gradient near zero, where the
ratio is steepest, by lr * |dg| / eps = 6e-4 * 1e-12 / 1e-5 (g ~ 1e-5, dg ~ 1e-12). 1e-6 bounds both with room;
a mistake (an unaveraged or a summed gradient, mismatched noise) moves parameters by ~lr = 1e-4 or more."""


@pytest.fixture(autouse=True)
def single_process_noise():
    yield
    set_row_shard(0, 1)


def test_each_rank_draws_its_rows_of_the_whole_batch():
    x = torch.zeros(3, 5, 2)
    torch.manual_seed(7)
    whole = torch.rand(6, 5, 2)
    blocks = []
    for rank in range(2):
        set_row_shard(rank, 2)
        torch.manual_seed(7)
        blocks.append(uniform_like(x))
    assert torch.equal(torch.cat(blocks), whole)
    set_row_shard(0, 1)
    torch.manual_seed(7)
    assert torch.equal(uniform_like(torch.zeros(6, 5, 2)), whole)  # one process draws exactly that
    with pytest.raises(ValueError):
        set_row_shard(2, 2)


def _agent(case: str, average=None) -> Agent:
    cfg = tiny_config(*CASES[case])
    torch.manual_seed(0)
    return Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=AGENTS[case], average_gradients=average)


def _update(agent: Agent, batch: dict) -> None:
    torch.manual_seed(1)
    agent.train_step(batch)


def _join(rank: int, world: int, port: int) -> Ranks:
    os.environ.update(
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    return join()


def _rank(rank: int, world: int, port: int, case: str, out: Path) -> None:
    ranks = _join(rank, world, port)
    try:
        agent = _agent(case, ranks.average_gradients)
        batch = random_batch(agent.cfg)
        rows = agent.cfg.train.batch_size // world
        _update(agent, {k: v[rank * rows : (rank + 1) * rows] for k, v in batch.items()})
        torch.save(agent.state_dict(), out / f"rank{rank}.pt")
    finally:
        ranks.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_on_half_batches_update_as_one_process_on_the_whole_batch(case: str, tmp_path: Path):
    mp.start_processes(_rank, args=(2, _free_port(), case, tmp_path), nprocs=2, start_method="spawn")
    single = _agent(case)
    before = {k: v.clone() for k, v in single.state_dict().items()}
    _update(single, random_batch(single.cfg))
    expected = single.state_dict()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        moved = 0
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=TOLERANCE, msg=f"rank {rank}: {key}")
            moved += int(not torch.equal(value, before[key]))
        assert moved > len(expected) // 2  # the update moved most parameters, which the ranks followed


def _stop_at_once_on_rank_1(rank: int, world: int, port: int, out: Path) -> None:
    ranks = _join(rank, world, port)
    try:
        with leaving(ranks):
            if rank == 1:
                raise SecondSignal(signal.SIGTERM)  # stop here, wherever the others are
            ranks.mean(torch.ones(1000))
    except RankLost:
        (out / "rank0").write_text("lost")
    except SecondSignal:
        pass


def test_a_rank_that_stops_at_once_fails_the_others_next_collective_at_once(tmp_path: Path):
    """Rank 1 leaves without joining the collective rank 0 is bound for: rank 0 must meet a closed connection
    (RankLost) rather than wait for the collectives' 30-minute timeout, as it did while rank 1 waited at a barrier."""
    job = mp.start_processes(
        _stop_at_once_on_rank_1, args=(2, _free_port(), tmp_path), nprocs=2, start_method="spawn", join=False
    )
    deadline = time.monotonic() + 60
    try:
        while not job.join(timeout=1):
            assert time.monotonic() < deadline, "rank 0 still waits for rank 1"
    finally:
        for process in job.processes:
            process.kill()
    assert (tmp_path / "rank0").read_text() == "lost"


def _evaluate_on_rank_0(rank: int, world: int, port: int, out: Path) -> None:
    ranks_module.TIMEOUT = datetime.timedelta(seconds=10)  # this process's: its collectives give up after 10 s
    ranks = _join(rank, world, port)
    try:
        if rank == 0:
            time.sleep(12)  # plays the evaluation episodes, alone
        ranks.wait_for_root()
        ranks.any(False)  # the next collective of training
        (out / f"rank{rank}").write_text("trained on")
    finally:
        ranks.close()


def test_the_other_ranks_wait_out_rank_0s_evaluation_even_past_the_collective_timeout(tmp_path: Path):
    """Rank 0 evaluates for longer than a collective's timeout while rank 1 waits for it: rank 1 waits in the
    evaluation group and both train on, where its next collective alone would have given up."""
    mp.start_processes(_evaluate_on_rank_0, args=(2, _free_port(), tmp_path), nprocs=2, start_method="spawn")
    assert [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)] == ["trained on"] * 2


@pytest.mark.parametrize(
    "message, reason",
    [
        (
            "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:37547. This is typically caused by a remote worker crashing. Check the logs.",
            "Connection closed by peer [127.0.0.1]:37547",
        ),
        ("Connection reset by peer\nmore detail", "Connection reset by peer"),
        ("", "RuntimeError"),
    ],
)
def test_a_lost_rank_is_explained_by_the_first_sentence_of_the_failure(message: str, reason: str):
    assert _first_sentence(RuntimeError(message)) == reason


def test_ranks_count_the_shared_episodes_in_the_order_they_ended_whatever_the_shares():
    """Rank 0's episodes end at agent steps 10 and 30, rank 1's at 20 and 30 (2 copies per rank). One share of all
    four and two shares split at step 25 (a stop between log steps) count them alike: by end step, then by the env
    index numbered across the ranks, as one process with all four copies would."""

    def episode(env_index: int, end_step: int) -> Episode:
        return Episode(env_index, float(end_step + env_index), 5, 5, False, end_step, end_step, 0.0)

    def counted(shares: list[list[list[Episode]]]) -> list[tuple[int, int]]:
        seen: list[Episode] = []
        trainer = SimpleNamespace(env=SimpleNamespace(num_envs=2), _unshared=[], _count_episode=seen.append)
        for gathered in shares:
            trainer.ranks = SimpleNamespace(all_gather=lambda mine, gathered=gathered: gathered)
            Trainer.share_episodes(trainer)  # type: ignore[arg-type]
        return [(e.end_step, e.env_index) for e in seen]

    whole = [[episode(1, 10), episode(0, 30)], [episode(1, 20), episode(0, 30)]]
    split = [[[episode(1, 10)], [episode(1, 20)]], [[episode(0, 30)], [episode(0, 30)]]]
    assert counted([whole]) == counted(split) == [(10, 1), (20, 3), (30, 0), (30, 2)]
