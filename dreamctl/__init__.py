"""dreamctl: DreamerV2 from pixels, with a run registry of safetensors checkpoints and YAML metadata.

The library's entry points: `train` and `resume` a run, `evaluate` it, `imagine` with its world model.
They are imported on first use, so that the command line's `--help`, `list`, `envs` and shell completion start
without loading torch (a second on a 2-core machine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dreamctl.config import Config, load_config
    from dreamctl.runs.lifecycle import resume, train
    from dreamctl.tools.dream_video import imagine
    from dreamctl.tools.evaluate import evaluate

__version__ = "0.1.0"

_HOMES = {
    "Config": "dreamctl.config",
    "load_config": "dreamctl.config",
    "evaluate": "dreamctl.tools.evaluate",
    "imagine": "dreamctl.tools.dream_video",
    "resume": "dreamctl.runs.lifecycle",
    "train": "dreamctl.runs.lifecycle",
}
__all__ = ["Config", "evaluate", "imagine", "load_config", "resume", "train"]  # the keys of _HOMES


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dreamctl' has no attribute '{name}'")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
