"""`dreamctl train` and `dreamctl resume`: start a run or continue one, with a progress bar."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from dreamctl.cli.app import Home, app, check_new_run, check_run, checkpoint_ref
from dreamctl.cli.launch import launch, without_nproc
from dreamctl.config import PRECISIONS
from dreamctl.config_rules import MAX_SEED, check_device
from dreamctl.errors import UsageError
from dreamctl.terminal import ProgressView, err, estimate_line, finish, out, stop_signals
from dreamctl.training.launched import is_follower, launched_ranks

NPROC = typer.Option(
    1,
    "--nproc",
    min=1,
    help="Data-parallel ranks on this machine (torch.distributed: gloo on CPUs, nccl with one GPU each); the batch "
    "is split among them. Across machines, start `torchrun ... -m dreamctl train ...` instead (docs/distributed.md).",
)


def check_flags(device: str | None, precision: str | None) -> None:
    """Refuse a mistyped --device or --precision under the flag's own name (as config keys they would be named
    run.device and run.precision)."""
    if device is not None:
        check_device(device, "--device")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.")


@app.command()
def train(
    env: str = typer.Argument(
        ...,
        help="catch, catch2, reach, an Atari game (pong, ALE/Pong-v5, atari:pong), dmc:<domain>_<task>, gym:<id> or "
        "pz:<family>/<env> (PettingZoo, several agents) or smax:<map> (SMAC-style battles).",
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        "-p",
        show_default=False,
        help="Preset name (atari, atari100k, catch2, debug, dmc, humanoid, multiagent, pixels, smax, vector) or a YAML "
        "file. Default: atari for Atari games, humanoid for dmc:humanoid_* (not _CMU_), dmc for other dmc: tasks, "
        "debug for catch, catch2 for catch2, multiagent for pz: envs, smax for smax: battles, vector for envs without "
        "images, pixels otherwise.",
    ),
    steps: Optional[int] = typer.Option(
        None,
        "--steps",
        min=1,
        show_default=False,
        help="Agent steps to train (policy decisions summed over env copies and agents); one agent step is "
        "env.action_repeat frames (4 on Atari), a world of M agents takes M agent steps per tick.",
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", min=0, max=MAX_SEED, show_default=False, help="Seeds torch, numpy and the envs."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="A unique name to refer to the run by."),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Override a config key, e.g. --set model.deter=256."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:i].", show_default=False),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, 32, bf16 or 16.", show_default=False),
    nproc: int = NPROC,
    home: Optional[Path] = Home,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved config and how much memory and time the run will take here; create nothing.",
    ),
) -> None:
    """Train a new run.

    Example: [bold]dreamctl train catch --preset debug[/bold] or [bold]dreamctl train pong --preset atari100k[/bold]
    or [bold]dreamctl train catch --preset debug --nproc 2[/bold]
    """
    from dreamctl.config import load_config, override_keys
    from dreamctl.envs import check_new_run_env, resolve

    game = resolve(env)
    check_flags(device, precision)
    if "env.name" in override_keys(overrides or []):
        raise UsageError(
            f"the env is the ENV argument ({env}), which also picks the preset; name it there, not with --set."
        )
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
    check_new_run_env(cfg)
    # A user's file is recorded by its file name, so that it is never taken for the bundled preset of its stem.
    preset_label = Path(preset).name if preset.endswith((".yaml", ".yml")) else preset
    if dry_run:
        _dry_run(cfg, preset_label, nproc)
        return
    if launched_ranks() is None:  # a job's ranks hear rank 0's refusal from it (runs/lifecycle.py)
        check_new_run(name, home)
    if nproc > 1:
        raise typer.Exit(launch(nproc, without_nproc(sys.argv[1:])))
    from dreamctl.runs import (
        lifecycle as runs,  # after the checks above, so that a mistake is answered without loading torch
    )

    estimate = None if launched_ranks() else _estimate(cfg)  # ranks: rank 0 shows the job's observed speed
    if estimate is not None:
        out.print(estimate_line(estimate, cfg))
    remaining = None if estimate is None else (lambda p: estimate.seconds(cfg, p.env_steps, p.updates))
    caught, should_stop = stop_signals()
    with ProgressView(out, remaining) if not is_follower() else contextlib.nullcontext() as view:
        outcome = runs.train(
            cfg,
            home=home,
            name=name,
            preset=preset_label,
            command=["dreamctl"] + sys.argv[1:],
            progress=view,
            should_stop=should_stop,
            on_created=lambda r: _created(r, cfg),
        )
    finish(outcome, caught, "trained")


def _created(run, cfg) -> None:
    out.print(f"Training [green]{run.ref}[/green] in {run.path}")
    meta = run.meta()
    warning = _no_update_warning(cfg, int(meta["env_spec"].get("agents", 1)), int(meta["ranks"]["world_size"]))
    if warning:
        err.print(f"warning: {warning}", markup=False, highlight=False)


def _no_update_warning(cfg, agents: int, ranks: int) -> str | None:
    """What to say of a run too short to make an update after its random prefill (legal: `resume --steps` can take
    it further). Each tick adds num_envs x agents x ranks agent steps and one row to each rank's replay, and the
    first update waits for a training window's rows (`Trainer._updates_due`)."""
    from dreamctl.runs.estimate import work_left

    per_tick = cfg.env.num_envs * agents * ranks
    ticks = -(-cfg.train.steps // per_tick)
    if work_left(cfg, per_tick, 0, 0)["updates"] > 0 and ticks >= cfg.train.batch_length:
        return None
    return (
        f"train.steps ({cfg.train.steps:,}) ends the run before its first update (train.prefill is "
        f"{cfg.train.prefill:,}), so it will only play randomly; raise --steps or lower train.prefill to train the "
        "agent."
    )


def _dry_run(cfg, preset: str, ranks: int) -> None:
    """Print the resolved config, the observations, parameters, memory and time; refuse first what `train` would."""
    import yaml

    from dreamctl.envs import check_mask_observed, encoder_of, make_env, no_key_selected
    from dreamctl.runs.system import (
        check_replay_rows,
        check_whole_worlds,
        configure_torch,
        estimate_memory,
        parameter_count,
        prepare,
    )

    cfg = prepare(cfg)
    device = configure_torch(cfg)
    env = make_env(cfg.env, cfg.train.seed, every_key=True)
    spec = env.spec
    env.close()
    readers = {key: encoder_of(key, shape, cfg.env.cnn_keys, cfg.env.mlp_keys) for key, shape in spec.obs_space.items()}
    seen = {key: shape for key, shape in spec.obs_space.items() if readers[key]}
    if not seen:
        raise no_key_selected(spec, cfg.env)
    check_mask_observed(spec, list(seen), cfg.env)
    check_whole_worlds(cfg, spec.num_agents, ranks)
    check_replay_rows(cfg, spec.num_agents, ranks)
    params = parameter_count(cfg, seen, spec.action_dim, spec.discrete, spec.num_agents)
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
        f"activations {mem['activations'] / 2**30:.2f})",
        markup=False,
    )
    if ranks > 1:  # the estimate times one process; the job's progress bar shows its observed rate instead
        out.print(f"# time not estimated for {ranks} ranks (the estimate times one process); nothing was created.")
    else:
        estimate = _estimate(cfg)
        timed = "timed on this config just now" if estimate else "could not be timed here"
        line = estimate_line(estimate, cfg) if estimate else "unknown"
        out.print(f"# time {line} ({timed}); nothing was created.", markup=False)
    warning = _no_update_warning(cfg, spec.num_agents, ranks)
    if warning:
        out.print(f"# warning: {warning}", markup=False, highlight=False)


