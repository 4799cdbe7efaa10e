"""`dmc:<domain>_<task>`: the DeepMind Control Suite from pixels with DreamerV2's protocol, saved and restored bit
for bit, through the real CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import import_extra, run_cli, set_args
from resume_checks import assert_identical, final_state

from dreamctl.config import load_config
from dreamctl.envs import make_env
from dreamctl.envs.dmc import choose_renderer
from dreamctl.envs.names import DMC_TASKS

choose_renderer()  # before dm_control is imported, which reads MUJOCO_GL once
suite = import_extra("dm_control.suite", "dmc")

SMALL = ["--set", "train.prefill=200", "--set", "train.pretrain=1", "--set", "train.batch_size=4"]
SMALL += ["--set", "train.batch_length=8", "--set", "run.checkpoint_every=200", "--set", "run.replay_chunk=32"]
TINY_MODEL = set_args([f"model.{k}" for k in ("cnn_depth=8", "deter=64", "hidden=64", "mlp_units=64")])


def test_the_task_list_is_the_installed_suites():
    assert tuple(suite.ALL_TASKS) == DMC_TASKS


def steps(env, actions):
    out = []
    for action in actions:
        s = env.step(action)
        out.append((s.obs["image"].copy(), s.reward, s.is_first, s.is_last, s.is_terminal))
    return out


def assert_continues(cfg, state, actions, expected):
    """As `resume` restores: a new env of another seed takes the saved state without a reset of its own, then plays
    `actions`; every frame, reward and flag must equal the original's."""
    restored = make_env(cfg, seed=99, num_envs=len(actions[0]))
    try:
        restored.set_state(state)
        got = steps(restored, actions)
    finally:
        restored.close()
    for a, b in zip(expected, got, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "name",
    ["dmc:walker_walk", "dmc:reacher_easy", "dmc:point_mass_hard", "dmc:swimmer_swimmer6", "dmc:quadruped_escape"],
)
def test_a_restored_copy_continues_its_episodes_bit_for_bit(name):
    """Episodes of 10 agent steps; the state is saved in the middle of the second, so the restored copy must carry
    what its task drew into the model when that episode began (reacher's target, point_mass_hard's actuator
    wrapping, swimmer's light, seen in the frame, and quadruped_escape's terrain, also uploaded to the renderer),
    and the continuation crosses resets, where the restored random state draws the next episodes."""
    cfg = load_config("dmc", [f"env.name={name}", "env.max_frames=20"]).env
    rng = np.random.default_rng(0)
    original = make_env(cfg, seed=3, num_envs=2)
    actions = rng.uniform(-1, 1, (40, 2, original.spec.action_dim))
    try:
        first = original.reset()
        assert first.obs["image"].shape == (2, 64, 64, 3) and first.obs["image"].dtype == np.uint8
        ended = [original.step(a).is_last.any() for a in actions[:15]]
        assert ended == [False] * 9 + [True] + [False] * 5  # 20 simulator steps at action repeat 2, then a reset
        state = original.get_state()
        expected = steps(original, actions[15:])
    finally:
        original.close()
    assert not any(s[4].any() for s in expected)  # the suite's episodes end by the time limit only
    assert_continues(cfg, state, actions[15:], expected)


def test_a_saved_simulation_that_does_not_fit_the_model_is_refused_before_anything_is_written():
    """A checkpoint written under another MuJoCo (a simulation state of another size) or another dreamctl (a field
    missing) is refused by the check, which leaves the copy as it was: it starts the episodes a new env of its seed
    starts."""
    from dreamctl.envs.dmc import DmcCopy
    from dreamctl.envs.gym_state import StateMismatch

    cfg = load_config("dmc", ["env.name=dmc:cartpole_swingup"]).env
    copy, fresh = DmcCopy("cartpole", "swingup", cfg), DmcCopy("cartpole", "swingup", cfg)
    try:
        copy.reset(seed=1)
        copy.step(np.ones(1))
        state = copy.saved_state()
        state["integration"] = np.append(state["integration"], 0.0)
        before = copy.env.physics.get_state().copy()
        with pytest.raises(StateMismatch, match="numbers, not"):
            copy.check_state(state)
        with pytest.raises(StateMismatch, match="lacks random"):
            copy.check_state({k: v for k, v in state.items() if k != "random"})
        np.testing.assert_array_equal(copy.env.physics.get_state(), before)
        np.testing.assert_array_equal(copy.reset(seed=5)[0], fresh.reset(seed=5)[0])
    finally:
        copy.close()
        fresh.close()


