"""The RSSM's unroll, resets and the world-model loss terms."""

import pytest
import torch
import torch.nn.functional as F

from dreamctl.agent import Agent
from dreamctl.linear import use_onednn
from dreamctl.rssm import RSSM, State
from dreamctl.unroll import UnrolledLinear
from dreamctl.world_model import preprocess_image

from conftest import tiny_config


def test_observe_equals_stepping_obs_step_one_at_a_time():
    torch.manual_seed(0)
    rssm = RSSM(embed_dim=6, action_dim=3, deter=8, hidden=7, stoch=4, classes=5)
    embed, action = torch.randn(2, 5, 6), torch.randn(2, 5, 3)
    is_first = torch.tensor([[1.0, 0, 0, 1, 0], [1.0, 0, 1, 0, 0]])
    torch.manual_seed(1)
    posts = rssm.observe(embed, action, is_first)
    prior_logits = rssm.prior(posts.deter)
    torch.manual_seed(1)
    state = rssm.initial(2)
    for t in range(5):
        state = rssm.obs_step(state, action[:, t], embed[:, t], is_first[:, t])
        torch.testing.assert_close(state.deter, posts.deter[:, t])
        torch.testing.assert_close(state.stoch, posts.stoch[:, t])
        torch.testing.assert_close(rssm.prior(state.deter), prior_logits[:, t])


def test_is_first_resets_state_and_action():
    torch.manual_seed(0)
    rssm = RSSM(embed_dim=6, action_dim=3, deter=8, hidden=7, stoch=4, classes=5)
    embed = torch.randn(1, 6)
    busy = State(torch.randn(1, 8), torch.randn(1, 20), torch.zeros(1, 4, 5))
    action = torch.randn(1, 3)
    torch.manual_seed(3)
    a = rssm.obs_step(busy, action, embed, torch.ones(1))
    torch.manual_seed(3)
    b = rssm.obs_step(rssm.initial(1), torch.zeros(1, 3), embed, torch.zeros(1))
    torch.testing.assert_close(a.deter, b.deter)
    torch.testing.assert_close(a.stoch, b.stoch)


def test_image_loss_is_summed_over_pixels_and_averaged_over_batch_and_time(monkeypatch):
    torch.manual_seed(0)
    cfg = tiny_config()
    wm = Agent(cfg, (64, 64, 1), 3, True).world_model
    b, t = 2, 3
    image = torch.randint(0, 256, (b, t, 64, 64, 1), dtype=torch.uint8)
    batch = {"image": image, "action": torch.zeros(b, t, 3), "reward": torch.zeros(b, t),
             "is_first": torch.ones(b, t), "is_terminal": torch.zeros(b, t)}
    monkeypatch.setattr(wm, "decoder", ZeroImage())
    out = wm.loss(batch)
    expected = 0.5 * preprocess_image(image).square().sum((-3, -2, -1)).mean()
    torch.testing.assert_close(out.metrics["loss/image"], expected)


class ZeroImage(torch.nn.Module):
    def forward(self, feat):
        return torch.zeros(*feat.shape[:-1], 1, 64, 64)


def test_preprocess_maps_uint8_to_centred_floats_channels_first():
    image = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2, 1).expand(1, 2, 2, 3)
    x = preprocess_image(image)
    assert x.shape == (1, 3, 2, 2)
    assert x.min() == -0.5 and x.max() == 0.5


def _unroll(step, h0: torch.Tensor, length: int) -> torch.Tensor:
    h, outs = h0, []
    for t in range(length):
        h = torch.tanh(step(t, h))
        outs.append(h)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("onednn", [True, False])
def test_unrolled_linear_gives_the_gradients_of_step_by_step_autograd(onednn):
    with use_onednn(onednn):
        _check_unrolled_linear_against_step_by_step_autograd()


def _check_unrolled_linear_against_step_by_step_autograd():
    torch.manual_seed(0)
    weight = torch.randn(4, 4, requires_grad=True)
    offset = torch.randn(3, 5, 4, requires_grad=True)
    h0 = torch.randn(3, 4, requires_grad=True)
    probe = torch.randn(3, 5, 4)
    plain = _unroll(lambda t, h: F.linear(h, weight) + offset[:, t], h0, 5)
    expected = torch.autograd.grad((plain * probe).sum(), (weight, offset, h0))
    linear = UnrolledLinear(weight, offset)
    fast = _unroll(lambda t, h: linear(h), h0, 5)
    got = torch.autograd.grad((fast * probe).sum(), (weight, offset, h0))
    torch.testing.assert_close(fast, plain)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_unrolled_linear_without_autograd_records_nothing():
    weight, offset = torch.randn(4, 4, requires_grad=True), torch.randn(3, 5, 4)
    with torch.no_grad():
        linear = UnrolledLinear(weight, offset)
        out = _unroll(lambda t, h: linear(h), torch.randn(3, 4), 5)
    assert not out.requires_grad and linear.inputs == []
