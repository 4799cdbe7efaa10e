"""The built-in reach game: its rules, its reference returns, its frames and its saved state."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamctl.envs import random_and_optimal, resolve
from dreamctl.envs.reach import LENGTH, OPTIMAL_RETURN, RANDOM_RETURN, SPEED, Reach


def play(env: Reach, policy: str, seed: int = 0) -> np.ndarray:
    """One episode of every copy; returns (N,) returns."""
    rng = np.random.default_rng(seed)
    env.reset()
    total = np.zeros(env.num_envs)
    for _ in range(LENGTH):
        action = rng.uniform(-1, 1, (env.num_envs, 2)) if policy == "random" else env.optimal_action()
        step = env.step(action)
        total += step.reward
    assert step.is_last.all() and not step.is_terminal.any()
    return total


def test_the_reference_returns_are_those_of_random_and_optimal_play():
    """The module's constants were measured over 100,000 episodes; 2,000 re-measure them within 4 standard errors."""
    random, optimal = play(Reach(2000, seed=3), "random"), play(Reach(2000, seed=4), "optimal")
    assert abs(random.mean() - RANDOM_RETURN) < 4 * random.std() / np.sqrt(2000)
    assert abs(optimal.mean() - OPTIMAL_RETURN) < 4 * optimal.std() / np.sqrt(2000)
    assert random_and_optimal("reach") == (RANDOM_RETURN, OPTIMAL_RETURN)
    assert random_and_optimal("catch") == (-6.0, 10.0) and random_and_optimal("pong") is None


def test_one_step_by_hand():
    """Agent at (0.2, 0.5), target at (0.9, 0.5): action (1, -0.4) moves it by (0.05, -0.02) to (0.25, 0.48), and the
    reward is minus the distance from there: -sqrt(0.65^2 + 0.02^2) = -0.650308."""
    env = Reach(1)
    env.reset()
    env.agent[:] = [[0.2, 0.5]]
    env.target[:] = [[0.9, 0.5]]
    step = env.step(np.array([[1.0, -0.4]]))
    assert env.agent == pytest.approx(np.array([[0.25, 0.48]]))
    assert step.reward[0] == pytest.approx(-0.650308, abs=1e-6)
    assert env.optimal_action() == pytest.approx(np.array([[1.0, 0.4]]))


def test_the_agent_stays_in_the_arena_and_actions_are_clipped():
    env = Reach(1)
    env.reset()
    env.agent[:] = [[0.01, 0.99]]
    env.step(np.array([[-5.0, 5.0]]))
    assert env.agent.tolist() == [[0.0, 1.0]]
    env.agent[:] = [[0.5, 0.5]]
    env.step(np.array([[3.0, 0.0]]))
    assert env.agent == pytest.approx(np.array([[0.5 + SPEED, 0.5]]))


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_the_frame_shows_the_agent_in_white_over_the_grey_target(ax, ay, tx, ty):
    env = Reach(1)
    env.reset()
    env.agent[:] = [[ax, ay]]
    env.target[:] = [[tx, ty]]
    frame = env._render()["image"][0, :, :, 0]
    white = np.argwhere(frame == 255)
    assert len(white) == 64  # an 8x8 square, never clipped by the frame's edge
    centre = white.mean(axis=0) + 0.5  # (row, column)
    assert centre == pytest.approx([6 + 51 * ay, 6 + 51 * ax], abs=0.5)
    a, t = np.rint(6 + 51 * np.array([ax, ay])), np.rint(6 + 51 * np.array([tx, ty]))
    overlap = np.prod(np.clip(np.minimum(a + 4, t + 6) - np.maximum(a - 4, t - 6), 0, None))
    assert (frame == 128).sum() == 144 - overlap  # a 12x12 square, partly under the agent
    assert (frame > 0).sum() == 64 + 144 - overlap


def test_episodes_last_fifty_steps_then_restart_by_the_next_step_rule():
    env = Reach(1, seed=0)
    first = env.reset()
    assert first.is_first.all() and first.obs["image"].shape == (1, 64, 64, 1) and first.obs["image"].dtype == np.uint8
    lasts = [env.step(np.zeros((1, 2))).is_last[0] for _ in range(LENGTH + 1)]
    assert lasts.index(True) == LENGTH - 1
    assert env.steps[0] == 0 and not env.ended[0]


def test_reach_is_deterministic_and_its_state_round_trips():
    a = Reach(2, seed=1)
    a.reset()
    for _ in range(70):
        a.step(np.array([[0.3, -1.0], [1.0, 0.5]]))
    b = Reach(2, seed=99)
    b.reset()
    b.set_state(a.get_state())
    rng = np.random.default_rng(0)
    for _ in range(120):
        action = rng.uniform(-1, 1, (2, 2))
        sa, sb = a.step(action), b.step(action)
        assert np.array_equal(sa.obs["image"], sb.obs["image"])
        assert all(np.array_equal(x, y) for x, y in zip(sa[1:], sb[1:]))


def test_reach_is_a_builtin_name():
    assert resolve("Reach") == "reach"
