"""The one typed source of truth for every setting of a run.

A preset YAML is loaded onto these dataclasses; `--set a.b=c` overrides are applied on top; the result is
validated once and written into run.yaml in full, so a run can always be reproduced from its own metadata.
Units: `steps`, `prefill`, `train_every` and the intervals count *agent steps* (policy decisions summed
over env copies); one agent step is `env.action_repeat` emulator frames.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dreamctl.errors import UsageError, did_you_mean


@dataclass
class EnvConfig:
    """The environment and its protocol. Defaults: DreamerV2's Atari protocol (Machado et al. 2018)."""

    name: str = "pong"
    """The ENV argument of `dreamctl train` (catch, catch2, reach, an Atari game, dmc:, gym:, pz: or smax:), which
    `--set` cannot change."""
    num_envs: int = 1
    """Env copies stepped together, each in its own episode (the paper used one)."""
    image_size: int = 64
    """Frames are resized to image_size x image_size; the conv encoder needs 64."""
    grayscale: bool = True
    """One gray channel (Atari in the paper) or RGB."""
    action_repeat: int = 4
    """Emulator frames per agent step; the reward is summed over them."""
    sticky_actions: float = 0.25
    """Probability that the emulator repeats the previous action at each frame (Atari)."""
    noop_max: int = 30
    """0 to this many no-op frames after each reset, uniformly (Atari; DreamerV3 draws 0 to 30 as here, DreamerV2's
    gym wrapper drew 1 to 30)."""
    max_frames: int = 108_000
    """Frame cap per episode (Atari and dmc:; gym: envs keep their own time limits); it ends the episode with is_last
    but not is_terminal."""
    action_set: Literal["minimal", "full"] = "minimal"
    """Atari's minimal action set (the released code) or all 18 actions (the paper's text)."""
    life_loss: bool = False
    """End episodes on a lost life (Atari; not part of the protocol)."""
    resize: Literal["area", "bilinear"] = "area"
    """area (pixel-area averaging: Atari frames by ALE's own cv2 INTER_AREA, as DreamerV2; other envs' by torch's
    area mode, the same where the size divides evenly) or antialiased bilinear (Pillow's, DreamerV3's Atari100k)."""
    max_pool: bool = True
    """Max over the last two frames of each action repeat (Atari)."""
    reward_clip: bool = False
    """Clip env rewards to their sign (Atari); scores are raw either way."""
    cnn_keys: str = ".*"
    """Regular expression (matched at the key's start) of the image observations the conv encoder reads."""
    mlp_keys: str = ".*"
    """Regular expression of the vector observations the MLP encoder reads."""
    render_pixels: bool = False
    """gym:<id> envs: add the rendered rgb_array frame to the observations, as the key `image`."""


@dataclass
class ModelConfig:
    """The world model's sizes and loss scales (paper §2.1 and Table D.1; the released code's `atari` config)."""

    cnn_depth: int = 48
    """Encoder channels cnn_depth x (1, 2, 4, 8); the decoder mirrors them."""
    deter: int = 600
    """Width of the GRU state h."""
    hidden: int = 600
    """Width of the RSSM's layers between inputs, GRU and logits."""
    stoch: int = 32
    """Categorical latent variables in z."""
    classes: int = 32
    """Classes of each latent variable."""
    mlp_layers: int = 4
    """Hidden layers of the reward, discount, actor and critic MLPs."""
    mlp_units: int = 400
    """Units of each hidden MLP layer."""
    reward_transform: Literal["tanh", "identity"] = "tanh"
    """What the reward head learns: tanh(reward) (Atari) or the raw reward."""
    reward_multiplier: float = 1.0
    """The env's rewards times this, before the transform: the units of the reward head, the critic and the actor's
    returns (evaluations still report the env's own returns). DreamerV2's settings suit rewards of order 1 a step."""
    discount_head: bool = True
    """Learn the discount (episode ends) with a head; without it the discount is gamma everywhere."""
    kl_balance: float = 0.8
    """alpha of KL balancing: the prior's share of the KL gradient (`dreamctl.model.losses.kl_balance`)."""
    kl_scale: float = 0.1
    """beta: the KL term's weight in the world-model loss."""
    free_nats: float = 0.0
    """Floor under the batch-mean KL; KL balancing replaces free nats on Atari."""
    image_scale: float = 1.0
    """Weight of each image observation's NLL."""
    vector_scale: float = 1.0
    """Weight of each vector observation's NLL."""
    reward_scale: float = 1.0
    """Weight of the reward NLL."""
    discount_scale: float = 5.0
    """Weight of the discount NLL (a value of the released code; the paper is silent)."""


