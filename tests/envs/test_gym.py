"""`gym:<id>` trains any Gymnasium env with pixels, registered here inside the test."""

import json

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


class NoPixels(gym.Env):
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)


gym.register("PixelGrid-v0", entry_point=PixelGrid)
gym.register("PixelDrive-v0", entry_point=PixelGrid, kwargs={"continuous": True})
gym.register("NoPixels-v0", entry_point=NoPixels)
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
    assert meta["env_spec"]["obs_shape"] == [64, 64, 1] and meta["env_spec"]["discrete"] is discrete
    assert meta["env_spec"]["action_dim"] == (4 if discrete else 2)
    assert meta["progress"]["updates"] > 0
    result = json.loads(
        run_cli("eval", "latest", "--episodes", "2", "--json", home=home, env=env_module, check=True).stdout
    )
    assert result["episodes"] == 2


def test_env_without_pixels_is_refused_with_the_reason(env_module, home):
    proc = run_cli("train", "gym:pixelenvs:NoPixels-v0", "--preset", "debug", home=home, env=env_module)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "neither observes images" in proc.stderr and not home.exists()
