"""Several agents in one world: shared weights, attention across a world's agents (equivariance), whole worlds per
batch, and single-agent DreamerV2 where there is one agent."""

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_config

from dreamctl.model.agent import Agent
from dreamctl.model.attention import AgentAttention, CentralCritic, agents_adjacent
from dreamctl.model.rssm import RSSM, State
from dreamctl.training.replay import Replay

M = 3  # agents per world
G = 2  # worlds


def _permute_within_worlds(x: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """Rows (G * M, ...) world-major: the agents of every world reordered by `perm`."""
    return x.unflatten(0, (-1, M))[:, perm].flatten(0, 1)


def test_agents_adjacent_puts_each_worlds_agents_side_by_side_at_every_step():
    x = torch.tensor([[0, 1], [10, 11], [20, 21], [30, 31]])  # world 0: agents 0, 1 (rows 0, 1); world 1: rows 2, 3
    assert agents_adjacent(x, 2).tolist() == [0, 10, 1, 11, 20, 30, 21, 31]
    assert agents_adjacent(x, 1).tolist() == x.flatten().tolist()


@pytest.mark.parametrize("perm", [[1, 2, 0], [2, 1, 0]])
def test_agent_attention_is_permutation_equivariant_and_keeps_worlds_apart(perm):
    torch.manual_seed(0)
    attention = AgentAttention(16, M, layers=2, heads=4).double()
    x = torch.randn(G * M, 16, dtype=torch.float64)
    out = attention(x)
    torch.testing.assert_close(attention(_permute_within_worlds(x, perm)), _permute_within_worlds(out, perm))
    changed = x.clone()
    changed[0] += 1.0  # an agent of world 0: world 1's outputs stay, world 0's other agents' change
    out2 = attention(changed)
    torch.testing.assert_close(out2[M:], out[M:])
    assert not torch.allclose(out2[1:M], out[1:M])


def test_rssm_with_communication_is_equivariant_and_lets_agents_see_each_other():
    torch.manual_seed(0)
    perm = [2, 0, 1]
    rssm = RSSM(8, 3, deter=16, hidden=16, stoch=4, classes=4, communication=AgentAttention(16, M, 1, 4)).double()
    state = State(
        torch.randn(G * M, 16, dtype=torch.float64),
        torch.nn.functional.one_hot(torch.randint(0, 4, (G * M, 4)), 4).flatten(-2).double(),
        torch.zeros(G * M, 4, 4, dtype=torch.float64),
    )
    action = torch.nn.functional.one_hot(torch.randint(0, 3, (G * M,)), 3).double()
    deter = rssm.recurrent(state, action)
    swapped = state.map(lambda x: _permute_within_worlds(x, perm))
    permuted = rssm.recurrent(swapped, _permute_within_worlds(action, perm))
    torch.testing.assert_close(permuted, _permute_within_worlds(deter, perm))
    other = action.clone()
    other[1] = other[1].roll(1)  # agent 1 of world 0 acts otherwise: agent 0 of world 0 sees it
    assert not torch.allclose(rssm.recurrent(state, other)[0], deter[0])
    silent = RSSM(8, 3, deter=16, hidden=16, stoch=4, classes=4).double()
    silent.load_state_dict({k: v for k, v in rssm.state_dict().items() if not k.startswith("communication.")})
    torch.testing.assert_close(silent.recurrent(state, other)[0], silent.recurrent(state, action)[0])


def test_central_critic_is_equivariant_over_a_worlds_agents():
    torch.manual_seed(0)
    perm = [1, 0, 2]
    critic = CentralCritic(12, M, layers=2, units=16, heads=4).double()
    feat = torch.randn(5, G * M, 12, dtype=torch.float64)  # (time, worlds * agents, F), as imagination gives it
    value = critic(feat)
    assert value.shape == (5, G * M, 1)
    along_agents = lambda x: _permute_within_worlds(x.transpose(0, 1), perm).transpose(0, 1)
    torch.testing.assert_close(critic(along_agents(feat)), along_agents(value))


def _losses(agent: Agent, batch: dict) -> dict:
    torch.manual_seed(1)
    model = agent.world_model.loss(batch)
    traj = agent.behavior.imagine(agent.world_model, model.post, batch.get("is_present"))
    ret = agent.behavior.returns(agent.world_model, traj, batch["is_terminal"])
    actor, actor_metrics = agent.behavior.actor_loss(traj, ret)
    return {
        "model": model.loss,
        "actor": actor,
        "critic": agent.behavior.critic_loss(traj, ret)[0],
        # what the logs report of the latents and the policy
        "post_entropy": model.metrics["train/post_entropy"],
        "prior_entropy": model.metrics["train/prior_entropy"],
        "actor_entropy": actor_metrics["train/actor_entropy"],
    }


@pytest.mark.parametrize("multi", [[], ["multi.communication=attention", "multi.critic=central"]])
def test_one_agent_is_single_agent_dreamerv2_whatever_the_multi_settings(multi):
    """With one agent the multi section builds nothing: the same parameters give the same losses."""
    cfg = tiny_config(*multi)
    torch.manual_seed(0)
    single = Agent(tiny_config(), {"image": (64, 64, 1)}, 3, True)
    one = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=1)
    assert one.state_dict().keys() == single.state_dict().keys()
    one.load_state_dict(single.state_dict())
    batch = random_batch(cfg)
    for name, value in _losses(one, batch).items():
        torch.testing.assert_close(value, _losses(single, batch)[name], msg=name)


