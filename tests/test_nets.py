"""Shapes, parameter counts and the numerics of the building blocks."""

import math
from typing import Callable

import pytest
import torch

from dreamctl.agent import Agent
from dreamctl.config import load_config
from dreamctl.conv_layers import ActingConv2d, PatchConv2d, SpaceToDepthConv2d, channels_last_act
from dreamctl.deconv_layers import BiasSumConvTranspose2d, ConvTranspose1x1, SubpixelConvTranspose2d
from dreamctl.nets import MLP, Decoder, Encoder, LayerNormGRUCell, OneHotDist, TruncNormalDist

from conftest import tiny_config


@pytest.fixture(scope="module")
def atari_agent():
    torch.manual_seed(0)
    return Agent(load_config("atari"), (64, 64, 1), 6, True)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_paper_architecture(atari_agent):
    wm, beh = atari_agent.world_model, atari_agent.behavior
    expected = {"encoder": 1.55e6, "rssm": 5.66e6, "decoder": 10.50e6, "reward": 1.13e6, "discount": 1.13e6,
                "world_model": 19.97e6, "actor": 1.13e6, "critic": 1.13e6}
    actual = {"encoder": count(wm.encoder), "rssm": count(wm.rssm), "decoder": count(wm.decoder),
              "reward": count(wm.reward_head), "discount": count(wm.discount_head), "world_model": count(wm),
              "actor": count(beh.actor), "critic": count(beh.critic)}
    for name, value in expected.items():
        assert abs(actual[name] - value) / value < 0.02, (name, actual[name], value)


def test_atari_module_shapes(atari_agent):
    wm = atari_agent.world_model
    image = torch.zeros(2, 3, 1, 64, 64)
    embed = wm.encoder(image)
    assert embed.shape == (2, 3, 1536)
    post = wm.rssm.observe(embed, torch.zeros(2, 3, 6), torch.ones(2, 3))
    prior_logits = wm.rssm.prior(post.deter)
    assert post.deter.shape == (2, 3, 600) and post.stoch.shape == (2, 3, 1024)
    assert post.logits.shape == prior_logits.shape == (2, 3, 32, 32)
    feat = post.feat()
    assert feat.shape == (2, 3, 1624)
    assert wm.decoder(feat).shape == (2, 3, 1, 64, 64)
    assert wm.reward(feat).shape == (2, 3) and wm.continuation(feat).shape == (2, 3)
    assert atari_agent.behavior.actor(feat).sample().shape == (2, 3, 6)
    assert atari_agent.behavior.critic(feat).shape == (2, 3, 1)


def test_encoder_and_decoder_spatial_sizes():
    enc = Encoder(3, 4)
    assert enc(torch.zeros(5, 3, 64, 64)).shape == (5, 4 * 8 * 4)
    dec = Decoder(10, 4, 3)
    assert dec(torch.zeros(5, 10)).shape == (5, 3, 64, 64)


