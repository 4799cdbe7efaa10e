"""The dreamctl command line: thin over the library, with rich output and one-sentence errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from typer.exceptions import Abort, TyperException

from dreamctl.errors import DreamctlError, UsageError
from dreamctl.terminal import ProgressView, err, finish, out, size_label, stop_signals

app = typer.Typer(
    name="dreamctl",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Train DreamerV2 agents from pixels and keep every run in a local registry.\n\n"
    "Example: [bold]dreamctl train catch --preset debug[/bold], then [bold]dreamctl eval latest[/bold].",
)
HOME_HELP = "Registry root (default: $DREAMCTL_HOME, else $XDG_DATA_HOME/dreamctl, else ~/.local/share/dreamctl)."
Home = typer.Option(None, "--home", help=HOME_HELP, show_default=False)


@app.command()
def train(
    env: str = typer.Argument(
        ..., help="catch, reach, an Atari game (pong, ALE/Pong-v5, atari:pong), dmc:<domain>_<task> or gym:<id>."
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        "-p",
        show_default=False,
        help="Preset name (atari, atari100k, debug, dmc, humanoid, pixels, vector) or a YAML file. Default: atari "
        "for Atari games, humanoid for dmc:humanoid_*, dmc for other dmc: tasks, debug for catch, vector for envs "
        "without images, pixels otherwise.",
    ),
    steps: Optional[int] = typer.Option(
        None,
        "--steps",
        min=1,
        show_default=False,
        help="Agent steps to train (policy decisions summed over env copies); "
        "one agent step is env.action_repeat frames (4 on Atari).",
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", min=0, show_default=False, help="Seeds torch, numpy and the envs."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="A unique name to refer to the run by."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Override a config key, e.g. --set model.deter=256."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:i].", show_default=False),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, 32, bf16 or 16.", show_default=False),
    home: Optional[Path] = Home,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config and memory estimate; create nothing."
    ),
) -> None:
    """Train a new run.

    Example: [bold]dreamctl train catch --preset debug[/bold] or [bold]dreamctl train pong --preset atari100k[/bold]
    """
    from dreamctl.config import load_config
    from dreamctl.envs import resolve

    game = resolve(env)
    sets = [f"env.name={game}"] + list(overrides or [])
    for key, value in (
        ("train.steps", steps),
        ("train.seed", seed),
        ("run.device", device),
        ("run.precision", precision),
    ):
        if value is not None:
            sets.append(f"{key}={value}")
    if preset is None:
        preset = _default_preset(game, sets)
    cfg = load_config(preset, sets)
    preset_label = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
    if dry_run:
        _dry_run(cfg, preset_label)
        return
    from dreamctl.runs import (
        lifecycle as runs,  # after the checks above, so that a mistake is answered without loading torch
    )

    caught, should_stop = stop_signals()
    with ProgressView(out) as view:
        outcome = runs.train(
            cfg,
            home=home,
            name=name,
            preset=preset_label,
            command=["dreamctl"] + sys.argv[1:],
            progress=view,
            should_stop=should_stop,
            on_created=lambda r: out.print(f"Training [green]{r.ref}[/green] in {r.path}"),
        )
    finish(outcome, caught, "trained")


def _dry_run(cfg, preset: str) -> None:
    import yaml

    from dreamctl.envs import encoder_of, make_env, no_key_selected
    from dreamctl.runs.system import configure_torch, estimate_memory, parameter_count, prepare

    cfg = prepare(cfg)
    device = configure_torch(cfg)
    env = make_env(cfg.env, cfg.train.seed, every_key=True)
    spec = env.spec
    env.close()
    readers = {key: encoder_of(key, shape, cfg.env.cnn_keys, cfg.env.mlp_keys) for key, shape in spec.obs_space.items()}
    seen = {key: shape for key, shape in spec.obs_space.items() if readers[key]}
    if not seen:
        raise no_key_selected(spec, cfg.env)
    params = parameter_count(cfg, seen, spec.action_dim, spec.discrete)
    out.print(f"# preset {preset}", markup=False)
    out.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="", markup=False, highlight=False)
    for key, shape in spec.obs_space.items():
        kind = "uint8 image" if len(shape) == 3 else "float32 vector"
        reader = {"cnn": "the conv encoder", "mlp": "the MLP encoder"}.get(readers[key] or "", "nobody (not selected)")
        out.print(f"# observation {key}: {kind} {list(shape)}, read by {reader}", markup=False)
    mem = estimate_memory(cfg, seen, params)
    out.print(
        f"# device {device}; {params:,} parameters; memory ≈ {mem['total'] / 2**30:.2f} GiB "
        f"(replay {mem['replay'] / 2**30:.2f}, model {mem['model'] / 2**30:.2f}, "
        f"activations {mem['activations'] / 2**30:.2f}); nothing was created.",
        markup=False,
    )


@app.command()
def resume(
    run: str = typer.Argument(..., help="run-<N>, <N>, the run's name, or latest."),
    steps: Optional[int] = typer.Option(
        None, "--steps", min=1, show_default=False, help="New total of agent steps (default: the run's target)."
    ),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="Checkpoint step to continue from, or latest."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Safe overrides only: run.device, run.checkpoint_every, run.log_every, ..."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:i].", show_default=False),
    home: Optional[Path] = Home,
) -> None:
    """Continue a run exactly where its checkpoint left it.

    Example: [bold]dreamctl resume run-3 --steps 20000[/bold]
    """
    which = _checkpoint_ref(checkpoint)
    _check_run(run, home)
    from dreamctl.runs import lifecycle as runs

    sets = list(overrides or []) + ([f"run.device={device}"] if device else [])
    caught, should_stop = stop_signals()
    with ProgressView(out) as view:
        outcome = runs.resume(
            run, home=home, steps=steps, overrides=sets, checkpoint=which, progress=view, should_stop=should_stop
        )
    finish(outcome, caught, "reached")


def _check_run(ref: str, home: Path | None) -> None:
    """Find the run before loading torch, so that a wrong reference is answered at once."""
    from dreamctl.runs.registry import Registry

    Registry(home).resolve(ref)


def _checkpoint_ref(text: str) -> str | int:
    if text in ("latest", "best"):
        return text
    if text.isdigit():
        return int(text)
    raise UsageError(f"--checkpoint must be a step number, latest or best, got '{text}'.")


def _reference_label(reference: dict | None) -> str:
    """DreamerV2's published return for `list`: `957 at 1M frames`."""
    return "" if reference is None else f"{reference['return']:.0f} at {reference['frames'] / 1e6:.3g}M frames"


