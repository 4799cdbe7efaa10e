"""The built-in two-agent catch2 game, and agents seen by the trainer as adjacent env copies."""

from pathlib import Path

import numpy as np
import pytest
from conftest import FEWER_UPDATES, fast_args, run_cli
from resume_checks import assert_identical, final_state

from dreamctl.config import load_config
from dreamctl.envs import make_env, random_and_optimal
from dreamctl.envs.agents import AGENT_KEY, AgentsAsCopies
from dreamctl.envs.catch2 import AGENTS, COLUMNS, DROPS, OPTIMAL_RETURN, RANDOM_RETURN, ROWS, Catch2
from dreamctl.tools.dream_video import BORDER, SCALE, compose


def play(game: Catch2, policy, seed: int = 0) -> np.ndarray:
    """One episode of every game under `policy(game, rng) -> (N, AGENTS)`; returns the (N,) team returns."""
    rng = np.random.default_rng(seed)
    game.reset()
    total, done = np.zeros(game.num_envs), np.zeros(game.num_envs, bool)
    while not done.all():
        step = game.step(policy(game, rng))
        total += np.where(done, 0.0, step.reward)
        done |= step.is_last
    return total


def uniform(game, rng):
    return rng.integers(0, 3, (game.num_envs, AGENTS))


def one_paddle_chases(game, rng):
    """Agent 0 runs for the ball that lands next; agent 1 stands still."""
    rows = np.where(game.ball_y < 0, -ROWS, game.ball_y)
    target = game.ball_x[np.arange(game.num_envs), rows.argmax(1)]
    return np.stack([np.sign(target - game.paddle[:, 0]) + 1, np.ones(game.num_envs, np.int64)], 1)


def test_the_reference_returns_and_that_splitting_the_work_pays():
    """Measured over 20,000 episodes; 2,000 re-measure them within 4 standard errors. Every ball is caught by the
    division of labour, while one paddle alone, however well it chases, misses some."""
    random = play(Catch2(2000, seed=3), uniform)
    assert abs(random.mean() - RANDOM_RETURN) < 4 * random.std() / np.sqrt(2000)
    assert (play(Catch2(500, seed=4), lambda g, _: g.optimal_action()) == OPTIMAL_RETURN).all()
    assert OPTIMAL_RETURN == DROPS
    alone = play(Catch2(2000, seed=5), one_paddle_chases)
    assert alone.mean() < OPTIMAL_RETURN - 5
    assert random_and_optimal("catch2") == (RANDOM_RETURN, OPTIMAL_RETURN)


def test_a_landing_by_hand():
    """Stream 0's ball one row above the bottom in column 6; paddles in columns 2 and 7. Agent 1 moves left (0) under
    it and agent 0 stays (1): a catch, +1, and stream 0's next ball appears on the top row."""
    game = Catch2(1)
    game.reset()
    game.ball_x[:] = [[6, 0]]
    game.ball_y[:] = [[ROWS - 2, 2]]
    game.paddle[:] = [[2, 7]]
    step = game.step(np.array([[1, 0]]))
    assert step.reward.tolist() == [1.0] and game.paddle.tolist() == [[2, 6]] and game.drops.tolist() == [1]
    assert game.ball_y.tolist() == [[0, 3]]
    game.ball_x[:] = [[0, 0]]
    game.ball_y[:] = [[3, ROWS - 2]]
    step = game.step(np.array([[2, 2]]))  # both move right, away from stream 1's ball in column 0: a miss
    assert step.reward.tolist() == [-1.0] and game.paddle.tolist() == [[3, 7]]


def test_both_paddles_stay_visible_in_one_column_and_balls_above_the_screen_are_not_drawn():
    game = Catch2(1)
    game.reset()
    game.paddle[:] = [[4, 4]]
    game.ball_x[:] = [[1, 6]]
    game.ball_y[:] = [[2, -2]]
    frame = game._render()["image"][0, :, :, 0]
    assert (frame[58:61, 32:40] == 200).all() and (frame[61:64, 32:40] == 110).all()
    assert (frame[17:23, 9:15] == 255).all() and (frame == 255).sum() == 36
    assert frame.shape == (64, 64) and COLUMNS * 8 == 64


def test_agents_are_adjacent_copies_with_their_index_and_the_team_reward():
    env = make_env(load_config("catch2").env, seed=1, num_envs=3)
    assert isinstance(env, AgentsAsCopies) and env.num_envs == 3 * AGENTS and env.spec.num_agents == AGENTS
    assert env.spec.obs_space == {"image": (64, 64, 1), AGENT_KEY: (AGENTS,)}
    first = env.reset()
    assert first.obs[AGENT_KEY].tolist() == [[1, 0], [0, 1]] * 3
    world = env.world
    world.ball_x[:] = 3
    world.ball_y[:] = [[ROWS - 2, 1]] * 3
    world.paddle[:] = [[3, 0], [0, 3], [0, 0]]
    # copy 2w + a is agent a of world w; everybody stays (1) but agent 0 of world 2 moves right (2).
    step = env.step(np.array([1, 1, 1, 1, 2, 1]))
    assert world.paddle.tolist() == [[3, 0], [0, 3], [1, 0]]
    assert step.reward.tolist() == [1, 1, 1, 1, -1, -1]
    assert np.array_equal(step.obs["image"][0], step.obs["image"][1])
    assert not np.array_equal(step.obs["image"][0], step.obs["image"][4])


