"""The equations of the losses: KL balancing, lambda-returns, the actor's gradient paths, the slow critic."""

import math

import pytest
import torch
from conftest import random_batch, tiny_config

from dreamctl.config import BehaviorConfig, ModelConfig
from dreamctl.layers.one_hot import OneHotFeature
from dreamctl.model.actor_critic import ActorCritic
from dreamctl.model.agent import Agent
from dreamctl.model.losses import (
    actor_loss,
    categorical_kl,
    critic_loss,
    discount_nll,
    kl_balance,
    lambda_return,
    reward_nll,
)


def test_kl_runs_from_the_posterior_to_the_prior_and_sums_the_latents():
    # q = (3/4, 1/4), p = (1/2, 1/2) in each of two latents (any logits' offset is the same distribution):
    # KL(q || p) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812 per latent; the reverse, KL(p || q), would be 0.143841.
    post = torch.tensor([0.75, 0.25]).log().expand(1, 2, 2) + 1.0
    prior = torch.zeros(1, 2, 2)
    torch.testing.assert_close(categorical_kl(post, prior), torch.tensor([2 * 0.130812]), atol=1e-6, rtol=0)


def test_kl_balance_sends_80_percent_of_the_gradient_to_the_prior():
    torch.manual_seed(0)
    post = torch.randn(2, 3, 4, 5, requires_grad=True)
    prior = torch.randn(2, 3, 4, 5, requires_grad=True)
    loss, _ = kl_balance(post, prior, balance=0.8, free=0.0)
    g_post, g_prior = torch.autograd.grad(loss, [post, prior])
    kl = categorical_kl(post, prior).mean()
    full_post, full_prior = torch.autograd.grad(kl, [post, prior])
    torch.testing.assert_close(g_prior, 0.8 * full_prior)
    torch.testing.assert_close(g_post, 0.2 * full_post)
    torch.testing.assert_close(loss, kl)


def test_kl_is_summed_over_latents():
    post = torch.zeros(1, 1, 32, 4)
    post[..., 0] = 5.0
    prior = torch.zeros(1, 1, 32, 4)
    per_var = categorical_kl(post[..., :1, :], prior[..., :1, :])
    torch.testing.assert_close(categorical_kl(post, prior), 32 * per_var)


def _two_rows_of_known_kl() -> tuple[torch.Tensor, torch.Tensor]:
    """(B=2, T=1, 2 latents, 2 classes) against a uniform prior: row 0's q = (3/4, 1/4) in each latent,
    KL = 2 * 0.130812 = 0.261624; row 1's q one-hot (logits 0 and -100), KL = 2 ln 2 = 1.386294."""
    post = torch.stack([torch.tensor([0.75, 0.25]).log(), torch.tensor([0.0, -100.0])])[:, None, None, :]
    return post.expand(2, 1, 2, 2).clone().requires_grad_(), torch.zeros(2, 1, 2, 2, requires_grad=True)


def test_free_nats_floor_the_batch_mean_of_the_kl_not_each_row_worked_by_hand():
    """The official `free_avg`: the KL is averaged over the batch, then floored; flooring each row first would give
    (0.5 + 1.386294) / 2 = 0.943147 with 0.5 free nats and (1 + 1.386294) / 2 = 1.193147 with 1."""
    post, prior = _two_rows_of_known_kl()
    mean = (0.261624 + 1.386294) / 2  # 0.823959
    loss, value = kl_balance(post, prior, 0.8, free=0.5)
    torch.testing.assert_close(loss, torch.tensor(mean), atol=1e-6, rtol=0)
    loss, value = kl_balance(post, prior, 0.8, free=1.0)
    torch.testing.assert_close(loss, torch.tensor(1.0))
    torch.testing.assert_close(value, torch.tensor(mean), atol=1e-6, rtol=0)  # the KL itself, for the logs
    g_post, g_prior = torch.autograd.grad(loss, [post, prior])
    assert not g_post.any() and not g_prior.any()  # below the floor the KL is left alone


def test_kl_of_absent_rows_is_left_out_of_the_mean_worked_by_hand():
    post, prior = _two_rows_of_known_kl()
    loss, value = kl_balance(post, prior, 0.8, free=0.2, present=torch.tensor([[1.0], [0.0]]))
    torch.testing.assert_close(loss, torch.tensor(0.261624), atol=1e-6, rtol=0)  # not 0.261624 / 2
    torch.testing.assert_close(value, torch.tensor(0.261624), atol=1e-6, rtol=0)


