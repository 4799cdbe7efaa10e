"""`dreamctl plot`: learning curves read from runs' logs, drawn headless (matplotlib's Agg backend).

The first panel is the training episodes' returns: each raw value faint, a trailing moving average bold, the
evaluations of run.yaml as points with their standard deviation. Runs of battles (smax:) add a panel of the share
of battles won, in training (a moving average of each battle's 0 or 100 %, a battle counted once however many
allies fought it) and in evaluations (points). Each `--metric` name from metrics.jsonl adds a panel below them.
`group` draws, per group of runs, the mean of their smoothed curves with a min-max band on the x range they all
cover. Reference scores join where dreamctl knows them: the gamer-normalised score on a second axis for Atari,
DreamerV2's published return as a line for DMC. Everything drawn is also returned as rows, which `--data out.csv`
writes, so a reader can check the figure against the logs.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamctl.errors import DreamctlError, UsageError, did_you_mean
from dreamctl.runs.metrics import read_jsonl
from dreamctl.runs.run import Run, eval_policy
from dreamctl.scores import dmc_reference, human_normalized, table
from dreamctl.tools.dream_figure import FIGURE_FORMATS, write_figure, write_output
from dreamctl.tools.video import check_output

X_AXES = ("steps", "frames", "hours")
GROUP_KEYS = ("env", "preset", "seed")
RETURN = "return"  # the first panel's name
WON = "battles won"  # the panel of runs of battles
PANEL_WORDS = {RETURN: "finished training episode", WON: "finished training battle"}  # what a panel's points are
BAND_POINTS = 200  # x positions where a group's curves are averaged
X_LABELS = {"steps": "agent steps", "frames": "frames", "hours": "hours of training"}


@dataclass
class RunLog:
    """One run's logs, ready to plot."""

    ref: str
    label: str
    info: dict[str, Any]  # env, preset, seed: what --group can key on
    action_repeat: int
    agents: int  # agents per world: each logs its world's episodes
    episodes: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    metrics: list[dict[str, Any]]

    def fought_battles(self) -> bool:
        """Whether the run's env is one of battles: its episodes or evaluations say which were won."""
        return any("won" in e for e in self.episodes) or any(e.get("win_rate") is not None for e in self.evals)

    def clock(self) -> tuple[np.ndarray, np.ndarray]:
        """(agent steps, training seconds) pairs from every log line that carries the training time."""
        pairs = sorted(
            {(r["step"], r["wall_time"]) for r in self.episodes if "wall_time" in r}
            | {(r["step"], r["train/wall_time"]) for r in self.metrics if "train/wall_time" in r}
        )
        if not pairs:
            raise UsageError(
                f"{self.ref}'s logs carry no training time (they predate it); plot it with --x steps or --x frames."
            )
        steps, seconds = np.array(pairs, np.float64).T
        return steps, seconds

    def x(self, steps: Sequence[float], axis: str) -> np.ndarray:
        """Agent steps mapped onto the x axis: frames are a world's steps (its agents decide together) times the
        action repeat, hours come from the clock."""
        s = np.asarray(steps, np.float64)
        if axis == "frames":
            return s / self.agents * self.action_repeat
        if axis == "hours":
            clock_steps, seconds = self.clock()
            return np.interp(s, clock_steps, seconds) / 3600.0
        return s


