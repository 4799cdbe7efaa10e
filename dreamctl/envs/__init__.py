"""make_env(cfg, seed) -> a batched env; see base.py for the interface every env follows."""

from __future__ import annotations

from collections.abc import Sequence

from dreamctl.config import Config, EnvConfig
from dreamctl.envs.base import BatchedEnv, EnvSpec, ObsSpace, SelectedKeys, Step, encoder_of, is_image
from dreamctl.envs.names import is_atari, resolve
from dreamctl.errors import UsageError
from dreamctl.keys import ACTION_MASK_KEY

__all__ = [
    "BatchedEnv",
    "EnvSpec",
    "ObsSpace",
    "Step",
    "check_mask_observed",
    "encoder_of",
    "is_image",
    "make_env",
    "no_key_selected",
    "observes_images",
    "random_and_optimal",
    "resolve",
]


def make_env(
    cfg: EnvConfig, seed: int, num_envs: int | None = None, every_key: bool = False, new_run: bool = False
) -> BatchedEnv:
    """Build `num_envs` (default cfg.num_envs) copies of the env that cfg.name names (for a multi-agent game:
    worlds, each as many copies as it has agents), observing the keys that env.cnn_keys and env.mlp_keys select
    (all of the env's keys with `every_key`); for a `new_run`, refusing what `check_mask_observed` refuses."""
    env = _build(cfg, seed, num_envs or cfg.num_envs)
    if every_key:
        return env
    space = env.spec.obs_space
    keys = [key for key, shape in space.items() if encoder_of(key, shape, cfg.cnn_keys, cfg.mlp_keys)]
    if not keys:
        env.close()
        raise no_key_selected(env.spec, cfg)
    mask = space.get(ACTION_MASK_KEY)
    if mask is not None and ACTION_MASK_KEY in keys and (not env.spec.discrete or mask != (env.spec.action_dim,)):
        env.close()
        raise UsageError(
            f"{env.spec.name}'s {ACTION_MASK_KEY} has shape {mask} for {env.spec.action_dim} "
            f"{'discrete' if env.spec.discrete else 'continuous'} actions; dreamctl masks discrete actions with one "
            "flag per action."
        )
    if new_run:
        try:
            check_mask_observed(env.spec, keys, cfg)
        except UsageError:
            env.close()
            raise
    return env if len(keys) == len(space) else SelectedKeys(env, keys)


def check_mask_observed(spec: EnvSpec, observed: Sequence[str], cfg: EnvConfig) -> None:
    """Refuse, for a new run, an env's action mask left out of the observed keys: acting and imagination read the
    mask from them, so the agent would choose actions the env forbids. (Runs recorded before this check open as they
    were trained.)"""
    if ACTION_MASK_KEY in spec.obs_space and ACTION_MASK_KEY not in observed:
        raise UsageError(
            f"{spec.name}'s {ACTION_MASK_KEY} says which actions are allowed now, and the agent must observe it; "
            f"make env.mlp_keys ({cfg.mlp_keys}) match it too."
        )


def observes_images(cfg: EnvConfig) -> bool:
    """Whether the env that cfg.name names has an image among its observations (what picks a default preset)."""
    name = resolve(cfg.name)
    if not name.startswith("gym:"):
        return True  # catch, Atari and the DeepMind Control Suite are seen from pixels
    from dreamctl.envs.gym_env import inspect, layout

    env_id = name[len("gym:") :]
    _, space, _ = inspect(env_id, cfg)
    return any(converter.kind == "image" for converter in layout(space, f"gym:{env_id}", cfg).values())


def random_and_optimal(name: str) -> tuple[float, float] | None:
    """A built-in game's mean returns under uniform random actions and under the optimal policy (None for others)."""
    if name == "catch":
        from dreamctl.envs import catch as game
    elif name == "catch2":
        from dreamctl.envs import catch2 as game  # type: ignore[no-redef]
    elif name == "reach":
        from dreamctl.envs import reach as game  # type: ignore[no-redef]
    else:
        return None
    return game.RANDOM_RETURN, game.OPTIMAL_RETURN


def no_key_selected(spec: EnvSpec, cfg: EnvConfig) -> UsageError:
    """The error for an env none of whose observations env.cnn_keys and env.mlp_keys select."""
    found = ", ".join(f"{key} {list(shape)}" for key, shape in spec.obs_space.items())
    return UsageError(
        f"no observation of {spec.name} ({found}) matches env.cnn_keys '{cfg.cnn_keys}' (images) or "
        f"env.mlp_keys '{cfg.mlp_keys}' (vectors); widen them, e.g. --set env.mlp_keys='.*'."
    )


