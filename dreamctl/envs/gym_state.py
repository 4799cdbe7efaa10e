"""Saving and restoring a Gymnasium env copy mid-episode, so that a resumed run continues the same episodes.

Gymnasium has no state API. Envs written in plain Python (the classic-control ones: CartPole, Pendulum, Acrobot,
MountainCar) keep their whole state in attributes: numbers, numpy arrays and the `np_random` generator, plus their
wrappers' counters (TimeLimit's elapsed steps). `Resumable`, the outermost wrapper of each copy, writes those
attributes of every layer of the copy as JSON (arrays as their dtype, shape and bytes; generators as their bit
generator's state) and writes them back: only data is read, never code. Spaces and the env's spec are configuration
and stay as the new copy built them. A copy whose attributes hold anything else (a pygame surface once it has
rendered, a Box2D world, a MuJoCo simulation) is not saveable, and a resumed run starts new episodes there, as on
Atari. So does a saved state that no longer fits the copy (written under other versions of gymnasium or the env):
every copy checks it (`dreamctl_fits`) before any copy is written.

A copy that ended its episode is reset at the next step by the vector env (Gymnasium's next-step autoreset), whose
workers keep that "reset at the next step" flag in a local variable that nothing can restore; `Resumable` keeps the
same flag among the state it saves, and a restored copy whose flag is set does that reset itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import gymnasium as gym
import numpy as np

BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class Unsaveable(Exception):
    """An attribute holds a value that has no JSON form here."""


class StateMismatch(Exception):
    """A copy's saved state does not fit the copy built now (saved under other versions of its libraries)."""


def encode(value: Any) -> Any:
    """A value of an env's attribute -> JSON, each non-JSON kind tagged by a one-key object."""
    if value is None or isinstance(value, (bool, str)) or type(value) in (int, float):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        data = base64.b64encode(np.ascontiguousarray(value).tobytes()).decode()
        return {"ndarray": [value.dtype.str, list(value.shape), data]}
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return {"scalar": [value.dtype.str, base64.b64encode(value.tobytes()).decode()]}
    if isinstance(value, np.random.Generator) and type(value.bit_generator).__name__ in BIT_GENERATORS:
        return {"generator": encode(value.bit_generator.state)}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [encode(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v) for k, v in value.items()}}
    raise Unsaveable(type(value).__name__)


def decode(data: Any) -> Any:
    """The inverse of `encode`."""
    if not isinstance(data, dict):
        return data
    ((kind, body),) = data.items()
    if kind == "ndarray":
        dtype, shape, raw = body
        return np.frombuffer(base64.b64decode(raw), dtype=np.dtype(dtype)).reshape(shape).copy()
    if kind == "scalar":
        return np.frombuffer(base64.b64decode(body[1]), dtype=np.dtype(body[0]))[0]
    if kind == "generator":
        state = decode(body)
        if state["bit_generator"] not in BIT_GENERATORS:
            raise ValueError(f"unknown bit generator {state['bit_generator']!r}")
        generator = np.random.Generator(getattr(np.random, state["bit_generator"])())
        generator.bit_generator.state = state
        return generator
    if kind in ("tuple", "list"):
        items = [decode(v) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: decode(v) for k, v in body.items()}
    raise ValueError(f"unknown kind of saved value {kind!r}")


def _layers(env: gym.Env) -> list[gym.Env]:
    """The copy's wrappers from the outermost down to the unwrapped env."""
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _is_configuration(value: Any) -> bool:
    return isinstance(value, (gym.Space, gym.envs.registration.EnvSpec))


def _state_of(layer: gym.Env) -> dict[str, Any]:
    """What a layer's state is: its attributes, less the link to the inner layer and its configuration."""
    return {key: value for key, value in vars(layer).items() if key != "env" and not _is_configuration(value)}


class Resumable(gym.Wrapper):
    """The outermost wrapper of copy `index`: the copy's state as bytes, its pending autoreset included.

    Args:
        env: the copy, as gym.make built it (plus dreamctl's action repeat).
        index: which copy this is, so that `dreamctl_restore` can pick its own state out of every copy's.
    """

    def __init__(self, env: gym.Env, index: int):
        super().__init__(env)
        self.index = index
        self.ended = False

    def reset(self, **kwargs):
        self.ended = False
        return self.env.reset(**kwargs)

    def step(self, action):
        if self.ended:  # restored just after an episode ended, which the new vector env does not know
            obs, info = self.env.reset()
            self.ended = False
            return obs, 0.0, False, False, info
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.ended = bool(terminated or truncated)
        return obs, reward, terminated, truncated, info

    def dreamctl_state(self) -> bytes:
        """The copy's state as JSON, or b"" when some attribute has no JSON form. An env that says what its state
        is (`saved_state` / `load_state`, as `dreamctl.envs.dmc.DmcCopy`) gives it; of any other, every layer's
        attributes are saved (the link to the inner layer and configuration aside)."""
        inner = self.env.unwrapped
        try:
            if hasattr(inner, "saved_state"):
                return json.dumps({"ended": self.ended, "state": encode(inner.saved_state())}).encode()
            layers = [_state_of(layer) for layer in _layers(self.env)]
            return json.dumps({"ended": self.ended, "layers": [encode(layer) for layer in layers]}).encode()
        except Unsaveable:
            return b""

    def dreamctl_fits(self, states: list[bytes]) -> str | None:
        """Why this copy's saved state, among the states of every copy, does not fit it (the checkpoint was written
        under other versions of gymnasium, the env or MuJoCo), or None. Nothing is written: a worker process that
        raised would end, and its copy with it."""
        try:
            saved = json.loads(states[self.index])
            if "state" in saved:
                check = getattr(self.env.unwrapped, "check_state", None)
                if check is not None:
                    check(decode(saved["state"]))
            else:
                self._check_layers([decode(attributes) for attributes in saved["layers"]])
        except StateMismatch as exc:
            return str(exc)
        except (ValueError, KeyError, TypeError) as exc:
            return f"{type(exc).__name__} {str(exc).rstrip('.')}"
        return None

    def dreamctl_restore(self, states: list[bytes]) -> None:
        """Write back this copy's saved state, from the states of every copy (`dreamctl_fits` accepted them)."""
        saved = json.loads(states[self.index])
        if "state" in saved:
            self.env.unwrapped.load_state(decode(saved["state"]))  # type: ignore[attr-defined]
        else:
            for layer, attributes in zip(_layers(self.env), saved["layers"], strict=True):
                vars(layer).update(decode(attributes))
        self.ended = bool(saved["ended"])

    def _check_layers(self, saved: list[dict[str, Any]]) -> None:
        """Every layer must have been saved with each attribute it holds a value in now; a saved layer may hold
        more (what an env creates once it has run, as its seeded generator, or a value that was set then)."""
        current = _layers(self.env)
        if len(saved) != len(current):
            raise StateMismatch(f"the saved env has {len(saved)} layers of wrappers where this one has {len(current)}")
        for layer, attributes in zip(current, saved, strict=True):
            unsaved = sorted(k for k, v in _state_of(layer).items() if v is not None and k not in attributes)
            if unsaved:
                raise StateMismatch(f"{type(layer).__name__}'s {', '.join(unsaved)} was not saved")


def to_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()
