"""`gym:<id>` trains any Gymnasium env whose observations are images, vectors or a dict of them; the envs are
registered here inside the test."""

import json

import numpy as np
import pytest
import yaml
from conftest import fast_args, run_cli

MODULE = '''
import gymnasium as gym
import numpy as np


class PixelGrid(gym.Env):
    """A dot on a 32x32 RGB screen; Discrete moves; reward for reaching the right edge."""
    metadata = {"render_modes": []}

    def __init__(self, continuous=False):
        self.observation_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
        self.continuous = continuous
        self.action_space = (gym.spaces.Box(-2.0, 2.0, (2,), np.float32) if continuous
                             else gym.spaces.Discrete(4))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.integers(0, 32, size=2)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if self.continuous:
            assert self.action_space.contains(np.asarray(action, np.float32)), action
            move = np.sign(np.round(np.asarray(action))).astype(int)
        else:
            move = [(0, 1), (0, -1), (1, 0), (-1, 0)][int(action)]
        self.pos = np.clip(self.pos + move, 0, 31)
        self.t += 1
        return self._obs(), float(self.pos[1] == 31), bool(self.pos[1] == 31), self.t >= 40, {}

    def _obs(self):
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[self.pos[0], self.pos[1]] = (255, 128, 0)
        return frame


class Drift(gym.Env):
    """A point pushed along a line: (position, velocity) as a vector, or a dict of a 16x16 screen, that vector and
    a Discrete flag named like a replay field; reward for staying near 0."""
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None, dict_obs=False):
        self.render_mode, self.dict_obs = render_mode, dict_obs
        vector = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
        screen = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
        self.observation_space = (gym.spaces.Dict({"screen": screen, "position": vector,
                                                   "reward": gym.spaces.Discrete(2)}) if dict_obs else vector)
        self.action_space = gym.spaces.Discrete(3)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.v, self.t = float(self.np_random.uniform(-1, 1)), 0.0, 0
        return self._obs(), {}

    def step(self, action):
        self.v += 0.1 * (int(action) - 1)
        self.x += self.v
        self.t += 1
        return self._obs(), -abs(self.x), abs(self.x) > 5, self.t >= 30, {}

    def render(self):
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[16, int(np.clip((self.x + 5) * 3.1, 0, 31))] = 255
        return frame

    def _obs(self):
        vector = np.array([self.x, self.v], np.float32)
        if not self.dict_obs:
            return vector
        return {"screen": self.render()[::2, ::2], "position": vector, "reward": int(self.x > 0)}


class Talker(gym.Env):
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Text(8)
    action_space = gym.spaces.Discrete(2)


class Faulty(gym.Env):
    """Drift whose physics "diverge" on its 20th step."""
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 20:
            raise RuntimeError("physics diverged\\n at step 20")
        return np.zeros(2, np.float32), 0.0, False, False, {}


class Masked(gym.Env):
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Dict(
        {"state": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "action_mask": gym.spaces.MultiBinary(3)}
    )
    action_space = gym.spaces.Discrete(3)


gym.register("PixelGrid-v0", entry_point=PixelGrid)
gym.register("Faulty-v0", entry_point=Faulty)
gym.register("Masked-v0", entry_point=Masked)
gym.register("PixelDrive-v0", entry_point=PixelGrid, kwargs={"continuous": True})
gym.register("Drift-v0", entry_point=Drift)
gym.register("DriftDict-v0", entry_point=Drift, kwargs={"dict_obs": True})
gym.register("Talker-v0", entry_point=Talker)
'''


@pytest.fixture
def env_module(tmp_path):
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "pixelenvs.py").write_text(MODULE)
    return {"PYTHONPATH": str(folder)}


