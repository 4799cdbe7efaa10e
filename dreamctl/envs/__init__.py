"""make_env(cfg, seed) -> a batched env; see base.py for the interface every env follows."""

from __future__ import annotations

from dreamctl.config import EnvConfig
from dreamctl.envs.base import BatchedEnv, EnvSpec, Step
from dreamctl.envs.names import is_atari, resolve

__all__ = ["BatchedEnv", "EnvSpec", "Step", "make_env", "resolve"]


def make_env(cfg: EnvConfig, seed: int, num_envs: int | None = None) -> BatchedEnv:
    """Build `num_envs` (default cfg.num_envs) copies of the env that cfg.name names."""
    num_envs = num_envs or cfg.num_envs
    name = resolve(cfg.name)
    if name == "catch":
        from dreamctl.envs.catch import Catch

        return Catch(num_envs, seed, cfg.image_size)
    if name.startswith("gym:"):
        from dreamctl.envs.gym_env import GymEnv

        return GymEnv(name[len("gym:") :], cfg, num_envs, seed)
    assert is_atari(name)
    from dreamctl.envs.atari import Atari

    return Atari(name, cfg, num_envs, seed)
