"""Helpers of the exact-resume checks (tests/runs/test_resume.py and the slow tests/test_learning.py): compare two
runs' final state bit for bit, and interrupt a run the way a terminal does."""

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
from conftest import dreamctl_command, in_background, run_cli
from safetensors.torch import load_file

from dreamctl.runs.metrics import read_jsonl
from dreamctl.training.replay import decode_chunk


def final_state(home: Path) -> tuple[dict, dict, dict]:
    """Tensors and metadata of the run's last checkpoint, and its replay chunks, decoded."""
    run = home / "runs" / "run-1"
    meta = yaml.safe_load((run / "run.yaml").read_text())
    entry = meta["checkpoints"][-1]
    tensors = load_file(run / entry["file"])
    chunks = {p.name: decode_chunk(p.read_bytes()) for p in sorted((run / "replay").glob("chunk-*.bin"))}
    return tensors, meta, chunks


def assert_identical(a_home: Path, b_home: Path) -> None:
    """a: the uninterrupted run; b: the one stopped and resumed."""
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
    # Every row the uninterrupted run (a) logged, the stopped and resumed one logged the same; it also logged a last
    # row where a stint stopped at a step count.
    a_rows, b_rows = logged_metrics(a_home), logged_metrics(b_home)
    a_steps = {r["step"] for r in a_rows}
    assert a_rows == [r for r in b_rows if r["step"] in a_steps]
    # Every episode once, in the same order (the scores and plots are made of these rows).
    assert logged_episodes(a_home) == logged_episodes(b_home)


# What a metrics row says about the clock rather than the run.
TIMING = {"time", "train/wall_time", "train/agent_steps_per_s", "train/updates_per_s"}


def logged_metrics(home: Path) -> list[dict]:
    """The run's metrics.jsonl rows without their timings."""
    rows = read_jsonl(home / "runs" / "run-1" / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def logged_episodes(home: Path) -> list[dict]:
    """The run's episodes.jsonl rows without their timings."""
    rows = read_jsonl(home / "runs" / "run-1" / "episodes.jsonl")
    return [{k: v for k, v in row.items() if k not in TIMING | {"wall_time"}} for row in rows]


def interrupt_then_resume(args: list[str], steps: int, home: Path, max_delay: float) -> str:
    """Start a run, press Ctrl-C at a random moment after its first log line (SIGINT to its whole process group, as a
    terminal sends it, env worker processes included), check how it stopped, resume it."""
    proc = start(args + ["--steps", str(steps)], home)
    wait_for(home / "runs" / "run-1" / "metrics.jsonl")
    delay = random.uniform(0.0, max_delay)
    print(f"Ctrl-C {delay:.3f} s after the first log line")  # shown with a failure
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    if proc.returncode == 0:
        pytest.fail("the run finished before the signal arrived; lengthen it")
    assert proc.returncode == 130, err
    assert "dreamctl resume run-1" in err and "Traceback" not in err
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["status"] == "interrupted" and 0 < meta["progress"]["env_steps"] < steps
    assert meta["checkpoints"][-1]["step"] == meta["progress"]["env_steps"]
    run_cli("resume", "run-1", "--steps", str(steps), home=home, timeout=20 * 60, check=True)
    return err


def start(args, home, nohup=False):
    """`dreamctl <args>` in the background, in its own process group as a terminal gives a command (under `nohup`,
    which starts it with SIGHUP ignored, where asked)."""
    env = {**os.environ, "DREAMCTL_HOME": str(home)}
    return in_background(
        subprocess.Popen(
            ["nohup"] * nohup + dreamctl_command() + list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
    )


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
