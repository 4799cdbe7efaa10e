"""A Gymnasium env saved mid-episode and restored into new copies continues exactly as the original does."""

import json

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from dreamctl.config import load_config
from dreamctl.envs.gym_env import GymEnv
from dreamctl.envs.gym_state import Resumable, Unsaveable, decode, encode


def steps(env: GymEnv, actions: np.ndarray) -> list[tuple]:
    out = []
    for action in actions:
        s = env.step(action)
        out.append((s.obs["state"].copy(), s.reward, s.is_first, s.is_last, s.is_terminal))
    return out


@pytest.mark.parametrize("env_id, num_envs", [("CartPole-v1", 2), ("Pendulum-v1", 1)])
def test_a_restored_env_continues_the_same_episodes(env_id, num_envs):
    cfg = load_config("vector").env
    rng = np.random.default_rng(0)
    discrete = env_id == "CartPole-v1"
    actions = rng.integers(0, 2, (400, num_envs)) if discrete else rng.uniform(-1, 1, (400, num_envs, 1))
    original = GymEnv(env_id, cfg, num_envs, seed=3)
    try:
        original.reset()
        # Save right after an episode ended, so that the restored copy owes the reset the vector env would do.
        saved_at = next(t for t in range(300) if original.step(actions[t]).is_last.any()) + 1
        state = original.get_state()
        assert state and original.saveable and state["last"].any()
        expected = steps(original, actions[saved_at:])
    finally:
        original.close()
    restored = GymEnv(env_id, cfg, num_envs, seed=99)
    try:
        assert restored.state_fits(state) is None  # as a resume checks it: built, never reset
        restored.reset()
        restored.set_state(state)
        got = steps(restored, actions[saved_at:])
    finally:
        restored.close()
    assert sum(s[2].sum() for s in expected) >= num_envs  # the continuation starts episodes
    for a, b in zip(expected, got, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def _with_layers(state: dict[str, np.ndarray], copy: int, change) -> dict[str, np.ndarray]:
    """The saved state with copy `copy`'s layers (each {"dict": {attribute: encoded value}}) changed by
    `change(layers)`, as another gymnasium might have saved them."""
    saved = json.loads(state[f"copy{copy}"].tobytes())
    change(saved["layers"])
    return {**state, f"copy{copy}": np.frombuffer(json.dumps(saved).encode(), np.uint8).copy()}


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda layers: layers[0]["dict"].pop("_elapsed_steps"), "TimeLimit's _elapsed_steps was not saved"),
        (lambda layers: layers.pop(1), "layers of wrappers where this one has"),
        (lambda layers: layers[1]["dict"].update({k: {"?": 1} for k in layers[1]["dict"]}), "unknown kind of saved"),
    ],
)
def test_a_saved_state_that_does_not_fit_leaves_every_copy_as_built_and_says_why(change, reason):
    """A checkpoint written under another gymnasium (a wrapper that kept fewer attributes, another stack of them, a
    value saved in a form this one does not read) is refused before any copy is written, and the copies' worker
    processes stay up: the env plays on as it was built."""
    cfg = load_config("vector").env
    original = GymEnv("CartPole-v1", cfg, 2, seed=3)
    try:
        original.reset()
        original.step(np.zeros(2, np.int64))
        state = _with_layers(original.get_state(), 1, change)
    finally:
        original.close()
    checked, fresh = GymEnv("CartPole-v1", cfg, 2, seed=7), GymEnv("CartPole-v1", cfg, 2, seed=7)
    try:
        checked.reset()
        fresh.reset()
        assert reason in checked.state_fits(state)
        actions = np.zeros((5, 2), np.int64)  # copy 0's state fits, and was not written either
        for a, b in zip(steps(checked, actions), steps(fresh, actions), strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
    finally:
        checked.close()
        fresh.close()


def test_an_env_that_rendered_cannot_be_saved_and_says_so():
    """A pygame surface is not a value a checkpoint holds: the env reports that it is not saveable."""
    cfg = load_config("vector", ["env.render_pixels=true"]).env
    env = GymEnv("CartPole-v1", cfg, 1, seed=0)
    try:
        env.reset()
        env.step(np.zeros(1, np.int64))
        assert env.get_state() == {} and not env.saveable
    finally:
        env.close()


def test_a_saved_copy_is_json_that_names_no_code():
    copy = Resumable(gym.make("CartPole-v1"), 0)
    copy.reset(seed=0)
    saved = json.loads(copy.dreamctl_state())
    assert saved["ended"] is False and len(saved["layers"]) == 4  # Resumable's three inner wrappers + CartPoleEnv
    assert decode(saved["layers"][-1])["state"].shape == (4,)


@given(
    arrays(
        st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
        array_shapes(min_dims=0, max_dims=3, max_side=4),
    ),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
)
def test_every_value_an_env_holds_comes_back_the_same(array, plain):
    rng = np.random.default_rng(7)
    rng.normal()
    value = {"a": array, "p": plain, "t": (array[()] if array.ndim == 0 else array, [plain]), "r": rng}
    back = decode(json.loads(json.dumps(encode(value))))
    np.testing.assert_array_equal(back["a"], array)
    assert back["a"].dtype == array.dtype and back["p"] == plain and type(back["p"]) is type(plain)
    assert type(back["t"][0]) is type(value["t"][0]) and back["t"][1] == [plain]
    assert back["r"].normal() == rng.normal()


def test_values_without_a_json_form_are_unsaveable():
    with pytest.raises(Unsaveable):
        encode({"callback": print})
    with pytest.raises(Unsaveable):
        encode(np.array([object()]))