def assert_fast_layer_equals_plain(fast: torch.nn.Module, plain: torch.nn.Module,
                                   make_input: Callable[[], torch.Tensor]) -> None:
    """Same outputs and same gradients (input, weight, bias) as the plain torch layer, with a non-zero bias.
    A fast layer with `elu_input` is compared with the plain layer after an ELU (it overwrites its input).

    Compared in float64, so the check is of the maths, not of float32 summation order (a weight gradient sums
    thousands of terms, whose float32 rounding differs between formulations by more than any fixed tolerance).
    """
    fast.double()
    plain.double().load_state_dict(fast.state_dict())
    torch.nn.init.normal_(plain.bias)
    fast.bias.data.copy_(plain.bias)
    x = make_input().double().requires_grad_(True)
    if getattr(fast, "elu_input", False):
        y_fast, y_plain = fast(x.clone()), plain(torch.nn.functional.elu(x))
    else:
        y_fast, y_plain = fast(x), plain(x)
    assert y_fast.shape == y_plain.shape
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y_fast)
    for a, b in zip(torch.autograd.grad(y_fast, [x, fast.weight, fast.bias], g),
                    torch.autograd.grad(y_plain, [x, plain.weight, plain.bias], g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fast_first_deconv_equals_the_plain_transposed_conv():
    torch.manual_seed(0)
    assert_fast_layer_equals_plain(ConvTranspose1x1(96, 24, 5, stride=2), torch.nn.ConvTranspose2d(96, 24, 5, stride=2),
                                   lambda: torch.randn(7, 96, 1, 1))


@pytest.mark.parametrize("cin, size, channels_last", [(1, 64, True), (3, 64, False), (3, 9, True), (2, 11, False)])
def test_space_to_depth_conv_equals_the_plain_conv(cin, size, channels_last):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert_fast_layer_equals_plain(SpaceToDepthConv2d(cin, 6, 4, stride=2), torch.nn.Conv2d(cin, 6, 4, stride=2),
                                   lambda: torch.randn(3, cin, size, size).contiguous(memory_format=layout))


@pytest.mark.parametrize("channels_last", [True, False])
def test_acting_conv_equals_the_plain_conv_with_and_without_gradients(channels_last):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert_fast_layer_equals_plain(ActingConv2d(6, 8, 4, stride=2), torch.nn.Conv2d(6, 8, 4, stride=2),
                                   lambda: torch.randn(3, 6, 14, 14).contiguous(memory_format=layout))
    fast, plain = ActingConv2d(6, 8, 4, stride=2).double(), torch.nn.Conv2d(6, 8, 4, stride=2).double()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(3, 6, 14, 14, dtype=torch.float64).contiguous(memory_format=layout)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cin, cout, size", [(192, 384, 6), (3, 5, 9), (4, 2, 4)])
def test_patch_conv_equals_the_plain_conv(cin, cout, size):
    torch.manual_seed(0)
    assert_fast_layer_equals_plain(PatchConv2d(cin, cout, 4, stride=2), torch.nn.Conv2d(cin, cout, 4, stride=2),
                                   lambda: torch.randn(3, cin, size, size))


@pytest.mark.parametrize("cin, cout, k, size", [(48, 1, 6, 30), (16, 3, 6, 7), (8, 4, 5, 5), (6, 2, 4, 3)])
def test_subpixel_deconv_equals_the_plain_transposed_conv(cin, cout, k, size):
    torch.manual_seed(0)
    assert_fast_layer_equals_plain(SubpixelConvTranspose2d(cin, cout, k, stride=2),
                                   torch.nn.ConvTranspose2d(cin, cout, k, stride=2),
                                   lambda: torch.randn(5, cin, size, size))


BF16_CASES = {
    "space_to_depth": (lambda: SpaceToDepthConv2d(1, 8, 4, stride=2), lambda: torch.nn.Conv2d(1, 8, 4, stride=2),
                       (4, 1, 16, 16)),
    "patch": (lambda: PatchConv2d(16, 32, 4, stride=2), lambda: torch.nn.Conv2d(16, 32, 4, stride=2), (4, 16, 6, 6)),
    "first_deconv": (lambda: ConvTranspose1x1(32, 16, 5, stride=2),
                     lambda: torch.nn.ConvTranspose2d(32, 16, 5, stride=2), (4, 32, 1, 1)),
    "bias_sum_deconv": (lambda: BiasSumConvTranspose2d(16, 8, 5, stride=2),
                        lambda: torch.nn.ConvTranspose2d(16, 8, 5, stride=2), (4, 16, 5, 5)),
    "bias_sum_deconv_by_products": (lambda: BiasSumConvTranspose2d(16, 8, 5, stride=2, forward_by_products=True),
                                    lambda: torch.nn.ConvTranspose2d(16, 8, 5, stride=2), (4, 16, 5, 5)),
    "subpixel_deconv": (lambda: SubpixelConvTranspose2d(8, 1, 6, stride=2),
                        lambda: torch.nn.ConvTranspose2d(8, 1, 6, stride=2), (9, 8, 13, 13)),
}


@pytest.mark.parametrize("case", sorted(BF16_CASES))
def test_fast_layers_under_bf16_autocast_agree_with_the_exact_layer(case):
    """Under bf16 autocast every fast layer still gives the plain layer's maths, to bf16's precision."""
    make_fast, make_plain, shape = BF16_CASES[case]
    torch.manual_seed(0)
    fast, plain = make_fast(), make_plain().double()
    plain.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    x = torch.randn(*shape)
    x64 = x.double().requires_grad_(True)
    y64 = plain(torch.nn.functional.elu(x64) if getattr(fast, "elu_input", False) else x64)
    xb = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(xb * 1.0)
    assert y.shape == y64.shape
    g = torch.randn_like(y64)
    got = torch.autograd.grad(y, [xb, fast.weight], g.to(y.dtype))
    expected = torch.autograd.grad(y64, [x64, plain.weight], g)
    for a, b in zip([y, *got], [y64, *expected]):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b.detach(), rtol=0, atol=0.03 * scale)


def test_in_place_elu_gives_elu_and_its_gradient_and_refuses_a_second_backward():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    y = channels_last_act(x * 1.0)  # an intermediate, as conv outputs are: the leaf cannot be overwritten
    torch.testing.assert_close(y, torch.nn.functional.elu(x), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(y, x, g, retain_graph=True)
    (expected,) = torch.autograd.grad(torch.nn.functional.elu(x), x, g)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y, x, g)


def test_layer_norm_gru_follows_dreamerv2_equations():
    torch.manual_seed(0)
    cell = LayerNormGRUCell(5, 4)
    torch.nn.init.normal_(cell.norm.weight)
    torch.nn.init.normal_(cell.norm.bias)
    x, h = torch.randn(3, 5), torch.randn(3, 4)
    parts = cell.linear(torch.cat([x, h], -1))
    parts = torch.nn.functional.layer_norm(parts, (12,), cell.norm.weight, cell.norm.bias, eps=1e-3)
    reset, cand, update = parts[:, :4], parts[:, 4:8], parts[:, 8:]
    reset, update = torch.sigmoid(reset), torch.sigmoid(update - 1)
    expected = update * torch.tanh(reset * cand) + (1 - update) * h
    torch.testing.assert_close(cell(x, h), expected)


def test_straight_through_sample_is_one_hot_and_carries_softmax_gradient():
    torch.manual_seed(0)
    logits = torch.randn(64, 8, requires_grad=True)
    sample = OneHotDist(logits).sample()
    assert torch.all(sample.detach().sum(-1) == 1) and torch.all((sample.detach() == 0) | (sample.detach() == 1))
    weights = torch.randn(64, 8)
    (grad,) = torch.autograd.grad((sample * weights).sum(), logits)
    probs = logits.softmax(-1)
    (expected,) = torch.autograd.grad((probs * weights).sum(), logits)
    torch.testing.assert_close(grad, expected)


def test_one_hot_samples_follow_the_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0]).expand(200_000, 3)
    freq = OneHotDist(logits).sample().detach().mean(0)
    torch.testing.assert_close(freq, torch.tensor([0.0, 1.0, 2.0]).softmax(-1), atol=5e-3, rtol=0)


