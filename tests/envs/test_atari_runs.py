"""Atari through the whole stack: the paper-config update on real Pong frames, and the protocol in run.yaml."""

import torch
import yaml
from conftest import run_cli

from benchmarks.common import random_play_batch
from dreamctl.config import load_config
from dreamctl.model.agent import Agent


def test_one_paper_config_update_on_real_pong_frames_is_finite():
    cfg = load_config("atari", ["env.name=pong"])
    batch, spec = random_play_batch(cfg, torch.device("cpu"))
    assert batch["image"].shape == (16, 50, 64, 64, 1) and batch["image"].dtype == torch.uint8
    assert batch["image"].float().std() > 0 and spec.action_dim == 6 and spec.discrete
    torch.manual_seed(0)
    agent = Agent(cfg, spec.obs_space, spec.action_dim, spec.discrete)
    before = [p.detach().clone() for p in agent.world_model.parameters()]
    metrics = agent.train_step(batch)
    for key in ("loss/image", "loss/reward", "loss/discount", "loss/kl", "loss/model", "loss/actor", "loss/critic"):
        assert torch.isfinite(metrics[key]), key
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.world_model.parameters()))


PROTOCOL_KEYS = (
    "image_size",
    "grayscale",
    "action_repeat",
    "sticky_actions",
    "noop_max",
    "max_frames",
    "action_set",
    "life_loss",
    "resize",
    "max_pool",
    "reward_clip",
)


def test_run_yaml_of_a_pong_run_holds_every_protocol_setting_and_a_resume_starts_new_episodes(home):
    run_cli("train", "pong", "--preset", "atari", "--steps", "200", home=home, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    env = meta["config"]["env"]
    assert meta["env"] == "pong" and meta["preset"] == "atari" and env["name"] == "pong"
    expected = {
        "image_size": 64,
        "grayscale": True,
        "action_repeat": 4,
        "sticky_actions": 0.25,
        "noop_max": 30,
        "max_frames": 108000,
        "action_set": "minimal",
        "life_loss": False,
        "resize": "area",
        "max_pool": True,
        "reward_clip": False,
    }
    assert {k: env[k] for k in PROTOCOL_KEYS} == expected
    assert meta["env_spec"] == {
        "obs": {"image": [64, 64, 1]},
        "action_dim": 6,
        "discrete": True,
        "action_repeat": 4,
        "agents": 1,
    }
    assert meta["progress"]["env_steps"] == 200 and meta["progress"]["frames"] == 800
    assert meta["status"] == "finished"

    # ALE's vector env cannot save its state: a resume starts new episodes, says so, and goes on counting.
    run_cli("resume", "run-1", "--steps", "300", home=home, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    resumed = meta["history"][-1]
    assert resumed["event"] == "resumed" and resumed["from_step"] == 200 and resumed["env_restored"] is False
    assert resumed["note"] == "the env cannot save its state, so new episodes were started"
    assert meta["progress"]["env_steps"] == 300 and meta["progress"]["frames"] == 1200 and meta["status"] == "finished"
