"""Observations as a dict: the MLP encoder and decoder for vectors beside the conv ones for images, and the
world-model loss summed over every key."""

import pytest
import torch
from conftest import tiny_config

from dreamctl.config import load_config
from dreamctl.model.networks import VectorDecoder, VectorEncoder
from dreamctl.model.world_model import WorldModel
from dreamctl.runs.system import parameter_count


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_vector_encoder_and_decoder_shapes_and_parameter_counts():
    encoder = VectorEncoder(5, layers=4, units=400)
    assert encoder(torch.zeros(2, 3, 5)).shape == (2, 3, 400) and encoder.out_dim == 400
    assert count(encoder) == (5 * 400 + 400) + 3 * (400 * 400 + 400)  # 483,600
    decoder = VectorDecoder(1624, {"a": 3, "b": 2}, layers=4, units=400)
    means = decoder(torch.zeros(2, 3, 1624))
    assert {k: v.shape for k, v in means.items()} == {"a": (2, 3, 3), "b": (2, 3, 2)}
    assert count(decoder) == (1624 * 400 + 400) + 3 * (400 * 400 + 400) + (400 * 3 + 3) + (400 * 2 + 2)


def test_an_image_only_atari_config_builds_exactly_the_networks_of_before():
    cfg = load_config("atari")
    wm = WorldModel(cfg.model, {"image": (64, 64, 1)}, 6, 0.999)
    assert count(wm) == 19_968_179
    assert wm.vector_encoder is None and wm.vector_decoder is None
    assert all(
        name.split(".")[0] in {"encoder", "rssm", "decoder", "reward_head", "discount_head"} for name in wm.state_dict()
    )
    assert parameter_count(cfg, {"image": (64, 64, 1)}, 6, True) > count(wm)  # plus actor, critic, slow critic


def test_a_mixed_world_model_embeds_both_and_decodes_every_key():
    torch.manual_seed(0)
    cfg = tiny_config()
    wm = WorldModel(cfg.model, {"image": (64, 64, 3), "position": (2,), "speed": (1,)}, 3, 0.99)
    inputs = wm.preprocess(
        {
            "image": torch.zeros(2, 4, 64, 64, 3, dtype=torch.uint8),
            "position": torch.zeros(2, 4, 2),
            "speed": torch.zeros(2, 4, 1),
        }
    )
    embed = wm.embed(inputs)
    assert embed.shape == (2, 4, wm.encoder.out_dim + cfg.model.mlp_units) == (2, 4, wm.rssm.obs_out.in_features - 32)
    means = wm.decode(torch.zeros(2, 4, wm.rssm.feat_dim))
    assert {k: tuple(v.shape) for k, v in means.items()} == {
        "image": (2, 4, 3, 64, 64),
        "position": (2, 4, 2),
        "speed": (2, 4, 1),
    }


def test_the_loss_sums_the_nll_of_every_observation_key_worked_by_hand(monkeypatch):
    torch.manual_seed(0)
    cfg = tiny_config("model.reward_transform=tanh")
    wm = WorldModel(cfg.model, {"image": (64, 64, 1), "position": (2,)}, 3, 0.99)
    b, t = 2, 3
    batch = {
        "image": torch.full((b, t, 64, 64, 1), 255, dtype=torch.uint8),  # +0.5 after preprocessing
        "position": torch.tensor([1.0, 2.0]).expand(b, t, 2),
        "action": torch.zeros(b, t, 3),
        "reward": torch.zeros(b, t),
        "is_first": torch.ones(b, t),
        "is_terminal": torch.zeros(b, t),
    }
    monkeypatch.setattr(
        wm,
        "decode",
        lambda feat: {"image": torch.zeros(*feat.shape[:-1], 1, 64, 64), "position": torch.zeros(*feat.shape[:-1], 2)},
    )
    m = wm.loss(batch).metrics
    torch.testing.assert_close(m["loss/image"], torch.tensor(0.5 * 64 * 64 * 0.25))  # 512
    torch.testing.assert_close(m["loss/position"], torch.tensor(0.5 * (1.0 + 4.0)))  # 2.5
    expected = 512 + 2.5 + m["loss/reward"] + 5.0 * m["loss/discount"] + 0.1 * m["loss/kl"]
    torch.testing.assert_close(m["loss/model"], expected)


@pytest.mark.parametrize(
    "transform, multiplier, expected",
    [
        ("identity", 1.0, [0.05, -0.2, 1.0]),
        ("identity", 10.0, [0.5, -2.0, 10.0]),
        ("tanh", 10.0, [0.46211716, -0.96402758, 1.0]),  # tanh(0.5), tanh(-2), tanh(10) in float32
    ],
)
def test_the_reward_target_multiplies_before_the_transform(transform, multiplier, expected):
    cfg = tiny_config(f"model.reward_transform={transform}", f"model.reward_multiplier={multiplier}")
    wm = WorldModel(cfg.model, {"position": (2,)}, 3, 0.99)
    torch.testing.assert_close(wm.reward_target(torch.tensor([0.05, -0.2, 1.0])), torch.tensor(expected))


@pytest.mark.parametrize("shape", [(32, 32, 1), (64, 64)])
def test_images_the_conv_encoder_cannot_read_are_refused(shape):
    with pytest.raises(ValueError):
        WorldModel(tiny_config().model, {"image": shape}, 3, 0.99)