@dataclass
class BehaviorConfig:
    """How the actor and critic learn in imagination (paper §2.2)."""

    horizon: int = 15
    """Imagination steps H from every posterior state."""
    discount: float = 0.999
    """gamma (the paper's text and code; its Table D.1 says 0.995)."""
    return_lambda: float = 0.95
    """lambda of the lambda-returns."""
    actor_grad: Literal["auto", "reinforce", "dynamics", "both"] = "auto"
    """rho: reinforce 1, dynamics 0, auto = reinforce for discrete and dynamics for continuous actions; both 1 - mix."""
    actor_grad_mix: float = 0.1
    """The dynamics gradient's share when actor_grad is `both` (the official code's meaning: rho = 1 - this)."""
    actor_entropy: float = 1e-3
    """eta, the entropy bonus of the actor loss."""
    slow_critic_every: int = 100
    """Updates between hard copies of the critic into the slow critic."""


@dataclass
class TrainConfig:
    """The training loop and the optimisers. Steps count agent steps (policy decisions summed over env copies)."""

    steps: int = 50_000_000
    """Agent steps to train (50M agent steps = 200M Atari frames)."""
    seed: int = 0
    """Seeds torch, numpy, Python and the envs; at most 2^30 - 1 (ALE takes 32-bit signed seeds)."""
    prefill: int = 50_000
    """Random-policy agent steps before the first update."""
    pretrain: int = 1
    """Updates right after prefill."""
    train_every: int = 16
    """Agent steps per update (the released code's 16 with batch 16; the paper's text says 4 with batch 50)."""
    batch_size: int = 16
    """Sequences per training batch."""
    batch_length: int = 50
    """Steps per sequence."""
    replay_capacity: int = 2_000_000
    """Agent steps kept in the replay (first in, first out)."""
    model_lr: float = 2e-4
    """Adam learning rate of the world model."""
    actor_lr: float = 4e-5
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-4
    """Adam learning rate of the critic."""
    adam_eps: float = 1e-5
    """Adam's epsilon, for all three optimisers."""
    grad_clip: float = 100.0
    """Global gradient norm clip, per optimiser."""
    weight_decay: float = 1e-6
    """Parameters are multiplied by (1 - weight_decay) each step, not scaled by the learning rate."""
    score_window_frames: int = 0
    """Atari100k's score: the mean return of training episodes ending in the last this-many frames (0: none)."""


@dataclass
class MultiConfig:
    """Several agents in one world (MAMBA's design, Egorov & Shpilman 2022); read only where an env has more
    than one agent."""

    communication: Literal["none", "attention"] = "none"
    """none: each agent's dynamics see only its own latent and action; attention: self-attention across the
    world's agents over their (z, a) embeddings before the GRU (MAMBA)."""
    critic: Literal["local", "central"] = "local"
    """local: the critic reads one agent's feature; central: it attends over every agent's feature of the world."""
    attention_layers: int = 3
    """Transformer encoder layers of the communication block (MAMBA's 3)."""
    attention_heads: int = 8
    """Heads of every attention; model.hidden (and model.mlp_units for the central critic) must be multiples."""


@dataclass
class RunConfig:
    """How the run is executed and recorded; none of it changes what is computed except precision and device."""

    device: str = "auto"
    """auto (a CUDA GPU where there is one), cpu or cuda[:i]."""
    precision: Literal["auto", "32", "bf16", "16"] = "auto"
    """auto = bf16 autocast on GPUs that compute it (Ampere and later), float32 elsewhere; 16 needs CUDA (loss
    scaling)."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    checkpoint_every: int = 250_000
    """Agent steps between checkpoints."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept, plus the best-evaluated one."""
    eval_every: int = 250_000
    """Agent steps between evaluations during training (0: none)."""
    eval_episodes: int = 1
    """Greedy episodes per evaluation during training."""
    log_every: int = 10_000
    """Agent steps between metric logs (each row the means since the last); training that stops at a step count also
    logs a row there, of the interval so far."""
    replay_chunk: int = 1_024
    """Replay rows per chunk file on disk."""


PRECISIONS: tuple[str, ...] = typing.get_args(typing.get_type_hints(RunConfig)["precision"])
"""The values of run.precision (and of `train --precision`)."""


