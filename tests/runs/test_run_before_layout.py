"""A run written by dreamctl before its modules moved into packages still loads, evaluates and resumes.

tests/data/run-before-layout holds a tiny catch run (2 env copies, 240 agent steps, one checkpoint) written by
that older code, with its run.yaml, replay chunks and the sha256 of its checkpoint.
"""

import json
import shutil
from pathlib import Path

import torch
import yaml
from conftest import run_cli
from safetensors.torch import load_file

from dreamctl.runs.registry import Registry
from dreamctl.tools.evaluate import load_agent

RUN = Path(__file__).resolve().parents[1] / "data" / "run-before-layout"


def copied_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(RUN, home)
    return home


def test_its_checkpoint_loads_every_tensor_under_todays_names(tmp_path):
    home = copied_home(tmp_path)
    agent, meta, step = load_agent(Registry(home).resolve("premove"), "latest", "cpu")
    stored = load_file(home / "runs" / "run-1" / meta["checkpoints"][-1]["file"])
    weights = {k[len("agent/") :]: v for k, v in stored.items() if k.startswith("agent/")}
    assert step == 240 and set(weights) == set(agent.state_dict())
    for name, value in agent.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_it_evaluates_and_resumes_through_the_cli(tmp_path):
    home = copied_home(tmp_path)
    result = json.loads(run_cli("eval", "premove", "--episodes", "2", "--json", home=home, check=True).stdout)
    assert result["checkpoint_step"] == 240 and len(result["returns"]) == 2
    assert all(-10 <= r <= 10 for r in result["returns"])  # catch: 10 balls, +-1 each
    run_cli("resume", "premove", "--steps", "300", home=home, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["status"] == "finished" and meta["progress"]["env_steps"] == 300
    assert meta["checkpoints"][-1]["step"] == 300
    assert meta["history"][-1]["event"] == "resumed" and meta["history"][-1]["env_restored"] is True