def test_lambda_return_matches_a_hand_worked_example_with_a_terminal():
    # Three imagined steps; d_1 = 0 is a terminal. lambda = 0.5, bootstrap v(s_3) = 4.
    reward = torch.tensor([1.0, 2.0, 3.0])
    value = torch.tensor([0.0, 10.0, 0.0])  # v(s_0), v(s_1), v(s_2)
    discount = torch.tensor([0.9, 0.0, 0.9])
    returns = lambda_return(reward, value, discount, torch.tensor(4.0), lambda_=0.5)
    # V_2 = 3 + 0.9 (0.5 * 4 + 0.5 * 4) = 6.6
    # V_1 = 2 + 0 * (...) = 2
    # V_0 = 1 + 0.9 (0.5 * v_1 + 0.5 * V_1) = 1 + 0.9 (5 + 1) = 6.4
    torch.testing.assert_close(returns, torch.tensor([6.4, 2.0, 6.6]))


def test_lambda_return_with_lambda_one_is_the_discounted_sum():
    reward, discount = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])
    returns = lambda_return(reward, torch.zeros(2), discount, torch.tensor(8.0), lambda_=1.0)
    torch.testing.assert_close(returns, torch.tensor([1 + 0.5 * (1 + 0.5 * 8), 1 + 0.5 * 8]))


def _slow_critic_copies(ac: ActorCritic, updates: int) -> list[int]:
    """The calls (0-based) of `updates` calls to update_slow_critic after which the slow critic equals the
    critic and differs from before, with the critic changed before each call."""
    copied = []
    for update in range(updates):
        with torch.no_grad():
            for p in ac.critic.parameters():
                p.add_(0.01)
        before = [p.clone() for p in ac.slow_critic.parameters()]
        ac.update_slow_critic()
        changed = any(not torch.equal(b, p) for b, p in zip(before, ac.slow_critic.parameters()))
        if changed:
            assert all(torch.equal(s, c) for s, c in zip(ac.slow_critic.parameters(), ac.critic.parameters()))
            copied.append(update)
    return copied


def _small_actor_critic() -> ActorCritic:
    return ActorCritic(BehaviorConfig(slow_critic_every=100), ModelConfig(mlp_layers=1, mlp_units=4), 3, 2, True)


def test_slow_critic_is_copied_every_100_updates_and_at_no_other_time():
    torch.manual_seed(0)
    assert _slow_critic_copies(_small_actor_critic(), 301) == [0, 100, 200, 300]


def test_slow_critic_schedule_continues_from_a_loaded_count():
    torch.manual_seed(0)
    source = _small_actor_critic()
    _slow_critic_copies(source, 150)
    loaded = _small_actor_critic()
    _slow_critic_copies(loaded, 30)  # a count of its own, which loading must replace
    torch.nn.ModuleDict({"behavior": loaded}).load_state_dict(  # as Agent loads it: as a submodule
        {f"behavior.{k}": v for k, v in source.state_dict().items()}
    )
    assert [150 + i for i in _slow_critic_copies(loaded, 151)] == [200, 300]
    assert int(loaded.updates) == 301


def _imagined_losses(rho_setting: str):
    torch.manual_seed(0)
    cfg = tiny_config(f"behavior.actor_grad={rho_setting}")
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    batch = random_batch(cfg)
    with torch.no_grad():
        post = agent.world_model.loss(batch).post
        for p in agent.behavior.critic.parameters():  # the slow critic apart from the critic, as after training
            p.add_(0.05 * torch.randn_like(p))
    traj = agent.behavior.imagine(agent.world_model, post)
    ret = agent.behavior.returns(agent.world_model, traj, batch["is_terminal"])
    actor_loss, _ = agent.behavior.actor_loss(traj, ret)
    return agent, traj, actor_loss


