"""The installed `dreamctl` command end to end, and its answers to bad input."""

import hashlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest
import yaml
from conftest import BASH_COMPLETION_ENV, fast_args, run_cli

from dreamctl.runs.run import SCHEMA_VERSION


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short catch run shared by tests that only read it (a test that changes it works on a copy)."""
    home = tmp_path_factory.mktemp("cli") / "home"
    proc = run_cli(
        "train",
        "catch",
        "--preset",
        "debug",
        "--steps",
        "400",
        "--seed",
        "3",
        "--name",
        "first",
        *fast_args(),
        home=home,
        check=True,
    )
    return home, proc


def test_train_creates_a_complete_run(trained):
    home, proc = trained
    assert "run-1" in proc.stdout and "dreamctl eval run-1" in proc.stdout
    run = home / "runs" / "run-1"
    meta = yaml.safe_load((run / "run.yaml").read_text())
    assert meta["status"] == "finished" and meta["name"] == "first" and meta["env"] == "catch"
    assert meta["preset"] == "debug" and meta["seed"] == 3 and meta["schema_version"] == SCHEMA_VERSION
    assert meta["progress"]["env_steps"] == 400 and meta["progress"]["updates"] > 0
    assert meta["config"]["train"]["steps"] == 400 and meta["config"]["env"]["name"] == "catch"
    assert {"torch", "numpy", "python"} <= set(meta["versions"]) and meta["device"] == "cpu"
    assert meta["command"].startswith("dreamctl train catch")
    assert meta["checkpoints"] and meta["checkpoints"][-1]["step"] == 400
    for entry in meta["checkpoints"]:
        assert sha256(run / entry["file"]) == entry["sha256"]
        assert (run / entry["file"]).stat().st_size == entry["bytes"]
    assert (run / "metrics.jsonl").read_text().strip() and list((run / "tb").iterdir())
    assert list((run / "replay").glob("chunk-*.bin"))


def test_tensorboard_events_have_grouped_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    home, _ = trained
    acc = EventAccumulator(str(home / "runs" / "run-1" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "loss/image" in tags and "train/updates_per_s" in tags and "episode/return" in tags


def test_list_eval_imagine_then_resume(trained, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(trained[0], home)  # it evaluates and resumes the run: the other tests read it as trained
    listing = json.loads(run_cli("list", "--json", home=home, check=True).stdout)
    assert [row["id"] for row in listing] == ["run-1"] and listing[0]["status"] == "finished"
    table = run_cli("list", home=home, check=True).stdout
    assert str(home) in table and "run-1" in table

    result = json.loads(run_cli("eval", "first", "--episodes", "3", "--json", home=home, check=True).stdout)
    assert set(result) == {
        "run",
        "checkpoint_step",
        "episodes",
        "policy",
        "returns",
        "mean",
        "std",
        "min",
        "max",
        "human_normalized",
        "reward_threshold",
        "random",
        "optimal",
        "dreamerv2",
        "agents",
        "win_rate",
    }
    assert result["agents"] is None and result["win_rate"] is None  # one agent, no battles
    assert result["policy"] == "greedy" and "sampled" not in run_cli("list", home=home, check=True).stdout
    assert result["episodes"] == 3 and len(result["returns"]) == 3 and result["human_normalized"] is None
    assert result["reward_threshold"] is None and result["dreamerv2"] is None
    assert (result["random"], result["optimal"]) == (-6.0, 10.0)  # catch: 10 drops, 1 in 5 caught at random
    assert all(-10 <= r <= 10 for r in result["returns"])

    video = tmp_path / "dream.mp4"
    out = run_cli(
        "imagine",
        "run-1",
        "--out",
        str(video),
        "--context",
        "5",
        "--horizon",
        "45",
        "--samples",
        "2",
        home=home,
        check=True,
    )
    assert "50 frames" in out.stdout
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 50 and frames[0].shape[0] > 3 * 64

    gif = tmp_path / "play.gif"
    run_cli("eval", "1", "--episodes", "1", "--video", str(gif), home=home, check=True)
    with av.open(str(gif)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 71  # the first frame and 70 steps

    run_cli("resume", "latest", "--steps", "600", *[], home=home, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["progress"]["env_steps"] == 600 and meta["status"] == "finished"
    assert [h["event"] for h in meta["history"]] == ["created", "resumed"]
    assert meta["history"][1]["from_step"] == 400 and meta["history"][1]["env_restored"] is True
    assert len(meta["evals"]) == 2
    for entry in meta["checkpoints"]:
        assert sha256(home / "runs" / "run-1" / entry["file"]) == entry["sha256"]


def test_a_run_shorter_than_an_episode_says_no_episode_ended(home):
    proc = run_cli("train", "catch", "--preset", "debug", "--steps", "20", *fast_args(), home=home, check=True)
    assert "run-1 trained 20 agent steps; no episode ended yet." in proc.stdout


def test_a_run_that_ends_within_its_prefill_is_trained_with_a_warning_that_no_update_will_run(home):
    """Legal (a later `resume --steps` trains it further), but the user should know that nothing learns."""
    warning = (
        "warning: train.steps (200) ends the run before its first update (train.prefill is 200), so it will only "
        "play randomly; raise --steps or lower train.prefill to train the agent."
    )
    dry = run_cli("train", "catch", "--steps", "200", *fast_args(), "--dry-run", home=home, check=True)
    assert f"# {warning}" in dry.stdout
    proc = run_cli("train", "catch", "--steps", "200", *fast_args(), home=home, check=True)
    assert proc.stderr.strip() == warning and "Training run-1" in proc.stdout
    assert json.loads(run_cli("list", "--json", home=home, check=True).stdout)[0]["updates"] == 0
    proc = run_cli("train", "catch", "--steps", "201", *fast_args(), home=home, check=True)
    assert proc.stderr == ""


def test_two_trains_started_together_get_distinct_run_ids(home):
    import os
    import subprocess

    from conftest import dreamctl_command, in_background

    env = {**os.environ, "DREAMCTL_HOME": str(home)}
    args = dreamctl_command() + ["train", "catch", "--preset", "debug", "--steps", "8", *fast_args()]
    procs = [
        in_background(
            subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
            )
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ids = sorted(json.loads(run_cli("list", "--json", home=home, check=True).stdout), key=lambda r: r["id"])
    assert [r["id"] for r in ids] == ["run-1", "run-2"] and all(r["status"] == "finished" for r in ids)
    assert sorted(out.split("Training ")[1].split()[0] for out, _ in outputs) == ["run-1", "run-2"]


def test_empty_registry_says_so_and_shows_its_root(home):
    proc = run_cli("list", home=home, check=True)
    assert f"Registry: {home}" in proc.stdout and "No runs" in proc.stdout
    assert json.loads(run_cli("list", "--json", home=home, check=True).stdout) == []


def test_dry_run_prints_config_and_memory_and_creates_nothing(home):
    proc = run_cli("train", "catch", "--preset", "debug", "--dry-run", home=home, check=True)
    assert "model:" in proc.stdout and "memory" in proc.stdout and "nothing was created" in proc.stdout
    assert "# time ≈" in proc.stdout and "of training here in" in proc.stdout
    assert not home.exists()


def test_a_dry_run_of_several_ranks_gives_no_one_process_estimate_as_the_jobs(home):
    """The estimate times one process: the envs of one rank and an update of the whole batch on every core, where
    each of N ranks steps its own envs and updates on its share of the batch."""
    proc = run_cli("train", "catch", "--nproc", "2", "--dry-run", home=home, check=True)
    assert "# time not estimated for 2 ranks (the estimate times one process); nothing was created." in proc.stdout
    assert "of training here" not in proc.stdout and not home.exists()


@pytest.mark.parametrize("command", ["train", "resume", "eval", "imagine", "list", "show", "plot", "envs"])
def test_every_command_explains_itself(command, home):
    proc = run_cli(command, "--help", home=home, check=True)
    assert "Example" in proc.stdout and "--home" in proc.stdout


def test_every_command_summary_is_one_line():
    """`dreamctl --help` lists each command with the first paragraph of its docstring, and in rich markup Typer keeps
    that paragraph's line breaks there, so a summary wrapped in the source showed broken mid-sentence."""
    from dreamctl.cli import app

    for command in app.registered_commands:
        assert command.callback is not None
        summary = inspect.cleandoc(command.callback.__doc__ or "").split("\n\n")[0]
        assert summary and "\n" not in summary, command.callback.__name__


