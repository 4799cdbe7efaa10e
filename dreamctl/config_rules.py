"""The value rules every run's config must meet, beyond the types `dreamctl.config` already enforces.

`validate` runs once before anything of a run is created, so a bad value is one usage error naming its key
rather than a failure minutes into training.
"""

from __future__ import annotations

import math
import re

from dreamctl.config import Config, all_keys, get_value
from dreamctl.errors import UsageError

MAX_SEED = 2**30 - 1
"""The largest seed. ALE takes 32-bit signed seeds (below 2^31), and a run's env copies take the seeds above its own,
a block per start of its training (`runs.sharded.env_seed`), so the run's own seed stays below 2^30."""

POSITIVE_KEYS = (
    "env.num_envs",
    "env.image_size",
    "env.action_repeat",
    "env.max_frames",
    "model.cnn_depth",
    "model.deter",
    "model.hidden",
    "model.stoch",
    "model.classes",
    "model.mlp_units",
    "model.reward_multiplier",
    "behavior.horizon",
    "behavior.slow_critic_every",
    "train.steps",
    "train.train_every",
    "train.batch_size",
    "train.batch_length",
    "train.replay_capacity",
    "train.model_lr",
    "train.actor_lr",
    "train.critic_lr",
    "train.adam_eps",
    "train.grad_clip",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.eval_episodes",
    "run.log_every",
    "run.replay_chunk",
    "multi.attention_layers",
    "multi.attention_heads",
)
NON_NEGATIVE_KEYS = (
    "env.noop_max",
    "model.mlp_layers",
    "model.kl_scale",
    "model.free_nats",
    "model.image_scale",
    "model.vector_scale",
    "model.reward_scale",
    "model.discount_scale",
    "behavior.actor_entropy",
    "train.prefill",
    "train.pretrain",
    "train.seed",
    "train.weight_decay",
    "train.score_window_frames",
    "run.eval_every",
    "run.threads",
)
UNIT_INTERVAL_KEYS = (
    "env.sticky_actions",
    "model.kl_balance",
    "behavior.discount",
    "behavior.return_lambda",
    "behavior.actor_grad_mix",
)


def validate(cfg: Config) -> Config:
    """Value rules that types alone cannot state; run once before anything is created."""
    for key in all_keys():
        value = get_value(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{key} must be a finite number, got {value}.")
    for key in ("env.cnn_keys", "env.mlp_keys"):
        try:
            re.compile(get_value(cfg, key))
        except re.error as exc:
            raise UsageError(f"{key} is not a valid regular expression ({exc}).") from None
    for key in POSITIVE_KEYS:
        if get_value(cfg, key) <= 0:
            raise UsageError(f"{key} must be positive, got {get_value(cfg, key)}.")
    for key in NON_NEGATIVE_KEYS:
        if get_value(cfg, key) < 0:
            raise UsageError(f"{key} must not be negative, got {get_value(cfg, key)}.")
    for key in UNIT_INTERVAL_KEYS:
        if not 0.0 <= get_value(cfg, key) <= 1.0:
            raise UsageError(f"{key} must lie in [0, 1], got {get_value(cfg, key)}.")
    if cfg.train.batch_length < 2:
        raise UsageError("train.batch_length must be at least 2.")
    if cfg.behavior.horizon < 2:
        raise UsageError(
            "behavior.horizon must be at least 2: the actor learns from the imagined states before the last."
        )
    if cfg.train.seed > MAX_SEED:
        raise UsageError(f"train.seed must be at most {MAX_SEED} (2^30 - 1), got {cfg.train.seed}.")
    per_env = cfg.train.replay_capacity // cfg.env.num_envs
    if per_env < cfg.train.batch_length:
        raise UsageError(
            f"train.replay_capacity ({cfg.train.replay_capacity}) must hold at least "
            f"train.batch_length steps per env copy; raise it or lower env.num_envs."
        )
    heads = cfg.multi.attention_heads
    for used, key in (
        (cfg.multi.communication == "attention", "model.hidden"),
        (cfg.multi.critic == "central", "model.mlp_units"),
    ):
        if used and get_value(cfg, key) % heads:
            raise UsageError(f"{key} ({get_value(cfg, key)}) must be a multiple of multi.attention_heads ({heads}).")
    check_device(cfg.run.device, "run.device")
    return cfg


def check_device(name: str, source: str) -> str:
    """Refuse a device name other than auto, cpu, cuda or cuda:<i>, naming where it came from."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise UsageError(f"{source} must be auto, cpu or cuda[:i], got '{name}'.")
    return name