@pytest.mark.parametrize(
    ("actor_grad", "discrete", "rho"),
    [
        ("auto", True, 1.0),
        ("auto", False, 0.0),
        ("reinforce", False, 1.0),
        ("dynamics", True, 0.0),
        ("both", True, 0.75),
    ],
)
def test_rho_follows_actor_grad_and_both_gives_actor_grad_mix_to_the_dynamics_gradient(actor_grad, discrete, rho):
    """The official code's `both`: objective = mix * dynamics + (1 - mix) * REINFORCE, so rho = 1 - actor_grad_mix."""
    cfg = tiny_config(f"behavior.actor_grad={actor_grad}", "behavior.actor_grad_mix=0.25").behavior
    assert ActorCritic.reinforce_mix(cfg, discrete) == rho


def test_with_rho_one_the_actor_gradient_does_not_flow_through_the_dynamics():
    agent, traj, actor_loss = _imagined_losses("reinforce")
    assert isinstance(traj.feat, OneHotFeature)  # float32 on the CPU: the heads gather the latents' weight rows
    assert not traj.feat.rest.requires_grad  # imagination ran without autograd
    grads = torch.autograd.grad(actor_loss, list(agent.behavior.actor.parameters()), retain_graph=True)
    assert sum(g.abs().sum() for g in grads) > 0
    model = list(agent.world_model.parameters())
    assert all(g is None for g in torch.autograd.grad(actor_loss, model, allow_unused=True))


@pytest.mark.parametrize("rho_setting", ["reinforce", "dynamics"])
def test_the_actor_loss_reuses_the_imagination_policy_of_each_state(rho_setting):
    agent, traj, _ = _imagined_losses(rho_setting)
    actor = agent.behavior.actor
    assert traj.policy.shape[0] == traj.feat.shape[0] - 1 and traj.policy.requires_grad
    feat = traj.feat.dense() if isinstance(traj.feat, OneHotFeature) else traj.feat
    torch.testing.assert_close(traj.policy, actor.net(feat[:-1].detach()))  # output t read state t


def test_with_rho_zero_the_actor_gradient_flows_through_the_dynamics():
    _, traj, actor_loss = _imagined_losses("dynamics")
    assert traj.feat.requires_grad
    (g_feat,) = torch.autograd.grad(actor_loss, [traj.feat], retain_graph=True)
    assert g_feat.abs().sum() > 0


def test_returns_read_the_heads_only_where_the_equations_do():
    """V_t uses r_t and d_t for t < H and v'(s_t) for t <= H, and d_0 comes from the data: running the reward and
    discount heads on only those states gives the returns and weights of heads run on every imagined state."""
    agent, traj, _ = _imagined_losses("reinforce")
    terminal = torch.zeros(traj.feat.shape[1])
    terminal[0] = 1
    ret = agent.behavior.returns(agent.world_model, traj, terminal[:, None])  # (B, T) with T = 1
    wm, lam, feat = agent.world_model, agent.cfg.behavior.return_lambda, traj.feat.dense()
    reward, discount = wm.reward(feat), wm.continuation(feat)
    discount[0] = wm.discount * (1 - terminal)
    value = agent.behavior.slow_critic(feat).squeeze(-1)
    target = lambda_return(reward[:-1], value[:-1], discount[:-1], value[-1], lam)
    torch.testing.assert_close(ret.target, target)
    torch.testing.assert_close(ret.weight, torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]]), 0))
    assert ret.weight[1, 0] == 0 and ret.reward.shape == target.shape


def test_without_a_discount_head_every_discount_is_gamma_even_from_a_terminal_start():
    """The official code's `disc = discount * ones` where no head predicts them (the DMC presets)."""
    torch.manual_seed(0)
    cfg = tiny_config("model.discount_head=false", "behavior.actor_grad=reinforce")
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    batch = random_batch(cfg)
    with torch.no_grad():
        post = agent.world_model.loss(batch).post
    traj = agent.behavior.imagine(agent.world_model, post)
    terminal = torch.ones_like(batch["is_terminal"])
    ret = agent.behavior.returns(agent.world_model, traj, terminal)
    gamma = cfg.behavior.discount
    steps = torch.arange(cfg.behavior.horizon + 1, dtype=torch.float32)[:, None]  # weight: (H + 1, starts)
    torch.testing.assert_close(ret.weight, (gamma**steps).expand_as(ret.weight))


