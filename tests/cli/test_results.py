"""Seeing results through the real CLI: `plot`, `show` and `list` with a damaged run; the maths of the curves."""

import csv
import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml
from conftest import dreamctl_command, fast_args, in_background, run_cli
from hypothesis import given
from hypothesis import strategies as st
from matplotlib import image

from dreamctl.errors import DreamctlError, UsageError
from dreamctl.runs.registry import Registry
from dreamctl.tools.plot import RETURN, RunLog, band, panel_series, plot, smooth
from dreamctl.tools.video import check_output


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two short catch runs that differ only in their seed, the first one evaluated once."""
    home = tmp_path_factory.mktemp("results") / "home"
    for seed in (1, 2):
        run_cli(
            "train",
            "catch",
            "--preset",
            "debug",
            "--steps",
            "600",
            "--seed",
            str(seed),
            *fast_args(),
            home=home,
            check=True,
        )
    run_cli("eval", "run-1", "--episodes", "2", home=home, check=True)
    return home


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def logged(home, run, name):
    return [json.loads(line) for line in (home / "runs" / run / name).read_text().splitlines()]


def test_plot_of_two_runs_draws_the_logged_data(two_seeds, tmp_path):
    home = two_seeds
    out, data = tmp_path / "curves.png", tmp_path / "curves.csv"
    proc = run_cli(
        "plot", "run-1", "run-2", "--metric", "loss/kl", "--out", str(out), "--data", str(data), home=home, check=True
    )
    assert str(out) in proc.stdout
    pixels = image.imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 500 and pixels.std() > 0.01
    rows = read_csv(data)
    for run in ("run-1", "run-2"):
        series = [s for s in {r["series"] for r in rows} if s.startswith(run + " ")]
        assert len(series) == 1 and "catch" in series[0] and "debug" in series[0]
        mine = [r for r in rows if r["series"] == series[0]]
        episodes = logged(home, run, "episodes.jsonl")
        raw = [(float(r["x"]), float(r["y"])) for r in mine if r["panel"] == "return" and r["kind"] == "raw"]
        assert raw == [(float(e["step"]), float(e["return"])) for e in episodes]
        smoothed = [float(r["y"]) for r in mine if r["panel"] == "return" and r["kind"] == "smoothed"]
        window = max(1, len(episodes) // 20)
        np.testing.assert_allclose(smoothed, smooth(np.array([e["return"] for e in episodes]), window))
        kl = [(float(r["x"]), float(r["y"])) for r in mine if r["panel"] == "loss/kl" and r["kind"] == "raw"]
        assert kl == [(float(m["step"]), m["loss/kl"]) for m in logged(home, run, "metrics.jsonl") if "loss/kl" in m]
    evals = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["evals"]
    drawn = [r for r in rows if r["kind"] == "eval"]
    assert [(float(r["x"]), float(r["y"]), float(r["std"])) for r in drawn] == [
        (float(e["step"]), e["mean"], e["std"]) for e in evals
    ]


def test_plot_group_draws_one_band_of_the_seeds(two_seeds, tmp_path):
    home = two_seeds
    data = tmp_path / "group.csv"
    run_cli(
        "plot",
        "1",
        "2",
        "--group",
        "env,preset",
        "--smooth",
        "3",
        "--out",
        str(tmp_path / "g.svg"),
        "--data",
        str(data),
        home=home,
        check=True,
    )
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")
    rows = read_csv(data)
    assert {r["series"] for r in rows} == {"catch · debug (2 runs)"}
    assert {r["kind"] for r in rows} == {"mean", "min", "max"}
    by_kind = {
        k: np.array([[float(r["x"]), float(r["y"])] for r in rows if r["kind"] == k]) for k in ("mean", "min", "max")
    }
    curves = []
    for run in ("run-1", "run-2"):
        episodes = logged(home, run, "episodes.jsonl")
        x = np.array([e["step"] for e in episodes], float)
        curves.append(np.interp(by_kind["mean"][:, 0], x, smooth(np.array([e["return"] for e in episodes]), 3)))
    np.testing.assert_allclose(by_kind["mean"][:, 1], np.mean(curves, 0))
    np.testing.assert_allclose(by_kind["min"][:, 1], np.min(curves, 0))
    np.testing.assert_allclose(by_kind["max"][:, 1], np.max(curves, 0))


def test_plot_against_hours_and_frames(two_seeds, tmp_path):
    home = two_seeds
    for axis in ("hours", "frames"):
        data = tmp_path / f"{axis}.csv"
        run_cli(
            "plot", "1", "--x", axis, "--out", str(tmp_path / f"{axis}.pdf"), "--data", str(data), home=home, check=True
        )
        raw = [float(r["x"]) for r in read_csv(data) if r["kind"] == "raw"]
        episodes = logged(home, "run-1", "episodes.jsonl")
        expected = [e["wall_time"] / 3600 for e in episodes] if axis == "hours" else [e["frame"] for e in episodes]
        np.testing.assert_allclose(raw, expected)
    assert (tmp_path / "hours.pdf").read_bytes().startswith(b"%PDF")


def test_a_plot_that_cannot_be_written_leaves_the_old_file_whole(two_seeds, tmp_path, monkeypatch):
    """A full disk, an I/O error: the figure was written in place, and a failed write left a truncated PNG."""
    out, points = tmp_path / "curves.png", tmp_path / "points.csv"
    out.write_bytes(b"old figure")
    points.write_text("old points")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    runs = [Registry(two_seeds).resolve("run-1")]
    with pytest.raises(DreamctlError, match=r"cannot write .*curves\.png: Input/output error\.$"):
        plot(runs, out, data=points)
    assert out.read_bytes() == b"old figure" and points.read_text() == "old points"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "points.csv"]  # no temp file left


def test_plot_without_out_writes_into_the_run(two_seeds):
    proc = run_cli("plot", "run-2", home=two_seeds, check=True)
    assert (two_seeds / "runs" / "run-2" / "plot.png").is_file() and "plot.png" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "loss/kll"], "did you mean 'loss/kl'"),
        (["--x", "hour"], "did you mean 'hours'"),
        (["--group", "presett"], "did you mean 'preset'"),
        (["--out", "curves.jpg"], "must end in .png, .svg, .pdf"),
        (["--smooth", "0"], "--smooth must be 1 or more"),
        (["--data", "/no/such/folder/points.csv"], "--data must be a .csv file in an existing folder"),
    ],
)
def test_plot_mistakes_get_one_sentence_and_exit_2(two_seeds, args, message, tmp_path):
    proc = run_cli("plot", "1", *args, home=two_seeds)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


SHOW_FIELDS = {
    "id",
    "name",
    "path",
    "status",
    "reason",
    "env",
    "preset",
    "seed",
    "command",
    "created",
    "updated",
    "device",
    "precision",
    "parameters",
    "protocol",
    "config_changes",
    "progress",
    "time_trained_s",
    "agent_steps_per_s",
    "updates_per_s",
    "score",
    "dreamerv2",
    "evals",
    "checkpoints",
    "history",
    "warnings",
    "error",
    "disk_bytes",
}


def show(home, run):
    return json.loads(run_cli("show", run, "--json", home=home, check=True).stdout)


def test_show_a_finished_run(two_seeds):
    s = show(two_seeds, "run-1")
    assert set(s) == SHOW_FIELDS
    meta = yaml.safe_load((two_seeds / "runs" / "run-1" / "run.yaml").read_text())
    assert s["status"] == "finished" and s["env"] == "catch" and s["preset"] == "debug" and s["seed"] == 1
    assert s["progress"] == {
        "env_steps": 600,
        "target_steps": 600,
        "frames": 600,
        "updates": meta["progress"]["updates"],
    }
    assert s["time_trained_s"] == meta["progress"]["wall_time"] > 0
    assert s["updates_per_s"] == pytest.approx(meta["progress"]["updates"] / meta["progress"]["wall_time"])
    assert s["protocol"]["action_repeat"] == 1 and s["protocol"]["image_size"] == 64
    assert s["config_changes"]["train.steps"] == {"preset": 8000, "run": 600}
    assert s["config_changes"]["train.prefill"] == {"preset": 1000, "run": 200}
    assert "model.deter" not in s["config_changes"]
    assert [c["step"] for c in s["checkpoints"]] == [c["step"] for c in meta["checkpoints"]]
    assert all(len(c["sha256"]) == 12 and c["bytes"] > 0 for c in s["checkpoints"])
    assert s["evals"] == meta["evals"] and s["error"] is None and s["history"][0]["event"] == "created"
    text = run_cli("show", "run-1", home=two_seeds, check=True).stdout
    assert "finished" in text and "train.steps 8000 → 600" in text and s["checkpoints"][0]["sha256"] in text


def test_show_an_interrupted_then_resumed_run(tmp_path):
    home = tmp_path / "home"
    args = ["train", "catch", "--preset", "debug", "--steps", "4000", *fast_args()]
    env = {**os.environ, "DREAMCTL_HOME": str(home)}
    proc = in_background(
        subprocess.Popen(
            dreamctl_command() + args,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # unread: a pipe nobody drains could fill and stall the run
            start_new_session=True,
        )
    )
    meta_path = home / "runs" / "run-1" / "run.yaml"
    deadline = time.monotonic() + 300
    while not (meta_path.is_file() and yaml.safe_load(meta_path.read_text()).get("checkpoints")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    s = show(home, "run-1")
    stopped = s["progress"]["env_steps"]
    assert s["status"] == "interrupted" and 0 < stopped < 4000 and s["checkpoints"][-1]["step"] == stopped
    run_cli("resume", "run-1", "--steps", str(stopped + 100), home=home, check=True)
    s = show(home, "run-1")
    assert s["status"] == "finished" and [h["event"] for h in s["history"]] == ["created", "resumed"]
    assert s["history"][1]["from_step"] == stopped and s["progress"]["env_steps"] == stopped + 100


def test_show_a_failed_run_names_its_error(tmp_path):
    """A file-size limit below a checkpoint's size makes the first checkpoint write fail, as a full disk would."""
    home = tmp_path / "home"
    limit = 2 * 2**20

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "DREAMCTL_HOME": str(home)}
    proc = subprocess.run(
        dreamctl_command() + ["train", "catch", "--preset", "debug", "--steps", "400", *fast_args()],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    s = show(home, "run-1")
    assert set(s) == SHOW_FIELDS and s["status"] == "failed"
    assert "File too large" in s["error"] and s["error"] in run_cli("show", "1", home=home, check=True).stdout


def test_show_prints_warnings_errors_and_paths_as_they_are(two_seeds, tmp_path):
    """Brackets in an error or a folder are text, not rich markup (which raised on '[/model]' or ate '[b]')."""
    home = tmp_path / "a [b]" / "home"
    home.parent.mkdir()
    subprocess.run(["cp", "-a", str(two_seeds), str(home)], check=True)
    meta_path = home / "runs" / "run-1" / "run.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["warnings"] = [{"step": 4000, "message": "the world model has collapsed.", "streak_start": 3}]
    meta["warnings"].append({"message": "[edited]"})  # a hand edit
    meta["error"] = "ValueError: bad value for key [/model]"
    meta["preset"] = None
    meta_path.write_text(yaml.safe_dump(meta))
    lines = run_cli("show", "1", home=home, check=True).stdout.splitlines()
    assert "warning at step 4,000: the world model has collapsed." in lines and "warning: [edited]" in lines
    assert "last error: ValueError: bad value for key [/model]" in lines
    assert any(line.startswith(f"folder {home}/runs/run-1 (") for line in lines)
    assert run_cli("list", home=home, check=True).stdout.startswith(f"Registry: {home}\n")


def test_a_damaged_run_lists_as_unreadable_and_nothing_changes(two_seeds, tmp_path):
    home = tmp_path / "home"
    subprocess.run(["cp", "-a", str(two_seeds), str(home)], check=True)
    (home / "runs" / "run-2" / "run.yaml").write_text("status: [finished\n")

    def snapshot():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.rglob("*")) if p.is_file()}

    before = snapshot()
    rows = json.loads(run_cli("list", "--json", home=home, check=True).stdout)
    assert [(r["id"], r["status"]) for r in rows] == [("run-1", "finished"), ("run-2", "unreadable")]
    assert "not valid YAML" in rows[1]["reason"] and rows[0]["time_trained_s"] > 0
    text = run_cli("list", home=home, check=True).stdout
    assert "unreadable" in text and "finished" in text and "trained" in text
    assert [
        r["id"] for r in json.loads(run_cli("list", "--json", "--status", "unreadable", home=home, check=True).stdout)
    ] == ["run-2"]
    s = show(home, "run-2")
    assert s["status"] == "unreadable" and "not valid YAML" in s["reason"]
    assert snapshot() == before


