"""The world model: encoder + RSSM + image decoder, reward and discount heads, and its loss (paper Eq. 2).

L = sum_pixels 0.5 (x - x_hat)^2 + 0.5 (tanh(r) - r_hat)^2 + s_disc * BCE(gamma (1 - term), d_hat) + beta * KL_bal
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamctl.config import ModelConfig
from dreamctl.layers.one_hot import Feature
from dreamctl.model.losses import discount_nll, image_nll, kl_balance, reward_nll
from dreamctl.model.networks import MLP, Decoder, Encoder
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
    obs_shape: (H, W, C) of the uint8 images; the conv encoder needs 64x64.
    action_dim: width of the action vector.
    discount: gamma, the discount the discount head learns (times the probability of continuing).
    """

    def __init__(self, cfg: ModelConfig, obs_shape: tuple[int, int, int], action_dim: int, discount: float):
        super().__init__()
        height, width, channels = obs_shape
        if (height, width) != (64, 64):
            raise ValueError(f"the DreamerV2 conv encoder expects 64x64 images, got {height}x{width}")
        self.cfg, self.discount = cfg, discount
        self.encoder = Encoder(channels, cfg.cnn_depth)
        self.rssm = RSSM(self.encoder.out_dim, action_dim, cfg.deter, cfg.hidden, cfg.stoch, cfg.classes)
        feat = self.rssm.feat_dim
        self.decoder = Decoder(feat, cfg.cnn_depth, channels)
        self.reward_head = MLP(feat, 1, cfg.mlp_layers, cfg.mlp_units)
        self.discount_head = MLP(feat, 1, cfg.mlp_layers, cfg.mlp_units) if cfg.discount_head else None

    def reward_target(self, reward: Tensor) -> Tensor:
        return torch.tanh(reward) if self.cfg.reward_transform == "tanh" else reward

    def reward(self, feat: Feature) -> Tensor:
        return self.reward_head(feat).squeeze(-1).float()

    def continuation(self, feat: Feature) -> Tensor:
        """Predicted discount: probability of continuing times gamma (the head was trained on that target)."""
        if self.discount_head is None:
            return torch.full(feat.shape[:-1], self.discount, device=feat.device)
        return torch.sigmoid(self.discount_head(feat).squeeze(-1).float())

    def loss(self, batch: dict[str, Tensor]) -> WorldModelOutput:
        """batch: image uint8 (B, T, H, W, C), action (B, T, A), reward, is_first, is_terminal (B, T)."""
        cfg = self.cfg
        image = preprocess_image(batch["image"])
        embed = self.encoder(image)
        post = self.rssm.observe(embed, batch["action"], batch["is_first"])
        prior_logits = self.rssm.prior(post.deter)
        feat = post.feat()

        image = image_nll(self.decoder(feat), image)
        reward = reward_nll(self.reward(feat), self.reward_target(batch["reward"].float()))
        kl_loss, kl = kl_balance(post.logits, prior_logits, cfg.kl_balance, cfg.free_nats)
        loss = cfg.image_scale * image + cfg.reward_scale * reward + cfg.kl_scale * kl_loss
        metrics = {"loss/image": image, "loss/reward": reward, "loss/kl": kl}
        if self.discount_head is not None:
            target = self.discount * (1.0 - batch["is_terminal"].float())
            discount = discount_nll(self.discount_head(feat).squeeze(-1).float(), target)
            loss = loss + cfg.discount_scale * discount
            metrics["loss/discount"] = discount
        metrics["loss/model"] = loss
        metrics["train/prior_entropy"] = _entropy(prior_logits)
        metrics["train/post_entropy"] = _entropy(post.logits)
        return WorldModelOutput(loss, post.map(Tensor.detach), {k: v.detach() for k, v in metrics.items()})


def _entropy(logits: Tensor) -> Tensor:
    log_p = logits.detach().log_softmax(-1)
    return -(log_p.exp() * log_p).sum((-2, -1)).mean()
