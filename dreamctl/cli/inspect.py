"""`dreamctl list`, `show`, `plot` and `envs`: what the registry holds, one run in full, learning curves, and the
environments dreamctl knows."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dreamctl.cli.app import Home, app
from dreamctl.errors import UsageError, did_you_mean
from dreamctl.terminal import duration_label, episodes_label, out, print_json, size_label


def _reference_label(reference: dict | None) -> str:
    """DreamerV2's published return for `list`: `957 at 1M frames`."""
    return "" if reference is None else f"{reference['return']:.0f} at {reference['frames'] / 1e6:.3g}M frames"


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
    status: Optional[str] = typer.Option(
        None, "--status", help="Only runs with this status: running, finished, interrupted, failed or unreadable."
    ),
    home: Optional[Path] = Home,
) -> None:
    """List the runs in the registry.

    Example: [bold]dreamctl list --status finished[/bold]
    """
    from dreamctl.runs.listing import UNREADABLE, run_rows
    from dreamctl.runs.registry import Registry
    from dreamctl.runs.run import STATUSES

    statuses = (*STATUSES, UNREADABLE)
    if status is not None and status not in statuses:
        raise UsageError(
            f"--status must be one of {', '.join(statuses)}, got '{status}'{did_you_mean(status, statuses)}."
        )
    registry = Registry(home)
    rows = [r for r in run_rows(registry) if status is None or r["status"] == status]
    if as_json:
        print_json(rows)
        return
    out.print(f"Registry: {registry.root}", markup=False, highlight=False)
    if not rows:
        out.print(
            "No runs" + (f" with status {status}" if status else "") + " yet; start one with "
            "[bold]dreamctl train catch --preset debug[/bold]."
        )
        return
    table = Table(box=None if not out.is_terminal else box.SIMPLE_HEAD)
    for column in (
        "id",
        "name",
        "env",
        "preset",
        "status",
        "agent steps",
        "updates",
        "trained",
        "eval",
        "normalised",
        "DreamerV2",
        "updated",
        "size",
    ):
        numeric = column in ("agent steps", "updates", "trained", "eval", "size")
        table.add_column(column, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(
            r["id"],
            r["name"] or "",
            r["env"],
            r["preset"],
            r["status"],
            f"{r['env_steps']:,}",
            f"{r['updates']:,}",
            duration_label(r["time_trained_s"]),
            _eval_label(r["eval_mean"], r["win_rate"], r["eval_policy"]),
            "" if r["human_normalized"] is None else f"{r['human_normalized']:.3f}",
            _reference_label(r["dreamerv2"]),
            r["updated"][:16].replace("T", " "),
            size_label(r["disk_bytes"]),
        )
    # A pipe has no width; do not squeeze the table into rich's default of 80 columns.
    (out if out.is_terminal else Console(width=240)).print(table)


def _eval_label(mean: float | None, win_rate: float | None, policy: str) -> str:
    """The last evaluation's mean return, the share of battles won where there are battles, and `sampled` where
    that evaluation sampled the actor (`eval --sample`)."""
    if mean is None:
        return ""
    won = "" if win_rate is None else f", {100 * win_rate:.0f}% won"
    return f"{mean:.2f}{won}" + (", sampled" if policy == "sample" else "")


@app.command()
def show(
    run: str = typer.Argument(..., help="run-<N>, <N>, the run's name, or latest."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
    home: Optional[Path] = Home,
) -> None:
    """One screen about one run.

    It shows the run's status, protocol, changes from its preset, progress, speed, scores, evaluations, checkpoints,
    resume history and last error.

    Example: [bold]dreamctl show run-3[/bold] or [bold]dreamctl show latest --json[/bold]
    """
    from dreamctl.runs.registry import Registry
    from dreamctl.runs.summary import run_summary

    s = run_summary(Registry(home).resolve(run))
    if as_json:
        print_json(s)
        return
    if s["reason"] is not None:
        out.print(
            f"[bold]{s['id']}[/bold] · [red]{s['status']}[/red] · {size_label(s['disk_bytes'])} "
            f"in {escape(str(s['path']))}"
        )
        out.print(f"reason: {s['reason']}", markup=False)
        return
    p = s["progress"]
    name = f" ({s['name']})" if s["name"] else ""
    out.print(
        f"[bold]{s['id']}[/bold]{name} · {s['status']} · {escape(str(s['env']))} · preset {escape(str(s['preset']))} · "
        f"seed {s['seed']} · {s['device']}, precision {s['precision']} · {s['parameters'] or 0:,} parameters"
    )
    out.print(f"folder {s['path']} ({size_label(s['disk_bytes'])})", markup=False)
    out.print(f"command: {s['command']}", markup=False, highlight=False)
    speed = (
        ""
        if s["updates_per_s"] is None
        else (f" ({s['agent_steps_per_s']:.1f} agent steps/s, {s['updates_per_s']:.2f} updates/s)")
    )
    out.print(
        f"progress: {p['env_steps']:,} of {p['target_steps']:,} agent steps ({p['frames']:,} frames), "
        f"{p['updates']:,} updates; trained {duration_label(s['time_trained_s'])}{speed}"
    )
    out.print("protocol: " + ", ".join(f"{k} {v}" for k, v in s["protocol"].items()), markup=False, highlight=False)
    changes = s["config_changes"]
    if changes is None:
        out.print(f"changes from the preset: unknown ({s['preset']} is not a bundled preset)", markup=False)
    else:
        listed = ", ".join(f"{k} {c['preset']} → {c['run']}" for k, c in changes.items())
        out.print(f"changes from preset {s['preset']}: {listed or 'none'}", markup=False, highlight=False)
    if s["score"]:
        out.print(f"score: {s['score'].get('value')} ({s['score'].get('rule')})", markup=False)
    if s["dreamerv2"]:
        out.print(f"DreamerV2's published return: {_reference_label(s['dreamerv2'])}")
    for e in s["evals"]:
        summary = f"{e['mean']:.2f} ± {e['std']:.2f} over {episodes_label(e['episodes'], e.get('policy'))}"
        if e.get("win_rate") is not None:
            summary += f", {100 * e['win_rate']:.0f}% of battles won"
        out.print(f"eval at step {e['step']:,}: {summary}")
    if s["checkpoints"]:
        out.print(
            "checkpoints: "
            + ", ".join(f"{c['step']:,} ({size_label(c['bytes'] or 0)}, {c['sha256']})" for c in s["checkpoints"])
        )
    for h in s["history"]:
        extra = f" from step {h['from_step']:,} to {h['target_steps']:,}" if h.get("event") == "resumed" else ""
        note = f"; {h['note']}" if h.get("note") else ""
        out.print(f"{h.get('event')} {h.get('time', '')}{extra}{note}", markup=False, highlight=False)
    for w in s["warnings"]:
        out.print(f"[yellow]{_warning_label(w)}[/yellow]")
    if s["error"]:
        out.print(f"[red]last error:[/red] {escape(str(s['error']))}")


def _warning_label(warning: dict) -> str:
    """`warning at step N: message` from a run.yaml warning (a mapping; a hand edit may have dropped its step), as
    escaped markup."""
    step = warning.get("step")
    where = f" at step {step:,}" if isinstance(step, int) else ""
    return escape(f"warning{where}: {warning.get('message')}")


@app.command()
def plot(
    runs: List[str] = typer.Argument(..., help="Runs to draw: run-<N>, <N>, names, or latest."),
    out_file: Optional[Path] = typer.Option(
        None, "--out", "-o", show_default=False, help="A .png, .svg or .pdf file (default: plot.png in the first run)."
    ),
    metrics: Optional[List[str]] = typer.Option(
        None, "--metric", "-m", help="A metrics.jsonl name (loss/model, loss/kl, ...) to draw in its own panel."
    ),
    x_axis: str = typer.Option("steps", "--x", help="steps (agent steps), frames or hours (of training)."),
    window: Optional[int] = typer.Option(
        None, "--smooth", show_default=False, help="Moving-average window in points (default: a twentieth of them)."
    ),
    group: Optional[str] = typer.Option(
        None,
        "--group",
        show_default=False,
        help="Average the training curves of runs alike in these keys (env, preset, seed), with a min-max band.",
    ),
    data: Optional[Path] = typer.Option(None, "--data", help="Also write every drawn point to this CSV file."),
    home: Optional[Path] = Home,
) -> None:
    """Draw learning curves of one run or several overlaid.

    Training returns (raw faint, smoothed bold), evaluations with their std, the share of battles won (smax: runs),
    and any logged metric; with --group, each group's mean training curve and its band instead.

    Example: [bold]dreamctl plot run-3 run-4 --metric loss/kl[/bold] or
    [bold]dreamctl plot 1 2 3 --group env,preset --out seeds.png[/bold]
    """
    from dreamctl.runs.registry import Registry
    from dreamctl.tools.plot import plot as draw

    registry = Registry(home)
    chosen = [registry.resolve(ref) for ref in runs]
    out_path = out_file if out_file is not None else chosen[0].path / "plot.png"
    keys = [k.strip() for k in group.split(",") if k.strip()] if group else []
    result = draw(chosen, out_path, list(metrics or []), x_axis, window, keys, data)
    out.print(f"wrote {result['out']}: {len(chosen)} run(s), panels {', '.join(result['panels'])}", markup=False)
    if data is not None:
        out.print(f"wrote {data}: {len(result['rows']):,} points", markup=False)


@app.command()
def envs(
    home: Optional[Path] = typer.Option(
        None, "--home", help="Not used: the env names do not depend on a registry.", show_default=False
    ),
) -> None:
    """List the environment names dreamctl knows.

    Example: [bold]dreamctl envs[/bold]
    """
    from dreamctl.envs.names import DMC_TASKS
    from dreamctl.envs.smax import MAPS
    from dreamctl.scores import table as scores

    out.print(
        "catch, catch2 (two agents) and reach (built in), gym:<id> (any installed Gymnasium env with image, vector "
        "or Dict observations), pz:<family>/<env> (PettingZoo's parallel envs, the multiagent extra), "
        "the DeepMind Control Suite's tasks (the dmc extra):"
    )
    out.print(", ".join(f"dmc:{domain}_{task}" for domain, task in DMC_TASKS), highlight=False)
    out.print("SMAX's battles against its heuristic enemy (the smax extra):")
    out.print(", ".join(f"smax:{name}" for name in MAPS), highlight=False)
    out.print("and the Atari games:")
    out.print(", ".join(sorted(scores())), highlight=False)