def test_smooth_is_a_trailing_mean_by_hand():
    np.testing.assert_allclose(smooth(np.array([1.0, 2, 3, 4]), 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(smooth(np.array([1.0, 2, 3, 4]), 10), [1, 1.5, 2, 2.5])
    np.testing.assert_allclose(smooth(np.array([5.0, -1]), 1), [5, -1])


def test_a_nan_or_inf_leaves_only_the_windows_that_hold_it_by_hand():
    nan, inf = float("nan"), float("inf")
    np.testing.assert_allclose(smooth(np.array([1.0, 2, nan, 4, 5, 6]), 2), [1, 1.5, 2, 4, 4.5, 5.5])
    np.testing.assert_allclose(smooth(np.array([1.0, inf, nan, 4]), 2), [1, 1, nan, 4])
    x = np.array([0.0, 1, 2])
    _, mean, low, high = band([(x, np.array([1.0, nan, 3])), (x, np.array([3.0, 5, 7]))])
    assert mean[0] == 2 and low[0] == 1 and high[0] == 3 and mean[-1] == 5 and np.isfinite(mean).all()


@given(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))), min_size=1, max_size=60),
    st.integers(1, 80),
)
def test_smooth_matches_its_definition(values, window):
    y = np.array(values)
    windows = [y[max(0, i - window + 1) : i + 1] for i in range(len(y))]
    expected = [w[np.isfinite(w)].mean() if np.isfinite(w).any() else np.nan for w in windows]
    np.testing.assert_allclose(smooth(y, window), expected, rtol=1e-9, atol=1e-6)