def test_closing_a_copy_frees_its_simulation_and_renderer():
    from dreamctl.envs.dmc import DmcCopy

    copy = DmcCopy("cartpole", "swingup", load_config("dmc", ["env.name=dmc:cartpole_swingup"]).env)
    frame, _ = copy.reset(seed=0)
    assert frame.shape == (64, 64, 3) and copy.env.physics._contexts is not None
    copy.close()
    assert not hasattr(copy.env.physics, "_data") and copy.env.physics._contexts is None


@pytest.mark.parametrize("name", ["dmc:finger_spin", "dmc:finger_turn_easy", "dmc:dog_stand", "dmc:lqr_lqr_2_1"])
def test_a_copy_restored_as_resume_restores_it_continues_bit_for_bit(name):
    """What these tasks set at every episode's start and never vary (finger's hinge damping and target size, dog's
    stand height, which its reward reads) and what lqr draws when it is built (its springs) are not in the saved
    state, and must be there all the same after a restore."""
    cfg = load_config("dmc", [f"env.name={name}", "env.max_frames=20"]).env
    original = make_env(cfg, seed=3, num_envs=1)
    actions = np.random.default_rng(0).uniform(-1, 1, (25, 1, original.spec.action_dim))
    try:
        original.reset()
        for a in actions[:5]:
            original.step(a)
        state = original.get_state()
        expected = steps(original, actions[5:])
    finally:
        original.close()
    assert_continues(cfg, state, actions[5:], expected)


@pytest.mark.parametrize(("discount", "terminated", "truncated"), [(0.0, True, False), (1.0, False, True)])
def test_an_end_with_discount_zero_terminates_and_any_other_is_the_time_limit(
    monkeypatch, discount, terminated, truncated
):
    """The lqr tasks end an episode with discount 0 once the state is near zero: a true end, not a time limit."""
    import dm_env

    from dreamctl.envs.dmc import DmcCopy

    copy = DmcCopy("lqr", "lqr_2_1", load_config("dmc", ["env.name=dmc:lqr_lqr_2_1"]).env)
    copy.reset(seed=0)
    end = dm_env.TimeStep(dm_env.StepType.LAST, 0.5, discount, None)
    monkeypatch.setattr(copy.env, "step", lambda action: end)
    _, reward, got_terminated, got_truncated, _ = copy.step(np.zeros(2))
    assert (reward, got_terminated, got_truncated) == (0.5, terminated, truncated)


def test_the_dmc_preset_is_the_protocol(home: Path):
    proc = run_cli("train", "dmc:walker_walk", "--dry-run", home=home, check=True)
    assert proc.stdout.startswith("# preset dmc\n") and "observation image: uint8 image [64, 64, 3]" in proc.stdout
    env = yaml.safe_load(proc.stdout)["env"]
    assert (env["action_repeat"], env["max_frames"], env["grayscale"], env["image_size"]) == (2, 1000, False, 64)


@pytest.mark.parametrize("preset, kl_scale, entropy", [("dmc", 1.0, 1e-4), ("humanoid", 2.0, 1e-5)])
def test_the_dmc_and_humanoid_presets_carry_the_published_values(preset, kl_scale, entropy):
    """danijar/dreamerv2 configs.yaml `dmc_vision`; the paper's Appendix A for humanoid's KL scale and entropy."""
    cfg = load_config(preset)
    m, b, t = cfg.model, cfg.behavior, cfg.train
    sizes = (m.deter, m.hidden, m.stoch, m.classes, m.cnn_depth, m.mlp_layers, m.mlp_units)
    assert sizes == (200, 200, 32, 32, 48, 4, 400)
    assert not m.discount_head and (m.kl_balance, m.kl_scale, m.free_nats) == (0.8, kl_scale, 1.0)
    assert (b.actor_grad, b.actor_entropy, b.discount, b.return_lambda, b.horizon) == ("auto", entropy, 0.99, 0.95, 15)
    assert (t.model_lr, t.actor_lr, t.critic_lr, t.train_every, t.pretrain) == (3e-4, 8e-5, 8e-5, 5, 100)
    assert (t.batch_size, t.batch_length, t.prefill) == (16, 50, 1000)
    assert t.steps * cfg.env.action_repeat == (1_000_000 if preset == "dmc" else 40_000_000)


