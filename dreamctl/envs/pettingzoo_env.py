"""PettingZoo's parallel API: `pz:<family>/<env>`, e.g. `pz:butterfly/cooperative_pong_v6`, `pz:mpe2/simple_spread_v3`.

Each of the `num_envs` worlds is one PettingZoo parallel env, stepped in this process; its M agents are M adjacent
env copies, as in envs/agents.py, so one world model with shared weights serves them all. Every agent must have the
same observation and action spaces: its observation is converted as a Gymnasium env's is (an image to the configured
size and colour under `image`, numbers to a float32 vector under `state`, one level of Dict by key), plus `agent`,
the one-hot of its index. Each agent receives its own reward as the env gives it (a team reward where the env shares
it). A world's episode ends when all its agents are done, and the next step starts a new one (base.py's autoreset).
An agent that finishes before the others of its world (a unit killed in a battle) reports its last step with
is_terminal (when the env terminated it) and is absent from then on (Step.is_present): it receives no actions (an
env that still lists it gets the resting action, 0 or the middle of the bounds, never one read from padding), its
rows are padding that no loss reads and no other agent attends to, until the world's episode ends.
The families live in `pettingzoo.<family>`, except `mpe2` (its own package); two-player Atari (`pz:atari/boxing_v2`)
reads the ROMs that ale-py ships. `pip install -e '.[multiagent]'`.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dreamctl.config import EnvConfig
from dreamctl.envs.agents import AGENT_KEY, agent_one_hots
from dreamctl.envs.base import RESERVED_KEYS, BatchedEnv, EnvSpec, Step, first_step
from dreamctl.envs.gym_env import action_size, env_action, layout
from dreamctl.errors import UsageError, did_you_mean

INSTALL = "pip install -e '.[multiagent]'"
MODULE_OF_FAMILY = {"mpe2": "mpe2"}  # families outside the pettingzoo package and its registry


def load_parallel_env(name: str) -> Callable[..., Any]:
    """`pz:<family>/<env>` -> a constructor of its parallel env, or a UsageError in one sentence.

    Envs in PettingZoo's registry (`butterfly/cooperative_pong-v6`; the module spelling `cooperative_pong_v6` works
    too) are made through `pettingzoo.make`; others (the `mpe2` package) from their module's `parallel_env`.
    """
    family, _, env = name[len("pz:") :].partition("/")
    if not family or not env or "/" in env:
        raise UsageError(f"'{name}' must look like pz:<family>/<env>, for example pz:mpe2/simple_spread_v3.")
    registered = family + "/" + re.sub(r"_v(\d+)$", r"-v\1", env)
    if family not in MODULE_OF_FAMILY:
        try:
            import pettingzoo
        except ImportError:
            raise UsageError(f"{name} needs PettingZoo; install the multi-agent extra: {INSTALL}.") from None
        if registered in pettingzoo.parallel_registry:
            options = {}
            if family == "atari":  # two-player Atari reads the ROMs that ale-py ships: nothing is downloaded
                import ale_py

                options["auto_rom_install_path"] = str(Path(ale_py.__file__).parent)
            return functools.partial(pettingzoo.make, "parallel", registered, **options)
        if registered in pettingzoo.aec_registry:
            raise _aec_only(name)
    if not re.search(r"_v\d+$", env):
        raise UsageError(f"{name} needs the env's version, as PettingZoo names it, e.g. pz:mpe2/simple_spread_v3.")
    module_name = f"{MODULE_OF_FAMILY.get(family, 'pettingzoo.' + family)}.{env}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _not_importable(name, family, module_name, exc) from None
    if not hasattr(module, "parallel_env"):
        raise _aec_only(name)
    return module.parallel_env


def _not_importable(name: str, family: str, module_name: str, exc: ImportError) -> UsageError:
    """Why `pz:<family>/<env>`'s module did not import, in one sentence: no such env (with the closest names), or
    a package it needs is missing."""
    known = known_names()
    missing = exc.name or ""
    absent = missing == module_name or (missing != "" and module_name.startswith(missing + "."))
    if family == "mpe" or (absent and known and missing != MODULE_OF_FAMILY.get(family)):
        hint = " (the MPE envs are the mpe2 family)" if family == "mpe" else did_you_mean(name, known)
        return UsageError(
            f"{name} is not a PettingZoo env dreamctl can find{hint}; check the family, name and version, e.g. "
            "pz:butterfly/cooperative_pong_v6."
        )
    return UsageError(f"{name} needs packages that are not installed; install the multi-agent extra: {INSTALL}.")


def known_names() -> list[str]:
    """Every `pz:` name of PettingZoo's registry and of the families outside it; none without PettingZoo."""
    try:
        import pettingzoo
    except ImportError:
        return []
    registered = [*pettingzoo.parallel_registry, *pettingzoo.aec_registry]
    names = ["pz:" + re.sub(r"-v(\d+)$", r"_v\1", key) for key in registered]
    for family, package in MODULE_OF_FAMILY.items():
        try:
            path = importlib.import_module(package).__path__
        except ImportError:
            continue
        names += [f"pz:{family}/{m.name}" for m in pkgutil.iter_modules(path) if re.search(r"_v\d+$", m.name)]
    return names


