"""SMAX battles (`smax:<map>`): allies as adjacent copies with their unit lists and action masks, units that die
kept in their battle with the team reward until it ends, won battles, exact continuation from saved state, and the
real CLI."""

import json
from pathlib import Path

import numpy as np
import yaml
from conftest import FEWER_UPDATES, fast_args, import_extra, run_cli
from resume_checks import assert_identical

from dreamctl.config import load_config
from dreamctl.envs import make_env
from dreamctl.envs.agents import AGENT_KEY
from dreamctl.envs.smax import MAPS
from dreamctl.keys import ACTION_MASK_KEY

import_extra("jaxmarl", "smax")


def _env(name: str, battles: int, seed: int = 0):
    return make_env(load_config("smax", [f"env.name={name}"]).env, seed=seed, num_envs=battles)


def _random_available(step, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random available action for every ally."""
    return (rng.random(step.obs[ACTION_MASK_KEY].shape) * step.obs[ACTION_MASK_KEY]).argmax(-1)


def test_the_maps_are_smaxs_own():
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

    assert sorted(MAPS) == sorted(MAP_NAME_TO_SCENARIO)


def test_battles_step_together_and_units_that_die_keep_the_team_reward_until_the_battle_ends():
    env = _env("smax:3m", 4)
    rng = np.random.default_rng(0)
    try:
        assert env.spec.num_agents == 3 and env.num_envs == 12 and env.spec.discrete and env.spec.action_dim == 8
        assert env.spec.obs_space == {"state": (75,), ACTION_MASK_KEY: (8,), AGENT_KEY: (3,)}
        step = env.reset()
        assert step.is_first.all() and step.obs[AGENT_KEY].tolist() == np.tile(np.eye(3), (4, 1)).tolist()
        ends = wins = decided = 0
        rewarded_while_dead = 0.0
        for _ in range(400):
            step = env.step(_random_available(step, rng))
            assert step.is_present is None  # every ally plays until its battle ends, dead or alive
            battle = step.reward.reshape(4, 3)
            assert (battle == battle[:, :1]).all()  # the team reward, dead allies included
            assert (step.reward[step.is_first] == 0).all()
            dead = ~step.is_first & (step.obs[ACTION_MASK_KEY] == np.eye(8)[4]).all(-1)  # a dead unit can only stop
            assert (step.obs["state"][dead] == 0).all()
            rewarded_while_dead += step.reward[dead].sum()
            assert not (step.is_terminal & ~step.is_last).any()  # a death ends nobody's return
            last, terminal = step.is_last.reshape(4, 3), step.is_terminal.reshape(4, 3)
            assert (last == last[:, :1]).all() and (terminal == terminal[:, :1]).all()  # per battle, all allies
            ends += last[:, 0].sum()
            decided += terminal[:, 0].sum()
            wins += (last[:, 0] & env.won).sum()
            assert not (env.won & ~terminal[:, 0] & last[:, 0]).any()  # a won battle was decided, not timed out
        assert ends >= 4 and decided > 0 and rewarded_while_dead > 0
        assert wins < ends  # random allies rarely win against the heuristic enemy
    finally:
        env.close()


def test_a_saved_state_continues_the_battles_bit_for_bit():
    rng = np.random.default_rng(1)
    env, copy = _env("smax:2s3z", 3, seed=5), _env("smax:2s3z", 3, seed=9)
    try:
        step = env.reset()
        for _ in range(30):
            step = env.step(_random_available(step, rng))
        saved = env.get_state()
        copy.reset()
        copy.set_state(saved)
        actions = [rng.integers(0, 5, env.num_envs) for _ in range(150)]  # moves and stop: always available
        for action in actions:
            a, b = env.step(action), copy.step(action)
            for key in a.obs:
                np.testing.assert_array_equal(a.obs[key], b.obs[key])
            for field in ("reward", "is_first", "is_last", "is_terminal"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            np.testing.assert_array_equal(env.won, copy.won)
        assert env.reset().is_first.all() and not env.won.any()  # a second reset, after battles were fought
    finally:
        env.close()
        copy.close()


def test_trains_through_the_cli_and_eval_reports_each_agent_and_the_win_rate(tmp_path: Path):
    home = tmp_path / "home"
    sets = ["--set", "train.batch_size=5", "--set", "run.eval_every=200", "--set", "run.eval_episodes=1"]
    run_cli("train", "smax:smacv2_5_units", "--steps", "300", *fast_args(), *sets, home=home, check=True)
    (during,) = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["evals"]
    assert during["step"] == 200 and during["policy"] == "greedy" and during["episodes"] == 1
    assert during["win_rate"] in (0.0, 1.0) and [a["agent"] for a in during["agents"]] == list(range(5))
    result = json.loads(run_cli("eval", "latest", "--episodes", "2", "--json", home=home, check=True).stdout)
    assert set(result) == {"run", "checkpoint_step", "returns", *during} - {"step"}
    assert [a["agent"] for a in result["agents"]] == list(range(5))
    assert all(len(a["returns"]) == 2 for a in result["agents"])
    assert result["win_rate"] in (0.0, 0.5, 1.0)
    assert all(0.0 <= r <= 2.0 + 1e-5 for r in result["returns"])  # SMAX's units, not the preset's 10x (SMAC's)
    listed = json.loads(run_cli("list", "--json", home=home, check=True).stdout)
    assert listed[0]["preset"] == "smax" and listed[0]["win_rate"] == result["win_rate"]
    assert "% won" in run_cli("list", home=home, check=True).stdout and listed[0]["eval_policy"] == "greedy"
    sampled = run_cli("eval", "latest", "--episodes", "2", "--sample", home=home, check=True).stdout
    assert "2 sampled episodes" in sampled and "battles won" in sampled
    assert "% won, sampled" in run_cli("list", home=home, check=True).stdout
    shown = run_cli("show", "latest", home=home, check=True).stdout
    won = f"{100 * during['win_rate']:.0f}% of battles won"
    assert f"eval at step 200: {during['mean']:.2f} ± 0.00 over 1 greedy episode, {won}" in shown


def test_training_logs_which_battles_were_won_and_plot_draws_the_share(tmp_path: Path):
    """Random play (all prefill) over enough steps for battles to end: each ended episode says whether its battle
    was won, a world's agents agree, and `plot` adds the panel of battles won."""
    home = tmp_path / "home"
    sets = ["--set", "train.prefill=3000", "--set", "env.num_envs=4", "--set", "train.batch_size=6"]
    run_cli("train", "smax:3m", "--steps", "3000", *fast_args(), *sets, home=home, check=True)
    episodes = [json.loads(line) for line in (home / "runs" / "run-1" / "episodes.jsonl").read_text().splitlines()]
    assert episodes and all(isinstance(e["won"], bool) for e in episodes)
    by_battle: dict[tuple[int, int], set[bool]] = {}
    for e in episodes:
        by_battle.setdefault((e["step"], e["env"] // 3), set()).add(e["won"])
    assert all(len(outcomes) == 1 for outcomes in by_battle.values())
    drawn = run_cli("plot", "latest", "--out", str(tmp_path / "p.png"), home=home, check=True).stdout
    assert "panels return, battles won" in drawn


def test_600_steps_in_one_go_equal_300_then_resume(tmp_path: Path):
    """Mid-battle at 300 agent steps: the battles, the PRNG key and the units' presence continue bit for bit (with
    one update every 8 agent steps, enough updates on both sides of the stop to check the model's part)."""
    args = ["train", "smax:3m", "--seed", "4", *fast_args(), "--set", "train.batch_size=6", *FEWER_UPDATES]
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_cli(*args, "--steps", "600", home=whole, check=True)
    run_cli(*args, "--steps", "300", home=split, check=True)
    run_cli("resume", "run-1", "--steps", "600", home=split, check=True)
    assert_identical(whole, split)