def test_truncated_normal_stays_inside_bounds_and_is_normalised():
    torch.manual_seed(0)
    mean, std = torch.full((400_000, 1), 0.7), torch.full((400_000, 1), 0.6)
    dist = TruncNormalDist(mean, std)
    x = dist.sample()
    assert x.min() > -1 and x.max() < 1
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 20001)[:, None]
    density = TruncNormalDist(torch.full((1, 1), 0.7), torch.full((1, 1), 0.6)).log_prob(grid).exp()
    assert abs(torch.trapezoid(density, grid[:, 0]).item() - 1.0) < 1e-3
    entropy_mc = -dist.log_prob(x).mean()
    assert abs(entropy_mc.item() - dist.entropy()[0].item()) < 0.01


def test_truncated_normal_sample_is_reparameterised():
    mean = torch.zeros(1000, 2, requires_grad=True)
    TruncNormalDist(mean, torch.full((1000, 2), 0.3)).sample().sum().backward()
    assert mean.grad.abs().sum() > 0


def test_mlp_layers():
    mlp = MLP(7, 3, layers=2, units=16)
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 16), (16, 16), (16, 3)]
    assert all(torch.all(m.bias == 0) for m in linears)
    bound = math.sqrt(6 / (7 + 16))
    assert linears[0].weight.abs().max() <= bound


