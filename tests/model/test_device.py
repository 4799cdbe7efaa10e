"""The update and the policy on a device other than the CPU, with no value read back to the host.

On a GPU a read such as `int(tensor)` makes the CPU wait until the GPU has finished all work queued so far, so
the next update cannot be queued while the GPU computes this one. The `meta` device holds shapes but no values,
and any read fails there; it also takes the code paths that CUDA takes (the CPU's oneDNN linears and one-hot
gathers are for the CPU only), which no other test runs on this machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_config

from dreamctl.config import load_config
from dreamctl.model.agent import Agent
from dreamctl.model.optim import Optimizer
from dreamctl.training.replay import Replay


def _backward_only(self: Optimizer, loss: torch.Tensor) -> torch.Tensor:
    """Optimizer.step without torch's fused Adam and foreach clipping, which have no meta kernels."""
    loss.backward()
    self.opt.zero_grad(set_to_none=True)
    return loss.detach()


# The paper's sizes take layer routes the tiny one does not; continuous actions train the actor through the dynamics.
@pytest.mark.parametrize("preset, discrete", [("tiny", True), ("tiny", False), ("atari", True)])
def test_update_and_policy_read_nothing_back_to_the_host(monkeypatch, preset, discrete):
    monkeypatch.setattr(Optimizer, "step", _backward_only)
    cfg = tiny_config() if preset == "tiny" else load_config(preset, ["env.name=pong"])
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, discrete, device="meta")
    sample = {key: value.numpy() for key, value in random_batch(cfg).items()}
    if discrete:
        sample["action"] = sample["action"].argmax(-1).astype(np.int32)  # as the replay stores it
    batch = Replay(100, 1, {"image": (64, 64, 1)}, 3, discrete).to_torch(sample, agent.device)
    for _ in range(2):
        metrics = agent.train_step(batch)
    assert metrics["loss/model"].device.type == "meta" and metrics["loss/actor"].shape == ()

    state = agent.initial_act_state(4)
    obs = torch.zeros(4, 64, 64, 1, dtype=torch.uint8, device="meta")
    action, state = agent.policy({"image": obs}, torch.ones(4, dtype=torch.bool, device="meta"), state)
    assert action.shape == (4, 3) and action.device.type == "meta"


def _optimizer_pair(scale: float) -> tuple[torch.nn.Linear, Optimizer, torch.nn.Linear, Optimizer]:
    torch.manual_seed(0)
    plain, scaled = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    scaled.load_state_dict(plain.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    return (plain, Optimizer(plain, 1e-2, 1e-5, 100.0, 0.0), scaled, Optimizer(scaled, 1e-2, 1e-5, 100.0, 0.0, scaler))


def test_loss_scaling_for_float16_steps_as_the_unscaled_optimizer_and_skips_overflows():
    """Precision 16 (GPUs without bf16, such as the paper's V100) scales the loss; the clipping, the reported
    norm and the step must see the true gradients, and a step whose gradients overflowed must not move."""
    x = torch.randn(8, 4)
    plain, plain_opt, scaled, scaled_opt = _optimizer_pair(2.0**12)
    for _ in range(3):
        norm = plain_opt.step(plain(x).square().mean())
        scaled_norm = scaled_opt.step(scaled(x).square().mean())
        torch.testing.assert_close(scaled_norm, norm)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)

    before = [p.detach().clone() for p in scaled.parameters()]
    scaled_opt.step(scaled(x).sum() * float("inf"))
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))
    assert scaled_opt.scaler.get_scale() == 2.0**11


def test_the_loss_scale_and_its_growth_count_survive_a_checkpoint():
    """A float16 run resumed with the default scale would skip or shrink other steps than the uninterrupted run."""
    x = torch.randn(8, 4)
    _, _, scaled, scaled_opt = _optimizer_pair(2.0**12)
    scaled_opt.step(scaled(x).sum() * float("inf"))  # an overflow halves the scale
    for _ in range(2):
        scaled_opt.step(scaled(x).square().mean())  # two good steps towards the next growth
    saved = scaled_opt.state_tensors("optim/m/")
    *_, fresh_opt = _optimizer_pair(2.0**16)
    fresh_opt.load_state_tensors(saved, "optim/m/")
    assert fresh_opt.scaler.state_dict() == scaled_opt.scaler.state_dict()
    assert fresh_opt.scaler.get_scale() == 2.0**11 and fresh_opt.scaler.state_dict()["_growth_tracker"] == 2