@pytest.mark.parametrize(
    "name, preset", [("dmc:walker_walk", "dmc"), ("dmc:humanoid_walk", "humanoid"), ("dmc:humanoid_CMU_walk", "dmc")]
)
def test_humanoid_tasks_default_to_the_humanoid_preset(home: Path, name, preset):
    proc = run_cli("train", name, "--dry-run", home=home, check=True)
    assert proc.stdout.startswith(f"# preset {preset}\n")


def test_train_eval_and_imagine_a_dmc_task_through_the_cli(home: Path, tmp_path: Path):
    """Episodes of 50 agent steps (env.max_frames=100) keep it short."""
    run_cli("train", "dmc:walker_walk", "--steps", "300", *SMALL, "--set", "env.max_frames=100", home=home, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["preset"] == "dmc" and meta["env_spec"]["obs"] == {"image": [64, 64, 3]}
    assert meta["env_spec"]["action_dim"] == 6 and meta["env_spec"]["discrete"] is False
    assert meta["progress"]["updates"] > 0
    video = tmp_path / "w.mp4"
    result = run_cli("eval", "latest", "--episodes", "2", "--video", str(video), "--json", home=home, check=True)
    assert json.loads(result.stdout)["episodes"] == 2 and video.stat().st_size > 0
    assert json.loads(result.stdout)["dreamerv2"] == {"return": 957.5, "frames": 1_000_000}
    assert "958 at 1M frames" in run_cli("list", home=home, check=True).stdout
    dream = tmp_path / "dream.mp4"
    run_cli("imagine", "latest", "--out", str(dream), "--horizon", "5", home=home, check=True)
    assert dream.stat().st_size > 0


def test_600_steps_in_one_go_equal_300_then_resume(tmp_path: Path):
    """Episodes of 70 agent steps (env.max_frames=140), so the checkpoint at 300 falls mid-episode: the resumed run
    must continue the physics, the task's random state and the running episode bit for bit. The env's state is what
    this checks, so the networks are small (the model's own exact resume is checked on catch)."""
    args = ["train", "dmc:walker_walk", "--seed", "4", *SMALL, "--set", "env.max_frames=140", *TINY_MODEL]
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_cli(*args, "--steps", "600", home=whole, check=True)
    run_cli(*args, "--steps", "300", home=split, check=True)
    run_cli("resume", "run-1", "--steps", "600", home=split, check=True)
    assert_identical(whole, split)
    assert final_state(split)[1]["progress"]["updates"] > 0


def test_without_the_extra_a_dmc_task_is_one_sentence_with_the_install_command(home: Path, tmp_path: Path):
    fake = tmp_path / "fake" / "dm_control"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError('no dm_control here', name='dm_control')\n")
    proc = run_cli("train", "dmc:walker_walk", "--steps", "10", home=home, env={"PYTHONPATH": str(fake.parent)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "pip install 'dreamctl[dmc]'" in proc.stderr


def test_a_renderer_that_cannot_start_is_one_sentence_with_the_fix(home: Path):
    """OSMesa is not installed on these machines, so asking MuJoCo for it fails the way a missing library does."""
    proc = run_cli("train", "dmc:walker_walk", "--steps", "10", home=home, env={"MUJOCO_GL": "osmesa"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "apt-get install" in proc.stderr


@pytest.mark.parametrize(
    "osmesa, fix", [(None, "install one: apt-get install"), ("libOSMesa.so.8", "MUJOCO_GL=osmesa")]
)
def test_a_failed_egl_renderer_points_to_osmesa_where_the_machine_has_it(monkeypatch, osmesa, fix):
    import ctypes.util

    from dreamctl.envs import dmc

    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: osmesa if name == "OSMesa" else None)
    said = str(dmc._renderer_error(RuntimeError("Cannot initialize a EGL device display.\n")))
    assert said.startswith("MuJoCo could not start its renderer with MUJOCO_GL=egl (Cannot initialize a EGL device")
    assert fix in said and "\n" not in said


def test_with_no_rendering_library_found_dreamctl_says_what_to_install(monkeypatch):
    import ctypes.util

    from dreamctl.envs import dmc
    from dreamctl.errors import DreamctlError

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(DreamctlError, match="apt-get install libegl1"):
        dmc.choose_renderer()
