"""Environment names, the built-in catch game, and the Atari protocols of the presets."""

import numpy as np
import pytest

from dreamctl.config import load_config
from dreamctl.envs import make_env, resolve
from dreamctl.envs.catch import Catch
from dreamctl.envs.names import DMC_TASKS
from dreamctl.errors import UsageError
from dreamctl.scores import dmc_reference, dmc_table, human_normalized, record_normalized, table


@pytest.mark.parametrize("spelling", ["ms_pacman", "mspacman", "MsPacman", "ALE/MsPacman-v5", "atari:ms_pacman"])
def test_spellings_of_one_game(spelling):
    assert resolve(spelling) == "ms_pacman"


@pytest.mark.parametrize("spelling", ["pong", "Pong", "ALE/Pong-v5", "atari:pong", " pong "])
def test_spellings_of_pong(spelling):
    assert resolve(spelling) == "pong"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UsageError, match=r"unknown environment 'pongg'; did you mean 'pong'\?"):
        resolve("pongg")


@pytest.mark.parametrize("spelling, name", [("smax:3M", "smax:3m"), ("SMAX:2S3Z", "smax:2s3z"), ("Catch2", "catch2")])
def test_built_in_games_and_smax_maps_resolve_in_any_case(spelling, name):
    assert resolve(spelling) == name


def test_an_ale_id_under_gym_is_told_to_drop_the_prefix():
    with pytest.raises(UsageError, match="drop the prefix: ALE/Pong-v5"):
        resolve("gym:ALE/Pong-v5")


def test_all_62_games_are_known_and_resolve_to_themselves():
    assert len(table()) == 62
    assert all(resolve(game) == game for game in table())


def test_gamer_normalised_score():
    assert human_normalized("pong", 14.6, atari100k=True) == pytest.approx(1.0)
    ref = table()["breakout"]
    assert human_normalized("breakout", ref.human_gamer) == pytest.approx(1.0)
    assert human_normalized("catch", 3.0) is None
    assert record_normalized("pong", ref_pong := table()["pong"].human_record) == pytest.approx(1.0)
    assert record_normalized("pong", table()["pong"].random) == 0.0 and ref_pong == 21


def test_dreamerv2_dmc_references_are_the_official_files_means():
    """Means over the official runs' seeds, interpolated at 1M frames (humanoid_walk: the last evaluations)."""
    table = {name: dmc_reference(f"dmc:{name}") for name in ("walker_walk", "cheetah_run", "ball_in_cup_catch")}
    assert {name: (ref.dreamerv2, ref.frames, ref.seeds) for name, ref in table.items() if ref} == {
        "walker_walk": (957.5, 1_000_000, 5),
        "cheetah_run": (736.2, 1_000_000, 5),
        "ball_in_cup_catch": (801.7, 1_000_000, 5),
    }
    humanoid = dmc_reference("dmc:humanoid_walk")
    assert humanoid is not None and (humanoid.dreamerv2, humanoid.seeds) == (805.0, 10) and humanoid.frames > 4e7
    assert dmc_reference("dmc:dog_run") is None and dmc_reference("pong") is None
    names = {f"{domain}_{task}" for domain, task in DMC_TASKS}
    assert set(dmc_table()) <= names  # every row names a task of the suite


def run_random(env, steps, seed=0):
    rng = np.random.default_rng(seed)
    frames = [env.reset().obs["image"]]
    for _ in range(steps - 1):
        frames.append(env.step(rng.integers(0, env.spec.action_dim, env.num_envs)).obs["image"])
    return np.stack(frames)


def test_catch_random_policy_scores_about_minus_six_and_returns_lie_in_range():
    env = Catch(64, seed=0)
    env.reset()
    rng = np.random.default_rng(1)
    totals, returns = np.zeros(64), []
    for _ in range(71 * 10):
        step = env.step(rng.integers(0, 3, 64))
        totals[step.is_first] = 0
        totals += step.reward
        returns += list(totals[step.is_last])
    assert len(returns) >= 500 and all(-10 <= r <= 10 for r in returns)
    assert -6.6 < np.mean(returns) < -5.4


