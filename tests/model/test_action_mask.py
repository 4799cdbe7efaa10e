"""Envs that restrict actions (`action_mask`): the actor never chooses an action the mask forbids, in acting from
the env's mask and in imagination from the world model's reconstruction of it."""

import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamctl.model.agent import Agent
from dreamctl.model.networks import ActionHead
from dreamctl.model.rssm import State


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), actions=st.integers(2, 7))
def test_an_unavailable_action_is_never_sampled_nor_the_mode(seed, actions):
    torch.manual_seed(seed)
    head = ActionHead(6, actions, True, layers=1, units=8)
    available = torch.rand(64, actions) < 0.4
    available[0] = False  # a row that allows nothing allows everything
    out = torch.randn(64, actions) * 5
    out[available] -= 20.0  # the network prefers exactly the forbidden actions
    dist = head.dist(out, available)
    allowed = available | ~available.any(-1, keepdim=True)
    for _ in range(50):
        assert bool(allowed.gather(-1, dist.sample().argmax(-1, keepdim=True)).all())
    assert bool(allowed.gather(-1, dist.mode().argmax(-1, keepdim=True)).all())
    assert bool(torch.isfinite(dist.entropy()).all()) and bool(torch.isfinite(dist.log_prob(dist.sample())).all())


def _agent_with_mask(predicted: list[float]) -> Agent:
    """An agent observing a vector and a 3-action mask, whose world model reconstructs the mask as `predicted`
    in every state (its decoder head for the mask reads nothing and outputs its bias)."""
    cfg = tiny_config("train.batch_size=4")
    torch.manual_seed(0)
    agent = Agent(cfg, {"state": (4,), "action_mask": (3,)}, 3, True)
    head = agent.world_model.vector_decoder.heads[agent.world_model.vector_decoder.keys.index("action_mask")]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(predicted))
    return agent


def _start(agent: Agent, batch: int = 4, length: int = 5) -> State:
    rssm = agent.world_model.rssm
    logits = torch.randn(batch, length, rssm.stoch, rssm.classes)
    stoch = torch.nn.functional.one_hot(logits.argmax(-1), rssm.classes).float().flatten(-2)
    return State(torch.randn(batch, length, rssm.deter_dim), stoch, logits)


def test_the_world_models_availability_reaches_the_actor_in_imagination():
    for predicted, allowed in (([1.0, 0.0, 1.0], [0, 2]), ([0.0, 0.9, 0.1], [1])):
        agent = _agent_with_mask(predicted)
        with torch.no_grad():
            traj = agent.behavior.imagine(agent.world_model, _start(agent))
        chosen = traj.action[1:].argmax(-1).unique().tolist()
        assert set(chosen) <= set(allowed) and traj.available is not None
        assert traj.available.shape == (agent.cfg.behavior.horizon, 20, 3)
        assert (traj.available == torch.tensor([p > 0.5 for p in predicted])).all()


def test_acting_chooses_only_what_the_envs_mask_allows():
    agent = _agent_with_mask([1.0, 1.0, 1.0])  # the model's own guess plays no part in acting
    mask = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]).repeat(50, 1)
    obs = {"state": torch.randn(100, 4), "action_mask": mask}
    state = agent.initial_act_state(100)
    for greedy in (False, True):
        action, _ = agent.policy(obs, torch.ones(100), state, greedy=greedy)
        assert bool((mask.gather(-1, action.argmax(-1, keepdim=True)) == 1).all())


def test_an_update_with_a_mask_keeps_every_loss_finite():
    agent = _agent_with_mask([1.0, 0.0, 1.0])
    g = torch.Generator().manual_seed(0)
    b, t = 4, agent.cfg.train.batch_length
    batch = {
        "state": torch.randn(b, t, 4, generator=g),
        "action_mask": (torch.rand(b, t, 3, generator=g) < 0.6).float(),
        "action": torch.nn.functional.one_hot(torch.randint(0, 3, (b, t), generator=g), 3).float(),
        "reward": torch.randn(b, t, generator=g),
        "is_first": torch.zeros(b, t).index_fill_(1, torch.tensor([0]), 1.0),
        "is_last": torch.zeros(b, t),
        "is_terminal": torch.zeros(b, t),
    }
    metrics = agent.train_step(batch)
    assert all(bool(torch.isfinite(v).all()) for v in metrics.values()), metrics
