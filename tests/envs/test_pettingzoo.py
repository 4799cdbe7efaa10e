"""PettingZoo's parallel envs (`pz:<family>/<env>`): agents as adjacent copies, their own observations and rewards,
worlds that end and restart together, and training and evaluation through the real CLI."""

import json

import numpy as np
import pytest
from conftest import FAST, fast_args, import_extra, run_cli

from dreamctl.config import load_config
from dreamctl.envs import make_env
from dreamctl.envs.agents import AGENT_KEY
from dreamctl.envs.pettingzoo_env import load_parallel_env
from dreamctl.errors import UsageError

import_extra("pettingzoo", "multiagent")
import_extra("mpe2", "multiagent")


def _env(name: str, worlds: int, *sets: str):
    return make_env(load_config("multiagent", [f"env.name={name}", *sets]).env, seed=3, num_envs=worlds)


def test_simple_spread_gives_each_agent_its_own_vector_and_ends_worlds_together():
    env = _env("pz:mpe2/simple_spread_v3", 2)
    try:
        assert env.spec.num_agents == 3 and env.num_envs == 6 and env.spec.discrete and env.spec.action_dim == 5
        assert env.spec.obs_space == {"state": (18,), AGENT_KEY: (3,)}
        first = env.reset()
        assert first.is_first.all() and first.obs[AGENT_KEY].tolist() == np.tile(np.eye(3), (2, 1)).tolist()
        same_world = load_parallel_env("pz:mpe2/simple_spread_v3")()
        same, _ = same_world.reset(seed=3)  # world 0's first observations, as PettingZoo shows them
        same_world.close()
        expected = np.stack([same[agent] for agent in ("agent_0", "agent_1", "agent_2")])
        np.testing.assert_array_equal(first.obs["state"][:3], expected)
        assert not np.array_equal(first.obs["state"][0], first.obs["state"][1])
        lasts = []
        for t in range(60):
            step = env.step(np.full(6, t % 5))
            lasts.append(step.is_last.copy())
            if t and lasts[-2].any():
                assert (step.is_first == lasts[-2]).all() and (step.reward[step.is_first] == 0).all()
            assert not step.is_terminal.any()  # spread's episodes end by its time limit only
        ended = np.array(lasts)
        assert ended[24].all() and ended.sum() == 2 * 6  # 25 cycles per episode, every agent of both worlds
    finally:
        env.close()


def test_cooperative_pong_frames_are_resized_for_the_conv_encoder():
    env = _env("pz:butterfly/cooperative_pong_v6", 1)
    try:
        assert env.spec.obs_space == {"image": (64, 64, 1), AGENT_KEY: (2,)}
        env.reset()
        step = env.step(np.array([1, 1]))
        assert step.obs["image"].dtype == np.uint8 and step.obs["image"].shape == (2, 64, 64, 1)
        assert step.obs["image"].max() > step.obs["image"].min()  # a drawn frame, not a blank one
    finally:
        env.close()


@pytest.mark.parametrize(
    "name, sets",
    [
        ("pz:butterfly/cooperative_pong_v6", []),
        ("pz:mpe2/simple_spread_v3", ["--set", "train.batch_size=6"]),
    ],
)
def test_trains_through_the_cli_and_eval_shows_each_agent(tmp_path, name, sets):
    home = tmp_path / "home"
    run_cli("train", name, "--steps", "400", *fast_args(), *sets, home=home, check=True)
    result = json.loads(run_cli("eval", "latest", "--episodes", "2", "--json", home=home, check=True).stdout)
    agents = 2 if "pong" in name else 3
    assert [a["agent"] for a in result["agents"]] == list(range(agents))
    assert all(len(a["returns"]) == 2 for a in result["agents"])
    team = np.mean([a["returns"] for a in result["agents"]], axis=0)
    np.testing.assert_allclose(result["returns"], team, rtol=1e-6)
    listed = json.loads(run_cli("list", "--json", home=home, check=True).stdout)
    assert listed[0]["preset"] == "multiagent"
    if "spread" in name:  # vectors only, and no rendering to offer: pz: envs refuse env.render_pixels
        proc = run_cli("eval", "latest", "--video", str(tmp_path / "play.mp4"), home=home)
        assert (
            proc.returncode == 2
            and proc.stderr.strip() == "error: run-1 observes no images, so --video has nothing to show."
        )


def test_two_player_atari_reads_the_roms_that_ale_py_ships():
    env = _env("pz:atari/boxing_v2", 1)
    try:
        assert env.spec.num_agents == 2 and env.spec.action_dim == 18
        env.reset()
        frames = env.step(np.array([1, 1])).obs["image"]
        assert frames.shape == (2, 64, 64, 1) and frames.max() > frames.min()
    finally:
        env.close()


def _register(monkeypatch, env: str, make) -> str:
    """Makes `pz:testing/<env>` name a parallel env built by `make(render_mode)`, for this test only."""
    import sys
    import types

    from dreamctl.envs import pettingzoo_env

    module = types.ModuleType(env)
    module.parallel_env = make
    monkeypatch.setitem(pettingzoo_env.MODULE_OF_FAMILY, "testing", "dreamctl_testing")
    monkeypatch.setitem(sys.modules, f"dreamctl_testing.{env}", module)
    return f"pz:testing/{env}"


@pytest.fixture
def dying_family(monkeypatch):
    """`pz:testing/dying_v0` names tests/envs/dying_world.py's env, whose agents finish at different times."""
    import dying_world

    return _register(monkeypatch, "dying_v0", dying_world.parallel_env)