def _estimate(cfg):
    """The run's time estimate, or None where timing it failed: it only advises, so it never stops a run."""
    from dreamctl.runs.estimate import estimate_time

    try:
        return estimate_time(cfg)
    except Exception:
        if os.environ.get("DREAMCTL_DEBUG") == "1":
            raise
        return None


@app.command()
def resume(
    run: str = typer.Argument(..., help="run-<N>, <N>, the run's name, or latest."),
    steps: Optional[int] = typer.Option(
        None, "--steps", min=1, show_default=False, help="New total of agent steps (default: the run's target)."
    ),
    checkpoint: str = typer.Option(
        "latest",
        "--checkpoint",
        help="Checkpoint step to continue from, latest or best (best evaluated); from an older one, the later "
        "checkpoints are dropped.",
    ),
    overrides: Optional[List[str]] = typer.Option(
        None, "--set", help="Safe overrides only: run.device, run.checkpoint_every, run.log_every, ..."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda[:i].", show_default=False),
    nproc: int = NPROC,
    home: Optional[Path] = Home,
) -> None:
    """Continue a run exactly where its checkpoint left it (with as many ranks as trained it).

    Example: [bold]dreamctl resume run-3 --steps 20000[/bold] or [bold]dreamctl resume run-4 --nproc 2[/bold]
    """
    which = checkpoint_ref(checkpoint)
    check_flags(device, None)
    if not is_follower():  # the run's files are rank 0's: the other ranks may be on machines without them
        check_run(run, home)
    if nproc > 1:
        raise typer.Exit(launch(nproc, without_nproc(sys.argv[1:])))
    from dreamctl.runs import lifecycle as runs

    sets = list(overrides or []) + ([f"run.device={device}"] if device else [])
    caught, should_stop = stop_signals()
    with ProgressView(out) if not is_follower() else contextlib.nullcontext() as view:
        outcome = runs.resume(
            run,
            home=home,
            steps=steps,
            overrides=sets,
            checkpoint=which,
            progress=view,
            should_stop=should_stop,
            warn=lambda text: err.print(f"warning: {text}", markup=False, highlight=False),
        )
    finish(outcome, caught, "reached")


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
    if game == "catch2":
        return "catch2"
    if game.startswith("pz:"):
        return "multiagent"
    if game.startswith("smax:"):
        return "smax"
    if game.startswith("gym:") and not observes_images(load_config("vector", sets).env):
        return "vector"
    return "pixels"
