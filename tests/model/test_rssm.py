"""The RSSM's unroll, resets and the world-model loss terms."""

import torch
from conftest import tiny_config

from dreamctl.layers import reformulations
from dreamctl.model.agent import Agent
from dreamctl.model.rssm import RSSM, State
from dreamctl.model.world_model import preprocess_image


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
    wm = Agent(cfg, {"image": (64, 64, 1)}, 3, True).world_model
    b, t = 2, 3
    image = torch.randint(0, 256, (b, t, 64, 64, 1), dtype=torch.uint8)
    batch = {
        "image": image,
        "action": torch.zeros(b, t, 3),
        "reward": torch.zeros(b, t),
        "is_first": torch.ones(b, t),
        "is_terminal": torch.zeros(b, t),
    }
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


def test_unrolled_posterior_gives_the_outputs_and_gradients_of_the_plain_step_loop():
    """`observe`'s unrolled form against the loop of `obs_step` (plain layers), in float64."""
    torch.manual_seed(0)
    rssm = RSSM(embed_dim=6, action_dim=3, deter=8, hidden=7, stoch=4, classes=5).double()
    embed = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    action = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    is_first = torch.tensor([[1.0, 0, 0, 1, 0], [1.0, 0, 1, 0, 0]], dtype=torch.float64)
    g_deter, g_logits = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 4, 5, dtype=torch.float64)
    results = []
    for fast in (True, False):
        torch.manual_seed(1)
        with reformulations(fast):
            post = rssm.observe(embed, action, is_first)
        loss = (post.deter * g_deter).sum() + (post.logits * g_logits).sum()
        grads = torch.autograd.grad(loss, [embed, action, *rssm.parameters()], allow_unused=True)
        results.append((post, grads))
    (fast_post, fast_grads), (plain_post, plain_grads) = results
    for a, b in zip(fast_post, plain_post):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert [g is None for g in fast_grads] == [g is None for g in plain_grads]  # the prior's layers are unused
    for a, b in zip(fast_grads, plain_grads):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
