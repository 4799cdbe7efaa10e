"""Exact resume: a run continued from a checkpoint ends bit for bit where the uninterrupted run ends,
whether it stopped at a step count, by SIGINT, or was SIGKILLed at random moments."""

import os
import random
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAST, fast_args, run_cli
from hypothesis import given
from hypothesis import strategies as st
from resume_checks import assert_identical, final_state, interrupt_then_resume, start, wait_for

from dreamctl.config import load_config
from dreamctl.errors import SecondSignal, StoppedAtOnce
from dreamctl.runs import lifecycle
from dreamctl.runs.fileio import sha256_bytes
from dreamctl.runs.metrics import read_jsonl
from dreamctl.runs.sharded import env_seed

ARGS = ["train", "catch", "--preset", "debug", "--seed", "5", *fast_args()]
# CartPole in two worker processes: gym envs saved mid-episode, and workers that must survive the terminal's Ctrl-C.
VECTOR_ARGS = ["train", "gym:CartPole-v1", "--preset", "vector", "--seed", "2", *fast_args()]
VECTOR_ARGS += ["--set", "env.num_envs=2", "--set", "train.train_every=1"]
RUNS = {"catch": ARGS, "cartpole": VECTOR_ARGS}


@pytest.fixture(scope="module", params=list(RUNS))
def uninterrupted(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"whole_{request.param}") / "home"
    run_cli(*RUNS[request.param], "--steps", "600", home=home, check=True)
    return RUNS[request.param], home


def test_stop_at_a_step_count_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    args, whole = uninterrupted
    home = tmp_path / "home"
    run_cli(*args, "--steps", "300", home=home, check=True)
    run_cli("resume", "run-1", "--steps", "600", home=home, check=True)
    assert_identical(whole, home)
    assert final_state(home)[1]["progress"]["updates"] > 0


def test_sigint_at_an_arbitrary_moment_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    """Ctrl-C reaches every process of the group; env workers leave it to the trainer (else they would print its
    message and, at a second Ctrl-C, die before giving their state to the last checkpoint)."""
    args, whole = uninterrupted
    err = interrupt_then_resume(args, 600, tmp_path / "home", max_delay=1.0)
    assert err.count("stopping after the current step") == 1, err
    assert_identical(whole, tmp_path / "home")


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


def test_a_closed_terminal_sighup_stops_with_a_checkpoint_and_exits_129(tmp_path):
    """A dropped SSH session sends SIGHUP: the run stops as at SIGTERM, with a checkpoint where it stops (only what
    goes to a terminal is silenced); SIGHUP's default ended the process with nothing saved since the last checkpoint
    and the run still marked running."""
    home = tmp_path / "home"
    proc = start(ARGS + ["--steps", "5000"], home)
    wait_for(home / "runs" / "run-1" / "metrics.jsonl")
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    assert "continue it with `dreamctl resume run-1`" in err  # a pipe, not the terminal: it still gets the last line
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["status"] == "interrupted"
    assert meta["checkpoints"][-1]["step"] == meta["progress"]["env_steps"] > 0


def test_under_nohup_a_hang_up_stays_ignored(tmp_path):
    """`nohup dreamctl train ...`: SIGHUP is ignored when the command starts, and must stay so."""
    home = tmp_path / "home"
    proc = start(ARGS + ["--steps", "5000"], home, nohup=True)
    wait_for(home / "runs" / "run-1" / "metrics.jsonl")
    proc.send_signal(signal.SIGHUP)
    time.sleep(3)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err


def _hang_up_handler_of_a_worker(queue, builder: int) -> None:
    import gymnasium as gym

    from dreamctl.envs.gym_env import _worker_copy

    _worker_copy(lambda: gym.make("CartPole-v1"), 0, builder)
    queue.put(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)


