"""The actor's gradient, against DreamerV2's maths written out here: the continuous actor's through the dynamics
(rho = 0) and the discrete actor's REINFORCE (rho = 1).

The references below restate the official code's imagination, returns and actor loss (danijar/dreamerv2, agent.py
`imagine`, `target`, `actor_loss`; common/nets.py `img_step`, `GRUCell`; common/dists.py `TruncNormalDist`) with plain
torch operations on dreamctl's parameters, drawing their noise in the order dreamctl does (the action's uniform, then
each latent's). The actor's loss and its parameters' gradients must agree: every stop-gradient, straight-through
estimator and index of the loss is on these paths.
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


def gru_step(rssm, stoch, action, deter):
    """The prior's recurrent step: img_in, then the layer-normed GRU cell of the official code."""
    hidden = F.elu(F.linear(torch.cat([stoch, action], -1), rssm.img_in.weight, rssm.img_in.bias))
    parts = F.linear(torch.cat([hidden, deter], -1), rssm.gru.linear.weight, rssm.gru.linear.bias)
    parts = F.layer_norm(parts, parts.shape[-1:], rssm.gru.norm.weight, rssm.gru.norm.bias, 1e-3)
    reset, cand, update = parts.chunk(3, -1)
    cand, update = torch.tanh(torch.sigmoid(reset) * cand), torch.sigmoid(update - 1)
    return update * cand + (1 - update) * deter


def sample_one_hot(probs):
    """One draw per categorical by inverting its CDF, with the straight-through gradient of the probabilities."""
    cdf = probs.detach().cumsum(-1)
    index = torch.searchsorted(cdf, torch.rand_like(cdf[..., :1]) * cdf[..., -1:], right=True)
    one_hot = torch.zeros_like(probs).scatter_(-1, index.clamp_max(probs.shape[-1] - 1), 1.0)
    return one_hot + probs - probs.detach()


def reference_rollout(agent, start, cfg, act):
    """Imagine `horizon` steps from the detached start states; act(actor output) -> action draws the action first,
    then each latent is drawn. Returns the features s_0..s_H, the actor's outputs at s_0..s_{H-1} (with their graph)
    and the actions a_1..a_H, the action taken in s_{t-1} stored beside s_t."""
    behavior, rssm = agent.behavior, agent.world_model.rssm
    stoch, deter = start.stoch.flatten(0, 1).detach(), start.deter.flatten(0, 1).detach()
    feats, outs, actions = [torch.cat([stoch, deter], -1)], [], []
    for _ in range(cfg.behavior.horizon):
        out = mlp(behavior.actor.net, feats[-1].detach())  # the actor reads stop-gradient features
        action = act(out)
        deter = gru_step(rssm, stoch, action, deter)
        hidden = F.elu(F.linear(deter, rssm.img_out.weight, rssm.img_out.bias))
        logits = F.linear(hidden, rssm.prior_logits.weight, rssm.prior_logits.bias)
        stoch = sample_one_hot(logits.unflatten(-1, (rssm.stoch, rssm.classes)).softmax(-1)).flatten(-2)
        feats.append(torch.cat([stoch, deter], -1))
        outs.append(out)
        actions.append(action)
    return torch.stack(feats), torch.stack(outs), torch.stack(actions)


def reference_returns(agent, feat, start_terminal, cfg):
    """The official `target`: lambda-returns of the slow critic, s_0's discount from the data, the cumulative
    discounts as weights. Returns (target V_1..V_H, weight, slow value v'(s_0)..v'(s_H))."""
    wm = agent.world_model
    reward = mlp(wm.reward_head, feat).squeeze(-1)
    discount = torch.sigmoid(mlp(wm.discount_head, feat).squeeze(-1))
    discount = torch.cat([(cfg.behavior.discount * (1 - start_terminal.flatten()))[None], discount[1:]])
    value = mlp(agent.behavior.slow_critic, feat).squeeze(-1)
    lam, horizon = cfg.behavior.return_lambda, cfg.behavior.horizon
    inputs = reward[:-1] + discount[:-1] * torch.cat([value[1:-1], value[-1:]]) * (1 - lam)
    last, targets = value[-1], []
    for t in reversed(range(horizon)):
        last = inputs[t] + discount[t] * lam * last
        targets.append(last)
    weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]]), 0).detach()
    return torch.stack(targets[::-1]), weight, value


def reference_actor_loss(agent, start, start_terminal, cfg):
    """rho = 0: the returns' gradient through the dynamics into the truncated normal's reparameterised actions."""
    ndtr = torch.special.ndtr

    def act(out):
        mean, std = truncated_normal(out)
        low, high = ndtr((-1 - mean) / std), ndtr((1 - mean) / std)
        u = torch.rand_like(mean)
        x = mean + std * torch.special.ndtri((low + u * (high - low)).clamp(1e-7, 1 - 1e-7))
        return x + (x.clamp(-1 + 1e-6, 1 - 1e-6) - x).detach()  # clipped, straight-through

    feat, outs, _ = reference_rollout(agent, start, cfg, act)
    target, weight, _ = reference_returns(agent, feat, start_terminal, cfg)
    mean, std = truncated_normal(outs[:-1])
    alpha, beta = (-1 - mean) / std, (1 - mean) / std
    mass = ndtr(beta) - ndtr(alpha)

    def pdf(z):
        return torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)

    entropy = (0.5 * math.log(2 * math.pi * math.e) + std.log() + mass.log()) + (
        alpha * pdf(alpha) - beta * pdf(beta)
    ) / (2 * mass)
    objective = target[1:] + cfg.behavior.actor_entropy * entropy.sum(-1)
    return -(weight[:-2] * objective).mean()