def test_dreamctl_alone_prints_its_help_and_no_error(home):
    proc = run_cli(home=home)
    assert proc.returncode == 2 and "train" in proc.stdout and proc.stderr == ""


def test_train_help_names_every_preset_and_every_kind_of_env(home):
    from dreamctl.config import preset_names

    text = " ".join(run_cli("train", "--help", home=home, check=True, env={"COLUMNS": "300"}).stdout.split())
    assert "frames" in text
    assert all(name in text for name in preset_names()), preset_names()
    assert all(kind in text for kind in ("catch2", "atari:", "dmc:", "gym:", "pz:"))


LIGHT = {
    "--help": (["--help"], {}, 0),
    "list": (["list"], {}, 0),
    "list --json": (["list", "--json"], {}, 0),
    "envs": (["envs"], {}, 0),
    "train --help": (["train", "--help"], {}, 0),
    "completion": ([], BASH_COMPLETION_ENV, 0),
    "train typo": (["train", "pongg"], {}, 2),
    "eval unknown run": (["eval", "run-99"], {}, 2),
    "show unknown run": (["show", "run-99"], {}, 2),
    "plot unknown run": (["plot", "run-99"], {}, 2),
    "resume bad checkpoint": (["resume", "run-1", "--checkpoint", "x"], {}, 2),
}