def test_catch_is_deterministic_and_its_state_round_trips():
    assert np.array_equal(run_random(Catch(3, seed=7), 200), run_random(Catch(3, seed=7), 200))
    assert not np.array_equal(run_random(Catch(3, seed=7), 200), run_random(Catch(3, seed=8), 200))
    a = Catch(2, seed=1)
    a.reset()
    for _ in range(33):
        a.step(np.array([0, 2]))
    b = Catch(2, seed=99)
    b.reset()
    b.set_state(a.get_state())
    for _ in range(100):
        sa, sb = a.step(np.array([2, 1])), b.step(np.array([2, 1]))
        assert np.array_equal(sa.obs["image"], sb.obs["image"])
        assert all(np.array_equal(x, y) for x, y in zip(sa[1:], sb[1:]))


def test_catch_follows_the_next_step_autoreset_rule():
    env = Catch(1, seed=0)
    first = env.reset()
    assert first.is_first.all() and first.obs["image"].shape == (1, 64, 64, 1) and first.obs["image"].dtype == np.uint8
    lasts = []
    for _ in range(71):
        step = env.step(np.array([1]))
        lasts.append(step.is_last[0])
    assert lasts.index(True) == 69 and step.is_first[0] and step.reward[0] == 0


@pytest.mark.parametrize(
    "preset, channels, sticky, resize", [("atari", 1, 0.25, "area"), ("atari100k", 3, 0.0, "bilinear")]
)
def test_atari_presets_build_the_published_pong_protocol(preset, channels, sticky, resize):
    cfg = load_config(preset, ["env.name=pong"])
    assert cfg.env.sticky_actions == sticky and cfg.env.resize == resize
    assert cfg.env.max_frames == 108_000 and cfg.env.action_repeat == 4 and cfg.env.noop_max == 30
    assert not cfg.env.life_loss and not cfg.env.reward_clip and cfg.env.max_pool
    env = make_env(cfg.env, seed=0)
    try:
        step = env.reset()
        assert env.spec.obs_space == {"image": (64, 64, channels)}
        assert step.obs["image"].shape == (1, 64, 64, channels) and step.obs["image"].dtype == np.uint8
        assert env.spec.action_dim == 6 and env.spec.discrete
        ale = env.env
        assert ale.single_action_space.n == 6
    finally:
        env.close()
    if preset == "atari100k":
        assert cfg.train.steps * cfg.env.action_repeat == 400_000 and cfg.train.score_window_frames == 10_000


def test_atari_starts_with_0_to_noop_max_no_op_frames():
    """ale-py's own argument draws one fewer; the config's noop_max is the most no-op frames an episode starts with."""
    cfg = load_config("atari", ["env.name=pong", "env.noop_max=2", "env.num_envs=8", "env.sticky_actions=0"])
    env = make_env(cfg.env, seed=0)
    try:
        frames = {int(f) for s in range(10) for f in env.env.reset(seed=s)[1]["episode_frame_number"]}
    finally:
        env.close()
    assert frames == {0, 1, 2}


def test_full_action_set_has_18_actions():
    cfg = load_config("atari", ["env.name=pong", "env.action_set=full"])
    env = make_env(cfg.env, seed=0)
    assert env.spec.action_dim == 18
    env.close()


def test_pong_with_sticky_actions_is_reproducible_from_its_seed():
    cfg = load_config("atari", ["env.name=pong"])
    runs = []
    for _ in range(2):
        env = make_env(cfg.env, seed=3)
        runs.append(run_random(env, 200, seed=5))
        env.close()
    assert np.array_equal(runs[0], runs[1])
    assert len(np.unique(runs[0].reshape(200, -1), axis=0)) > 20