def test_a_run_of_several_ranks_plots_its_episodes_in_step_order():
    """Ranks log each tick's episodes one rank after the other, so the file is not in step (or time) order; the
    trailing mean and the band's interpolation need x ascending."""
    episodes = [
        {"step": s, "return": r, "wall_time": s / 10}
        for s, r in ((40, 4.0), (80, 8.0), (20, 2.0), (60, 6.0), (100, 1.0))
    ]
    log = RunLog("run-1", "run-1", {}, action_repeat=1, agents=1, episodes=episodes, evals=[], metrics=[])
    for axis in ("steps", "hours"):
        x, y = panel_series(log, RETURN, axis)
        assert list(y) == [2.0, 4.0, 6.0, 8.0, 1.0] and np.all(np.diff(x) > 0)


def test_band_averages_where_every_curve_is_defined():
    x, mean, low, high = band(
        [(np.array([0.0, 1, 2]), np.array([0.0, 1, 2])), (np.array([1.0, 2, 3]), np.full(3, 10.0))]
    )
    assert x[0] == 1 and x[-1] == 2 and len(x) == 200
    np.testing.assert_allclose([mean[0], low[0], high[0], mean[-1], low[-1], high[-1]], [5.5, 1, 10, 6, 2, 10])


@pytest.mark.parametrize(
    ("env", "preset", "reference"),
    [
        ("pong", "atari", "gamer-normalised score of pong on the right axis"),
        ("dmc:walker_walk", "dmc", "DreamerV2 on dmc:walker_walk at 1M frames: 957.5"),
        ("catch", "debug", None),
    ],
)
def test_plot_draws_the_reference_scores_dreamctl_knows(tmp_path, env, preset, reference):
    run = fake_run(tmp_path, env, preset, range(1, 30))
    result = plot([run], tmp_path / "p.png")
    assert result["references"] == ([reference] if reference else [])


