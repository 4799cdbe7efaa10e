"""The shell completion scripts in completions/ are the ones the Typer app generates now."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BASH_COMPLETION_ENV, dreamctl_command

FOLDER = Path(__file__).resolve().parents[2] / "completions"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_current(shell):
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    generated = subprocess.run(
        dreamctl_command() + ["--show-completion", shell], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert (FOLDER / f"dreamctl.{shell}").read_text() == generated, "run completions/generate.sh"


def test_completion_answers_commands_and_options():
    env = {**os.environ, **BASH_COMPLETION_ENV}
    out = subprocess.run(dreamctl_command(), capture_output=True, text=True, env=env).stdout.split()
    assert "--preset" in out and "--precision" in out
