"""Shared helpers: small configs for unit tests and a runner for the installed `dreamctl` command."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from rich.console import Console

from dreamctl.config import load_config

torch.set_num_threads(2)
# No per-example deadline: on a busy 2-core machine an example's time says nothing about the property tested.
settings.register_profile("dreamctl", deadline=None)
settings.load_profile("dreamctl")

# A fast variant of the debug preset for integration tests: short prefill, few updates, frequent checkpoints.
FAST = [
    "train.prefill=200",
    "train.batch_size=4",
    "train.batch_length=8",
    "run.log_every=100",
    "run.checkpoint_every=200",
    "run.replay_chunk=32",
]
# One update every 8 agent steps: exact-resume checks of an env's saved state, which need some updates on both sides
# of the stop but not the hundreds that `train_every=2` makes.
FEWER_UPDATES = ["--set", "train.train_every=8"]


# What bash sets when TAB is pressed after `dreamctl train catch --pre`.
BASH_COMPLETION_ENV = {
    "_DREAMCTL_COMPLETE": "complete_bash",
    "COMP_WORDS": "dreamctl train catch --pre",
    "COMP_CWORD": "3",
}


def import_extra(module: str, extra: str):
    """An extra's module, or a skip where the extra is not installed; where every extra must be there
    (DREAMCTL_REQUIRE_EXTRAS=1, as .ci/run sets), a broken install fails instead of skipping its tests."""
    if os.environ.get("DREAMCTL_REQUIRE_EXTRAS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"the {extra} extra is not installed")


def tiny_config(*overrides: str):
    """Debug preset shrunk further, for unit tests of the maths."""
    base = [
        "model.cnn_depth=4",
        "model.deter=32",
        "model.hidden=32",
        "model.stoch=4",
        "model.classes=4",
        "model.mlp_units=32",
        "train.batch_size=3",
        "train.batch_length=5",
        "behavior.horizon=4",
    ]
    return load_config("debug", base + list(overrides))


def random_batch(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of random frames, 3 one-hot actions and some terminals, of `cfg`'s batch sizes."""
    g = torch.Generator().manual_seed(seed)
    b, t = cfg.train.batch_size, cfg.train.batch_length
    is_first = torch.zeros(b, t)
    is_first[:, 0] = 1
    return {
        "image": torch.randint(0, 256, (b, t, 64, 64, 1), dtype=torch.uint8, generator=g),
        "action": torch.nn.functional.one_hot(torch.randint(0, 3, (b, t), generator=g), 3).float(),
        "reward": torch.randn(b, t, generator=g),
        "is_first": is_first,
        "is_last": torch.zeros(b, t),
        "is_terminal": (torch.rand(b, t, generator=g) < 0.1).float(),
    }


def dreamctl_command() -> list[str]:
    exe = shutil.which("dreamctl", path=str(Path(sys.executable).parent)) or shutil.which("dreamctl")
    assert exe, "the dreamctl entry point is not installed; run `pip install -e .[dev]`"
    return [exe]


def run_cli(
    *args: str, home: Path, env: dict | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    # PYTHONFAULTHANDLER: a process that crashes (a rank aborted by torch, say) prints every thread's Python stack.
    full_env = {
        **os.environ,
        "DREAMCTL_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        **(env or {}),
    }
    full_env.pop("DREAMCTL_DEBUG", None)
    proc = subprocess.run(
        dreamctl_command() + list(args), capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dreamctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow checks train for as long as their time limits, which grow with the machine's slowness, and give
    each command they run a timeout of its own: pytest-timeout's 15 minutes (pyproject.toml) is for the others."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(0))


_BACKGROUND: list[subprocess.Popen] = []


def in_background(proc: subprocess.Popen) -> subprocess.Popen:
    """Note a command a test started without waiting for it (with start_new_session=True, so that it leads a process
    group): if the test ends first (a failed assertion), the group is killed, instead of training on beside every
    later test."""
    _BACKGROUND.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _kill_background_commands():
    yield
    while _BACKGROUND:
        proc = _BACKGROUND.pop()
        try:  # its env workers and ranks too, even where the command itself has ended
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def set_args(items: list[str]) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"], the command line's form of config overrides."""
    return [x for item in items for x in ("--set", item)]


def fast_args() -> list[str]:
    return set_args(FAST)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# What `catch_3000` trains, as overrides of the debug preset and as a command. The thread count is this process's
# (set above), so that runs of the command compute the same floats as the fixture's on machines with more cores.
CATCH_3000_SETS = ["train.seed=5", "run.threads=2"]
CATCH_3000_ARGS = ["train", "catch", "--preset", "debug", *set_args(CATCH_3000_SETS)]


@dataclass
class TimedRun:
    """A run of `CATCH_3000_ARGS` for 3,000 agent steps, trained in this process, and how long it took.

    Args:
        home: the DREAMCTL_HOME holding it as run-1.
        predicted: seconds the time estimate gave before the run.
        measured: seconds the run took.
        first_eta: the time left the progress bar showed on its first tick after prefill.
        rest: the seconds that were really left from that tick.
    """

    home: Path
    predicted: float
    measured: float
    first_eta: float
    rest: float


@pytest.fixture(scope="session")
def catch_3000(tmp_path_factory) -> TimedRun:
    """One slow run for two checks that each need minutes of training: the time estimate (tests/runs/test_estimate.py)
    and the full-length exact resume (tests/test_learning.py, which resumes other runs through the CLI and compares
    them with this one; a run trained in-process equals the same command's bit for bit)."""
    from dreamctl.runs import lifecycle
    from dreamctl.runs.estimate import estimate_time
    from dreamctl.terminal import ProgressView

    home = tmp_path_factory.mktemp("catch3000") / "home"
    cfg = load_config("debug", ["env.name=catch", *CATCH_3000_SETS, "train.steps=3000"])
    estimate = estimate_time(cfg)
    view = ProgressView(Console(file=io.StringIO()), lambda p: estimate.seconds(cfg, p.env_steps, p.updates))
    first: list[tuple[float, float]] = []

    def on_progress(p):
        view(p)
        if not p.prefill and not first:
            now = time.monotonic()
            first.append((now, view.time_left(p, now)))

    began = time.monotonic()
    with view:
        lifecycle.train(cfg, home=home, preset="debug", progress=on_progress)
    ended = time.monotonic()
    at, eta = first[0]
    return TimedRun(home, estimate.seconds(cfg), ended - began, eta, ended - at)
