"""Any installed Gymnasium environment: `gym:<id>`.

Observations become named arrays (envs/base.py): an image (uint8 H x W[ x C], or a rendered `rgb_array` frame with
`env.render_pixels`) is converted to the configured gray/RGB and size under the key `image`; a Box of numbers, a
Discrete (one-hot) or a MultiBinary becomes a float32 vector under the key `state`; a Dict of such spaces keeps its
keys. Spaces that have no such encoding (text, tuples, graphs, nested dicts) are refused, naming the space.
Actions must be Discrete or a 1-D Box (the agent's [-1, 1] is rescaled to the box's bounds). Copies run in one
process when there is one, in worker processes otherwise (gymnasium's AsyncVectorEnv), with Gymnasium's next-step
autoreset, which is the convention of envs/base.py. Rendering is headless: SDL (pygame) is given its dummy drivers
unless the user chose others, so it neither opens windows nor prints errors about a missing display; and
Gymnasium's own warnings and errors (its environment checker's, a worker's traceback) are silenced, so stderr carries
dreamctl's messages only: a copy that raises or whose worker process dies ends the run in one sentence.
"""

from __future__ import annotations

import functools
import multiprocessing.connection
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from dreamctl.config import EnvConfig
from dreamctl.envs.base import RESERVED_KEYS, EnvSpec, VectorEnvAdapter, convert_frames
from dreamctl.envs.gym_state import Resumable, to_array
from dreamctl.errors import DreamctlError, UsageError


def _quiet() -> None:
    """Headless SDL and no Gymnasium warnings or error logs, in this process (and in each worker process, which may not
    fork)."""
    for variable in ("SDL_VIDEODRIVER", "SDL_AUDIODRIVER"):
        if not os.environ.get(variable):
            os.environ[variable] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame's greeting would land on stdout
    # A copy's exception reaches the user as one sentence (GymnasiumCopies); its traceback only when debugging.
    gym.logger.min_level = gym.logger.ERROR + (0 if os.environ.get("DREAMCTL_DEBUG") == "1" else 1)


_quiet()


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times, summing rewards, stopping early when the episode ends."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


@dataclass(frozen=True)
class Converter:
    """How one observation key is made from the env's observation."""

    source: str | None  # the key in the env's Dict observation, or None for the whole observation
    kind: Literal["image", "vector", "one_hot"]
    shape: tuple[int, ...]  # of one copy's converted array
    start: int = 0  # one_hot: the value of the first class (a Discrete space's `start`)

    def convert(self, obs: Any, cfg: EnvConfig) -> np.ndarray:
        """The batched observation (N, ...) of every copy -> (N, *shape)."""
        x = np.asarray(obs if self.source is None else obs[self.source])
        if self.kind == "image":
            return convert_frames(x, cfg.image_size, cfg.grayscale, cfg.resize)
        if self.kind == "one_hot":
            return np.eye(self.shape[0], dtype=np.float32)[x.astype(np.int64).reshape(-1) - self.start]
        vector = x.reshape(x.shape[0], -1).astype(np.float32)
        if x.dtype == np.uint8:  # bytes (e.g. Atari RAM) are scaled as DreamerV2's preprocess scales every uint8 key
            vector = vector / np.float32(255) - np.float32(0.5)
        return vector


def _is_image(space: gym.Space) -> bool:
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3)))
    )


