"""The continuous actor's gradient through the dynamics (rho = 0), against DreamerV2's maths written out here.

The reference below restates the official code's imagination and dynamics-gradient actor loss (danijar/dreamerv2,
agent.py `imagine`, `target`, `actor_loss`; common/nets.py `img_step`, `GRUCell`; common/dists.py
`TruncNormalDist`) with plain torch operations on dreamctl's parameters, drawing its noise in the order dreamctl
does (the action's uniform, then each latent's). The actor's loss and its parameters' gradients must agree: every
stop-gradient, straight-through estimator and index of the loss is on this path.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from dreamctl.config import load_config
from dreamctl.layers import plain_layers
from dreamctl.model.actor_critic import frozen
from dreamctl.model.agent import Agent

BATCH, LENGTH, ACTIONS = 4, 5, 2


def mlp(net, x):
    """Linear + ELU layers, then the output layer."""
    for layer in net.body:
        x = F.linear(x, layer.weight, layer.bias) if isinstance(layer, torch.nn.Linear) else F.elu(x)
    return F.linear(x, net.out.weight, net.out.bias)


def truncated_normal(out):
    """The actor's output -> (mean, std) of DreamerV2's truncated normal: tanh mean, 2 sigmoid(x / 2) + 0.1 std."""
    mean, std = out.chunk(2, -1)
    return torch.tanh(mean), 2 * torch.sigmoid(std / 2) + 0.1


def reference_actor_loss(agent, start, start_terminal, cfg):
    wm, behavior, rssm = agent.world_model, agent.behavior, agent.world_model.rssm
    ndtr = torch.special.ndtr
    stoch, deter = start.stoch.flatten(0, 1).detach(), start.deter.flatten(0, 1).detach()
    feats, outs = [torch.cat([stoch, deter], -1)], []
    for _ in range(cfg.behavior.horizon):
        out = mlp(behavior.actor.net, feats[-1].detach())  # the actor reads stop-gradient features
        mean, std = truncated_normal(out)
        low, high = ndtr((-1 - mean) / std), ndtr((1 - mean) / std)
        u = torch.rand_like(mean)
        x = mean + std * torch.special.ndtri((low + u * (high - low)).clamp(1e-7, 1 - 1e-7))
        action = x + (x.clamp(-1 + 1e-6, 1 - 1e-6) - x).detach()  # clipped, straight-through
        hidden = F.elu(F.linear(torch.cat([stoch, action], -1), rssm.img_in.weight, rssm.img_in.bias))
        parts = F.linear(torch.cat([hidden, deter], -1), rssm.gru.linear.weight, rssm.gru.linear.bias)
        parts = F.layer_norm(parts, parts.shape[-1:], rssm.gru.norm.weight, rssm.gru.norm.bias, 1e-3)
        reset, cand, update = parts.chunk(3, -1)
        cand, update = torch.tanh(torch.sigmoid(reset) * cand), torch.sigmoid(update - 1)
        deter = update * cand + (1 - update) * deter
        hidden = F.elu(F.linear(deter, rssm.img_out.weight, rssm.img_out.bias))
        logits = F.linear(hidden, rssm.prior_logits.weight, rssm.prior_logits.bias)
        probs = logits.unflatten(-1, (rssm.stoch, rssm.classes)).softmax(-1)
        cdf = probs.detach().cumsum(-1)
        index = torch.searchsorted(cdf, torch.rand_like(cdf[..., :1]) * cdf[..., -1:], right=True)
        one_hot = torch.zeros_like(probs).scatter_(-1, index.clamp_max(rssm.classes - 1), 1.0)
        stoch = (one_hot + probs - probs.detach()).flatten(-2)  # straight-through
        feats.append(torch.cat([stoch, deter], -1))
        outs.append(out)
    feat = torch.stack(feats)
    reward = mlp(wm.reward_head, feat).squeeze(-1)
    discount = torch.sigmoid(mlp(wm.discount_head, feat).squeeze(-1))
    discount = torch.cat([(cfg.behavior.discount * (1 - start_terminal.flatten()))[None], discount[1:]])
    value = mlp(behavior.slow_critic, feat).squeeze(-1)
    lam, horizon = cfg.behavior.return_lambda, cfg.behavior.horizon
    inputs = reward[:-1] + discount[:-1] * torch.cat([value[1:-1], value[-1:]]) * (1 - lam)
    last, targets = value[-1], []
    for t in reversed(range(horizon)):
        last = inputs[t] + discount[t] * lam * last
        targets.append(last)
    target = torch.stack(targets[::-1])
    weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]]), 0).detach()
    mean, std = truncated_normal(torch.stack(outs)[:-1])
    alpha, beta = (-1 - mean) / std, (1 - mean) / std
    mass = ndtr(beta) - ndtr(alpha)

    def pdf(z):
        return torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)

    entropy = (0.5 * math.log(2 * math.pi * math.e) + std.log() + mass.log()) + (
        alpha * pdf(alpha) - beta * pdf(beta)
    ) / (2 * mass)
    objective = target[1:] + cfg.behavior.actor_entropy * entropy.sum(-1)
    return -(weight[:-2] * objective).mean()


@pytest.mark.parametrize("layers", ["fast", "plain"])
def test_dynamics_gradient_of_the_actor_matches_dreamerv2(layers):
    torch.manual_seed(0)
    cfg = load_config("pixels", [f"train.batch_size={BATCH}", f"train.batch_length={LENGTH}"])
    agent = Agent(cfg, {"image": (64, 64, 1)}, ACTIONS, False)
    assert agent.behavior.rho == 0.0
    generator = torch.Generator().manual_seed(1)
    is_first = torch.zeros(BATCH, LENGTH)
    is_first[:, 0] = 1
    batch = {
        "image": torch.randint(0, 256, (BATCH, LENGTH, 64, 64, 1), dtype=torch.uint8, generator=generator),
        "action": torch.rand(BATCH, LENGTH, ACTIONS, generator=generator) * 2 - 1,
        "reward": torch.randn(BATCH, LENGTH, generator=generator),
        "is_first": is_first,
        "is_last": torch.zeros(BATCH, LENGTH),
        "is_terminal": (torch.rand(BATCH, LENGTH, generator=generator) < 0.2).float(),
    }
    with torch.no_grad():  # move every parameter off its initial value (zero biases would hide index errors)
        for p in agent.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
        agent.behavior.slow_critic.load_state_dict(agent.behavior.critic.state_dict())
        start = agent.world_model.loss(batch).post
    actor = list(agent.behavior.actor.parameters())

    torch.manual_seed(3)
    with plain_layers() if layers == "plain" else torch.enable_grad(), frozen(agent.world_model):
        traj = agent.behavior.imagine(agent.world_model, start)
        loss, _ = agent.behavior.actor_loss(traj, agent.behavior.returns(agent.world_model, traj, batch["is_terminal"]))
    grads = torch.autograd.grad(loss, actor)
    assert all(p.grad is None for p in agent.world_model.parameters())

    torch.manual_seed(3)
    expected_loss = reference_actor_loss(agent, start, batch["is_terminal"], cfg)
    expected = torch.autograd.grad(expected_loss, actor)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected, strict=True):
        assert want.norm() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