def _signals_of_a_builder(queue) -> None:
    from dreamctl.config import load_config
    from dreamctl.envs import make_env

    env = make_env(load_config("vector", ["env.name=gym:CartPole-v1"]).env, seed=0, num_envs=2)
    env.close()
    queue.put(signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def _answer_of_a_spawned_process(target, *args):
    """What `target(queue, *args)` puts in its queue, run in a process started by multiprocessing's spawn."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(queue, *args))
    process.start()
    answer = queue.get(timeout=120)
    process.join(timeout=60)
    return answer


def test_env_workers_leave_a_hang_up_to_the_trainer():
    """A closed terminal signals the whole process group; a worker started by spawn (DMC's) died of SIGHUP, and the
    trainer could not gather its state into the last checkpoint."""
    assert _answer_of_a_spawned_process(_hang_up_handler_of_a_worker, os.getpid()) is True


def test_a_trainer_started_by_multiprocessing_keeps_its_ctrl_c_when_it_builds_env_workers():
    """The vector env makes one copy in the building process too, to read the spaces: there the signals stay the
    builder's, also where the builder is itself a child of multiprocessing (a library user's worker)."""
    assert _answer_of_a_spawned_process(_signals_of_a_builder) is True


def test_a_reader_that_goes_away_does_not_stop_training(tmp_path):
    """`dreamctl train ... | head -1`: the first line is read, the pipe closes, and the run trains to its end, where
    rich's console exited 1 at the next line, leaving a run created and never trained."""
    home = tmp_path / "home"
    proc = start(ARGS + ["--steps", "300"], home)
    proc.stdout.readline()
    proc.stdout.close()
    proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read()
    assert yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["status"] == "finished"


def test_a_second_signal_before_training_begins_is_said_and_exits_128_plus_it(monkeypatch, capsys):
    """SecondSignal outside a run's training (here while `envs` lists the games) ends as one sentence with the
    signal's status; as a KeyboardInterrupt Typer turned it into its own exit 130 with no reason given."""
    from dreamctl import cli, scores

    def second_sigterm():
        raise SecondSignal(signal.SIGTERM)

    monkeypatch.setattr(scores, "table", second_sigterm)
    monkeypatch.setattr("sys.argv", ["dreamctl", "envs"])
    assert cli.run() == 143
    assert capsys.readouterr().err.strip().endswith("error: stopped at once by a second SIGTERM.")


def test_a_second_signal_stops_at_once_marks_the_run_interrupted_and_it_resumes(tmp_path):
    """The CLI's handler raises SecondSignal at a second SIGINT/SIGTERM, wherever training is; here it comes from
    the stop check after 80 ticks of 4 agent steps and the reset (324 agent steps, past the checkpoint at 200)."""
    home = tmp_path / "home"
    ticks = iter(range(10_000))

    def second_signal_at_tick_80() -> bool:
        if next(ticks) == 80:
            raise SecondSignal(signal.SIGINT)
        return False

    cfg = load_config("debug", ["env.name=catch", "train.seed=5", "train.steps=2000", *FAST])
    with pytest.raises(StoppedAtOnce) as stopped:
        lifecycle.train(cfg, home=home, should_stop=second_signal_at_tick_80)
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == (
        "run-1 stopped at once at 324 agent steps; `dreamctl resume run-1` continues it from its last checkpoint."
    )
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["status"] == "interrupted" and [c["step"] for c in meta["checkpoints"]] == [200]
    run_cli("resume", "run-1", "--steps", "400", home=home, check=True)


def test_sigkill_at_random_moments_never_breaks_resume(tmp_path):
    """Twelve lives, each SIGKILLed: the even ones at a random moment after they listed a checkpoint of their own
    (so every resume starts from a later state than the one before), the odd ones while writing a checkpoint.
    Every listed checkpoint stays intact, and the last life finishes the run bit for bit as one that was never
    killed."""
    home = tmp_path / "home"
    run_dir = home / "runs" / "run-1"
    args = ARGS + ["--steps", "1200", "--set", "run.checkpoint_every=16"]
    seed = random.randrange(2**32)
    print(f"the kills' delays are drawn from random.Random({seed})")  # shown with a failure, to replay it
    rng = random.Random(seed)
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
            assert sha256_bytes((run_dir / entry["file"]).read_bytes()) == entry["sha256"], entry["file"]
        assert run_cli("list", "--json", home=home, check=True).stdout.count('"interrupted"') == 1
        steps = listed_steps(run_dir)
        proc = start(["resume", "run-1"], home)
    assert during_write >= 3
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert meta["status"] == "finished" and meta["progress"]["env_steps"] == 1200
    for entry in meta["checkpoints"]:
        assert sha256_bytes((run_dir / entry["file"]).read_bytes()) == entry["sha256"]
    whole = tmp_path / "whole"
    run_cli(*args, home=whole, check=True)
    assert_identical(whole, home)


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
    (the resumed process deletes those once it holds the run's lock). True if one was caught. The poll sleeps half
    a millisecond between looks, shorter than a write: a poll that never slept took a core from the trainer on
    2-core machines and made each such life last about 45 s instead of 4."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if temp_checkpoints(run_dir) - stale:
            return True
        time.sleep(0.0005)
    return False


@given(
    seed=st.integers(0, 1000),
    num_envs=st.integers(1, 8),
    world=st.integers(1, 4),
    resumes=st.integers(0, 5),
)
def test_every_start_of_a_run_seeds_its_env_copies_with_seeds_no_other_start_used(seed, num_envs, world, resumes):
    """Envs that cannot be restored (ALE, PettingZoo) start new episodes on resume: from seeds that neither the first
    start nor an earlier resume gave to any copy of any rank."""
    cfg = load_config("debug", [f"train.seed={seed}", f"env.num_envs={num_envs}"])
    used: set[int] = set()
    for restored, k in [(False, 0), *((True, r) for r in range(resumes + 1))]:
        seeds = {env_seed(cfg, k, restored, rank, world) + i for rank in range(world) for i in range(num_envs)}
        assert len(seeds) == world * num_envs and not seeds & used
        used |= seeds
    assert env_seed(cfg, 0, False, 0, world) == seed  # a new run's first copy takes the run's seed


def test_a_resume_from_an_older_checkpoint_that_dies_while_cutting_the_logs_leaves_no_gap(tmp_path, monkeypatch):
    """Resuming from step 200 of a run checkpointed at 200 and 400 cuts the logs back to 200 and abandons the 400
    checkpoint. A resume killed after cutting the logs must not leave the 400 checkpoint listed: a later plain
    resume would continue from it with the rows between 200 and 400 gone."""
    home = tmp_path / "home"
    cfg = load_config("debug", ["env.name=catch", "train.seed=5", "train.steps=400", *FAST])
    lifecycle.train(cfg, home=home)
    real_logger = lifecycle.MetricsLogger

    def killed_after_cutting_the_logs(run_dir, resume_step=None):
        real_logger(run_dir, resume_step).close()
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "MetricsLogger", killed_after_cutting_the_logs)
    with pytest.raises(KeyboardInterrupt):
        lifecycle.resume("run-1", home=home, steps=600, checkpoint=200)
    run = home / "runs" / "run-1"
    assert max(row["step"] for row in read_jsonl(run / "metrics.jsonl")) == 200
    assert [c["step"] for c in yaml.safe_load((run / "run.yaml").read_text())["checkpoints"]] == [200]


def test_a_resume_records_the_precision_it_computes_in(tmp_path, monkeypatch):
    """A run on `precision: auto` computes in float32 on a CPU and in bf16 on a GPU: a resume on another device must
    not leave the old precision in run.yaml (and in `show`)."""
    home = tmp_path / "home"
    lifecycle.train(load_config("debug", ["env.name=catch", "train.steps=200", *FAST]), home=home)
    assert yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["precision"] == "32"
    monkeypatch.setattr(lifecycle, "precision_label", lambda cfg, device: "bf16")  # as `auto` on a GPU
    lifecycle.resume("run-1", home=home, steps=220)
    assert yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["precision"] == "bf16"


def test_a_resume_whose_env_state_does_not_fit_any_more_starts_new_episodes_and_says_so(tmp_path, monkeypatch):
    """A gym env saved under one gymnasium and resumed under another (here: TimeLimit keeping one more attribute)
    cannot continue its episodes; the run goes on with new ones, warned once and noted in its history."""
    import gymnasium as gym

    home = tmp_path / "home"
    cfg = load_config("vector", ["env.name=gym:CartPole-v1", "env.num_envs=1", "train.steps=200", *FAST])
    lifecycle.train(cfg, home=home)
    built = gym.wrappers.TimeLimit.__init__

    def upgraded(self, *args, **kwargs):
        built(self, *args, **kwargs)
        self._new_counter = 0

    monkeypatch.setattr(gym.wrappers.TimeLimit, "__init__", upgraded)
    said: list[str] = []
    outcome = lifecycle.resume("run-1", home=home, steps=300, warn=said.append)
    assert outcome.finished and outcome.env_steps == 300
    note = (
        "the env's saved state does not fit it here (TimeLimit's _new_counter was not saved), "
        "so new episodes were started"
    )
    assert said == [f"run-1: {note}."]
    event = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["history"][-1]
    assert event["event"] == "resumed" and event["env_restored"] is False and event["note"] == note