ATARI_ONLY = {
    "sticky_actions": 0.0,
    "noop_max": 0,
    "life_loss": False,
    "max_pool": False,
    "reward_clip": False,
    "action_set": "minimal",
}
"""Env settings that only Atari games read, each with the value the other presets give it (off, or the default)."""


def has_one_agent(name: str) -> bool:
    """Whether the env of this canonical name has one agent, known by its name alone: catch, reach, Atari games,
    gym: and dmc: envs. (PettingZoo's few one-agent envs are not told apart; they take the `multiagent` preset,
    whose multi-agent settings they ignore.)"""
    return name in ("catch", "reach") or name.startswith(("gym:", "dmc:")) or is_atari(name)


def check_new_run_env(cfg: Config) -> None:
    """Refuse, for a new run, env settings it could not train with or its env would silently ignore: the conv
    encoder reads 64x64 frames, the built-in games draw one 64x64 grey frame per agent step, only Atari games read
    the settings of ATARI_ONLY, only gym: envs render frames on request, and one-agent envs have no other agents to
    attend to. (Runs recorded before this check open as they were trained.)"""
    name = resolve(cfg.env.name)
    if not is_atari(name):
        ignored = {key: off for key, off in ATARI_ONLY.items() if getattr(cfg.env, key) != off}
        if ignored:
            keys = " and ".join(", ".join(f"env.{key}" for key in ignored).rsplit(", ", 1))
            sets = " ".join(f"--set env.{key}={str(off).lower()}" for key, off in ignored.items())
            it = "them" if len(ignored) > 1 else "it"
            raise UsageError(
                f"{keys} {'apply' if len(ignored) > 1 else 'applies'} only to Atari games, which {name} is not, so "
                f"it would ignore {it}; turn {it} off ({sets}) or use a preset made for it."
            )
    if cfg.env.render_pixels and not name.startswith(("gym:", "pz:")):  # pz: envs say themselves why they refuse it
        raise UsageError(f"env.render_pixels is for gym: envs, and {name} would ignore it; leave it false.")
    if has_one_agent(name):
        for key, off in (("communication", "none"), ("critic", "local")):
            value = getattr(cfg.multi, key)
            if value != off:
                raise UsageError(
                    f"{name} has one agent, so multi.{key}={value} would change nothing; set multi.{key}={off} or "
                    "pick an env with several agents (catch2, pz:, smax:)."
                )
    env = cfg.env
    if name not in ("catch", "catch2", "reach"):
        if env.image_size != 64:
            raise UsageError(
                f"DreamerV2's conv encoder reads 64x64 frames, so env.image_size cannot be {env.image_size}; "
                "set env.image_size=64."
            )
        return
    for key, value, needed in (("image_size", env.image_size, 64), ("action_repeat", env.action_repeat, 1)):
        if value != needed:
            raise UsageError(
                f"{name} draws one 64x64 grey frame per agent step, so env.{key} cannot be {value}; "
                f"set env.{key}={needed}."
            )
    if not env.grayscale:
        raise UsageError(f"{name} draws one 64x64 grey frame per agent step; set env.grayscale=true.")


def _build(cfg: EnvConfig, seed: int, num_envs: int) -> BatchedEnv:
    name = resolve(cfg.name)
    if name == "catch":
        from dreamctl.envs.catch import Catch

        return Catch(num_envs, seed, cfg.image_size)
    if name == "catch2":
        from dreamctl.envs.agents import AgentsAsCopies
        from dreamctl.envs.catch2 import AGENTS, Catch2

        return AgentsAsCopies(Catch2(num_envs, seed, cfg.image_size), AGENTS)
    if name == "reach":
        from dreamctl.envs.reach import Reach

        return Reach(num_envs, seed, cfg.image_size)
    if name.startswith("gym:"):
        from dreamctl.envs.gym_env import GymEnv

        return GymEnv(name[len("gym:") :], cfg, num_envs, seed)
    if name.startswith("pz:"):
        from dreamctl.envs.pettingzoo_env import PettingZooEnv

        return PettingZooEnv(name, cfg, num_envs, seed)
    if name.startswith("smax:"):
        from dreamctl.envs.smax import Smax

        return Smax(name[len("smax:") :], cfg, num_envs, seed)
    if name.startswith("dmc:"):
        from dreamctl.envs.dmc import Dmc
        from dreamctl.envs.names import dmc_task

        return Dmc(*dmc_task(name), cfg, num_envs, seed)
    assert is_atari(name)
    from dreamctl.envs.atari import Atari

    return Atari(name, cfg, num_envs, seed)