def test_one_update_changes_each_module_only_through_its_own_optimiser():
    torch.manual_seed(0)
    cfg = tiny_config()
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    names = {name: set(id(p) for p in opt.params) for name, opt in agent.optimizers.items()}
    assert not (names["model"] & names["actor"]) and not (names["actor"] & names["critic"])
    assert set(id(p) for p in agent.behavior.actor.parameters()) == names["actor"]
    before = {name: [p.detach().clone() for p in opt.params] for name, opt in agent.optimizers.items()}
    metrics = agent.train_step(random_batch(cfg))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert int(agent.behavior.updates) == 1
    for name, opt in agent.optimizers.items():
        assert any(not torch.equal(a, p) for a, p in zip(before[name], opt.params)), name
    assert all(p.grad is None for p in agent.parameters())  # freed after each step, not kept until the next


def test_actor_loss_with_rho_one_is_reinforce_on_the_advantage_plus_entropy_worked_by_hand():
    # Two states s_0, s_1 with targets V_1, V_2, slow-critic baselines v'(s_0), v'(s_1) and weights w_0, w_1.
    log_prob = torch.tensor([-0.5, -1.0], requires_grad=True)
    target = torch.tensor([3.0, 1.0], requires_grad=True)
    entropy, baseline, weight = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.5])
    loss = actor_loss(log_prob, entropy, target, baseline, weight, rho=1.0, entropy_scale=0.1)
    # objective_0 = 0.1 * 1 + (-0.5)(3 - 1) = -0.9; objective_1 = 0.1 * 2 + (-1)(1 - 2) = 1.2
    # loss = -(1 * -0.9 + 0.5 * 1.2) / 2 = 0.15
    torch.testing.assert_close(loss, torch.tensor(0.15))
    g_log_prob, g_target = torch.autograd.grad(loss, [log_prob, target], allow_unused=True)
    torch.testing.assert_close(g_log_prob, torch.tensor([-1.0, 0.25]))  # -w (V - v') / 2
    assert g_target is None  # the advantage is a constant for REINFORCE


def test_actor_loss_with_rho_zero_backpropagates_the_returns_worked_by_hand():
    log_prob = torch.tensor([-0.5, -1.0], requires_grad=True)
    target = torch.tensor([3.0, 1.0], requires_grad=True)
    entropy, baseline, weight = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.5])
    loss = actor_loss(log_prob, entropy, target, baseline, weight, rho=0.0, entropy_scale=0.1)
    # objective_0 = 0.1 + 3 = 3.1; objective_1 = 0.2 + 1 = 1.2; loss = -(3.1 + 0.6) / 2 = -1.85
    torch.testing.assert_close(loss, torch.tensor(-1.85))
    g_log_prob, g_target = torch.autograd.grad(loss, [log_prob, target], allow_unused=True)
    assert g_log_prob is None
    torch.testing.assert_close(g_target, torch.tensor([-0.5, -0.25]))  # -w / 2
    mixed = actor_loss(log_prob, entropy, target, baseline, weight, rho=0.5, entropy_scale=0.1)
    # objective_0 = 0.1 + 0.5 (-0.5)(2) + 0.5 * 3 = 1.1; objective_1 = 0.2 + 0.5 + 0.5 = 1.2
    torch.testing.assert_close(mixed, torch.tensor(-(1.1 + 0.6) / 2))


def test_critic_loss_regresses_onto_the_weighted_returns_worked_by_hand():
    value = torch.tensor([1.0, 2.0, 0.0], requires_grad=True)
    target = torch.tensor([2.0, 0.0, 1.0], requires_grad=True)
    weight = torch.tensor([1.0, 0.5, 0.25])
    loss = critic_loss(value, target, weight)
    # 0.5 * (1, 4, 1) * (1, 0.5, 0.25) = (0.5, 1, 0.125); mean = 1.625 / 3
    torch.testing.assert_close(loss, torch.tensor(1.625 / 3))
    g_value, g_target = torch.autograd.grad(loss, [value, target], allow_unused=True)
    torch.testing.assert_close(g_value, torch.tensor([-1.0, 1.0, -0.25]) / 3)  # w (v - V) / 3
    assert g_target is None