def _default_preset(game: str, sets: list[str]) -> str:
    """The preset `train` picks when none is named: the paper's for Atari, DMC and humanoid, debug for catch, vector for
    envs without images, pixels (CPU-sized, with DreamerV2's safeguards against a collapsed model) for other pixel
    envs, reach included."""
    from dreamctl.config import load_config
    from dreamctl.envs import observes_images
    from dreamctl.envs.names import is_atari

    if is_atari(game):
        return "atari"
    if game.startswith("dmc:humanoid_") and not game.startswith("dmc:humanoid_CMU"):
        return "humanoid"
    if game.startswith("dmc:"):
        return "dmc"
    if game == "catch":
        return "debug"
    if game.startswith("gym:") and not observes_images(load_config("vector", sets).env):
        return "vector"
    return "pixels"


@app.command("eval")
def eval_(
    run: str = typer.Argument(..., help="run-<N>, <N>, the run's name, or latest."),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes to play."),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="A checkpoint step, latest or best."),
    video: Optional[Path] = typer.Option(None, "--video", help="Write the first episode to this .mp4 or .gif."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the evaluation envs and policy."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    home: Optional[Path] = Home,
) -> None:
    """Play evaluation episodes with the greedy policy under the run's own env protocol.

    Example: [bold]dreamctl eval run-3 --episodes 20 --video play.mp4[/bold]
    """
    which = _checkpoint_ref(checkpoint)
    _check_run(run, home)
    from dreamctl.tools.evaluate import evaluate

    result = evaluate(run, home=home, episodes=episodes, checkpoint=which, video=video, seed=seed, device=device)
    if as_json:
        keys = (
            "run",
            "checkpoint_step",
            "episodes",
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
        )
        print(json.dumps({k: result[k] for k in keys}))
        return
    out.print(
        f"[green]{result['run']}[/green] at step {result['checkpoint_step']:,}: {result['episodes']} episodes, "
        f"return {result['mean']:.2f} ± {result['std']:.2f} (min {result['min']:g}, max {result['max']:g})"
    )
    if result["human_normalized"] is not None:
        out.print(f"gamer-normalised score: {result['human_normalized']:.3f}")
    if result["reward_threshold"] is not None:
        out.print(f"Gymnasium counts this env as solved at a return of {result['reward_threshold']:g}")
    if result["dreamerv2"] is not None:
        ref = result["dreamerv2"]
        out.print(f"DreamerV2's published return: {ref['return']:.1f} at {ref['frames']:,} frames (mean of its seeds)")
    if result["random"] is not None:
        gap = (result["mean"] - result["random"]) / (result["optimal"] - result["random"])
        out.print(
            f"random play scores {result['random']:g} and the optimal policy {result['optimal']:g}: "
            f"{100 * gap:.0f}% of the way from one to the other"
        )
    if video:
        out.print(f"video: {video}")


@app.command()
def imagine(
    run: str = typer.Argument(..., help="run-<N>, <N>, the run's name, or latest."),
    out_file: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        show_default=False,
        help="Output .mp4 or .gif; for a run without images also .png, .svg or .pdf "
        "(default: the run's videos/ folder).",
    ),
    context: int = typer.Option(5, "--context", min=1, help="Real frames the model observes first."),
    horizon: int = typer.Option(45, "--horizon", min=1, help="Steps the model then dreams open-loop."),
    samples: int = typer.Option(4, "--samples", min=1, max=16, help="Sequences side by side."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the envs and the model's sampling."),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="A checkpoint step, latest or best."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    home: Optional[Path] = Home,
) -> None:
    """Write the world model's open-loop dream beside reality (rows: truth / model / error), and a figure of
    truth vs dream per dimension for vector observations.

    Example: [bold]dreamctl imagine run-3 --out dream.mp4 --context 5 --horizon 45[/bold]
    """
    which = _checkpoint_ref(checkpoint)
    _check_run(run, home)
    from dreamctl.tools.dream_video import imagine as make_video

    result = make_video(
        run,
        out_file,
        home=home,
        context=context,
        horizon=horizon,
        samples=samples,
        seed=seed,
        checkpoint=which,
        device=device,
    )
    out.print(
        f"wrote {result['out']}: {result['frames']} {'steps' if result['figure'] == result['out'] else 'frames'} "
        f"({result['context']} observed, {result['horizon']} "
        f"dreamed, {result['samples']} samples); dream MSE {result['dream_mse']:.4f}"
    )
    if result["figure"] and result["figure"] != result["out"]:
        out.print(f"wrote {result['figure']}: {result['panels']} panels, one per vector dimension")


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
    status: Optional[str] = typer.Option(
        None, "--status", help="Only runs with this status: running, finished, interrupted or failed."
    ),
    home: Optional[Path] = Home,
) -> None:
    """List the runs in the registry.

    Example: [bold]dreamctl list --status finished[/bold]
    """
    from dreamctl.runs.listing import run_rows
    from dreamctl.runs.registry import STATUSES, Registry

    if status is not None and status not in STATUSES:
        raise UsageError(f"--status must be one of {', '.join(STATUSES)}, got '{status}'.")
    registry = Registry(home)
    rows = [r for r in run_rows(registry) if status is None or r["status"] == status]
    if as_json:
        print(json.dumps(rows))
        return
    out.print(f"Registry: {registry.root}")
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
        "eval",
        "normalised",
        "DreamerV2",
        "updated",
        "size",
    ):
        table.add_column(column, justify="right" if column in ("agent steps", "updates", "eval", "size") else "left")
    for r in rows:
        table.add_row(
            r["id"],
            r["name"] or "",
            r["env"],
            r["preset"],
            r["status"],
            f"{r['env_steps']:,}",
            f"{r['updates']:,}",
            "" if r["eval_mean"] is None else f"{r['eval_mean']:.2f}",
            "" if r["human_normalized"] is None else f"{r['human_normalized']:.3f}",
            _reference_label(r["dreamerv2"]),
            r["updated"][:16].replace("T", " "),
            size_label(r["disk_bytes"]),
        )
    # A pipe has no width; do not squeeze the table into rich's default of 80 columns.
    (out if out.is_terminal else Console(width=240)).print(table)