def _converter(space: gym.Space, source: str | None, cfg: EnvConfig, what: str) -> Converter:
    """The converter of one (non-Dict) space, or a UsageError that names the space."""
    if _is_image(space):
        return Converter(source, "image", (cfg.image_size, cfg.image_size, 1 if cfg.grayscale else 3))
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3:
        raise UsageError(
            f"{what} is a uint8 array of shape {space.shape}, which looks like frames but is not one image with 1 "
            "or 3 channels last (height x width x channels); wrap the env to give such frames, one at a time."
        )
    if isinstance(space, gym.spaces.Box):
        return Converter(source, "vector", (int(np.prod(space.shape, dtype=np.int64)) or 1,))
    if isinstance(space, gym.spaces.Discrete):
        return Converter(source, "one_hot", (int(space.n),), int(space.start))
    if isinstance(space, (gym.spaces.MultiBinary, gym.spaces.MultiDiscrete)) and space.shape is not None:
        return Converter(source, "vector", (int(np.prod(space.shape, dtype=np.int64)),))
    raise UsageError(
        f"{what} is a {type(space).__name__} space ({space}), which dreamctl cannot encode; it reads images "
        f"(uint8 Box), numbers (Box, Discrete, MultiBinary, MultiDiscrete) and one level of Dict of those."
    )


def layout(
    space: gym.Space, name: str, cfg: EnvConfig, reserved: tuple[str, ...] = RESERVED_KEYS
) -> dict[str, Converter]:
    """Observation key -> converter, for the observation space of the env `name` (after any rendered frame is
    added); a Dict key that names one of the `reserved` keys is renamed obs_<key>."""
    what = f"the observation of {name}"
    if not isinstance(space, gym.spaces.Dict):
        converter = _converter(space, None, cfg, what)
        return {"image" if converter.kind == "image" else "state": converter}
    out = {}
    for key, sub in space.spaces.items():
        name = f"obs_{key}" if key in reserved else str(key)
        out[name] = _converter(sub, key, cfg, f"key '{key}' of {what}")
    return out


def reward_threshold(env_id: str) -> float | None:
    """The return at which Gymnasium's registry counts the env as solved (its spec's `reward_threshold`), if any."""
    try:
        threshold = gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None
    return None if threshold is None else float(threshold)


def _make(env_id: str, render_key: str | None, repeat: int) -> gym.Env:
    """One copy; `render_key` adds the rendered rgb_array frame to the observation under that key, rendered once
    per agent step, after the last of its repeated actions (the only frame the agent sees)."""
    _quiet()
    env = gym.make(env_id) if render_key is None else gym.make(env_id, render_mode="rgb_array")
    if repeat > 1:
        env = ActionRepeat(env, repeat)
    if render_key is not None:
        env = gym.wrappers.AddRenderObservation(env, render_only=False, render_key=render_key, obs_key="state")
    return env


def _copy(make: Callable[[], gym.Env], index: int) -> gym.Env:
    return Resumable(make(), index)


def _worker_copy(make: Callable[[], gym.Env], index: int, builder: int) -> gym.Env:
    """A copy in its own worker process, which leaves Ctrl-C, SIGTERM and SIGHUP to the trainer: a terminal sends
    SIGINT (and SIGHUP when it closes) to the whole process group, and a worker that died of it could not give its
    state to the checkpoint the trainer writes before it stops (the trainer closes the workers itself).
    AsyncVectorEnv also calls this once in the process that builds it (pid `builder`), to read the spaces, where the
    signals must stay that process's (which may itself have been started by multiprocessing)."""
    if os.getpid() != builder:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
    return _copy(make, index)


def inspect(env_id: str, cfg: EnvConfig) -> tuple[str | None, gym.Space, gym.Space]:
    """Make the env once: the key for its rendered frame (None without `render_pixels`), and its observation and
    action spaces as the copies will have them; refuse, with the reason, what cannot work."""
    try:
        probe = gym.make(env_id)
    except gym.error.Error as exc:
        raise UsageError(
            f"gym:{env_id} could not be made ({exc}); check the id and that its package is installed."
        ) from None
    try:
        obs_space, action_space = probe.observation_space, probe.action_space
        render_modes = probe.metadata.get("render_modes", [])
    finally:
        probe.close()
    action_size(action_space, f"gym:{env_id}")
    if not cfg.render_pixels:
        return None, obs_space, action_space
    if "rgb_array" not in render_modes:
        raise UsageError(f"gym:{env_id} does not render rgb_array frames, so env.render_pixels cannot be true.")
    keys = obs_space.spaces if isinstance(obs_space, gym.spaces.Dict) else {}
    render_key = "pixels" if "image" in keys else "image"
    try:
        env = _make(env_id, render_key, 1)
        env.reset(seed=0)
        space = env.observation_space
        env.close()
    except Exception as exc:  # a renderer whose package is missing, a display it cannot open, ...
        raise UsageError(f"gym:{env_id} could not render its frames ({exc}).") from None
    return render_key, space, action_space


