"""SMAX, JaxMARL's re-implementation of the SMAC and SMACv2 battles in JAX: `smax:<map>`, e.g. `smax:3m`,
`smax:smacv2_5_units`. `pip install -e '.[smax]'`.

The allies are the agents, against SMAX's heuristic enemy (what JaxMARL's own SMAX baselines play against). All
`num_envs` battles step together in one jit-compiled, vmapped JAX call; a battle's A allies are A adjacent env
copies (envs/agents.py's layout). Each ally observes SMAX's unit list (`state`, float32: the other units it sees and
itself), its available actions (`action_mask`, see dreamctl/keys.py: move in four directions, stop, attack enemy j) and
its one-hot index (`agent`). Every ally receives the team reward: the enemies' health lost (normalised so that a
battle's total is at most 1) and 1 more for a won battle. A unit that dies stays in its battle: SMAX keeps giving it
the team reward ("to allow for noble sacrifice", says its `compute_reward`), its observation is SMAX's dead unit's and
its only available action is stop, so its return is the team's until the battle ends. A battle ends when one side is
dead (terminal for every ally) or after SMAX's 100 steps (a time limit, not terminal); `won` says for each battle
whether the allies won the last one that ended. The battles' state and the PRNG key are numpy arrays in checkpoints,
so a resumed run continues its battles bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from dreamctl.config import EnvConfig
from dreamctl.envs.agents import AGENT_KEY, agent_one_hots
from dreamctl.envs.base import BatchedEnv, EnvSpec, Step, first_step
from dreamctl.errors import UsageError
from dreamctl.keys import ACTION_MASK_KEY

MAPS = (
    "2s3z",
    "3m",
    "3s5z",
    "3s5z_vs_3s6z",
    "3s_vs_5z",
    "5m_vs_6m",
    "6h_vs_8z",
    "8m",
    "10m_vs_11m",
    "25m",
    "27m_vs_30m",
    "smacv2_5_units",
    "smacv2_10_units",
    "smacv2_20_units",
)
"""SMAX's scenarios (jaxmarl 0.2.0's `MAP_NAME_TO_SCENARIO`), kept here so that names resolve and `dreamctl envs`
lists them without the extra installed (a test compares them with the installed package)."""


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """File descriptor 1 goes to /dev/null within the block (jaxmarl's prints bypass a redirected sys.stdout)."""
    for stream in (sys.stdout, sys.__stdout__):
        if stream is not None:
            stream.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        for stream in (sys.stdout, sys.__stdout__):
            if stream is not None:
                stream.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _jax_smax(map_name: str) -> tuple[Any, Any, Any]:
    """(jax, jax.numpy, the HeuristicEnemySMAX env of the map), or a UsageError saying how to install them."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the torch process owns any GPU; SMAX is cheap on the CPU
    try:
        import jax
        import jax.numpy as jnp

        with _stdout_silenced():  # jaxmarl prints what it imports, which would spoil `eval --json`
            from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    except ImportError:
        raise UsageError(f"smax:{map_name} needs JaxMARL; install the SMAX extra: pip install -e '.[smax]'.") from None
    return jax, jnp, HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name))


@functools.cache
def _battles(map_name: str) -> tuple[Any, Any, Callable[..., Any], Callable[..., Any]]:
    """(jax, the map's env, reset, step): reset(keys (B, 2)) -> (obs (B, A, size), available actions (B, A, n),
    state) and step(keys, state, actions (B, A), restart (B,)) -> (outputs, state), one battle vmapped over B and
    jit-compiled. One pair per map and process, so that every Smax of the map (the time estimate's, the run's)
    shares its compilations, which take seconds."""
    jax, jnp, env = _jax_smax(map_name)
    allies = list(env.agents)
    m = len(allies)

    def stack(per_agent: dict) -> Any:
        return jnp.stack([per_agent[a] for a in allies])

    def strong(tree: Any) -> Any:  # reset's integers are weakly typed; step's are not: one compilation for both
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)

    def reset_one(key: Any) -> tuple[Any, Any, Any]:
        obs, state = env.reset(key)
        return stack(obs), stack(env.get_avail_actions(state)), strong(state)

    def step_one(key: Any, state: Any, action: Any, restart: Any) -> tuple[dict[str, Any], Any]:
        """One battle's step, or its restart where the last step ended it (base.py's autoreset)."""
        step_key, reset_key = jax.random.split(key)
        obs, after, reward, dones, _ = env.step_env(step_key, state, {a: action[i] for i, a in enumerate(allies)})
        alive = after.state.unit_alive
        first_obs, first_avail, first_state = reset_one(reset_key)
        out = {
            "obs": jnp.where(restart, first_obs, stack(obs)),
            "avail": jnp.where(restart, first_avail, stack(env.get_avail_actions(after))),
            "reward": jnp.where(restart, 0.0, stack(reward)),
            "done": ~restart & dones["__all__"],
            "decided": ~restart & dones["__all__"] & ~(alive[:m].any() & alive[m:].any()),
            "won": ~restart & dones["__all__"] & alive[:m].any() & ~alive[m:].any(),
        }
        return out, jax.tree.map(lambda r, s: jnp.where(restart, r, s), first_state, strong(after))

    return jax, env, jax.jit(jax.vmap(reset_one)), jax.jit(jax.vmap(step_one))


class Smax(BatchedEnv):
    """Args:
    map_name: one of `MAPS`.
    cfg: the env section (env.action_repeat must be 1: SMAX runs 8 world steps per agent step itself).
    num_envs: battles stepped together.
    seed: the PRNG key's seed.
    """

    saveable = True

    def __init__(self, map_name: str, cfg: EnvConfig, num_envs: int, seed: int):
        if cfg.action_repeat != 1:
            raise UsageError(
                f"smax:{map_name} steps its own time (8 world steps per agent step); set env.action_repeat=1."
            )
        jax, env, self._reset, self._step = _battles(map_name)
        self.jax = jax
        allies = list(env.agents)
        m, size, actions = len(allies), env.observation_space(allies[0]).shape[0], env.action_space(allies[0]).n
        self.spec = EnvSpec(
            f"smax:{map_name}",
            {"state": (size,), ACTION_MASK_KEY: (actions,), AGENT_KEY: (m,)},
            actions,
            True,
            1,
            m,
        )
        self.num_envs, self.battles, self.allies = num_envs * m, num_envs, m
        self.identity = agent_one_hots(num_envs, m)
        self.key = np.asarray(jax.random.PRNGKey(seed))  # a raw uint32 (2,) key, storable as it is
        self.ended = np.zeros(num_envs, bool)
        self.battle_won = np.zeros(num_envs, bool)
        self.state: Any = None
        self.treedef: Any = None

    def _keys(self) -> Any:
        """One fresh PRNG key per battle, advancing the env's key."""
        key, sub = self.jax.random.split(self.key)
        self.key = np.asarray(key)
        return self.jax.random.split(sub, self.battles)

    def reset(self) -> Step:
        obs, avail, self.state = self._reset(self._keys())
        self.treedef = self.jax.tree_util.tree_structure(self.state)
        self.ended = np.zeros(self.battles, bool)
        self.battle_won = np.zeros(self.battles, bool)
        return first_step(self._obs(obs, avail))

    def step(self, action: np.ndarray) -> Step:
        """action: int (battles * allies,), battle-major."""
        restart = self.ended.copy()
        actions = np.asarray(action, np.int32).reshape(self.battles, self.allies)
        out, self.state = self._step(self._keys(), self.state, actions, restart)
        out = {key: np.asarray(value) for key, value in out.items()}
        done = out["done"]
        self.ended = done.copy()  # jax's arrays reach numpy read-only
        self.battle_won = np.where(done, out["won"], self.battle_won)
        return Step(
            self._obs(out["obs"], out["avail"]),
            out["reward"].astype(np.float32).reshape(-1),
            np.repeat(restart, self.allies),
            np.repeat(done, self.allies),
            np.repeat(out["decided"], self.allies),  # decided implies done
        )

    @property
    def won(self) -> np.ndarray:
        return self.battle_won

    def get_state(self) -> dict[str, np.ndarray]:
        leaves = self.jax.tree_util.tree_leaves(self.state)
        arrays = {f"leaf{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        key = self.key.astype(np.int64)  # checkpoints hold no unsigned 32-bit tensors
        return {**arrays, "key": key, "ended": self.ended, "won": self.battle_won}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if self.treedef is None:
            self.reset()
        leaves = [self.jax.device_put(state[f"leaf{i}"]) for i in range(self.treedef.num_leaves)]
        self.state = self.jax.tree_util.tree_unflatten(self.treedef, leaves)
        self.key = state["key"].astype(np.uint32)
        self.ended, self.battle_won = state["ended"].copy(), state["won"].copy()

    def _obs(self, obs: Any, avail: Any) -> dict[str, np.ndarray]:
        n = self.num_envs
        return {
            "state": np.array(obs, np.float32).reshape(n, -1),  # a copy: JAX's arrays are read-only
            ACTION_MASK_KEY: np.array(avail, np.float32).reshape(n, -1),
            AGENT_KEY: self.identity,
        }