@app.command()
def envs(home: Optional[Path] = Home) -> None:
    """List the environment names dreamctl knows.

    Example: [bold]dreamctl envs[/bold]
    """
    from dreamctl.envs.names import DMC_TASKS
    from dreamctl.scores import table as scores

    out.print(
        "catch and reach (built in), gym:<id> (any installed Gymnasium env with image, vector or Dict observations), "
        "the DeepMind Control Suite's tasks (the dmc extra):"
    )
    out.print(", ".join(f"dmc:{domain}_{task}" for domain, task in DMC_TASKS), highlight=False)
    out.print("and the Atari games:")
    out.print(", ".join(sorted(scores())), highlight=False)


def main() -> None:
    """Entry point: every failure ends as one sentence and an exit status, never a traceback."""
    debug = os.environ.get("DREAMCTL_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
    except DreamctlError as exc:
        if debug:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False)
        code = exc.exit_code
    except TyperException as exc:  # the command line itself is wrong: bad option, missing argument, bad value
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "dreamctl"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"error: {message.rstrip('.')}; see `{command} --help`.", markup=False, highlight=False)
        code = getattr(exc, "exit_code", 2)
    except (Abort, KeyboardInterrupt):
        err.print("error: stopped by the user.")
        code = 130
    except Exception as exc:
        if debug:
            raise
        err.print(
            f"error: unexpected {type(exc).__name__}: {exc}; rerun with DREAMCTL_DEBUG=1 to see the traceback.",
            markup=False,
            highlight=False,
        )
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
