"""The DeepMind Control Suite from pixels: `dmc:<domain>_<task>`, with DreamerV2's protocol.

Each copy renders a 64x64 RGB frame (`env.image_size`) from camera 0 (camera 2 for quadruped, as the released code
does), repeats each action `env.action_repeat` times (2 in the `dmc` preset) summing the rewards, and ends its episode
at the suite's time limit (1,000 simulator steps; `env.max_frames` can shorten it). Rewards are raw, actions in
[-1, 1] are scaled to the task's bounds. An episode that the task ends with discount 0 (the lqr tasks, once the state
is near zero) terminates; every other end is the time limit: `is_last` without `is_terminal`.

Copies are `DmcCopy` Gymnasium envs batched by the same vector env as `gym:` envs (worker processes when there are
several), so they share its autoreset and its saving: a checkpoint holds each copy's full MuJoCo integration state,
the model fields the suite's tasks randomise per episode (reacher's target, swimmer's light, quadruped_escape's
terrain, for example), the task's random state and the episode's step count; a restored copy first starts an
episode of its own (for what a task sets at every start and never varies), then takes the saved state, and a resumed
run continues its episodes bit for bit. What a task draws when it is built (the lqr tasks' system) comes from a fixed
seed: the same system in every run.

Rendering is headless: MuJoCo's EGL backend where libEGL is installed, OSMesa otherwise, unless `MUJOCO_GL` is set.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
from typing import Any

import gymnasium as gym
import numpy as np

from dreamctl.config import EnvConfig
from dreamctl.envs.gym_env import GymnasiumCopies, layout
from dreamctl.envs.gym_state import StateMismatch
from dreamctl.errors import DreamctlError

INSTALL_EXTRA = "pip install 'dreamctl[dmc]'"
INSTALL_RENDERER = "apt-get install libegl1 libgl1-mesa-dri (or libosmesa6)"

# Model fields that the suite's tasks set when an episode starts; saved with the state so a restored copy is the
# same scene (the rest of the model never changes).
RANDOMISED_MODEL_FIELDS = (
    "body_pos",
    "body_quat",
    "geom_pos",
    "geom_quat",
    "geom_size",
    "geom_rgba",
    "site_pos",
    "light_pos",
    "wrap_prm",
    "hfield_data",
)


def choose_renderer() -> None:
    """Pick MuJoCo's rendering backend unless the user has: EGL where libEGL exists, else OSMesa; else explain."""
    if os.environ.get("MUJOCO_GL"):
        return
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            return
    raise DreamctlError(
        f"dmc: tasks render with MuJoCo, which found neither libEGL nor libOSMesa; install one: {INSTALL_RENDERER}."
    )


def load_suite() -> Any:
    """dm_control's suite, or a one-sentence error saying what to install: the extra, or a renderer."""
    choose_renderer()
    try:
        from dm_control import suite
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("dm_control", "mujoco", "dm_env"):
            raise DreamctlError(
                f"dmc: tasks need the DeepMind Control Suite; install it with {INSTALL_EXTRA}."
            ) from None
        raise _renderer_error(exc) from None
    except Exception as exc:  # dm_control loads the OpenGL library of MUJOCO_GL when it is imported
        raise _renderer_error(exc) from None
    return suite


def _renderer_error(exc: Exception) -> DreamctlError:
    """What to do when the chosen backend fails: the other one where this machine has it (a libEGL may be present
    without a device it can drive), else the install command."""
    backend = os.environ.get("MUJOCO_GL")
    fix = f"install one: {INSTALL_RENDERER}"
    if backend == "egl" and ctypes.util.find_library("OSMesa"):
        fix = "rerun with MUJOCO_GL=osmesa, which this machine has"
    said = " ".join(str(exc).split())
    return DreamctlError(f"MuJoCo could not start its renderer with MUJOCO_GL={backend} ({said}); {fix}.")