def test_600_steps_in_one_go_equal_300_then_resume(tmp_path: Path):
    """The checkpoint at 300 agent steps (150 per agent: mid-episode) must continue both agents' games bit for bit,
    with attention across the agents and the central critic (the model's every multi-agent part), and one update
    every 8 agent steps."""
    multi = ["--set", "multi.communication=attention", "--set", "multi.critic=central"]
    args = ["train", "catch2", "--seed", "2", *fast_args(), *multi, *FEWER_UPDATES]
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_cli(*args, "--steps", "600", home=whole, check=True)
    run_cli(*args, "--steps", "300", home=split, check=True)
    run_cli("resume", "run-1", "--steps", "600", home=split, check=True)
    assert_identical(whole, split)
    _, meta, _ = final_state(split)
    assert meta["env_spec"]["agents"] == AGENTS and meta["preset"] == "catch2" and meta["progress"]["updates"] > 0


def test_eval_reports_each_agent_and_the_team_and_imagine_draws_each_agents_rows(tmp_path: Path):
    import json

    import av

    home = tmp_path / "home"
    run_cli("train", "catch2", "--steps", "400", *fast_args(), home=home, check=True)
    result = json.loads(run_cli("eval", "latest", "--episodes", "3", "--json", home=home, check=True).stdout)
    assert len(result["returns"]) == 3 and [a["agent"] for a in result["agents"]] == [0, 1]
    for agent in result["agents"]:
        assert agent["returns"] == result["returns"]  # every agent receives the team reward
    assert (result["random"], result["optimal"]) == (RANDOM_RETURN, OPTIMAL_RETURN)
    video = tmp_path / "dream.mp4"
    args = ["--out", str(video), "--context", "3", "--horizon", "4", "--samples", "3"]
    (tmp_path / "dream.png").mkdir()  # where the figure of the `agent` vector goes: checked before any work
    refused = run_cli("imagine", "latest", *args, home=home)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: cannot write '{tmp_path}/dream.png': it is a folder (the figure of the run's vector observations "
        "goes beside the video)."
    )
    (tmp_path / "dream.png").rmdir()
    out = run_cli("imagine", "latest", *args, home=home, check=True).stdout
    assert (tmp_path / "dream.png").stat().st_size > 0
    assert "(3 observed, 4 dreamed, 3 samples of 2 agents)" in out
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    tile = 64 * SCALE + 2 * BORDER
    assert len(frames) == 7 and frames[0].shape == (2 * 3 * tile, 3 * tile, 3)  # rows: 2 agents x 3; columns: worlds


def test_imagine_stacks_each_agents_truth_model_and_error_rows_under_one_column_per_world():
    worlds, agents, steps = 2, 3, 2
    truth = np.zeros((worlds * agents, steps, 64, 64, 1), np.uint8)
    for copy in range(worlds * agents):
        truth[copy] = 10 * copy  # agent a of world w is copy w * agents + a
    grid = compose(truth, truth, context=1, agents=agents)
    tile = 64 * SCALE + 2 * BORDER
    assert grid.shape == (steps, agents * 3 * tile, worlds * tile, 3)
    for world in range(worlds):
        for agent in range(agents):
            for kind, expected in enumerate([10 * (world * agents + agent)] * 2 + [128]):  # truth, model, error
                top, left = (agent * 3 + kind) * tile + tile // 2, world * tile + tile // 2
                assert (grid[:, top, left] == expected).all(), (world, agent, kind)


def test_a_world_counts_once_in_evaluation():
    """Five episodes over three worlds of two agents: quotas 2, 2, 1 per world, each agent's return kept."""
    from dreamctl.model.agent import Agent
    from dreamctl.training.rollout import play as play_episodes

    cfg = load_config("catch2", ["model.cnn_depth=4", "model.deter=32", "model.hidden=32", "model.mlp_units=32"])
    env = make_env(cfg.env, seed=0, num_envs=3)
    agent = Agent(cfg, env.spec.obs_space, env.spec.action_dim, env.spec.discrete)
    playback = play_episodes(agent, env, 5)
    assert len(playback.returns) == 5 and all(len(r) == AGENTS for r in playback.agent_returns)
    assert playback.returns == [float(np.mean(r)) for r in playback.agent_returns]
    assert all(length > DROPS for length in playback.lengths)


@pytest.mark.parametrize("name", ["catch2", "Catch2", "CATCH2"])
def test_the_name_resolves(name):
    from dreamctl.envs import resolve

    assert resolve(name) == "catch2"


def test_a_checkpoint_from_before_agents_could_finish_early_restores():
    """Checkpoints written before `is_present` was kept have no such replay field: its rows mean every agent present."""
    import torch

    from dreamctl.training.state import restore_trainer, trainer_state
    from dreamctl.training.trainer import Trainer

    cfg = load_config("catch2", ["model.cnn_depth=4", "model.deter=32", "model.hidden=32", "model.mlp_units=32"])
    cfg.train.prefill = 10**6
    trainer = Trainer(cfg, make_env(cfg.env, seed=0), torch.device("cpu"))
    trainer.run(40)
    tensors, meta = trainer_state(trainer)
    del tensors["replay/is_present"]
    restored = Trainer(cfg, make_env(cfg.env, seed=0), torch.device("cpu"))
    assert restore_trainer(restored, tensors, meta, lambda index: trainer.replay.rows(0, 0)) is None
    assert (
        restored.replay.cursor == trainer.replay.cursor
        and restored.replay.data["is_present"][: trainer.replay.cursor].all()
    )