def reference_reinforce_loss(agent, start, start_terminal, cfg):
    """rho = 1: log pi(a_{t+1} | s_t) times the advantage V_{t+1} - v'(s_t), plus the entropy, over s_0..s_{H-2}
    (the official `actor_loss` with actor_grad=reinforce); the rollout itself carries no gradient."""
    with torch.no_grad():
        feat, _, actions = reference_rollout(agent, start, cfg, lambda out: sample_one_hot(out.softmax(-1)))
        target, weight, value = reference_returns(agent, feat, start_terminal, cfg)
    outs = mlp(agent.behavior.actor.net, feat[:-2])
    log_probs = outs.log_softmax(-1)
    log_prob = (actions[:-1] * log_probs).sum(-1)  # a_{t+1}, chosen in s_t
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    objective = log_prob * (target[1:] - value[:-2]) + cfg.behavior.actor_entropy * entropy
    return -(weight[:-2] * objective).mean()


def perturbed_agent(preset, action_dim, discrete, action):
    """An agent whose every parameter is moved off its initial value (zero biases would hide index errors), the
    slow critic apart from the critic (a return read from the wrong one must show), and the posterior states of a
    random batch."""
    torch.manual_seed(0)
    cfg = load_config(preset, [f"train.batch_size={BATCH}", f"train.batch_length={LENGTH}"])
    agent = Agent(cfg, {"image": (64, 64, 1)}, action_dim, discrete)
    generator = torch.Generator().manual_seed(1)
    is_first = torch.zeros(BATCH, LENGTH)
    is_first[:, 0] = 1
    batch = {
        "image": torch.randint(0, 256, (BATCH, LENGTH, 64, 64, 1), dtype=torch.uint8, generator=generator),
        "action": action(generator),
        "reward": torch.randn(BATCH, LENGTH, generator=generator),
        "is_first": is_first,
        "is_last": torch.zeros(BATCH, LENGTH),
        "is_terminal": (torch.rand(BATCH, LENGTH, generator=generator) < 0.2).float(),
    }
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
        start = agent.world_model.loss(batch).post
    critics = zip(agent.behavior.critic.parameters(), agent.behavior.slow_critic.parameters(), strict=True)
    assert all(not torch.equal(c, s) for c, s in critics)
    return cfg, agent, start, batch["is_terminal"]


def assert_actor_matches(reference, cfg, agent, start, start_terminal, layers):
    """dreamctl's actor loss and its actor gradients equal the reference's, drawing the same noise; the graph
    reaches none of the world model's parameters (they are frozen while the actor imagines)."""
    actor = list(agent.behavior.actor.parameters())
    torch.manual_seed(3)
    with plain_layers() if layers == "plain" else torch.enable_grad(), frozen(agent.world_model):
        traj = agent.behavior.imagine(agent.world_model, start)
        loss, _ = agent.behavior.actor_loss(traj, agent.behavior.returns(agent.world_model, traj, start_terminal))
    model = list(agent.world_model.parameters())
    assert all(g is None for g in torch.autograd.grad(loss, model, retain_graph=True, allow_unused=True))
    grads = torch.autograd.grad(loss, actor)

    torch.manual_seed(3)
    expected_loss = reference(agent, start, start_terminal, cfg)
    expected = torch.autograd.grad(expected_loss, actor)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected, strict=True):
        assert want.norm() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layers", ["fast", "plain"])
def test_dynamics_gradient_of_the_actor_matches_dreamerv2(layers):
    def actions(generator):
        return torch.rand(BATCH, LENGTH, ACTIONS, generator=generator) * 2 - 1

    cfg, agent, start, start_terminal = perturbed_agent("pixels", ACTIONS, False, actions)
    assert agent.behavior.rho == 0.0
    assert_actor_matches(reference_actor_loss, cfg, agent, start, start_terminal, layers)


@pytest.mark.parametrize("layers", ["fast", "plain"])
def test_reinforce_gradient_of_the_actor_matches_dreamerv2(layers):
    """The discrete actor with rho = 1: every index of the log-probability, advantage and weight is on this path."""

    def actions(generator):
        index = torch.randint(0, ACTIONS + 1, (BATCH, LENGTH), generator=generator)
        return F.one_hot(index, ACTIONS + 1).float()

    cfg, agent, start, start_terminal = perturbed_agent("debug", ACTIONS + 1, True, actions)
    assert agent.behavior.rho == 1.0
    assert_actor_matches(reference_reinforce_loss, cfg, agent, start, start_terminal, layers)