def action_size(space: gym.Space, name: str) -> tuple[int, bool]:
    """(action_dim, discrete) of a Discrete or 1-D Box action space; any other is a UsageError in one sentence."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n), True
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0]), False
    raise UsageError(f"{name}'s action space {space} is not supported; dreamctl acts in Discrete and 1-D Box spaces.")


def env_action(space: gym.Space, action: np.ndarray) -> np.ndarray:
    """The agent's action as `space` takes it: for Discrete the index counted from the space's `start`, and for a
    Box the vector in [-1, 1] rescaled to the box's bounds; a dimension without two finite bounds takes the action
    as it is (as DreamerV2's NormalizeAction wrapper does), kept inside its one finite bound where it has one.
    action: (...) indices or (..., A) vectors."""
    if isinstance(space, gym.spaces.Discrete):
        return np.asarray(action, np.int64) + int(space.start)
    assert isinstance(space, gym.spaces.Box)  # `action_size` refuses every other kind
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    clipped = np.clip(action, -1.0, 1.0)
    bounded = np.isfinite(low) & np.isfinite(high)
    if bounded.all():
        return low + (clipped + 1.0) / 2.0 * (high - low)
    scaled = np.where(bounded, low, 0.0) + (clipped + 1.0) / 2.0 * np.where(bounded, high - low, 0.0)
    return np.where(bounded, scaled, np.clip(clipped, low, high)).astype(np.float32)


class GymnasiumCopies(VectorEnvAdapter):
    """`num_envs` copies of a Gymnasium env stepped together (in worker processes when there are several), each
    wrapped in `Resumable` so that a checkpoint can hold its state.

    Args:
        name: the env's canonical name (`gym:<id>`, `dmc:<domain>_<task>`).
        keys: observation key -> how it is made from the copies' observations.
        action_space: the copies' action space (Discrete or 1-D Box).
        make: builds one copy.
        cfg: the env section.
        num_envs, seed: how many copies, and the seed of the first (copy i gets seed + i).
        start_method: multiprocessing's, for the worker processes (None: the platform's default, fork on Linux).
    """

    def __init__(
        self,
        name: str,
        keys: dict[str, Converter],
        action_space: gym.Space,
        make: Callable[[], gym.Env],
        cfg: EnvConfig,
        num_envs: int,
        seed: int,
        start_method: str | None = None,
    ):
        super().__init__(num_envs, seed)
        self.cfg, self.layout = cfg, keys
        mode = gym.vector.AutoresetMode.NEXT_STEP
        if num_envs > 1:
            copies = [functools.partial(_worker_copy, make, i, os.getpid()) for i in range(num_envs)]
            self.env = gym.vector.AsyncVectorEnv(copies, autoreset_mode=mode, context=start_method)
        else:
            self.env = gym.vector.SyncVectorEnv([functools.partial(_copy, make, 0)], autoreset_mode=mode)
        self.saveable = True  # until a copy's state turns out not to be saveable
        self.broken = False  # a call on the copies failed: the workers may be mid-call or dead
        self.action_space = action_space
        action_dim, discrete = action_size(action_space, name)
        obs = {key: converter.shape for key, converter in self.layout.items()}
        self.spec = EnvSpec(name, obs, action_dim, discrete, cfg.action_repeat)

    def get_state(self) -> dict[str, np.ndarray]:
        if not self.saveable:
            return {}
        states = self._copies(lambda: self.env.call("dreamctl_state"))
        if not all(states):
            self.saveable = False
            return {}
        return {"last": self.last.copy(), **{f"copy{i}": to_array(state) for i, state in enumerate(states)}}

    def state_fits(self, state: dict[str, np.ndarray]) -> str | None:
        """Every copy checks its saved state before any copy is written (`Resumable.dreamctl_fits`)."""
        copies = [state[f"copy{i}"].tobytes() for i in range(self.num_envs)]
        return next((reason for reason in self._copies(lambda: self.env.call("dreamctl_fits", copies)) if reason), None)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        copies = [state[f"copy{i}"].tobytes() for i in range(self.num_envs)]
        self._copies(lambda: self.env.call("dreamctl_restore", copies))
        self.last[:] = state["last"]

    def close(self) -> None:
        """Close the copies; workers that a failure left mid-call, or that died, are killed instead, since they
        ignore SIGTERM and would not answer gymnasium's close."""
        if not isinstance(self.env, gym.vector.AsyncVectorEnv):
            self.env.close()
            return
        if not self.broken:
            try:
                self.env.close()
                return
            except (EOFError, OSError):  # a worker died since the last call (out of memory during an update)
                pass
        kill_workers(self.env)

    def _copies(self, call: Callable[[], Any]) -> Any:
        """call() on the copies; a copy that raised, or whose worker died, ends in one sentence naming the env."""
        try:
            return call()
        except BaseException as exc:  # a second Ctrl-C inside a worker call too leaves the workers mid-call
            self.broken = True
            if not isinstance(exc, Exception) or isinstance(exc, DreamctlError):
                raise
            died = dead_workers(self.env) if isinstance(exc, (EOFError, ConnectionError)) else ""  # a dead pipe
            if died:
                raise DreamctlError(f"{self.spec.name} stopped: {died}.") from exc
            said = " ".join(str(exc).split())
            raise DreamctlError(
                f"{self.spec.name} failed in a copy ({type(exc).__name__}{': ' + said if said else ''})."
            ) from exc

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        return env_action(self.action_space, action)

    def _observations(self, obs: Any) -> dict[str, np.ndarray]:
        return {key: converter.convert(obs, self.cfg) for key, converter in self.layout.items()}