def read_run(run: Run) -> RunLog:
    meta = run.meta()
    name = f" ({meta['name']})" if meta.get("name") else ""
    info = {"env": str(meta.get("env", "?")), "preset": str(meta.get("preset", "?")), "seed": meta.get("seed")}
    return RunLog(
        run.ref,
        f"{run.ref}{name} · {info['env']} · {info['preset']} · seed {info['seed']}",
        info,
        int((meta.get("env_spec") or {}).get("action_repeat", 1)),
        int((meta.get("env_spec") or {}).get("agents", 1)),
        read_jsonl(run.path / "episodes.jsonl"),
        sorted(meta.get("evals") or [], key=lambda e: e["step"]),
        read_jsonl(run.path / "metrics.jsonl"),
    )


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average of the finite values: out[i] = mean of the finite y[max(0, i - window + 1) : i + 1],
    NaN where that window holds none, (n,) -> (n,). A NaN or inf (a skipped float16 step's gradient norm) leaves only
    the windows that hold it, instead of every running sum after it."""
    y = np.asarray(y, np.float64)
    finite = np.isfinite(y)
    sums = np.cumsum(np.concatenate([[0.0], np.where(finite, y, 0.0)]))
    counts = np.cumsum(np.concatenate([[0], finite]))
    i = np.arange(1, len(y) + 1)
    start = np.maximum(0, i - window)
    n = counts[i] - counts[start]
    return np.where(n > 0, (sums[i] - sums[start]) / np.maximum(n, 1), np.nan)


def auto_window(n: int) -> int:
    """Default smoothing: a twentieth of the points, at least 1."""
    return max(1, n // 20)


def panel_series(log: RunLog, panel: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one panel of one run, x ascending: episode returns for `RETURN`, each battle's 0 or 100 (% won) for
    `WON` (every agent logs its world's episodes; a battle counts once, by its first agent's record), else the
    metric's logged values. A run of several ranks logs each tick's episodes rank by rank, not in step order."""
    x, y = _panel_points(log, panel, axis)
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def _panel_points(log: RunLog, panel: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    if panel in (RETURN, WON):
        if panel == WON:
            episodes = [e for e in log.episodes if "won" in e and e.get("env", 0) % log.agents == 0]
            values = [100.0 * e["won"] for e in episodes]
        else:
            episodes, values = log.episodes, [e["return"] for e in log.episodes]
        if axis == "hours" and episodes and all("wall_time" in e for e in episodes):
            # Each episode's own training time: a metrics line of the same step may have been logged a tick later.
            return np.array([e["wall_time"] / 3600.0 for e in episodes]), np.array(values, np.float64)
        records = list(zip([e["step"] for e in episodes], values, strict=True))
    else:
        records = [(m["step"], m[panel]) for m in log.metrics if panel in m]
    if not records:
        return np.zeros(0), np.zeros(0)
    steps, values = np.array(records, np.float64).T
    return log.x(steps, axis), values


def check_metrics(logs: list[RunLog], names: Sequence[str]) -> None:
    logged = sorted({k for log in logs for m in log.metrics for k in m} - {"step", "time"})
    for name in names:
        if name not in logged:
            raise UsageError(
                f"no run logged the metric '{name}'{did_you_mean(name, logged)}; metrics.jsonl has: "
                f"{', '.join(logged) or 'nothing yet'}."
            )


def group_logs(logs: list[RunLog], keys: Sequence[str]) -> dict[str, list[RunLog]]:
    """Runs by the values of `keys`, in first-seen order; without keys every run is its own group."""
    for key in keys:
        if key not in GROUP_KEYS:
            raise UsageError(f"--group takes {', '.join(GROUP_KEYS)}, got '{key}'{did_you_mean(key, GROUP_KEYS)}.")
    if not keys:
        return {log.label: [log] for log in logs}
    groups: dict[str, list[RunLog]] = {}
    for log in logs:
        label = " · ".join(f"{log.info[k]}" if k != "seed" else f"seed {log.info[k]}" for k in keys)
        groups.setdefault(label, []).append(log)
    return {f"{label} ({len(members)} runs)": members for label, members in groups.items()}


def band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max of curves (x ascending) on `BAND_POINTS` x positions spanning the range all of them cover,
    skipping a curve where it is NaN; returns (x, mean, low, high), empty where the ranges do not overlap."""
    start = max(x[0] for x, _ in curves)
    end = min(x[-1] for x, _ in curves)
    if end < start:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    grid = np.linspace(start, end, BAND_POINTS)
    stacked = np.stack([np.interp(grid, x, y) for x, y in curves])
    with warnings.catch_warnings():  # a grid point where every curve is NaN stays NaN, unannounced
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(stacked, 0), np.nanmin(stacked, 0), np.nanmax(stacked, 0)


def plot(
    runs: Sequence[Run],
    out: Path,
    metrics: Sequence[str] = (),
    x_axis: str = "steps",
    window: int | None = None,
    group: Sequence[str] = (),
    data: Path | None = None,
) -> dict[str, Any]:
    """Draw the runs' curves into `out` (.png, .svg or .pdf); returns {"out", "panels", "rows", "references"} where
    rows are what was drawn: {"panel", "series", "kind" (raw, smoothed, eval, mean, min, max), "x", "y", "std"}, and
    references name the reference scores drawn with them."""
    if x_axis not in X_AXES:
        raise UsageError(f"--x takes {', '.join(X_AXES)}, got '{x_axis}'{did_you_mean(x_axis, X_AXES)}.")
    if out.suffix.lower() not in FIGURE_FORMATS:
        raise UsageError(f"--out must end in {', '.join(FIGURE_FORMATS)}, got '{out.name}'.")
    check_output(out, FIGURE_FORMATS)
    if window is not None and window < 1:
        raise UsageError(f"--smooth must be 1 or more, got {window}.")
    if data is not None and (data.suffix.lower() != ".csv" or not data.parent.is_dir()):
        raise UsageError(f"--data must be a .csv file in an existing folder, got '{data}'.")
    if data is not None:
        check_output(data, (".csv",))  # before the figure is written, not after
    logs = [read_run(run) for run in runs]
    for log in logs:
        if not log.episodes and not log.evals:
            raise DreamctlError(f"{log.ref} has no finished episode or evaluation yet; plot it once it has.")
    check_metrics(logs, metrics)
    groups = group_logs(logs, group)
    battles = any(log.fought_battles() for log in logs)
    panels = [RETURN, *([WON] if battles else []), *metrics]

    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the Agg canvas, whatever backend the process uses

    fig = Figure(figsize=(8, 3.2 + 2.4 * (len(panels) - 1)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    rows: list[dict[str, Any]] = []
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, members) in enumerate(groups.items()):
        color = colors[index % len(colors)]
        for panel, ax in zip(panels, axes[:, 0], strict=True):
            if group:
                _draw_group(ax, panel, label, members, x_axis, window, color, rows)
            else:
                _draw_run(ax, panel, members[0], x_axis, window, color, rows)
    references = _references(axes[0, 0], logs)
    for panel, ax in zip(panels, axes[:, 0], strict=True):
        ax.set_ylabel({RETURN: "episode return", WON: "battles won (%)"}.get(panel, panel))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(X_LABELS[x_axis])
    if axes[0, 0].get_legend_handles_labels()[0]:  # a run with evaluations and no episode yet has no labelled line
        axes[0, 0].legend(fontsize="small", loc="best")
    fig.tight_layout()
    write_figure(fig, out)
    if data is not None:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=["panel", "series", "kind", "x", "y", "std"])
        writer.writeheader()
        writer.writerows(rows)
        write_output(data, table.getvalue().encode())
    return {"out": str(out), "panels": panels, "rows": rows, "references": references}


def _draw_run(ax, panel: str, log: RunLog, axis: str, window: int | None, color: str, rows: list) -> None:
    x, y = panel_series(log, panel, axis)
    label = log.label if panel == RETURN else None
    if len(x):
        smoothed = smooth(y, window or auto_window(len(y)))
        ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(x, smoothed, color=color, linewidth=2.0, label=label)
        _record(rows, panel, log.label, "raw", x, y)
        _record(rows, panel, log.label, "smoothed", x, smoothed)
    for policy, marker, kind in (("greedy", "o", "eval"), ("sample", "s", "eval_sampled")):
        evals = [e for e in log.evals if eval_policy(e) == policy]
        if panel == RETURN and evals:
            ex = log.x([e["step"] for e in evals], axis)
            mean = np.array([e["mean"] for e in evals])
            std = np.array([e["std"] for e in evals])
            ax.errorbar(ex, mean, yerr=std, fmt=marker, color=color, capsize=3, markeredgecolor="black")
            _record(rows, panel, log.label, kind, ex, mean, std)
        fought = [e for e in evals if e.get("win_rate") is not None] if panel == WON else []
        if fought:
            ex = log.x([e["step"] for e in fought], axis)
            won = np.array([100.0 * e["win_rate"] for e in fought])
            ax.plot(ex, won, marker, color=color, markeredgecolor="black")
            _record(rows, panel, log.label, kind, ex, won)


def _draw_group(
    ax, panel: str, label: str, members: list[RunLog], axis: str, window: int | None, color: str, rows: list
) -> None:
    curves = []
    for log in members:
        x, y = panel_series(log, panel, axis)
        if not len(x):  # averaging the others under this group's label would misstate what was averaged
            raise UsageError(
                f"{log.ref} has no {PANEL_WORDS.get(panel, f'logged {panel}')} to average with the other runs of its "
                "group; plot it without --group."
            )
        curves.append((x, smooth(y, window or auto_window(len(y)))))
    x, mean, low, high = band(curves)
    if not len(x):
        raise UsageError(
            f"the runs of '{label}' cover no common range of the x axis, so they have no mean; plot them without "
            f"--group."
        )
    ax.plot(x, mean, color=color, linewidth=2.0, label=label if panel == RETURN else None)
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    for kind, values in (("mean", mean), ("min", low), ("max", high)):
        _record(rows, panel, label, kind, x, values)


def _references(ax, logs: list[RunLog]) -> list[str]:
    """DreamerV2's published DMC return as a dashed line per task; the gamer-normalised score on a second axis
    when every run plays the same Atari game. Returns what it drew, in words."""
    drawn = []
    envs = sorted({log.info["env"] for log in logs})
    for env in envs:
        reference = dmc_reference(env)
        if reference is not None:
            label = f"DreamerV2 on {env} at {reference.frames / 1e6:.3g}M frames: {reference.dreamerv2:g}"
            ax.axhline(reference.dreamerv2, color="grey", linestyle="--", linewidth=1.0, label=label)
            drawn.append(label)
    if len(envs) == 1 and envs[0] in table():
        game = envs[0]
        atari100k = all(log.info["preset"] == "atari100k" for log in logs)
        zero = human_normalized(game, 0.0, atari100k)
        one = human_normalized(game, 1.0, atari100k)
        if zero is not None and one is not None:
            scale = one - zero
            second = ax.secondary_yaxis("right", functions=(lambda r: zero + scale * r, lambda h: (h - zero) / scale))
            second.set_ylabel("gamer-normalised score")
            drawn.append(f"gamer-normalised score of {game} on the right axis")
    return drawn


def _record(rows: list, panel: str, series: str, kind: str, x, y, std=None) -> None:
    for i in range(len(x)):
        rows.append(
            {
                "panel": panel,
                "series": series,
                "kind": kind,
                "x": float(x[i]),
                "y": float(y[i]),
                "std": None if std is None else float(std[i]),
            }
        )