@pytest.mark.parametrize("env_id, discrete", [("PixelGrid-v0", True), ("PixelDrive-v0", False)])
def test_train_a_registered_pixel_env_through_the_cli(env_module, home, env_id, discrete):
    name = f"gym:pixelenvs:{env_id}"
    run_cli("train", name, "--preset", "debug", "--steps", "300", *fast_args(), home=home, env=env_module, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["status"] == "finished" and meta["env"] == name
    assert meta["env_spec"]["obs"] == {"image": [64, 64, 1]} and meta["env_spec"]["discrete"] is discrete
    assert meta["env_spec"]["action_dim"] == (4 if discrete else 2)
    assert meta["progress"]["updates"] > 0
    result = json.loads(
        run_cli("eval", "latest", "--episodes", "2", "--json", home=home, env=env_module, check=True).stdout
    )
    assert result["episodes"] == 2


def test_cartpole_trains_on_its_state_vector_and_imagine_draws_one_panel_per_dimension(home, tmp_path):
    import matplotlib.image

    run_cli("train", "gym:CartPole-v1", "--preset", "debug", "--steps", "300", *fast_args(), home=home, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["status"] == "finished" and meta["env_spec"]["obs"] == {"state": [4]}
    assert meta["progress"]["updates"] > 0
    logged = [json.loads(line) for line in (home / "runs" / "run-1" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/state" in entry for entry in logged) and not any("loss/image" in entry for entry in logged)
    result = json.loads(run_cli("eval", "latest", "--episodes", "2", "--json", home=home, check=True).stdout)
    assert result["episodes"] == 2 and all(1 <= r <= 500 for r in result["returns"])
    assert result["reward_threshold"] == 475.0  # Gymnasium's "solved" return for CartPole-v1
    figure = tmp_path / "dream.png"
    proc = run_cli("imagine", "latest", "--out", str(figure), "--horizon", "10", home=home, check=True)
    assert f"wrote {figure}" in proc.stdout
    image = matplotlib.image.imread(figure)
    assert image.shape[:2] == (40 + 140 * 4, 800)  # one 1.4-inch panel per dimension of the 4-vector, at 100 dpi
    proc = run_cli("eval", "latest", "--video", str(tmp_path / "play.mp4"), home=home)
    assert proc.returncode == 2 and "observes no images" in proc.stderr and "env.render_pixels=true" in proc.stderr


def test_a_dict_env_with_an_image_and_vectors_trains_through_the_cli(env_module, home):
    name = "gym:pixelenvs:DriftDict-v0"
    run_cli("train", name, "--preset", "debug", "--steps", "300", *fast_args(), home=home, env=env_module, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["env_spec"]["obs"] == {"screen": [64, 64, 1], "position": [2], "obs_reward": [2]}
    logged = [json.loads(line) for line in (home / "runs" / "run-1" / "metrics.jsonl").read_text().splitlines()]
    assert any({"loss/screen", "loss/position", "loss/obs_reward"} <= set(entry) for entry in logged)
    out = home / "dream.gif"
    run_cli("imagine", "latest", "--out", str(out), "--horizon", "5", home=home, env=env_module, check=True)
    assert out.stat().st_size > 0


def test_dry_run_lists_each_observation_and_the_encoder_that_reads_it(env_module, home):
    name = "gym:pixelenvs:Drift-v0"
    proc = run_cli("train", name, "--set", "env.render_pixels=true", "--dry-run", home=home, env=env_module)
    assert proc.returncode == 0, proc.stderr
    assert "# observation state: float32 vector [2], read by the MLP encoder" in proc.stdout
    assert "# observation image: uint8 image [64, 64, 1], read by the conv encoder" in proc.stdout
    assert proc.stderr == ""  # rendering is headless and says nothing
    proc = run_cli("train", name, "--set", "env.mlp_keys=^$", "--dry-run", home=home, env=env_module)
    assert proc.returncode == 2 and "no observation of gym:pixelenvs:Drift-v0 (state [2]) matches" in proc.stderr
    assert not home.exists()


def test_rendering_a_classic_control_env_is_headless_and_prints_nothing(home):
    """SDL would print errors about XDG_RUNTIME_DIR without a display; dreamctl gives it its dummy drivers."""
    env = {"XDG_RUNTIME_DIR": "", "SDL_VIDEODRIVER": "", "SDL_AUDIODRIVER": ""}
    proc = run_cli("train", "gym:Pendulum-v1", "--set", "env.render_pixels=true", "--dry-run", home=home, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "# observation image: uint8 image [64, 64, 1], read by the conv encoder" in proc.stdout


def test_a_rendered_frame_is_drawn_once_per_agent_step_after_its_repeated_actions(monkeypatch):
    """Rendering costs more than simulating: of the `action_repeat` sub-steps, only the last one's frame is seen."""
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    from dreamctl.config import load_config
    from dreamctl.envs.gym_env import GymEnv

    rendered_at = []
    render = PendulumEnv.render

    def counted(self):
        rendered_at.append(self.state.copy())
        return render(self)

    monkeypatch.setattr(PendulumEnv, "render", counted)
    cfg = load_config("vector", ["env.render_pixels=true", "env.action_repeat=3"]).env
    env = GymEnv("Pendulum-v1", cfg, 1, seed=0)
    try:
        env.reset()
        rendered_at.clear()
        for _ in range(4):
            env.step(np.ones((1, 1), np.float32))
        inner = env.env.envs[0].unwrapped
        assert len(rendered_at) == 4 and np.array_equal(rendered_at[-1], inner.state)
    finally:
        env.close()


@pytest.mark.parametrize("copies", [1, 2])
def test_a_copy_that_raises_ends_the_run_in_one_sentence(env_module, home, copies):
    """In a worker process (2 copies) as in this one: the copy's exception, not gymnasium's traceback, and no hang."""
    name = "gym:pixelenvs:Faulty-v0"
    sets = ["--set", f"env.num_envs={copies}", "--set", "train.prefill=100"]  # a run that would update
    proc = run_cli("train", name, "--steps", "200", *sets, home=home, env=env_module)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "WARN" not in proc.stderr, proc.stderr
    said = f"error: {name} failed in a copy (RuntimeError: physics diverged at step 20)."
    assert proc.stderr.strip().splitlines() == [said]
    assert yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())["status"] == "failed"


def test_a_killed_worker_process_is_named_and_the_others_are_ended():
    """A worker killed mid-run (as the kernel kills one out of memory) would leave gymnasium's close waiting on its
    pipe, and the other workers, which ignore SIGTERM, alive."""
    import os
    import signal

    from dreamctl.config import load_config
    from dreamctl.envs.gym_env import GymEnv
    from dreamctl.errors import DreamctlError

    env = GymEnv("CartPole-v1", load_config("vector").env, 3, seed=0)
    env.reset()
    processes = env.env.processes
    os.kill(processes[1].pid, signal.SIGKILL)  # not reaped: its pipe may end before the process can be
    with pytest.raises(DreamctlError, match=r"^gym:CartPole-v1 stopped: the worker process of copy 1 was killed by "):
        env.step(np.zeros(3, np.int64))
    env.close()
    assert not any(p.is_alive() for p in processes)


def test_how_a_worker_ended_in_words():
    from dreamctl.envs.gym_env import _death

    assert _death(-9) == "was killed by SIGKILL" and _death(-40) == "was killed by signal 40"
    assert _death(3) == "exited with status 3"


def test_closing_copies_whose_worker_died_since_the_last_call_ends_the_others():
    """As after the last step of an evaluation, or a worker killed while the trainer updated: gymnasium's close
    would write to the dead pipe and raise."""
    import os
    import signal

    from dreamctl.config import load_config
    from dreamctl.envs.gym_env import GymEnv

    env = GymEnv("CartPole-v1", load_config("vector").env, 2, seed=0)
    env.reset()
    processes = env.env.processes
    os.kill(processes[0].pid, signal.SIGKILL)
    processes[0].join()
    env.close()
    assert not any(p.is_alive() for p in processes)


def test_a_worker_that_exits_after_its_copy_raised_is_no_death():
    """gymnasium's worker reports its copy's exception, then exits with status 0, maybe before the trainer looks."""
    import gymnasium as gym

    from dreamctl.config import load_config
    from dreamctl.envs.gym_env import GymEnv, dead_workers
    from dreamctl.errors import DreamctlError

    class Raising(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, seed=None, options=None):
            return np.zeros(2, np.float32), {}

        def step(self, action):
            raise RuntimeError("physics diverged")

    gym.register("dreamctl-tests/Raising-v0", entry_point=Raising)
    env = GymEnv("dreamctl-tests/Raising-v0", load_config("vector").env, 2, seed=0)
    env.reset()
    with pytest.raises(DreamctlError, match=r"failed in a copy \(RuntimeError: physics diverged\)\.$"):
        env.step(np.zeros(2, np.int64))
    env.env.processes[0].join(10)
    assert env.env.processes[0].exitcode == 0 and dead_workers(env.env) == ""
    env.close()
    assert not any(p.is_alive() for p in env.env.processes)


def test_a_new_run_that_would_not_observe_its_action_mask_is_refused_by_train_and_its_dry_run(env_module, home):
    name = "gym:pixelenvs:Masked-v0"
    for dry in ([], ["--dry-run"]):
        proc = run_cli("train", name, "--set", "env.mlp_keys=^state$", *dry, home=home, env=env_module)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"error: {name}'s action_mask says which actions are allowed now, and the agent must observe it; make "
            "env.mlp_keys (^state$) match it too."
        ]
    assert not (home / "runs").exists()


def test_an_action_mask_left_out_of_the_observed_keys_is_refused_in_one_sentence():
    """Acting (and imagination, through the world model's reconstruction of it) reads the mask from the observed
    keys: without it the agent would choose actions the env forbids, unannounced."""
    import gymnasium as gym

    from dreamctl.config import load_config
    from dreamctl.envs import make_env
    from dreamctl.errors import UsageError

    class Masked(gym.Env):
        observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "action_mask": gym.spaces.MultiBinary(3)}
        )
        action_space = gym.spaces.Discrete(3)

    gym.register("dreamctl-tests/Masked-v0", entry_point=Masked)
    cfg = load_config("vector", ["env.name=gym:dreamctl-tests/Masked-v0", "env.mlp_keys=^state$", "env.num_envs=1"]).env
    make_env(cfg, seed=0).close()  # a run recorded before the check opens as it was trained
    with pytest.raises(UsageError) as refused:
        make_env(cfg, seed=0, new_run=True)
    assert str(refused.value) == (
        "gym:dreamctl-tests/Masked-v0's action_mask says which actions are allowed now, and the agent must observe it; "
        "make env.mlp_keys (^state$) match it too."
    )


def test_an_observation_space_dreamctl_cannot_encode_is_refused_in_one_sentence(env_module, home):
    proc = run_cli("train", "gym:pixelenvs:Talker-v0", "--preset", "debug", home=home, env=env_module)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is a Text space" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not home.exists()


@pytest.mark.parametrize(
    "name, extra, preset",
    [
        ("gym:CartPole-v1", [], "vector"),
        ("gym:CartPole-v1", ["--set", "env.render_pixels=true"], "pixels"),
        ("gym:pixelenvs:PixelGrid-v0", [], "pixels"),
        ("catch", [], "debug"),
        ("catch2", [], "catch2"),
        ("reach", [], "pixels"),
    ],
)
def test_envs_without_images_default_to_the_vector_preset(env_module, home, name, extra, preset):
    proc = run_cli("train", name, *extra, "--dry-run", home=home, env=env_module, check=True)
    assert proc.stdout.startswith(f"# preset {preset}\n")


def test_a_discrete_space_that_starts_elsewhere_than_0_is_counted_from_its_start():
    """Discrete(3, start=-1) holds -1, 0, 1: its observation -1 is the first class and action index 2 is 1."""
    import gymnasium as gym
    import numpy as np

    from dreamctl.config import load_config
    from dreamctl.envs.gym_env import env_action, layout

    space = gym.spaces.Discrete(3, start=-1)
    converter = layout(space, "test", load_config("vector").env)["state"]
    np.testing.assert_array_equal(
        converter.convert(np.array([-1, 1]), load_config("vector").env), [[1, 0, 0], [0, 0, 1]]
    )
    assert env_action(space, np.array(2)) == 1 and space.contains(int(env_action(space, np.array(0))))


@pytest.mark.parametrize("shape", [(3, 32, 32), (32, 32, 4)])
def test_frames_with_channels_first_or_stacked_are_refused_in_one_sentence(shape):
    """Flattened, they would reach the model as a vector of thousands of bytes, which it cannot learn from."""
    import gymnasium as gym
    import numpy as np

    from dreamctl.config import load_config
    from dreamctl.envs.gym_env import layout
    from dreamctl.errors import UsageError

    with pytest.raises(UsageError, match=r"^the observation of test is a uint8 array of shape [^.]*\.$"):
        layout(gym.spaces.Box(0, 255, shape, np.uint8), "test", load_config("vector").env)


def test_byte_vectors_are_scaled_to_the_images_range_and_other_numbers_kept():
    """A uint8 Box that is not an image (Atari RAM, say) becomes x / 255 - 0.5, as DreamerV2's preprocess scales
    every uint8 observation; float and integer vectors reach the model as they are."""
    import gymnasium as gym
    import numpy as np

    from dreamctl.config import load_config
    from dreamctl.envs.gym_env import layout

    cfg = load_config("vector").env
    ram = layout(gym.spaces.Box(0, 255, (4,), np.uint8), "test", cfg)["state"]
    assert ram.kind == "vector"
    np.testing.assert_allclose(
        ram.convert(np.array([[0, 51, 255, 102]], np.uint8), cfg), [[-0.5, -0.3, 0.5, -0.1]], rtol=0, atol=1e-7
    )
    for space, value in (
        (gym.spaces.Box(-300.0, 300.0, (2,), np.float32), np.array([[255.0, -3.5]], np.float32)),
        (gym.spaces.MultiDiscrete([300, 300]), np.array([[255, 7]])),
    ):
        converted = layout(space, "test", cfg)["state"].convert(value, cfg)
        assert converted.dtype == np.float32
        np.testing.assert_array_equal(converted, value.astype(np.float32))


def test_box_actions_are_rescaled_to_finite_bounds_and_passed_as_they_are_where_a_bound_is_infinite():
    import gymnasium as gym
    import numpy as np

    from dreamctl.envs.gym_env import env_action

    low = np.array([-2.0, 0.0, -np.inf, 0.0, -np.inf], np.float32)
    high = np.array([2.0, 10.0, np.inf, np.inf, 0.5], np.float32)
    space = gym.spaces.Box(low, high)
    got = env_action(space, np.array([[0.5, -1.0, 0.25, -0.7, 0.9], [1.0, 0.0, -0.75, 0.3, -0.2]], np.float32))
    # one finite bound: the action as it is, kept on the allowed side of that bound
    np.testing.assert_allclose(got, [[1.0, 0.0, 0.25, 0.0, 0.5], [2.0, 5.0, -0.75, 0.3, -0.2]])
    assert np.isfinite(got).all() and got.dtype == np.float32 and all(space.contains(row) for row in got)
