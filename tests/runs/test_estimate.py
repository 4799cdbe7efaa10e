"""The time estimate's arithmetic and the progress bar's time left, with hand-worked values."""

import io

import pytest
from conftest import TimedRun
from rich.console import Console

from dreamctl.config import load_config
from dreamctl.runs.estimate import Costs, TimeEstimate, work_left
from dreamctl.terminal import ProgressView, duration_label, estimate_line
from dreamctl.training.trainer import Progress

CFG = load_config(
    "debug", ["train.steps=1000", "env.num_envs=4", "train.prefill=100", "train.train_every=5", "train.pretrain=10"]
)


def test_work_left_counts_ticks_and_updates_as_the_trainer_does():
    # 1000 / 4 = 250 ticks, ceil(100 / 4) = 25 of them random; 10 + (1000 - 100) // 5 = 190 updates.
    assert work_left(CFG, 4, 0, 0) == {"prefill": 25, "policy": 225, "updates": 190}
    assert work_left(CFG, 4, 120, 30) == {"prefill": 0, "policy": 220, "updates": 160}
    assert work_left(CFG, 4, 40, 0) == {"prefill": 15, "policy": 225, "updates": 190}
    assert work_left(CFG, 4, 1000, 190) == {"prefill": 0, "policy": 0, "updates": 0}
    # 1001 steps end at 1004: 251 ticks, 25 of them random, and 10 + (1004 - 100) // 4 = 236 updates.
    odd = load_config("debug", ["train.steps=1001", "train.prefill=100", "train.train_every=4", "train.pretrain=10"])
    assert work_left(odd, 4, 0, 0) == {"prefill": 25, "policy": 226, "updates": 10 + 904 // 4}
    # Training exactly as long as prefill still does the pretraining updates.
    short = load_config("debug", ["train.steps=100", "train.prefill=100", "train.pretrain=10"])
    assert work_left(short, 4, 0, 0) == {"prefill": 25, "policy": 0, "updates": 10}


def test_seconds_weigh_each_kind_of_work_by_its_cost():
    estimate = TimeEstimate(Costs(0.001, 0.01, 0.1), 4, "float32", "bf16", 0.05)
    assert estimate.seconds(CFG) == pytest.approx(25 * 0.001 + 225 * 0.01 + 190 * 0.1)  # 21.275
    assert estimate.other_seconds(CFG) == pytest.approx(25 * 0.001 + 225 * 0.01 + 190 * 0.05)  # 11.775
    assert estimate_line(estimate, CFG) == "≈ 21 s of training here in float32, ≈ 12 s with --precision bf16"
    same = TimeEstimate(Costs(0.001, 0.01, 0.1), 4, "float32", "bf16", 0.098)
    assert estimate_line(same, CFG) == "≈ 21 s of training here in float32"


def test_an_estimate_timed_on_a_busy_machine_says_it_may_be_high(monkeypatch):
    from dreamctl.runs import estimate

    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (4.2, 3.0, 1.0))
    monkeypatch.setattr(estimate.os, "sched_getaffinity", lambda pid: {0, 1})
    assert estimate.machine_busy() == (4.2, 2)
    monkeypatch.setattr(estimate.os, "getloadavg", lambda: (1.9, 3.0, 1.0))
    assert estimate.machine_busy() is None
    busy = TimeEstimate(Costs(0.001, 0.01, 0.1), 4, "float32", busy=(4.2, 2))
    assert estimate_line(busy, CFG) == (
        "≈ 21 s of training here in float32 (timed while other work kept the machine busy, load 4.2 on 2 cores: it "
        "may be high)"
    )


def progress(steps, prefill):
    return Progress(steps, 5000, 0, 0, None, 0.0, prefill)


def test_time_left_comes_from_the_estimate_until_training_has_run_a_while():
    view = ProgressView(Console(file=io.StringIO()), remaining=lambda p: 42.0)
    assert view.time_left(progress(500, True), now=10.0) == 42.0
    view.training_since = (100.0, 1000)
    assert view.time_left(progress(1500, False), now=110.0) == 42.0  # 10 s of training: too soon to trust
    # 1000 steps in 30 s, 3000 to go: 90 s.
    assert view.time_left(progress(2000, False), now=130.0) == pytest.approx(90.0)
    assert ProgressView(Console(file=io.StringIO())).time_left(progress(500, True), now=1.0) is None


@pytest.mark.slow
def test_estimate_and_first_eta_after_prefill_hold_on_the_debug_preset(catch_3000: TimedRun):
    """The dry run's estimate (the same `estimate_time`) against the measured time of the very run, and the time
    left that the progress bar shows on the first tick after prefill against the time that was really left."""
    run = catch_3000
    print(f"estimate {run.predicted:.1f} s, measured {run.measured:.1f} s; ", end="")
    print(f"first ETA {run.first_eta:.1f} s, true rest {run.rest:.1f} s")
    assert 1 / 1.5 <= run.predicted / run.measured <= 1.5
    assert 0.5 <= run.first_eta / run.rest <= 2.0


def test_durations_read_in_the_unit_that_suits_them():
    assert [duration_label(s) for s in (45, 600, 3 * 3600, 10 * 86400)] == ["45 s", "10 min", "3.0 h", "10 days"]
