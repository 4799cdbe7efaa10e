"""The world model: encoders + RSSM + decoders, reward and discount heads, and its loss (paper Eq. 2).

L = sum_keys s_key NLL(x_key) + s_rew 0.5 (f(m r) - r_hat)^2 + s_disc BCE(gamma (1 - term), d_hat) + beta KL_bal

s_key is model.image_scale or model.vector_scale, s_rew model.reward_scale, s_disc model.discount_scale and beta
model.kl_scale; f is model.reward_transform (tanh on Atari, identity on DMC) and m model.reward_multiplier.

Observations are a dict, as in DreamerV2's released code: the images (uint8 (H, W, C), 64x64) are stacked along
their channels and read by the conv encoder, the vectors (float32 (size,)) are concatenated and read by the MLP
encoder, and the two embeddings are concatenated. The conv decoder draws every image key, the MLP decoder every
vector key; each key's NLL is a unit-variance Normal's, summed over the key's elements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamctl.config import ModelConfig, MultiConfig
from dreamctl.keys import ACTION_MASK_KEY
from dreamctl.layers.one_hot import Feature
from dreamctl.model.attention import AgentAttention
from dreamctl.model.losses import discount_nll, image_nll, kl_balance, present_mean, reward_nll, vector_nll
from dreamctl.model.networks import MLP, Decoder, Encoder, VectorDecoder, VectorEncoder
from dreamctl.model.rssm import RSSM, State


def preprocess_image(image: Tensor) -> Tensor:
    """uint8 (..., H, W, C) -> float (..., C, H, W) in [-0.5, 0.5]. The only place frames become floats,
    shared by acting and training so the policy never sees a differently scaled input."""
    return (image.permute(*range(image.dim() - 3), -1, -3, -2) / 255.0).sub_(0.5)


@dataclass
class WorldModelOutput:
    loss: Tensor
    post: State  # posterior states (B, T, ...), detached: the starts of imagination
    metrics: dict[str, Tensor]


class WorldModel(nn.Module):
    """Args:
    cfg: the network sizes and loss scales.
    obs_space: observation key -> shape: (H, W, C) for a uint8 image (64x64 for the conv encoder), (size,) for a
        float32 vector.
    action_dim: width of the action vector.
    discount: gamma, the discount the discount head learns (times the probability of continuing).
    agents: M, the agents of one world, adjacent in every batch (1: single-agent DreamerV2).
    multi: how several agents communicate; read only when agents > 1.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        obs_space: Mapping[str, tuple[int, ...]],
        action_dim: int,
        discount: float,
        agents: int = 1,
        multi: MultiConfig | None = None,
    ):
        super().__init__()
        self.image_keys = [key for key, shape in obs_space.items() if len(shape) == 3]
        self.vector_keys = [key for key, shape in obs_space.items() if len(shape) == 1]
        if not self.image_keys and not self.vector_keys:
            raise ValueError(f"the world model needs an image (H, W, C) or a vector (size,) to observe: {obs_space}")
        for key in self.image_keys:
            if tuple(obs_space[key][:2]) != (64, 64):
                raise ValueError(f"the DreamerV2 conv encoder expects 64x64 images, got {key} {obs_space[key]}")
        self.channels = [obs_space[key][2] for key in self.image_keys]
        self.cfg, self.discount = cfg, discount
        self.encoder = Encoder(sum(self.channels), cfg.cnn_depth) if self.image_keys else None
        sizes = {key: obs_space[key][0] for key in self.vector_keys}
        self.vector_encoder = (
            VectorEncoder(sum(sizes.values()), cfg.mlp_layers, cfg.mlp_units) if self.vector_keys else None
        )
        embed = sum(e.out_dim for e in (self.encoder, self.vector_encoder) if e is not None)
        communication = None
        if agents > 1 and multi is not None and multi.communication == "attention":
            communication = AgentAttention(cfg.hidden, agents, multi.attention_layers, multi.attention_heads)
        self.rssm = RSSM(embed, action_dim, cfg.deter, cfg.hidden, cfg.stoch, cfg.classes, communication=communication)
        feat = self.rssm.feat_dim
        self.decoder = Decoder(feat, cfg.cnn_depth, sum(self.channels)) if self.image_keys else None
        self.vector_decoder = VectorDecoder(feat, sizes, cfg.mlp_layers, cfg.mlp_units) if self.vector_keys else None
        self.reward_head = MLP(feat, 1, cfg.mlp_layers, cfg.mlp_units)
        self.discount_head = MLP(feat, 1, cfg.mlp_layers, cfg.mlp_units) if cfg.discount_head else None

    def preprocess(self, obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The observations the model reads as floats: images (..., C, H, W) in [-0.5, 0.5], vectors (..., size)."""
        out = {key: preprocess_image(obs[key]) for key in self.image_keys}
        out.update({key: obs[key].float() for key in self.vector_keys})
        return out

    def embed(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Preprocessed observations (..., ...) -> the embedding e (..., embed) that the posterior reads."""
        parts = []
        if self.encoder is not None:
            parts.append(self.encoder(_concat([inputs[key] for key in self.image_keys], -3)))
        if self.vector_encoder is not None:
            parts.append(self.vector_encoder(_concat([inputs[key] for key in self.vector_keys], -1)))
        return _concat(parts, -1)

    def decode(self, feat: Tensor) -> dict[str, Tensor]:
        """Feature (..., F) -> the mean of every observation key: images (..., C, H, W), vectors (..., size)."""
        out: dict[str, Tensor] = {}
        if self.decoder is not None:
            images = self.decoder(feat).float()
            out.update(zip(self.image_keys, images.split(self.channels, -3), strict=True))
        if self.vector_decoder is not None:
            out.update(self.vector_decoder(feat))
        return out

    def available(self, feat: Feature) -> Tensor | None:
        """The actions the model expects to be allowed in each state, bool (..., action_dim): its reconstruction of
        the env's `action_mask` above one half (MAMBA's availability head, here the vector decoder's). None where
        the env does not restrict actions."""
        if ACTION_MASK_KEY not in self.vector_keys:
            return None
        assert self.vector_decoder is not None
        return self.vector_decoder(feat, only=ACTION_MASK_KEY)[ACTION_MASK_KEY] > 0.5

    def reward_target(self, reward: Tensor) -> Tensor:
        """What the reward head learns from the env's rewards (any shape): their transform after `reward_multiplier`."""
        reward = reward * self.cfg.reward_multiplier
        return torch.tanh(reward) if self.cfg.reward_transform == "tanh" else reward

    def reward(self, feat: Feature) -> Tensor:
        """The reward head's mean: feat (..., F) -> (...,), in float32."""
        return self.reward_head(feat).squeeze(-1).float()

    def continuation(self, feat: Feature) -> Tensor:
        """Predicted discount: probability of continuing times gamma (the head was trained on that target); without a
        discount head, gamma everywhere. feat (..., F) -> (...,)."""
        if self.discount_head is None:
            return torch.full(feat.shape[:-1], self.discount, device=feat.device)
        return torch.sigmoid(self.discount_head(feat).squeeze(-1).float())

    def loss(self, batch: dict[str, Tensor]) -> WorldModelOutput:
        """batch: every observation key (B, T, ...), action (B, T, A), reward, is_first, is_terminal (B, T), and
        where agents may finish before the others of their world, is_present (B, T): absent rows add no loss, and
        the other agents do not attend to them."""
        cfg = self.cfg
        present = batch.get("is_present")
        inputs = self.preprocess(batch)
        post = self.rssm.observe(self.embed(inputs), batch["action"], batch["is_first"], present=present)
        prior_logits = self.rssm.prior(post.deter)
        feat = post.feat()

        means = self.decode(feat)
        nll = {key: image_nll(means[key], inputs[key], present) for key in self.image_keys}
        nll.update({key: vector_nll(means[key], inputs[key], present) for key in self.vector_keys})
        reward = reward_nll(self.reward(feat), self.reward_target(batch["reward"].float()), present)
        kl_loss, kl = kl_balance(post.logits, prior_logits, cfg.kl_balance, cfg.free_nats, present)
        observations = sum(
            (cfg.image_scale if key in self.image_keys else cfg.vector_scale) * value for key, value in nll.items()
        )
        loss = observations + cfg.reward_scale * reward + cfg.kl_scale * kl_loss
        metrics = {**{f"loss/{key}": value for key, value in nll.items()}, "loss/reward": reward, "loss/kl": kl}
        if self.discount_head is not None:
            target = self.discount * (1.0 - batch["is_terminal"].float())
            discount = discount_nll(self.discount_head(feat).squeeze(-1).float(), target, present)
            loss = loss + cfg.discount_scale * discount
            metrics["loss/discount"] = discount
        metrics["loss/model"] = loss
        metrics["train/prior_entropy"] = _entropy(prior_logits, present)
        metrics["train/post_entropy"] = _entropy(post.logits, present)
        return WorldModelOutput(loss, post.map(Tensor.detach), {k: v.detach() for k, v in metrics.items()})


def _entropy(logits: Tensor, present: Tensor | None) -> Tensor:
    """The latents' entropy (B, T, stoch, classes), summed over the latents, averaged over the present rows."""
    log_p = logits.detach().float().log_softmax(-1)
    return present_mean(-(log_p.exp() * log_p).sum((-2, -1)), present)


def _concat(parts: list[Tensor], dim: int) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)