def test_reward_and_discount_terms_worked_by_hand():
    # Reward: Normal(pred, 1) on tanh(r): targets tanh(0) = 0 and tanh(100) = 1.
    pred = torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(reward_nll(pred, torch.tanh(torch.tensor([[0.0, 100.0]]))), torch.tensor(4.25 / 4))
    # Discount: Bernoulli cross-entropy; sigmoid(0) = 1/2 against 1, sigmoid(ln 3) = 3/4 against 0.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    expected = (math.log(2.0) + math.log(4.0)) / 2
    torch.testing.assert_close(discount_nll(logits, torch.tensor([[1.0, 0.0]])), torch.tensor(expected))
    # The soft target gamma (1 - terminal) of a non-terminal step: -(g ln 3/4 + (1 - g) ln 1/4) with g = 0.99.
    soft = -(0.99 * math.log(0.75) + 0.01 * math.log(0.25))
    torch.testing.assert_close(discount_nll(torch.tensor([math.log(3.0)]), torch.tensor([0.99])), torch.tensor(soft))


def test_world_model_reward_and_discount_terms_with_constant_heads_worked_by_hand():
    """The heads' targets as the world model builds them from a batch: tanh(r) for the reward, the soft label
    gamma (1 - terminal) for the discount (the official `discount * (1 - is_terminal)`)."""
    torch.manual_seed(0)
    cfg = tiny_config("behavior.discount=0.99", "model.reward_transform=tanh", "model.reward_multiplier=1.0")
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    wm = agent.world_model
    with torch.no_grad():  # every step predicts reward 0.5 and continues with probability sigmoid(ln 3) = 3/4
        for head, bias in ((wm.reward_head, 0.5), (wm.discount_head, math.log(3.0))):
            head.out.weight.zero_()
            head.out.bias.fill_(bias)
    batch = random_batch(cfg)
    batch["reward"] = torch.tensor([0.0, 100.0, -100.0]).repeat_interleave(5).reshape(3, 5)  # tanh: 0, 1, -1
    batch["is_terminal"] = torch.zeros(3, 5)
    batch["is_terminal"][:, -1] = 1.0  # one step in five
    m = wm.loss(batch).metrics
    # 0.5 (0.5 - tanh r)^2 for the three rows: 0.125, 0.125, 1.125
    torch.testing.assert_close(m["loss/reward"], torch.tensor((0.125 + 0.125 + 1.125) / 3))
    live = -(0.99 * math.log(0.75) + 0.01 * math.log(0.25))  # target 0.99
    torch.testing.assert_close(m["loss/discount"], torch.tensor((4 * live + math.log(4.0)) / 5))


@pytest.mark.parametrize("image_scale, vector_scale", [(1.0, 1.0), (0.5, 3.0)])
def test_world_model_loss_weights_each_observation_by_its_kind(image_scale, vector_scale):
    torch.manual_seed(0)
    cfg = tiny_config(f"model.image_scale={image_scale}", f"model.vector_scale={vector_scale}", "model.kl_scale=0.1")
    agent = Agent(cfg, {"image": (64, 64, 1), "position": (3,)}, 3, True)
    batch = {**random_batch(cfg), "position": torch.randn(3, 5, 3)}
    out = agent.world_model.loss(batch)
    m = out.metrics
    expected = image_scale * m["loss/image"] + vector_scale * m["loss/position"] + m["loss/reward"]
    expected = expected + cfg.model.discount_scale * m["loss/discount"] + 0.1 * m["loss/kl"]
    assert m["loss/position"] > 0 and m["loss/image"] > 0
    torch.testing.assert_close(out.loss.detach(), expected)


@pytest.mark.parametrize("reward_scale", [1.0, 2.0])
def test_world_model_loss_adds_its_terms_with_their_scales(reward_scale):
    torch.manual_seed(0)
    cfg = tiny_config(
        "model.kl_scale=0.1",
        "model.discount_scale=5.0",
        f"model.reward_scale={reward_scale}",
        "model.reward_transform=tanh",
    )
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    out = agent.world_model.loss(random_batch(cfg))
    m = out.metrics
    expected = m["loss/image"] + reward_scale * m["loss/reward"] + 5.0 * m["loss/discount"] + 0.1 * m["loss/kl"]
    torch.testing.assert_close(m["loss/model"], expected)  # without free nats the balanced KL's value is the KL
    torch.testing.assert_close(out.loss.detach(), expected)
    target = agent.world_model.reward_target(torch.tensor([0.0, 100.0]))
    torch.testing.assert_close(target, torch.tensor([0.0, 1.0]))