def dead_workers(env: Any) -> str:
    """Which worker processes of the copies died, and how, in words; "" when none did (or there are none). A dead
    worker's pipe can report its end a moment before the process can be reaped, so this waits up to a second for one.
    A worker whose copy raised reports the exception and then exits with status 0: that is no death."""
    if not isinstance(env, gym.vector.AsyncVectorEnv):
        return ""
    ended = set(multiprocessing.connection.wait([p.sentinel for p in env.processes], timeout=1.0))
    for process in env.processes:
        if process.sentinel in ended:
            process.join(1.0)
    codes = [(i, p.exitcode) for i, p in enumerate(env.processes) if p.exitcode not in (None, 0)]
    if not codes:
        return ""
    said = ", ".join(f"copy {i} {_death(code)}" for i, code in codes)
    killed = any(code == -signal.SIGKILL for _, code in codes)
    return f"the worker process of {said}" + (" (as the kernel ends a process when memory runs out)" if killed else "")


def _death(code: int) -> str:
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal, which has no name
        return f"was killed by signal {-code}"


def kill_workers(env: gym.vector.AsyncVectorEnv) -> None:
    """End every worker at once (SIGKILL) and release the pipes, leaving gymnasium's env closed."""
    for process in env.processes:
        if process.is_alive():
            process.kill()
    for process in env.processes:
        process.join()
    for pipe in env.parent_pipes:
        if pipe is not None:
            pipe.close()
    env.closed = True


class GymEnv(GymnasiumCopies):
    """`num_envs` copies of `gym:<env_id>`."""

    def __init__(self, env_id: str, cfg: EnvConfig, num_envs: int, seed: int):
        render_key, obs_space, action_space = inspect(env_id, cfg)
        make = functools.partial(_make, env_id, render_key, cfg.action_repeat)
        name = f"gym:{env_id}"
        super().__init__(name, layout(obs_space, name, cfg), action_space, make, cfg, num_envs, seed)