def _aec_only(name: str) -> UsageError:
    return UsageError(f"{name} has only PettingZoo's AEC (turn-based) API; dreamctl trains parallel envs.")


def _make_world(make: Callable[..., Any], name: str) -> Any:
    """One world, rendering to arrays: some envs draw their image observations only then (cooperative pong's are
    black otherwise). A missing dependency of the env is a UsageError in one sentence."""
    from pettingzoo.env_registry.exceptions import FailedToImport

    try:
        return make(render_mode="rgb_array")
    except (ImportError, FailedToImport):
        raise UsageError(
            f"{name} needs packages that are not installed; install the multi-agent extra: {INSTALL}."
        ) from None


class PettingZooEnv(BatchedEnv):
    """Args:
    name: `pz:<family>/<env>`.
    cfg: the env section (image size, colour, resize, action repeat, observation keys).
    num_envs: worlds stepped together.
    seed: world w is reset with seed + w at its first episode.
    """

    def __init__(self, name: str, cfg: EnvConfig, num_envs: int, seed: int):
        if cfg.render_pixels:
            raise UsageError(f"env.render_pixels is for gym: envs; {name} shows each agent what PettingZoo gives it.")
        make = load_parallel_env(name)
        self.name, self.cfg, self.seed = name, cfg, seed
        self.worlds = [_make_world(make, name) for _ in range(num_envs)]
        world = self.worlds[0]
        self.agents = list(world.possible_agents)
        m = len(self.agents)
        obs_spaces = {str(world.observation_space(a)) for a in self.agents}
        action_spaces = {str(world.action_space(a)) for a in self.agents}
        if len(obs_spaces) > 1 or len(action_spaces) > 1:
            self.close()
            raise UsageError(
                f"{name}'s agents have different observation or action spaces; dreamctl shares one world model "
                "among agents that observe and act alike."
            )
        self.action_space = world.action_space(self.agents[0])
        try:
            action_dim, discrete = action_size(self.action_space, name)
            # The key `agent` is each agent's one-hot index (added below): an observation's own is renamed.
            self.converters = layout(world.observation_space(self.agents[0]), name, cfg, (*RESERVED_KEYS, AGENT_KEY))
        except UsageError:
            self.close()
            raise
        obs_space = {key: c.shape for key, c in self.converters.items()}
        self.spec = EnvSpec(name, {**obs_space, AGENT_KEY: (m,)}, action_dim, discrete, cfg.action_repeat, m)
        self.num_envs = num_envs * m
        self.identity = agent_one_hots(num_envs, m)
        self.ended = np.zeros(num_envs, bool)
        self.present = np.ones((num_envs, m), bool)  # agents still in each world's episode
        self.terminated = np.zeros((num_envs, m), bool)  # agents the env terminated in each world's episode
        self.last_obs: list[dict[str, Any]] = [{} for _ in self.worlds]

    def reset(self) -> Step:
        for w, world in enumerate(self.worlds):
            self.last_obs[w] = self._start(world, seed=self.seed + w)
        self.ended[:], self.present[:], self.terminated[:] = False, True, False
        return first_step(self._observations())

    def step(self, action: np.ndarray) -> Step:
        """action: (W * M,) ints or (W * M, A) floats in [-1, 1], world-major."""
        m = len(self.agents)
        action = np.asarray(action).reshape(len(self.worlds), m, *np.shape(action)[1:])
        reward = np.zeros((len(self.worlds), m), np.float32)
        is_first = np.zeros((len(self.worlds), m), bool)
        is_last = np.zeros_like(is_first)
        is_terminal = np.zeros_like(is_first)
        is_present = self.present.copy()  # an agent finishing in this step is present in it
        for w, world in enumerate(self.worlds):
            if self.ended[w]:
                self.last_obs[w] = self._start(world)
                self.ended[w], is_first[w], self.present[w], self.terminated[w] = False, True, True, False
                is_present[w] = True
                continue
            for _ in range(self.cfg.action_repeat):
                live = set(world.agents)  # some envs keep a finished agent here until the world's episode ends
                acts = {
                    a: self._env_action(action[w, i] if self.present[w, i] else np.zeros_like(action[w, i]))
                    for i, a in enumerate(self.agents)
                    if a in live
                }
                obs, rewards, terminated, truncated, _ = world.step(acts)
                self.last_obs[w].update(obs)
                # an agent's rewards end with its episode, even where the env keeps listing and rewarding it
                reward[w] += np.where(self.present[w], [float(rewards.get(agent, 0.0)) for agent in self.agents], 0.0)
                ends = np.array([bool(terminated.get(a, False)) for a in self.agents])
                ended_now = ends & self.present[w]
                self.terminated[w] |= ended_now
                is_terminal[w] |= ended_now
                stays = [not truncated.get(a, False) and a in world.agents for a in self.agents]
                self.present[w] &= ~ends & np.array(stays)
                if not world.agents or not self.present[w].any():
                    self.ended[w] = is_last[w] = True
                    is_terminal[w] = self.terminated[w]
                    break
        obs = self._observations()
        return Step(
            obs,
            reward.reshape(-1),
            is_first.reshape(-1),
            is_last.reshape(-1),
            is_terminal.reshape(-1),
            is_present.reshape(-1),
        )

    def close(self) -> None:
        for world in getattr(self, "worlds", []):
            world.close()

    def _start(self, world: Any, seed: int | None = None) -> dict[str, Any]:
        """A world's first observations, one for each of its agents (dreamctl has no row for one that joins later)."""
        obs, _ = world.reset(seed=seed)
        missing = [agent for agent in self.agents if agent not in obs]
        if missing:
            raise UsageError(
                f"{self.name} starts an episode without observing {', '.join(map(str, missing))}; dreamctl trains "
                "envs whose agents are all there when each episode starts."
            )
        return obs

    def _env_action(self, action: np.ndarray) -> Any:
        converted = env_action(self.action_space, action)
        return int(converted) if converted.ndim == 0 else converted.astype(self.action_space.dtype)

    def _observations(self) -> dict[str, np.ndarray]:
        """Every world's agents' last observations, world-major, plus the agents' one-hots."""
        stacked = [self.last_obs[w][agent] for w in range(len(self.worlds)) for agent in self.agents]
        if isinstance(stacked[0], dict):
            batched: Any = {key: np.stack([o[key] for o in stacked]) for key in stacked[0]}
        else:
            batched = np.stack(stacked)
        out = {key: converter.convert(batched, self.cfg) for key, converter in self.converters.items()}
        out[AGENT_KEY] = self.identity
        return out