class DmcCopy(gym.Env):
    """One copy of a suite task as a Gymnasium env whose observation is the rendered frame.

    Args:
        domain, task: the suite's names (`walker`, `walk`).
        cfg: the env section (image_size, action_repeat, max_frames).
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - the attribute Gymnasium defines

    def __init__(self, domain: str, task: str, cfg: EnvConfig):
        # What a task draws when it is built rather than per episode (the lqr tasks' springs) comes from a fixed seed,
        # so that every copy, run and resume has the same system; episodes draw from the seeds `reset` is given.
        self.env = load_suite().load(domain, task, task_kwargs={"random": 0})
        self.env._step_limit = min(self.env._step_limit, cfg.max_frames)
        self.size, self.repeat = cfg.image_size, cfg.action_repeat
        self.camera = 2 if domain == "quadruped" else 0
        spec = self.env.action_spec()
        self.action_space = gym.spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32))
        self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.env.task._random = np.random.RandomState(seed)
        self.env.reset()
        return self._frame(), {}

    def step(self, action):
        reward = 0.0
        for _ in range(self.repeat):
            time_step = self.env.step(action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        terminated = time_step.last() and time_step.discount == 0.0
        return self._frame(), reward, terminated, time_step.last() and not terminated, {}

    def _frame(self) -> np.ndarray:
        return self.env.physics.render(self.size, self.size, camera_id=self.camera)

    def close(self) -> None:
        """Frees the simulation and its rendering context now (dm_control's own `close` keeps both)."""
        self.env.physics.free()

    def saved_state(self) -> dict[str, Any]:
        """Everything the copy's future depends on, as arrays and numbers (`gym_state.encode` writes them)."""
        import mujoco

        physics = self.env.physics
        return {
            "integration": physics.get_state(sig=mujoco.mjtState.mjSTATE_INTEGRATION),
            "model": {name: getattr(physics.model, name).copy() for name in RANDOMISED_MODEL_FIELDS},
            "random": self.env.task.random.get_state(),
            "step_count": self.env._step_count,
            "reset_next_step": self.env._reset_next_step,
        }

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise StateMismatch where what `saved_state` gave does not fit this copy's model (saved under another
        version of MuJoCo or of the suite); changes nothing."""
        import mujoco

        physics = self.env.physics
        missing = sorted({"integration", "model", "random", "step_count", "reset_next_step"} - state.keys())
        if missing:
            raise StateMismatch(f"the saved state lacks {', '.join(missing)}")
        for name, value in state["model"].items():
            if not hasattr(physics.model, name) or getattr(physics.model, name).shape != np.shape(value):
                raise StateMismatch(f"the model's {name} differs from the saved one")
        size = mujoco.mj_stateSize(physics.model.ptr, mujoco.mjtState.mjSTATE_INTEGRATION)
        if np.shape(state["integration"]) != (size,):
            raise StateMismatch(f"the saved simulation state has {np.size(state['integration'])} numbers, not {size}")

    def load_state(self, state: dict[str, Any]) -> None:
        """Write back what `saved_state` gave (`check_state` accepted it)."""
        import mujoco

        physics = self.env.physics
        # An episode's start also sets what the saved fields leave out and never varies (dog's stand height and
        # weight, finger's damping and target size); a copy restored without a reset of its own would lack it.
        self.env.reset()
        for name, value in state["model"].items():
            getattr(physics.model, name)[:] = value
        for hfield in range(physics.model.nhfield):  # the renderer keeps its own copy of each terrain
            with physics.contexts.gl.make_current() as ctx:
                ctx.call(mujoco.mjr_uploadHField, physics.model.ptr, physics.contexts.mujoco.ptr, hfield)
        physics.set_state(state["integration"], sig=mujoco.mjtState.mjSTATE_INTEGRATION)
        # What a step leaves computed (positions, velocities, sensors) for the next step to use.
        if physics.legacy_step:
            mujoco.mj_step1(physics.model.ptr, physics.data.ptr)
        else:
            mujoco.mj_forward(physics.model.ptr, physics.data.ptr)
        self.env.task.random.set_state(state["random"])
        self.env._step_count, self.env._reset_next_step = state["step_count"], state["reset_next_step"]


class Dmc(GymnasiumCopies):
    """`num_envs` copies of a suite task, stepped together (in worker processes when there are several)."""

    def __init__(self, domain: str, task: str, cfg: EnvConfig, num_envs: int, seed: int):
        make = functools.partial(DmcCopy, domain, task, cfg)
        probe = make()  # loads the suite and renders once, so that a missing piece is reported here
        try:
            probe.reset(seed=0)
        except Exception as exc:  # MuJoCo's renderer could not start
            raise _renderer_error(exc) from None
        finally:
            probe.close()
        keys = layout(probe.observation_space, f"dmc:{domain}_{task}", cfg)
        # Workers are spawned, not forked: this process has started a renderer, which a forked child cannot use.
        name = f"dmc:{domain}_{task}"
        super().__init__(name, keys, probe.action_space, make, cfg, num_envs, seed, start_method="spawn")
