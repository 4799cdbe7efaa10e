"""dreamctl: DreamerV2 from pixels, with a run registry of safetensors checkpoints and YAML metadata.

The library's entry points: `train` and `resume` a run, `evaluate` it, `imagine` with its world model.
"""

from dreamctl.config import Config, load_config
from dreamctl.evaluate import evaluate
from dreamctl.imagine import imagine
from dreamctl.runs import resume, train

__version__ = "0.1.0"
__all__ = ["Config", "evaluate", "imagine", "load_config", "resume", "train"]