# A registry holding one real run (a tiny catch run with a checkpoint, metrics and episodes).
A_RUN = Path(__file__).resolve().parents[1] / "data" / "run-before-layout"
LIGHT_ON_A_RUN = {
    "list with a run": (["list"], {}, 0),
    "list --json with a run": (["list", "--json"], {}, 0),
    "show a run": (["show", "run-1"], {}, 0),
}


@pytest.mark.parametrize("case", [*LIGHT, *LIGHT_ON_A_RUN])
def test_commands_that_need_no_model_start_without_torch(case, home):
    """--help, list, show, envs, shell completion and mistakes are answered in a fraction of a second: importing torch
    alone takes about a second on a 2-core machine, and completion runs the program at every press of TAB."""
    if case in LIGHT_ON_A_RUN:
        shutil.copytree(A_RUN, home)
    args, extra_env, code = {**LIGHT, **LIGHT_ON_A_RUN}[case]
    probe = (
        "import sys\n"
        "from dreamctl.cli import main\n"
        f"sys.argv = ['dreamctl', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    code = exit.code or 0\n"
        "heavy = sorted(m for m in ('torch', 'gymnasium', 'ale_py') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy, file=sys.stderr)\n"
    )
    env = {**os.environ, "DREAMCTL_HOME": str(home), **extra_env}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert f"EXIT {code} HEAVY []" in proc.stderr, proc.stderr
    assert (proc.stdout if code == 0 else proc.stderr).strip(), "the command printed nothing"


def test_the_library_entry_points_are_there_on_first_use():
    """They load lazily, and importing the modules that hold them leaves the names naming the functions."""
    import dreamctl
    import dreamctl.runs.lifecycle
    import dreamctl.tools.dream_video
    import dreamctl.tools.evaluate
    from dreamctl import Config, evaluate, imagine, load_config, resume, train
    from dreamctl.runs.lifecycle import train as runs_train

    assert train is runs_train and all(callable(f) for f in (evaluate, imagine, load_config, resume))
    assert isinstance(load_config("debug"), Config)
    assert set(dreamctl.__all__) == {"Config", "evaluate", "imagine", "load_config", "resume", "train"}
    with pytest.raises(AttributeError):
        _ = dreamctl.no_such_thing


@pytest.mark.parametrize("every_rank, said", [(False, False), (True, True)])
def test_a_followers_usage_error_is_said_only_where_the_ranks_agreed_it_was_this_ranks(
    monkeypatch, capsys, every_rank, said
):
    """Rank 0 says the usage errors every rank meets alike; one that a follower met first in a setup all ranks agreed
    on (`runs.sharded.agreed`) is that follower's to say: rank 0 stays silent about it."""
    import dreamctl.cli as cli
    from dreamctl.errors import UsageError

    refusal = UsageError("this rank cannot compute bf16.")
    refusal.every_rank = every_rank

    def command(standalone_mode):
        raise refusal

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(cli, "app", command)
    assert cli.run() == 2
    assert (capsys.readouterr().err == "error: this rank cannot compute bf16.\n") == said


@pytest.mark.parametrize("signalled, code", [(None, None), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_rank_stopped_by_the_ranks_vote_alone_exits_well(signalled, code):
    """Rank 1 stops when any rank was signalled; only a signal of its own makes its exit status a signal's (the
    launcher would take 143 from a rank that merely followed for a failure, and SIGTERM the others)."""
    import typer

    from dreamctl.runs.lifecycle import Outcome
    from dreamctl.terminal import finish

    stopped = Outcome(None, False, 100, None)
    if code is None:
        finish(stopped, {"signal": signalled}, "trained")
    else:
        with pytest.raises(typer.Exit) as raised:
            finish(stopped, {"signal": signalled}, "trained")
        assert raised.value.exit_code == code
