"""Exact resume: a run continued from a checkpoint ends bit for bit where the uninterrupted run ends,
whether it stopped at a step count, by SIGINT, or was SIGKILLed at random moments."""

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import dreamctl_command, fast_args, run_cli
from safetensors.torch import load_file

from dreamctl.runs.fileio import sha256_file
from dreamctl.training.replay import decode_chunk

ARGS = ["train", "catch", "--preset", "debug", "--seed", "5", *fast_args()]


def final_state(home: Path) -> tuple[dict, dict, dict]:
    """Tensors and metadata of the run's last checkpoint, and its replay chunks, decoded."""
    run = home / "runs" / "run-1"
    meta = yaml.safe_load((run / "run.yaml").read_text())
    entry = meta["checkpoints"][-1]
    tensors = load_file(run / entry["file"])
    chunks = {p.name: decode_chunk(p.read_bytes()) for p in sorted((run / "replay").glob("chunk-*.bin"))}
    return tensors, meta, chunks


def assert_identical(a_home: Path, b_home: Path) -> None:
    a, a_meta, a_chunks = final_state(a_home)
    b, b_meta, b_chunks = final_state(b_home)
    assert a_meta["progress"]["env_steps"] == b_meta["progress"]["env_steps"]
    assert a_meta["progress"]["updates"] == b_meta["progress"]["updates"]
    assert set(a) == set(b)
    groups = {key.split("/")[0] for key in a}
    assert {"agent", "optim", "replay", "rng", "env", "act"} <= groups
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key
    assert set(a_chunks) == set(b_chunks)
    for name in a_chunks:
        for field in a_chunks[name]:
            assert np.array_equal(a_chunks[name][field], b_chunks[name][field]), (name, field)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    home = tmp_path_factory.mktemp("whole") / "home"
    run_cli(*ARGS, "--steps", "600", home=home, check=True)
    return home


def test_stop_at_a_step_count_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    home = tmp_path / "home"
    run_cli(*ARGS, "--steps", "300", home=home, check=True)
    run_cli("resume", "run-1", "--steps", "600", home=home, check=True)
    assert_identical(uninterrupted, home)


def interrupt_then_resume(args: list[str], steps: int, home: Path, max_delay: float) -> None:
    """Start a run, SIGINT it at a random moment after its first log line, check how it stopped, resume it."""
    proc = start(args + ["--steps", str(steps)], home)
    wait_for(home / "runs" / "run-1" / "metrics.jsonl")
    time.sleep(random.Random().uniform(0.0, max_delay))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    if proc.returncode == 0:
        pytest.fail("the run finished before the signal arrived; lengthen it")
    assert proc.returncode == 130, err
    assert "dreamctl resume run-1" in err and "Traceback" not in err
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["status"] == "interrupted" and 0 < meta["progress"]["env_steps"] < steps
    assert meta["checkpoints"][-1]["step"] == meta["progress"]["env_steps"]
    run_cli("resume", "run-1", "--steps", str(steps), home=home, timeout=20 * 60, check=True)


def test_sigint_at_an_arbitrary_moment_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    interrupt_then_resume(ARGS, 600, tmp_path / "home", max_delay=1.0)
    assert_identical(uninterrupted, tmp_path / "home")


def test_a_run_being_trained_refuses_a_second_trainer_and_sigterm_exits_143(tmp_path):
    home = tmp_path / "home"
    proc = start(ARGS + ["--steps", "5000"], home)
    wait_for(home / "runs" / "run-1" / "metrics.jsonl")
    second = run_cli("resume", "run-1", "--steps", "6000", home=home)
    assert second.returncode == 1 and "run-1 is being trained by another process" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "dreamctl resume run-1" in err
    assert yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["status"] == "interrupted"


def test_sigkill_at_random_moments_never_breaks_resume(tmp_path):
    """Twelve lives, each SIGKILLed: the even ones at a random moment after they listed a checkpoint of their own
    (so every resume starts from a later state than the one before), the odd ones while writing a checkpoint.
    Every listed checkpoint stays intact, and the last life finishes the run."""
    home = tmp_path / "home"
    run_dir = home / "runs" / "run-1"
    args = ARGS + ["--steps", "1200", "--set", "run.checkpoint_every=16"]
    rng = random.Random()
    proc = start(args, home)
    wait_for(run_dir / "run.yaml")
    during_write, steps = 0, listed_steps(run_dir)
    for kill in range(12):
        if kill % 2:
            during_write += wait_for_new_temp_checkpoint(run_dir, proc, stale=temp_checkpoints(run_dir))
        else:
            wait_for_progress(run_dir, proc, beyond=steps)
            time.sleep(rng.uniform(0.0, 1.0))
        assert proc.poll() is None, f"the process ended on its own before kill {kill}: {proc.communicate()}"
        proc.kill()
        proc.wait()
        meta = yaml.safe_load((run_dir / "run.yaml").read_text())
        for entry in meta.get("checkpoints", []):
            assert sha256_file(run_dir / entry["file"]) == entry["sha256"], entry["file"]
        assert run_cli("list", "--json", home=home, check=True).stdout.count('"interrupted"') == 1
        steps = listed_steps(run_dir)
        proc = start(["resume", "run-1"], home)
    assert during_write >= 3
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert meta["status"] == "finished" and meta["progress"]["env_steps"] == 1200
    for entry in meta["checkpoints"]:
        assert sha256_file(run_dir / entry["file"]) == entry["sha256"]


def start(args, home):
    env = {**os.environ, "DREAMCTL_HOME": str(home)}
    return subprocess.Popen(
        dreamctl_command() + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def listed_steps(run_dir: Path) -> int:
    """The step of the run's newest listed checkpoint (0 before the first)."""
    checkpoints = yaml.safe_load((run_dir / "run.yaml").read_text()).get("checkpoints") or [{"step": 0}]
    return checkpoints[-1]["step"]


def wait_for_progress(run_dir: Path, proc, beyond: int, timeout: float = 120) -> None:
    """Poll until the run lists a checkpoint past step `beyond`."""
    deadline = time.monotonic() + timeout
    while listed_steps(run_dir) <= beyond:
        assert proc.poll() is None, f"the process ended before listing a checkpoint past {beyond}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no checkpoint past step {beyond} within {timeout} s"
        time.sleep(0.01)


def temp_checkpoints(run_dir: Path) -> set[str]:
    folder = run_dir / "checkpoints"
    return {name for name in os.listdir(folder) if name.endswith(".tmp")} if folder.is_dir() else set()


def wait_for_new_temp_checkpoint(run_dir: Path, proc, stale: set[str], timeout: float = 60) -> bool:
    """Poll until a checkpoint is being written: a temp file other than the `stale` ones an earlier kill left
    (the resumed process deletes those once it holds the run's lock). True if one was caught."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if temp_checkpoints(run_dir) - stale:
            return True
    return False