@dataclass
class Config:
    """A run's whole config; its defaults equal presets/atari.yaml (a test checks it)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    multi: MultiConfig = field(default_factory=MultiConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys that never change the algorithm a run computes, so `resume` may override them. run.device and run.threads
# change the floating-point rounding (another device also resolves `precision: auto` anew), so a resume with other
# values than the run's continues the same algorithm but no longer bit for bit as the uninterrupted run.
SAFE_RESUME_KEYS = frozenset(
    {
        "train.steps",
        "run.device",
        "run.checkpoint_every",
        "run.keep_checkpoints",
        "run.log_every",
        "run.eval_every",
        "run.eval_episodes",
        "run.threads",
    }
)


def preset_dirs() -> list[Path]:
    """Source checkouts keep presets beside the package; wheels install them under share/dreamctl."""
    return [Path(__file__).resolve().parent.parent / "presets", Path(sys.prefix) / "share" / "dreamctl" / "presets"]


def preset_names() -> list[str]:
    names = {p.stem for folder in preset_dirs() if folder.is_dir() for p in folder.glob("*.yaml")}
    return sorted(names)


def find_preset(preset: str) -> Path:
    """A preset is a bundled name (`debug`) or a path to the user's own YAML file."""
    if preset.endswith((".yaml", ".yml")) or "/" in preset or "\\" in preset:
        path = Path(preset).expanduser()
        if not path.is_file():
            raise UsageError(
                f"preset file '{preset}' does not exist; pass a YAML file or one of: {', '.join(preset_names())}."
            )
        return path
    for folder in preset_dirs():
        if (folder / f"{preset}.yaml").is_file():
            return folder / f"{preset}.yaml"
    raise UsageError(
        f"unknown preset '{preset}'{did_you_mean(preset, preset_names())}; "
        f"the presets are: {', '.join(preset_names())}."
    )


def load_config(preset: str = "debug", overrides: typing.Sequence[str] = ()) -> Config:
    """Build the config of a new run from a preset (name or file) plus `key=value` overrides."""
    path = find_preset(preset)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"preset '{preset}' is not valid YAML{where}; fix the file or pick another preset.") from None
    except (OSError, UnicodeDecodeError):
        raise UsageError(f"preset '{preset}' could not be read as a text file; pass a YAML file.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"preset '{preset}' must be a YAML mapping of sections (env, model, ...).")
    cfg = from_dict(data, source=f"preset '{preset}'")
    return apply_overrides(cfg, overrides)


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Typed construction: every unknown key and every wrongly typed value is named."""
    cfg = Config()
    for section, values in data.items():
        if section not in _sections():  # a YAML key may be a number or null, not only a string
            raise UsageError(f"unknown section '{section}' in {source}{did_you_mean(str(section), _sections())}.")
        if not isinstance(values, dict):
            raise UsageError(f"section '{section}' in {source} must be a mapping of keys to values.")
        for key, value in values.items():
            _assign(cfg, f"{section}.{key}", value, source)
    return cfg


def apply_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    cfg = dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s)) for s in _sections()})
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"override '{item}' must look like key=value, for example model.deter=256.")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise UsageError(
                f"the value of override '{item}' is not valid YAML; quote it or fix its brackets."
            ) from None
        _assign(cfg, key.strip(), value, "--set")
    return cfg


def override_keys(overrides: typing.Sequence[str]) -> list[str]:
    return [item.partition("=")[0].strip() for item in overrides]


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s in _sections() for f in dataclasses.fields(getattr(Config(), s))]


def get_value(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _assign(cfg: Config, key: str, value: Any, source: str) -> None:
    section, _, name = key.partition(".")
    if section in _sections() and not name:
        first = dataclasses.fields(getattr(cfg, section))[0].name
        raise UsageError(f"'{key}' in {source} is a section, not a key; name a key in it, such as {section}.{first}.")
    if section not in _sections():
        raise UsageError(f"unknown config key '{key}' in {source}{did_you_mean(key, all_keys())}.")
    target = getattr(cfg, section)
    hints = typing.get_type_hints(type(target))
    if name not in hints:
        raise UsageError(f"unknown config key '{key}' in {source}{did_you_mean(key, all_keys())}.")
    setattr(target, name, _coerce(key, value, hints[name], source))


def _coerce(key: str, value: Any, kind: Any, source: str) -> Any:
    if kind in (int, float) and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        # YAML 1.1 reads an exponent without a dot or without a sign (3e-2, 1.5e5) as a string; it means a number.
        number = float(value)
        value = number if math.isfinite(number) else value
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        text = str(value)
        if text not in choices:
            raise UsageError(f"{key} in {source} must be one of {', '.join(choices)}, got '{value}'.")
        return text
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise UsageError(
                    f"{key} in {source} must be an integer below 2^63, got one of {len(str(value))} digits."
                )
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise UsageError(
                f"{key} in {source} must be a finite number, got an integer of {len(str(value))} digits."
            ) from None
    elif kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise UsageError(f"{key} in {source} must be {_type_name(kind)}, got {value!r}.")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))
