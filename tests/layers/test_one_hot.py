"""Linear layers reading one-hot columns as gathered weight rows: the same maths as the product, where it is taken."""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamctl.layers import linear as linear_module
from dreamctl.layers.linear import Linear, use_onednn
from dreamctl.layers.one_hot import OneHotColumns, OneHotFeature, gathers_active, use_gathers
from dreamctl.model.agent import Agent
from dreamctl.model.rssm import RSSM

ROUTES = [False] + ([True] if linear_module._OP is not None else [])


def random_ones(lead: tuple[int, ...], groups: int, classes: int) -> OneHotColumns:
    return OneHotColumns.of(F.one_hot(torch.randint(0, classes, (*lead, groups)), classes).flatten(-2).float(), classes)


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 5),
    classes=st.integers(1, 8),
    rest=st.integers(0, 7),
    outputs=st.integers(1, 6),
    lead=st.sampled_from([(1,), (5,), (2, 3)]),
    bias=st.booleans(),
    trained=st.booleans(),
)
def test_one_hot_linear_equals_the_product_with_the_written_out_input(
    groups, classes, rest, outputs, lead, bias, trained
):
    """float64, so any difference is maths, not rounding: outputs and the gradients of weight, bias and rest."""
    torch.manual_seed(groups * 1009 + classes * 101 + rest * 11 + outputs)
    layer = Linear(groups * classes + rest, outputs, bias=bias).double().requires_grad_(trained)
    feature = OneHotFeature(
        random_ones(lead, groups, classes), torch.randn(*lead, rest, dtype=torch.float64, requires_grad=trained)
    )
    dense = feature.dense().detach().requires_grad_(trained)
    got, expected = layer(feature), F.linear(dense, layer.weight, layer.bias)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if trained:
        probe = torch.randn_like(expected)
        params = [feature.rest, *layer.parameters()]
        got_grads = torch.autograd.grad(got, params, probe)
        expected_grads = torch.autograd.grad(expected, [dense, *layer.parameters()], probe)
        torch.testing.assert_close(got_grads[0], expected_grads[0][..., groups * classes :], rtol=1e-12, atol=1e-12)
        for g, e in zip(got_grads[1:], expected_grads[1:]):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("onednn", ROUTES)
def test_float32_one_hot_linear_matches_the_product_on_either_linear_route(onednn):
    torch.manual_seed(0)
    layer = Linear(32 * 8 + 20, 24)
    feature = OneHotFeature(random_ones((50,), 8, 32), torch.randn(50, 20, requires_grad=True))
    dense = feature.dense().detach().requires_grad_()
    with use_onednn(onednn):
        got = layer(feature)
        grads = torch.autograd.grad(got.square().sum(), [feature.rest, layer.weight, layer.bias])
    expected = F.linear(dense, layer.weight, layer.bias)
    expected_grads = torch.autograd.grad(expected.square().sum(), [dense, layer.weight, layer.bias])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], expected_grads[0][:, 256:], rtol=1e-5, atol=1e-5)
    for g, e in zip(grads[1:], expected_grads[1:]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


def test_one_hot_columns_find_every_one_and_concatenate():
    torch.manual_seed(0)
    latent = F.one_hot(torch.randint(0, 32, (7, 32)), 32).flatten(-2).float()
    action = F.one_hot(torch.randint(0, 18, (7,)), 18).float()
    ones = OneHotColumns.of(latent, 32)
    assert ones.width == 1024 and ones.index.dtype == torch.int64
    torch.testing.assert_close(ones.dense(), latent, rtol=0, atol=0)
    both = ones.then(OneHotColumns.of(action, 18))
    torch.testing.assert_close(both.dense(), torch.cat([latent, action], -1), rtol=0, atol=0)


def test_gathered_rows_kept_without_autograd_follow_changes_of_the_weight():
    torch.manual_seed(0)
    layer = Linear(4 * 4 + 3, 5)
    feature = OneHotFeature(random_ones((6,), 4, 4), torch.randn(6, 3))
    with torch.no_grad():
        first = layer(feature)
        layer.weight.mul_(2.0)  # an optimiser step changes the weight in place
        second = layer(feature)
    torch.testing.assert_close(second, F.linear(feature.dense(), layer.weight, layer.bias))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("discrete", [True, False])
def test_imagination_step_with_located_ones_equals_the_plain_step(discrete):
    """The prior step's input layer reads concat(z, a) by gathers: z's ones always, a's when actions are one-hot."""
    torch.manual_seed(0)
    rssm = RSSM(embed_dim=6, action_dim=3, deter=8, hidden=7, stoch=4, classes=5)
    state = rssm.initial(6)._replace(stoch=F.one_hot(torch.randint(0, 5, (6, 4)), 5).flatten(-2).float())
    action = F.one_hot(torch.randint(0, 3, (6,)), 3).float() if discrete else torch.rand(6, 3) * 2 - 1
    ones = OneHotColumns.of(state.stoch, 5)
    if discrete:
        ones = ones.then(OneHotColumns.of(action, 3))
    with torch.no_grad():
        plain, gathered = rssm.img_step(state, action), rssm.img_step(state, action, ones)
    torch.testing.assert_close(gathered.deter, plain.deter)
    torch.testing.assert_close(gathered.logits, plain.logits)


def test_gathers_are_taken_in_float32_on_the_cpu_outside_autocast_only():
    x = torch.zeros(2, 3)
    assert gathers_active(x)
    assert not gathers_active(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gathers_active(x)
    with use_gathers(False):
        assert not gathers_active(x)


def test_imagination_hands_its_heads_one_hot_features_only_where_gathers_are_taken():
    torch.manual_seed(0)
    cfg = tiny_config()
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    batch = random_batch(cfg)
    with torch.no_grad():
        post = agent.world_model.loss(batch).post
    traj = agent.behavior.imagine(agent.world_model, post)
    assert isinstance(traj.feat, OneHotFeature)
    torch.testing.assert_close(traj.feat.dense()[0], post.feat().flatten(0, 1), rtol=0, atol=0)
    with use_gathers(False):
        assert isinstance(agent.behavior.imagine(agent.world_model, post).feat, torch.Tensor)
    assert agent.train_step(batch)["loss/actor"].isfinite()
