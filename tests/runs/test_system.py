"""Device and precision: what `auto` picks, and what a trained run plays in."""

import contextlib

import pytest
import torch
import yaml
from conftest import FAST

from dreamctl.config import load_config
from dreamctl.runs import lifecycle
from dreamctl.runs.registry import Registry
from dreamctl.runs.system import inference_precision, resolve_precision
from dreamctl.tools.evaluate import load_agent


@pytest.mark.parametrize("native, emulated, expected", [(True, True, torch.bfloat16), (False, True, None)])
def test_auto_takes_bf16_only_on_a_gpu_that_computes_it(monkeypatch, native, emulated, expected):
    """A T4 or V100 can hold bf16 tensors (torch's default check says yes) but computes them by emulation."""

    def supported(including_emulation=True):
        return emulated if including_emulation else native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    assert resolve_precision("auto", torch.device("cuda")) is expected


def test_a_float16_run_plays_in_float32_without_a_gpu():
    assert inference_precision("16", torch.device("cpu")) is None
    assert inference_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert inference_precision("32", torch.device("cpu")) is None


def test_a_run_trained_in_float16_loads_for_evaluation_on_a_cpu(tmp_path):
    """`eval` and `imagine` refused such a run on a machine without a GPU ("precision 16 needs a CUDA device")."""
    home = tmp_path / "home"
    lifecycle.train(load_config("debug", ["env.name=catch", "train.steps=200", *FAST]), home=home)
    run = Registry(home).resolve("run-1")
    meta = yaml.safe_load((run.path / "run.yaml").read_text())
    meta["config"]["run"]["precision"] = "16"  # as a run trained on a GPU without bf16 records it
    (run.path / "run.yaml").write_text(yaml.safe_dump(meta))
    agent, _, step = load_agent(run, "latest", "cpu")
    assert step == 200 and agent.amp_dtype is None
