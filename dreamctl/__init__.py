"""dreamctl: DreamerV2 from pixels, with a run registry of safetensors checkpoints and YAML metadata.

The library's entry points: `train` and `resume` a run, `evaluate` it, `imagine` with its world model.
They are imported on first use, so that the command line's `--help`, `list`, `envs` and shell completion start
without loading torch (a second on a 2-core machine).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dreamctl.config import Config, load_config
    from dreamctl.evaluate import evaluate
    from dreamctl.imagine import imagine
    from dreamctl.runs import resume, train

__version__ = "0.1.0"

_HOMES = {"Config": "dreamctl.config", "load_config": "dreamctl.config", "evaluate": "dreamctl.evaluate",
          "imagine": "dreamctl.imagine", "resume": "dreamctl.runs", "train": "dreamctl.runs"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dreamctl' has no attribute '{name}'")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps `dreamctl.evaluate` and `dreamctl.imagine` naming the functions: importing the submodules of the same
    names would otherwise rebind them to the modules, as the import system sets each submodule on its package."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