@pytest.mark.parametrize("by_products", [False, True])
@pytest.mark.parametrize("cin, cout, k, size, channels_last", [(12, 6, 5, 5, True), (8, 4, 6, 7, True),
                                                                 (8, 4, 6, 7, False)])
def test_bias_sum_deconv_equals_the_plain_transposed_conv(cin, cout, k, size, channels_last, by_products):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert_fast_layer_equals_plain(BiasSumConvTranspose2d(cin, cout, k, stride=2, forward_by_products=by_products),
                                   torch.nn.ConvTranspose2d(cin, cout, k, stride=2),
                                   lambda: torch.randn(3, cin, size, size).contiguous(memory_format=layout))


def _plain_encoder(encoder: Encoder) -> torch.nn.Sequential:
    """The encoder as torch's own layers, with its weights: convs and ELUs one after another."""
    layers = []
    for conv in encoder.convs:
        plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 4, stride=2)
        plain.load_state_dict(conv.state_dict())
        layers += [plain, torch.nn.ELU()]
    return torch.nn.Sequential(*layers, torch.nn.Flatten())


@pytest.mark.parametrize("channels, batch, slices", [(1, 5, 8), (3, 5, 2), (1, 1, 8)])
def test_encoder_with_its_recomputed_stem_equals_the_plain_layers(channels, batch, slices, monkeypatch):
    """Batch 5 in 8 or 2 slices: the stem's input gradient is made one row at a time, or in uneven slices."""
    monkeypatch.setattr("dreamctl.conv_layers.BACKWARD_SLICES", slices)
    torch.manual_seed(0)
    encoder = Encoder(channels, 4).double()
    plain = _plain_encoder(encoder).double()
    for p, q in zip(encoder.parameters(), plain.parameters()):
        torch.nn.init.normal_(p, std=0.3)
        q.data.copy_(p.data)
    image = torch.rand(batch, channels, 64, 64, dtype=torch.float64) - 0.5
    y = encoder(image)
    expected = plain(image)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, list(encoder.parameters()), g),
                    torch.autograd.grad(expected, list(plain.parameters()), g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_encoder_training_keeps_no_copy_of_its_first_activation():
    """The first activation (31x31 per image) is computed again in the backward pass, not saved for it."""
    encoder = Encoder(1, 4)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        encoder(torch.rand(3, 1, 64, 64) - 0.5).sum().backward()
    assert saved and not any(shape[-2:] == (31, 31) for shape in saved)
    encoder.recompute_stem = False
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        encoder(torch.rand(3, 1, 64, 64) - 0.5).sum().backward()
    assert any(shape[-2:] == (31, 31) for shape in saved)  # the check can see it when it is there


def test_encoder_under_bf16_autocast_agrees_with_the_exact_layers():
    torch.manual_seed(0)
    encoder = Encoder(1, 4)
    plain = _plain_encoder(encoder).double()
    image = torch.rand(6, 1, 64, 64) - 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = encoder(image)
    expected = plain(image.double())
    g = torch.randn_like(expected)
    got = torch.autograd.grad(y, list(encoder.parameters()), g.to(y.dtype))
    exact = torch.autograd.grad(expected, list(plain.parameters()), g)
    for a, b in zip([y, *got], [expected, *exact]):
        torch.testing.assert_close(a.double(), b.detach(), rtol=0, atol=0.03 * b.abs().max().item())


def test_on_the_cpu_a_bf16_run_acts_in_float32():
    """Acting takes the float32 weights as they are (autocast would cast them again at every step)."""
    torch.manual_seed(0)
    exact = Agent(tiny_config(), (64, 64, 1), 3, True)
    bf16 = Agent(tiny_config("run.precision=bf16"), (64, 64, 1), 3, True)
    bf16.load_state_dict(exact.state_dict())
    obs = torch.randint(0, 256, (4, 64, 64, 1), dtype=torch.uint8)
    first = torch.ones(4, dtype=torch.bool)
    decisions = []
    for agent in (exact, bf16):
        torch.manual_seed(1)
        decisions.append(agent.policy(obs, first, agent.initial_act_state(4)))
    (action, state), (action_bf16, state_bf16) = decisions
    assert state_bf16.latent.logits.dtype == torch.float32
    assert torch.equal(state_bf16.latent.logits, state.latent.logits) and torch.equal(action_bf16, action)
