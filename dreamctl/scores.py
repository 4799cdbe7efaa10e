"""Reference scores: the Atari games' (random, professional gamer, world record) and DreamerV2's on DMC from pixels.

Data: dreamctl/data/atari_scores.csv, from danijar/dreamerv2 `scores/baselines.json` (the DreamerV2 paper's
normalisers) and danijar/dreamerv3 `baselines.yaml` (the Atari100k normalisers). Gamer-normalised score =
(score - random) / (human_gamer - random); the paper calls this "human-normalised".

dreamctl/data/dmc_scores.csv, from danijar/dreamerv2 `scores/dmc-vision-dreamerv2.json` (5 seeds per task, evaluated
every 30,000 frames): each seed's return interpolated at 1M frames, averaged over seeds; and from
`scores/humanoid-dreamerv2.json` (10 seeds): humanoid_walk's last evaluation, at 42.6-44.1M frames, averaged.
The files count frames (simulator steps, 2 per agent step); the task names are dm_control's (`cup_catch` there is
`ball_in_cup_catch`).
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class GameScores:
    game: str  # snake_case name, e.g. ms_pacman
    ale_id: str  # e.g. ALE/MsPacman-v5
    random: float
    human_gamer: float | None
    human_record: float | None
    dreamerv2: float | None  # the released 200M-frame runs' last evaluation, mean over seeds
    in_atari100k: bool
    random_100k: float | None
    human_100k: float | None
    dreamerv3_100k: float | None


def _number(row: dict[str, str], key: str) -> float | None:
    return float(row[key]) if row[key] else None


@functools.cache
def table() -> dict[str, GameScores]:
    text = resources.files("dreamctl").joinpath("data/atari_scores.csv").read_text()
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        number = functools.partial(_number, row)
        out[row["game"]] = GameScores(
            row["game"],
            row["ale_id"],
            float(row["random"]),
            number("human_gamer"),
            number("human_record"),
            number("dreamerv2_last_point"),
            row["in_atari100k"] == "yes",
            number("random_100k"),
            number("human_100k"),
            number("dreamerv3_100k"),
        )
    return out


@dataclass(frozen=True)
class DmcReference:
    task: str  # dm_control's domain_task, e.g. walker_walk
    frames: int  # where the score was taken: simulator steps (2 per agent step)
    dreamerv2: float  # mean return over the official runs' seeds
    seeds: int


@functools.cache
def dmc_table() -> dict[str, DmcReference]:
    text = resources.files("dreamctl").joinpath("data/dmc_scores.csv").read_text()
    rows = csv.DictReader(io.StringIO(text))
    return {r["task"]: DmcReference(r["task"], int(r["frames"]), float(r["dreamerv2"]), int(r["seeds"])) for r in rows}


def dmc_reference(env: str) -> DmcReference | None:
    """DreamerV2's published return on a `dmc:<domain>_<task>` env, or None where the score files have none."""
    return dmc_table().get(env[len("dmc:") :]) if env.startswith("dmc:") else None


def dreamerv2_record(env: str) -> dict[str, float] | None:
    """{"return", "frames"} of DreamerV2's published return on an env, as `eval --json` and `list --json` give it."""
    reference = dmc_reference(env)
    return None if reference is None else {"return": reference.dreamerv2, "frames": reference.frames}


def human_normalized(game: str, score: float, atari100k: bool = False) -> float | None:
    """Gamer-normalised score, or None where the game has no human reference.

    `atari100k` picks the normalisers that Atari100k results are reported with (they differ slightly).
    """
    ref = table().get(game)
    if ref is None:
        return None
    low, high = (ref.random_100k, ref.human_100k) if atari100k and ref.in_atari100k else (ref.random, ref.human_gamer)
    if low is None or high is None or high == low:
        return None
    return (score - low) / (high - low)


def record_normalized(game: str, score: float) -> float | None:
    ref = table().get(game)
    if ref is None or ref.human_record is None or ref.human_record == ref.random:
        return None
    return (score - ref.random) / (ref.human_record - ref.random)


def summarize(returns: list[float], game: str, atari100k: bool) -> dict[str, Any]:
    """Episode returns -> count, mean, std, min, max and, for Atari games, the gamer-normalised mean."""
    import numpy as np  # here, so that `dreamctl envs` and `list` start without it

    values = np.asarray(returns, np.float64)
    mean = float(values.mean())
    normalized = human_normalized(game, mean, atari100k)
    return {
        "episodes": len(returns),
        "returns": [float(r) for r in returns],
        "mean": mean,
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "human_normalized": None if normalized is None else float(normalized),
    }
