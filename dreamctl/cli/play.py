"""`dreamctl eval` and `dreamctl imagine`: play a trained agent, and show its world model's dreams."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dreamctl.cli.app import Home, app, check_run, checkpoint_ref
from dreamctl.config_rules import MAX_SEED
from dreamctl.terminal import episodes_label, out, print_json


@app.command("eval")
def eval_(
    run: str = typer.Argument(..., help="run-<N>, <N>, the run's name, or latest."),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Episodes to play."),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="A checkpoint step, latest or best."),
    video: Optional[Path] = typer.Option(None, "--video", help="Write the first episode to this .mp4 or .gif."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the evaluation envs and policy."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    sample: bool = typer.Option(
        False, "--sample", help="Sample the actor's actions instead of taking its mode (MAMBA's SMAC protocol)."
    ),
    home: Optional[Path] = Home,
) -> None:
    """Play evaluation episodes under the run's own env protocol.

    The greedy policy plays them, or with --sample the sampling one (MAMBA's SMAC protocol).

    Example: [bold]dreamctl eval run-3 --episodes 20 --video play.mp4[/bold]
    """
    which = checkpoint_ref(checkpoint)
    check_run(run, home)
    from dreamctl.tools.evaluate import evaluate

    result = evaluate(
        run, home=home, episodes=episodes, checkpoint=which, video=video, seed=seed, device=device, sample=sample
    )
    if as_json:
        keys = (
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
        )
        print_json({k: result[k] for k in keys})
        return
    out.print(
        f"[green]{result['run']}[/green] at step {result['checkpoint_step']:,}: "
        f"{episodes_label(result['episodes'], result['policy'])}, "
        f"return {result['mean']:.2f} ± {result['std']:.2f} (min {result['min']:g}, max {result['max']:g})"
    )
    for agent in result["agents"] or []:
        out.print(f"agent {agent['agent']}: return {agent['mean']:.2f}")
    if result["win_rate"] is not None:
        out.print(f"battles won: {100 * result['win_rate']:.0f}%")
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
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the envs and the model's sampling."),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="A checkpoint step, latest or best."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    home: Optional[Path] = Home,
) -> None:
    """Write the world model's open-loop dream beside reality.

    The video's rows are truth, model and error; for vector observations a figure also draws truth vs dream per
    dimension.

    Example: [bold]dreamctl imagine run-3 --out dream.mp4 --context 5 --horizon 45[/bold]
    """
    which = checkpoint_ref(checkpoint)
    check_run(run, home)
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
        f"dreamed, {result['samples']} samples{agents_label(result['agents'])}); dream MSE {result['dream_mse']:.4f}"
    )
    if result["figure"] and result["figure"] != result["out"]:
        out.print(f"wrote {result['figure']}: {result['panels']} panels, one per vector dimension")


def agents_label(agents: int) -> str:
    return f" of {agents} agents" if agents > 1 else ""
