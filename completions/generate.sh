#!/usr/bin/env bash
# Regenerate the shell completion scripts from the Typer app (tests/cli/test_completions.py checks they are current).
set -euo pipefail
cd "$(dirname "$0")"
for shell in bash zsh fish; do
    _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 dreamctl --show-completion "$shell" > "dreamctl.$shell"
done
