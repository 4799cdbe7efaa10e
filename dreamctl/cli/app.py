"""The Typer application and what its commands share: the --home option and the checks of run references."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dreamctl.errors import UsageError

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


def check_run(ref: str, home: Optional[Path]) -> None:
    """Find the run before loading torch, so that a wrong reference is answered at once."""
    from dreamctl.runs.registry import Registry

    Registry(home).resolve(ref)


def check_new_run(name: Optional[str], home: Optional[Path]) -> None:
    """Refuse a name a new run may not take, or a --home that cannot hold a registry, before loading torch (and
    before starting any rank)."""
    from dreamctl.runs.registry import Registry

    registry = Registry(home)
    registry.check_home()
    registry.check_new_name(name)


def checkpoint_ref(text: str) -> str | int:
    if text in ("latest", "best"):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise UsageError(f"--checkpoint must be a step number, latest or best, got '{text}'.")