def test_agents_without_communication_share_the_single_agent_networks_and_world_model_loss():
    """communication none, local critic: one set of weights serves every agent, so the world-model loss of a batch of
    whole worlds is the single-agent loss of the same rows."""
    cfg = tiny_config("train.batch_size=4")
    torch.manual_seed(0)
    single = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    two = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=2)
    assert two.state_dict().keys() == single.state_dict().keys()
    two.load_state_dict(single.state_dict())
    batch = random_batch(cfg)
    torch.manual_seed(1)
    expected = single.world_model.loss(batch).loss
    torch.manual_seed(1)
    torch.testing.assert_close(two.world_model.loss(batch).loss, expected)


def test_attention_and_central_critic_train_one_update_on_whole_worlds():
    cfg = tiny_config("train.batch_size=4", "multi.communication=attention", "multi.critic=central")
    torch.manual_seed(0)
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=2)
    names = agent.state_dict().keys()
    assert any(k.startswith("world_model.rssm.communication.") for k in names)
    assert any(k.startswith("behavior.critic.attention.") for k in names)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    metrics = agent.train_step(random_batch(cfg))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    after = agent.state_dict()
    for part in ("world_model.rssm.communication.", "behavior.critic.attention."):
        assert any(not torch.equal(before[k], after[k]) for k in names if k.startswith(part)), part


def test_replay_samples_whole_worlds_and_one_agent_samples_as_before():
    replay = Replay(400, 6, {"x": (1,)}, 2, True, agents=3)
    for t in range(50):
        replay.add(
            {
                "x": (100 * t + np.arange(6, dtype=np.float32))[:, None],
                "action": np.zeros(6, np.int32),
                "reward": np.zeros(6, np.float32),
                "is_first": np.zeros(6, bool),
                "is_last": np.zeros(6, bool),
                "is_terminal": np.zeros(6, bool),
            }
        )
    x = replay.sample(6, 5, np.random.default_rng(0))["x"][..., 0]  # (6, 5): 100 * time + copy
    copy, time = x % 100, x // 100
    assert (copy[:, 0] % 3 == [0, 1, 2, 0, 1, 2]).all()  # a world's three agents, in order, world-major
    assert (copy[0::3, 0] // 3 == copy[2::3, 0] // 3).all()
    assert (time == time[::3].repeat(3, 0)).all()  # one window per world
    single = Replay(400, 6, {"x": (1,)}, 2, True)
    single.data, single.cursor = replay.data, replay.cursor
    rng, manual = np.random.default_rng(1), np.random.default_rng(1)
    envs, starts = manual.integers(0, 6, size=4), manual.integers(0, 50 - 5 + 1, size=4)
    expected = replay.data["x"][(starts[:, None] + np.arange(5)) % single.rows_per_env, envs[:, None]]
    np.testing.assert_array_equal(single.sample(4, 5, rng)["x"], expected)


def test_each_imagination_start_keeps_its_own_state_and_terminal_flag_with_several_agents():
    """Starts are ordered world, time, agent (`agents_adjacent`): the start from batch row b = 2w + a at time t is
    row (w * T + t) * 2 + a, and the terminal flag of exactly that start zeroes its first discount."""
    cfg = tiny_config("train.batch_size=4", "multi.communication=attention")
    torch.manual_seed(0)
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=2)
    batch = random_batch(cfg)
    terminal = torch.zeros(4, cfg.train.batch_length)
    terminal[1, 2] = 1.0  # world 0, agent 1, time 2
    with torch.no_grad():
        post = agent.world_model.loss(batch).post
        traj = agent.behavior.imagine(agent.world_model, post)
        ret = agent.behavior.returns(agent.world_model, traj, terminal)
    row = (0 * cfg.train.batch_length + 2) * 2 + 1
    first = traj.feat[0]
    first = first if isinstance(first, torch.Tensor) else first.dense()
    torch.testing.assert_close(first[row], post.feat()[1, 2])
    assert torch.nonzero(ret.weight[1] == 0).flatten().tolist() == [row]