def fake_run(home, env, preset, steps, seed=0):
    """A registry entry with hand-written episodes ending at 10 * s agent steps for s in `steps`."""
    run = Registry(home).create({"env": env, "preset": preset, "seed": seed, "env_spec": {"action_repeat": 4}}, None)
    lines = [{"step": 10 * i, "return": float(i), "frame": 40 * i, "wall_time": i} for i in steps]
    (run.path / "episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def test_plot_refuses_what_it_cannot_draw(tmp_path):
    """A run with nothing to draw yet is no misuse of the command (exit 1); runs that share no x range are (exit 2)."""
    empty = fake_run(tmp_path, "catch", "debug", [])
    with pytest.raises(DreamctlError, match="no finished episode or evaluation yet") as refused:
        plot([empty], tmp_path / "p.png")
    assert refused.value.exit_code == 1
    early, late = fake_run(tmp_path, "catch", "debug", range(1, 5)), fake_run(tmp_path, "catch", "debug", range(9, 15))
    with pytest.raises(UsageError, match="cover no common range"):
        plot([early, late], tmp_path / "p.png", group=["env"])
    assert not (tmp_path / "p.png").exists()


def test_a_group_refuses_a_run_without_training_episodes_instead_of_a_band_of_the_others(tmp_path):
    """Its evaluations alone have no curve to average: '(2 runs)' over one run's curve would be false."""
    evaluated = fake_run(tmp_path, "catch", "debug", [])
    evaluated.update(lambda m: m.update(evals=[{"step": 40, "episodes": 2, "mean": 1.0, "std": 0.0}]))
    plot([evaluated], tmp_path / "alone.png")  # without --group it draws the evaluation
    with pytest.raises(UsageError, match=f"^{evaluated.ref} has no finished training episode to average"):
        plot([fake_run(tmp_path, "catch", "debug", range(1, 5)), evaluated], tmp_path / "p.png", group=["env"])
    assert not (tmp_path / "p.png").exists()


def test_plot_checks_its_data_file_before_it_writes_the_figure(tmp_path):
    (tmp_path / "taken.csv").mkdir()
    with pytest.raises(UsageError, match="it is a folder"):
        plot([fake_run(tmp_path, "catch", "debug", range(1, 5))], tmp_path / "p.png", data=tmp_path / "taken.csv")
    assert not (tmp_path / "p.png").exists()


def test_plot_of_battles_draws_the_share_won(tmp_path):
    """Training battles as 0 / 100 % points and their moving average, evaluations' win rates as points (a sampled
    evaluation's apart from the greedy ones'); runs without battles get no such panel."""
    run = fake_run(tmp_path, "smax:3m", "smax", [])
    won = [False, True, True, False]  # four battles of 3 allies, each logged by every ally: counted once each
    lines = [
        {"step": 10 * (i + 1), "return": 0.5, "won": w, "wall_time": i, "env": 3 * (i % 2) + ally}
        for i, w in enumerate(won)
        for ally in range(3)
    ]
    (run.path / "episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    evals = [
        {"step": 40, "episodes": 20, "mean": 0.6, "std": 0.1, "win_rate": 0.35},
        {"step": 40, "episodes": 20, "mean": 0.9, "std": 0.2, "win_rate": 0.5, "policy": "sample"},
    ]
    run.update(lambda m: m.update(evals=evals, env_spec={"action_repeat": 1, "agents": 3}))
    result = plot([run], tmp_path / "p.png", window=2)
    assert result["panels"] == ["return", "battles won"]
    rows = [r for r in result["rows"] if r["panel"] == "battles won"]
    assert [r["y"] for r in rows if r["kind"] == "raw"] == [0.0, 100.0, 100.0, 0.0]
    assert [r["y"] for r in rows if r["kind"] == "smoothed"] == [0.0, 50.0, 100.0, 50.0]
    assert [(r["x"], r["y"]) for r in rows if r["kind"] == "eval"] == [(40.0, 35.0)]
    assert [(r["x"], r["y"]) for r in rows if r["kind"] == "eval_sampled"] == [(40.0, 50.0)]
    returns = [r for r in result["rows"] if r["panel"] == "return" and r["kind"].startswith("eval")]
    assert [(r["kind"], r["y"], r["std"]) for r in returns] == [("eval", 0.6, 0.1), ("eval_sampled", 0.9, 0.2)]
    assert plot([fake_run(tmp_path, "catch", "debug", range(1, 5))], tmp_path / "q.png")["panels"] == ["return"]


def test_a_users_preset_file_is_never_compared_with_the_bundled_preset_of_its_stem():
    """`train --preset my/debug.yaml` records `debug.yaml`; `show` compares only a bundled preset's runs."""
    from dreamctl.config import load_config
    from dreamctl.runs.summary import config_changes

    config = load_config("debug", ["model.deter=64"]).to_dict()
    assert config_changes("debug", config) == {"model.deter": {"preset": 128, "run": 64}}
    assert config_changes("debug.yaml", config) is None


def test_output_paths_are_refused_before_any_work(tmp_path, monkeypatch):
    """eval's --video, imagine's --out and plot's --out: each says in one sentence why a path cannot be written."""
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    with pytest.raises(UsageError, match="it is a folder"):
        check_output(folder)
    not_a_folder = tmp_path / "figure.png"
    not_a_folder.write_bytes(b"")
    with pytest.raises(UsageError, match=r"figure\.png is a file, not a folder"):
        check_output(not_a_folder / "clip.mp4")
    with pytest.raises(UsageError, match=r"the folder .*missing does not exist"):
        plot([], tmp_path / "missing" / "curves.png")  # refused before reading any run; no folder is made
    assert not (tmp_path / "missing").exists()
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user without write permission
    with pytest.raises(UsageError, match="the file is read-only"):
        check_output(locked)


def test_a_terminal_that_hung_up_silences_the_console_instead_of_failing(tmp_path):
    """Writing to a terminal that hung up fails with EIO (a rank of --nproc still holds it after its launcher got
    the hang-up); the console goes quiet instead of failing the run it reports on."""
    from dreamctl.terminal import _Console

    class HungUpTerminal:
        def __init__(self, fd):
            self.fd = fd

        def write(self, text):
            raise OSError(errno.EIO, "Input/output error")

        def flush(self):
            pass

        def fileno(self):
            return self.fd

        def isatty(self):
            return True

    with open(tmp_path / "tty", "w") as stand_in:
        console = _Console(file=HungUpTerminal(stand_in.fileno()))
        console.print("stopping after the current step and writing a checkpoint...")
        assert console.quiet
        console.print("and nothing after")
