"""The networks: shapes and parameter counts of the paper's architecture, the GRU, MLPs and the encoder."""

import math

import pytest
import torch
from conftest import tiny_config

from dreamctl.config import load_config
from dreamctl.layers import reformulations
from dreamctl.model.agent import Agent
from dreamctl.model.networks import MLP, ActionHead, Decoder, Encoder, LayerNormGRUCell


@pytest.fixture(scope="module")
def atari_agent():
    torch.manual_seed(0)
    return Agent(load_config("atari"), {"image": (64, 64, 1)}, 6, True)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_paper_architecture(atari_agent):
    wm, beh = atari_agent.world_model, atari_agent.behavior
    expected = {
        "encoder": 1.55e6,
        "rssm": 5.66e6,
        "decoder": 10.50e6,
        "reward": 1.13e6,
        "discount": 1.13e6,
        "world_model": 19.97e6,
        "actor": 1.13e6,
        "critic": 1.13e6,
    }
    actual = {
        "encoder": count(wm.encoder),
        "rssm": count(wm.rssm),
        "decoder": count(wm.decoder),
        "reward": count(wm.reward_head),
        "discount": count(wm.discount_head),
        "world_model": count(wm),
        "actor": count(beh.actor),
        "critic": count(beh.critic),
    }
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


def test_layer_norm_gru_worked_by_hand():
    """Zero weights leave the gates to the LayerNorm's biases: reset 0 -> sigmoid 0.5, candidate 2 -> tanh(0.5 * 2) =
    0.761594 (the reset gate scales the pre-activation), update 1 -> sigmoid(1 - 1) = 0.5 (the bias of -1), so h' =
    0.5 * 0.761594 + 0.5 * h = 0.480797 for h = 0.2. With every bias 0 the update gate is sigmoid(-1) = 0.268941 and
    the candidate tanh(0) = 0: h' = 0.731059 h, the old state kept by the larger share."""
    cell = LayerNormGRUCell(3, 2)
    with torch.no_grad():
        cell.linear.weight.zero_()
        cell.norm.bias.copy_(torch.tensor([0.0, 0.0, 2.0, 2.0, 1.0, 1.0]))
    x, h = torch.randn(1, 3), torch.tensor([[0.2, 0.2]])
    torch.testing.assert_close(cell(x, h), torch.full((1, 2), 0.480797), atol=1e-6, rtol=0)
    with torch.no_grad():
        cell.norm.bias.zero_()
    torch.testing.assert_close(cell(x, h), 0.731059 * h, atol=1e-6, rtol=0)


def test_the_continuous_actor_squashes_its_mean_and_floors_its_std_worked_by_hand():
    """DreamerV2's DistLayer: mean = tanh(raw), std = 2 sigmoid(raw / 2) + 0.1, so raw 0 gives mean 0 and std 1.1,
    raw atanh(0.5) = 0.549306 gives mean 0.5, and a very negative raw std the floor 0.1."""
    head = ActionHead(feat_dim=4, action_dim=2, discrete=False, layers=1, units=8)
    dist = head.dist(torch.tensor([[0.0, 0.549306, 0.0, -100.0]]))
    torch.testing.assert_close(dist.mean, torch.tensor([[0.0, 0.5]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(dist.std, torch.tensor([[1.1, 0.1]]), atol=1e-6, rtol=0)


def test_mlp_layers():
    mlp = MLP(7, 3, layers=2, units=16)
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 16), (16, 16), (16, 3)]
    assert all(torch.all(m.bias == 0) for m in linears)
    bound = math.sqrt(6 / (7 + 16))
    assert linears[0].weight.abs().max() <= bound


@pytest.mark.parametrize("discrete", [True, False])
def test_the_actors_output_weights_have_the_glorot_range_of_dreamerv2s_dense_layers(discrete):
    """The official DistLayer: one Dense of action_dim outputs for the logits, or two (mean, std) for the truncated
    normal, each Glorot-uniform over (units + action_dim); humanoid's 21 actions make the fused layer's range differ."""
    torch.manual_seed(0)
    head = ActionHead(feat_dim=64, action_dim=21, discrete=discrete, layers=1, units=400)
    weight = head.net.out.weight
    assert weight.shape == (21 if discrete else 42, 400)
    bound = math.sqrt(6 / (400 + 21))  # 0.11938; one Dense of 42 outputs would give 0.11651
    assert bound * 0.995 < weight.abs().max() <= bound
    torch.testing.assert_close(weight.var(), torch.tensor(bound**2 / 3), rtol=0.05, atol=0)


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
    monkeypatch.setattr("dreamctl.layers.conv.BACKWARD_SLICES", slices)
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
    for a, b in zip(
        torch.autograd.grad(y, list(encoder.parameters()), g),
        torch.autograd.grad(expected, list(plain.parameters()), g),
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_encoder_training_keeps_no_copy_of_its_first_activation():
    """The first activation (31x31 per image) is computed again in the backward pass, not saved for it."""
    encoder = Encoder(1, 4)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        encoder(torch.rand(3, 1, 64, 64) - 0.5).sum().backward()
    assert saved and not any(shape[-2:] == (31, 31) for shape in saved)
    saved.clear()
    with (
        reformulations(False),
        torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t),
    ):
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


def test_a_heads_output_under_bf16_autocast_keeps_float32s_resolution():
    """A critic whose values sit near 100: bfloat16's last product would round them to steps of 0.5."""
    torch.manual_seed(0)
    critic = MLP(32, 1, 2, 16)
    with torch.no_grad():
        critic.out.bias.fill_(100.3)
    feat = torch.randn(1000, 32)
    exact = critic(feat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = critic(feat)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, exact, rtol=0, atol=0.05)  # the hidden layers still compute in bf16


def test_on_the_cpu_a_bf16_run_acts_in_float32():
    """Acting takes the float32 weights as they are (autocast would cast them again at every step)."""
    torch.manual_seed(0)
    exact = Agent(tiny_config(), {"image": (64, 64, 1)}, 3, True)
    bf16 = Agent(tiny_config("run.precision=bf16"), {"image": (64, 64, 1)}, 3, True)
    bf16.load_state_dict(exact.state_dict())
    obs = torch.randint(0, 256, (4, 64, 64, 1), dtype=torch.uint8)
    first = torch.ones(4, dtype=torch.bool)
    decisions = []
    for agent in (exact, bf16):
        torch.manual_seed(1)
        decisions.append(agent.policy({"image": obs}, first, agent.initial_act_state(4)))
    (action, state), (action_bf16, state_bf16) = decisions
    assert state_bf16.latent.logits.dtype == torch.float32
    assert torch.equal(state_bf16.latent.logits, state.latent.logits) and torch.equal(action_bf16, action)
