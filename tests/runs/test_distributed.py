"""Runs of 2 data-parallel ranks through the real CLI (`--nproc 2`, torchrun): exact resume, refusals, faults, and a
job spread over two "machines" on this host."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import fast_args, in_background, run_cli
from resume_checks import assert_identical, final_state, start, wait_for

from dreamctl.cli.launch import kill_reports
from dreamctl.errors import DreamctlError
from dreamctl.runs.registry import Registry
from dreamctl.runs.sharded import agreed

TWO = ["--nproc", "2"]


def _meta(home: Path) -> dict:
    return yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())


def test_600_steps_with_two_ranks_equal_250_then_resume(tmp_path: Path):
    """The checkpoint at 250 agent steps holds both ranks' envs, RNGs, acting state, replay tails and metric sums
    (250 is inside a log interval), and each rank's chunks are under the run: resuming with 2 ranks continues bit for
    bit, the first row logged after it included, through rank 0's evaluations (at 200 and 400 agent steps), which the
    other rank waits out. Another rank count is refused."""
    args = [
        "train",
        "catch",
        "--seed",
        "3",
        *fast_args(),
        "--set",
        "run.eval_every=200",
        "--set",
        "run.eval_episodes=2",
    ]
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_cli(*args, "--steps", "600", *TWO, home=whole, check=True)
    run_cli(*args, "--steps", "250", *TWO, home=split, check=True)
    refused = run_cli("resume", "run-1", "--steps", "600", home=split)
    assert refused.returncode == 2 and "--nproc 2" in refused.stderr and refused.stderr.count("\n") == 1
    with Registry(split).resolve("run-1").locked():  # a run another process trains: every rank stops, one says why
        busy = run_cli("resume", "run-1", "--steps", "600", *TWO, home=split)
    assert busy.returncode == 1 and "being trained by another process" in busy.stderr, busy.stderr
    assert busy.stderr.count("\n") == 1, busy.stderr
    chunk = split / "runs" / "run-1" / "replay" / "chunk-0-rank1.bin"
    chunk.rename(chunk.with_suffix(".away"))  # rank 0 finds it missing before the other rank waits for it
    missing = run_cli("resume", "run-1", "--steps", "600", *TWO, home=split)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"error: replay chunk {chunk} is missing, so the replay cannot be restored."
    ], missing.stderr
    chunk.with_suffix(".away").rename(chunk)
    run_cli("resume", "run-1", "--steps", "600", *TWO, home=split, check=True)
    assert_identical(whole, split)
    tensors, meta, chunks = final_state(split)
    assert meta["ranks"]["world_size"] == 2 and len(meta["ranks"]["hosts"]) == 2
    assert any(k.startswith("rank1/env/") for k in tensors) and any(k.startswith("rank1/replay/") for k in tensors)
    assert not any(k.startswith(("rank1/agent/", "rank1/optim/")) for k in tensors)  # stored once
    assert any(name.endswith("-rank1.bin") for name in chunks) and any("rank" not in name for name in chunks)
    assert meta["progress"]["env_steps"] == 600  # the job's agent steps, both ranks' envs together
    assert [e["step"] for e in meta["evals"]] == [200, 400]


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused_in_one_sentence(tmp_path: Path):
    """Refused in one sentence, and the launcher's folder for its ranks' logs goes with the job."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    args = ["train", "catch", *fast_args(), "--set", "train.batch_size=5", "--steps", "100", *TWO]
    proc = run_cli(*args, home=tmp_path / "home", env={"TMPDIR": str(temp)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: train.batch_size (5) must be a multiple of 2 (1 agent x 2 ranks), since every batch holds whole "
        "worlds, an equal number on each rank."
    ]
    assert list(temp.iterdir()) == []


def test_a_run_rank_0_cannot_create_stops_every_rank_in_one_sentence(tmp_path: Path):
    """Rank 0 creates the run after the ranks have joined; when it cannot (here the home is a file), the other rank
    hears so and stops too, instead of waiting for it until the collective timeout."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    began = time.monotonic()
    proc = run_cli("train", "catch", *fast_args(), "--steps", "100", *TWO, home=home, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot create the registry at {home}"), lines
    assert time.monotonic() - began < 120


def test_a_refusal_every_rank_meets_while_setting_up_is_said_once(tmp_path: Path):
    """Each rank makes its env and trainer after the ranks join; a refusal there (here: more memory than the machine
    has) is said by one rank, not once per rank."""
    huge = ["--set", "train.replay_capacity=100000000000"]
    proc = run_cli("train", "catch", *fast_args(), "--steps", "100000000000", *huge, *TWO, home=tmp_path / "home")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this run needs about "), lines


@pytest.mark.parametrize("failing", [[0], [1], [0, 1]])
def test_setup_ends_with_the_first_failing_ranks_error_on_every_rank_said_by_that_rank_alone(failing: list[int]):
    class Ranks:
        def __init__(self, rank: int):
            self.rank = rank

        def all_gather(self, mine):
            return [DreamctlError(f"rank {r} failed") if r in failing else None for r in range(2)]

    for rank in range(2):
        mine = DreamctlError(f"rank {rank} failed")
        with pytest.raises(DreamctlError) as raised, agreed(Ranks(rank)):  # type: ignore[arg-type]
            if rank in failing:
                raise mine
        assert str(raised.value) == f"rank {failing[0]} failed" and raised.value.every_rank
        assert raised.value.said_elsewhere == (rank != failing[0])
        assert (raised.value is mine) == (rank == failing[0])  # the rank that says it keeps its own traceback
    with agreed(None):  # one process: nothing to agree
        pass


def test_a_taken_name_is_refused_before_any_rank_starts(tmp_path: Path):
    home = tmp_path / "home"
    Registry(home).create({"env": "catch"}, "taken")
    began = time.monotonic()
    proc = run_cli("train", "catch", *fast_args(), "--steps", "100", "--name", "taken", *TWO, home=home)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: a run named 'taken' already exists; pick another --name."]
    assert time.monotonic() - began < 30


def test_the_launcher_names_a_killed_rank_but_not_the_ranks_it_stopped_itself():
    """Rank 0 refusing the command (exit 2) makes the launcher SIGTERM rank 1 unless rank 1 refused first: the
    report must not depend on which rank the launcher saw exit first."""
    term, kill = -signal.SIGTERM, -signal.SIGKILL
    assert kill_reports({0: 2, 1: term}, 2) == []
    assert kill_reports({0: 2, 1: 2}, 2) == []
    assert kill_reports({0: term, 1: kill}, 2) == ["error: rank 1 of 2 was killed by SIGKILL."]
    assert kill_reports({0: 1, 1: kill, 2: term}, 3) == ["error: rank 1 of 3 was killed by SIGKILL."]
    assert kill_reports({0: 1, 1: -40}, 2) == ["error: rank 1 of 2 was killed by signal 40."]
    assert kill_reports({0: term, 1: term}, 2) == [
        "error: rank 0 of 2 was killed by SIGTERM.",
        "error: rank 1 of 2 was killed by SIGTERM.",
    ]


def _pid_of_rank(rank: int, home: Path) -> int:
    """The process of `rank` among those training into `home`."""
    wanted = {f"RANK={rank}".encode(), f"DREAMCTL_HOME={home}".encode()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if wanted <= environ:
                return int(entry.name)
    raise AssertionError(f"no process of rank {rank} trains into {home}")


def _first_checkpoint(home: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    wait_for(home / "runs" / "run-1" / "run.yaml", timeout)
    while not _meta(home).get("checkpoints"):
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.1)


def test_a_killed_rank_ends_the_job_soon_and_the_run_resumes(tmp_path: Path):
    """Rank 0 is held (SIGSTOP) while rank 1 dies, so the launcher's SIGTERM to the survivors reaches it before it
    meets the dead rank in a collective, as it does when rank 0 is busy writing a checkpoint or evaluating: it must
    not promise a checkpoint that can no longer be gathered."""
    home = tmp_path / "home"
    proc = start(["train", "catch", *fast_args(), "--steps", "100000", *TWO], home)
    _first_checkpoint(home)
    root = _pid_of_rank(0, home)
    os.kill(root, signal.SIGSTOP)
    os.kill(_pid_of_rank(1, home), signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(3)  # the launcher notices within its monitor interval (0.5 s) and sends SIGTERM
    os.kill(root, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 30, err
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "writing a checkpoint" not in err, err
    assert "error: rank 1 of 2 was killed by SIGKILL." in err and "rank 0 of 2 was killed" not in err, err
    assert "another rank of this 2-rank job stopped (" in err and ".cc:" not in err, err  # gloo's reason, unplaced
    run = Registry(home).resolve("run-1")
    assert run.status() == "interrupted"
    assert _meta(home)["error"].endswith(
        "; `dreamctl resume run-1 --nproc 2` continues the run from its latest checkpoint."
    )
    step = _meta(home)["checkpoints"][-1]["step"]
    run_cli("resume", "run-1", "--steps", str(step + 200), *TWO, home=home, check=True)
    assert _meta(home)["status"] == "finished" and _meta(home)["progress"]["env_steps"] == step + 200


def test_sigint_to_the_launcher_leaves_one_last_checkpoint_and_exit_130(tmp_path: Path):
    home = tmp_path / "home"
    proc = start(["train", "catch", *fast_args(), "--steps", "100000", *TWO], home)
    _first_checkpoint(home)
    os.kill(proc.pid, signal.SIGINT)  # the launcher alone: it tells the ranks
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "dreamctl resume run-1" in err and "Traceback" not in err
    assert err.count("stopping after the current step and writing a checkpoint") == 1, err  # rank 0's, once
    meta = _meta(home)
    assert meta["status"] == "interrupted"
    assert meta["checkpoints"][-1]["step"] == meta["progress"]["env_steps"]  # the checkpoint of the stop itself


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_launcher_killed_by_sigkill_takes_its_ranks_down_with_a_last_checkpoint(tmp_path: Path, monkeypatch):
    """SIGKILL leaves the launcher no moment to stop its ranks: the kernel's parent-death signal does, and they stop
    as at Ctrl-C, together, with a checkpoint at the step where they stop, instead of training on unseen."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the killed launcher cannot remove its temporary folder
    home = tmp_path / "home"
    proc = start(["train", "catch", *fast_args(), "--steps", "100000", *TWO], home)
    _first_checkpoint(home)
    ranks = [_pid_of_rank(rank, home) for rank in (0, 1)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)  # the ranks hold the pipes open until they exit
    deadline = time.monotonic() + 60
    while not all(_gone(pid) for pid in ranks):
        assert time.monotonic() < deadline, "the ranks trained on after their launcher was killed"
        time.sleep(0.1)
    meta = _meta(home)
    assert meta["status"] == "interrupted"
    step = meta["progress"]["env_steps"]
    assert meta["checkpoints"][-1]["step"] == step
    run_cli("resume", "run-1", "--steps", str(step + 200), *TWO, home=home, check=True)
    assert _meta(home)["status"] == "finished" and _meta(home)["progress"]["env_steps"] == step + 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_one_host_train_one_run(tmp_path: Path):
    """Two `torchrun --nnodes 2` launches, each with its own registry home as if on its own machine: the job trains,
    and only the machine of rank 0 holds the run."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun
    port = _free_port()
    homes = [tmp_path / "machine-a", tmp_path / "machine-b"]
    launch = [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    launch += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-machines", "-m", "dreamctl"]
    procs = [
        in_background(
            subprocess.Popen(
                [*launch, "train", "catch", *fast_args(), "--steps", "400"],
                # torchrun's elastic agent leaves a torchelastic_* folder in the temporary folder: keep it in tmp_path
                env={**os.environ, "DREAMCTL_HOME": str(home), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
        for home in homes
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with_run = [home for home in homes if (home / "runs" / "run-1").exists()]
    assert len(with_run) == 1 and not any((home / "runs").exists() for home in homes if home not in with_run)
    meta = _meta(with_run[0])
    assert meta["status"] == "finished" and meta["progress"]["env_steps"] == 400 and meta["ranks"]["world_size"] == 2