def test_an_agent_that_finishes_early_is_absent_until_its_world_ends(dying_family):
    env = _env(dying_family, 2)
    try:
        env.reset()
        steps = [env.step(np.zeros(6, np.int64)) for _ in range(7)]  # the env raises if a finished agent acts
    finally:
        env.close()
    present = np.array([s.is_present[:3] for s in steps[:6]])  # world 0's agents a, b, c at steps 1..6
    assert present.tolist() == [[True] * 3] * 2 + [[True, False, True]] * 2 + [[True, False, False]] * 2
    terminal = np.array([s.is_terminal[:3] for s in steps[:6]])
    assert terminal[1].tolist() == [False, True, False]  # b's last step: terminated, and not the world's last
    assert not steps[1].is_last.any() and steps[5].is_last.all()  # the world ends for every agent together
    assert terminal[5].tolist() == [False, True, False]  # ... with each agent's own end: b terminated, c truncated
    reward = np.array([s.reward[:3] for s in steps[:6]])
    assert reward.sum(0).tolist() == [6.0, 4.0, 12.0]  # a 6 steps x 1, b 2 x 2, c 4 x 3
    assert steps[6].is_first.all() and steps[6].is_present.all()  # a new episode: everyone is back
    np.testing.assert_array_equal(steps[6].is_present[3:], steps[6].is_present[:3])


def test_an_agent_that_finished_early_logs_its_own_length_and_its_world_the_longest(dying_family):
    import torch

    from dreamctl.model.agent import Agent
    from dreamctl.training.rollout import EpisodeTracker, play

    env = _env(dying_family, 1)
    tracker = EpisodeTracker(3)
    cfg = load_config("multiagent", [f"env.name={dying_family}", "model.deter=16", "model.hidden=16"])
    spec = env.spec
    agent = Agent(cfg, spec.obs_space, spec.action_dim, spec.discrete, torch.device("cpu"), None, spec.num_agents)
    try:
        tracker.update(env.reset())
        finished = [episode for _ in range(6) for episode in tracker.update(env.step(np.zeros(3, np.int64)))]
        played = play(agent, env, episodes=1)
    finally:
        env.close()
    assert [(e.length, e.ret) for e in finished] == [(6, 6.0), (2, 4.0), (4, 12.0)]  # a, b (terminated), c (truncated)
    assert played.lengths == [6]  # the world's episode: its longest agent's


def test_an_agent_the_env_keeps_listing_after_it_finished_gets_the_resting_action(monkeypatch):
    import dying_world

    worlds: list = []
    name = _register(
        monkeypatch,
        "keeping_v0",
        lambda render_mode=None: worlds.append(dying_world.KeepingWorld(render_mode)) or worlds[-1],
    )
    env = _env(name, 1)
    try:
        env.reset()
        steps = [env.step(np.ones(3, np.int64)) for _ in range(6)]
    finally:
        env.close()
    assert [s.is_present.tolist() for s in steps] == [[True] * 3] * 2 + [[True, False, True]] * 2 + [
        [True, False, False]
    ] * 2
    assert steps[5].is_last.all()
    assert worlds[-1].given_after_end == [0] * 6  # b at steps 3-6, c at steps 5-6: never the 1 the rows held


@pytest.mark.parametrize("repeat", [1, 2])
def test_an_agent_gets_no_reward_after_it_finished_though_the_env_keeps_rewarding_it(monkeypatch, repeat):
    import dying_world

    name = _register(monkeypatch, "rewarding_v0", dying_world.RewardingWorld)
    env = _env(name, 1, f"env.action_repeat={repeat}")
    try:
        env.reset()
        steps = [env.step(np.zeros(3, np.int64)) for _ in range(6 // repeat)]
    finally:
        env.close()
    assert steps[-1].is_last.all() and not any(s.is_last.any() for s in steps[:-1])
    # a's 6 env steps x 1, b's 2 x 2 (terminated after env step 2), c's 4 x 3 (truncated after env step 4); the
    # env's rewards for b and c after they finished fall on no row, padding or not
    assert np.sum([s.reward for s in steps], 0).tolist() == [6.0, 4.0, 12.0]
    for s in steps:
        assert not s.reward[~s.is_present].any()


def test_an_observation_key_named_agent_keeps_its_values_beside_the_agents_one_hot(monkeypatch):
    import dying_world

    env = _env(_register(monkeypatch, "dict_v0", dying_world.DictWorld), 1)
    try:
        obs = env.reset().obs
    finally:
        env.close()
    assert env.spec.obs_space == {"obs_agent": (3,), AGENT_KEY: (3,)}
    np.testing.assert_array_equal(obs["obs_agent"][:, 0], [0, 1, 2])  # each agent's own first number
    np.testing.assert_array_equal(obs[AGENT_KEY], np.eye(3))


def test_an_env_that_starts_without_one_of_its_agents_is_one_sentence(monkeypatch):
    import dying_world

    env = _env(_register(monkeypatch, "late_v0", dying_world.LateWorld), 1)
    try:
        with pytest.raises(UsageError, match=r"^pz:testing/late_v0 starts an episode without observing c; [^.]*\.$"):
            env.reset()
    finally:
        env.close()


def test_training_with_agents_that_finish_early_stores_their_absence(dying_family, tmp_path):
    from dreamctl import load_config, train
    from dreamctl.training.replay import decode_chunk

    sets = [f"env.name={dying_family}", "train.steps=300", "multi.critic=central", *FAST, "train.batch_size=6"]
    outcome = train(load_config("multiagent", sets), home=tmp_path / "home")
    chunks = sorted((outcome.run.path / "replay").glob("*"))
    rows = decode_chunk(chunks[0].read_bytes())
    world0 = rows["is_present"][:, :3]
    assert (~world0).any() and world0[rows["is_first"][:, :3].all(1)].all()