def _rows_changed(batch: dict, rows: torch.Tensor, seed: int) -> dict:
    """The batch with the observation, action, reward and terminal flag of the rows where `rows` (B, T) is True
    replaced by other values."""
    other = random_batch(tiny_config("train.batch_size=4"), seed)
    out = dict(batch)
    for key in ("image", "action", "reward", "is_terminal"):
        out[key] = batch[key].clone()
        out[key][rows] = other[key][rows]
    out["reward"][rows] += 10.0
    return out


def _gradients(agent: Agent, batch: dict) -> list[torch.Tensor]:
    losses = _losses(agent, batch)
    params = [p for p in agent.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(losses.values()), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def test_agents_that_finished_early_contribute_no_loss_and_are_not_attended_to():
    """Agent 1 of world 0 finished at step 2: whatever its later rows hold, every loss, gradient and logged entropy
    stays the same (nothing reads them: no loss term, no other agent's attention, no imagined trajectory's weight);
    changing the same steps of a present agent does change them."""
    cfg = tiny_config("train.batch_size=4", "multi.communication=attention", "multi.critic=central")
    torch.manual_seed(0)
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=2)
    batch = random_batch(cfg)
    batch["is_present"] = torch.ones(4, cfg.train.batch_length)
    batch["is_present"][1, 3:] = 0.0  # its last present step is 2
    absent = batch["is_present"] == 0
    expected = _losses(agent, batch)
    changed = _rows_changed(batch, absent, seed=5)
    for name, value in _losses(agent, changed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    for got, want in zip(_gradients(agent, changed), _gradients(agent, batch), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    present_agent = absent.roll(-1, 0)  # row 0: agent 0 of world 0, the same steps
    differ = _losses(agent, _rows_changed(batch, present_agent, seed=5))
    assert all(differ[name] != expected[name] for name in ("model", "actor", "critic", "post_entropy"))


def test_a_world_whose_agents_are_all_absent_has_each_agent_attend_to_itself_alone():
    """No agent of the world is present (every one finished before the step): each still attends to its own key, so
    its outputs are finite and equal those of the same layers over a group of one."""
    torch.manual_seed(0)
    team, alone = AgentAttention(8, agents=2, layers=2, heads=2), AgentAttention(8, agents=1, layers=2, heads=2)
    alone.load_state_dict(team.state_dict())
    x = torch.randn(3, 2, 8)  # (steps, worlds * agents, D): one world of two agents
    out = team(x, present=torch.zeros(3, 2))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, alone(x))


def test_a_checkpoint_of_torchs_encoder_names_loads_with_its_optimizer_moments():
    """Attention checkpoints from before dreamctl's own encoder layer named its parameters `encoder.layers.<i>`."""
    cfg = tiny_config("train.batch_size=4", "multi.communication=attention", "multi.critic=central")
    torch.manual_seed(0)
    trained = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=2)
    trained.train_step(random_batch(cfg))
    saved = trained.state_tensors()
    old = {
        k.replace("communication.layers.", "communication.encoder.layers.").replace(
            "attention.layers.", "attention.encoder.layers."
        ): v
        for k, v in saved.items()
    }
    assert old.keys() != saved.keys()
    fresh = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=2)
    fresh.load_state_tensors(old)
    for key, value in fresh.state_tensors().items():
        assert torch.equal(value, saved[key]), key
    networks_only = Agent(cfg, {"image": (64, 64, 1)}, 3, True, agents=2)  # as `eval` loads a checkpoint
    networks_only.load_state_dict({k[len("agent/") :]: v for k, v in old.items() if k.startswith("agent/")})
    for key, value in networks_only.state_dict().items():
        assert torch.equal(value, saved[f"agent/{key}"]), key
