"""Environment names: every common spelling of an Atari game resolves to one snake_case name.

`pong`, `Pong`, `ALE/Pong-v5` and `atari:pong` are the same game; `ms_pacman`, `mspacman` and `MsPacman` too.
`catch`, `catch2` and `reach` are the built-in games, `gym:<id>` any installed Gymnasium environment and
`dmc:<domain>_<task>` a task of the DeepMind Control Suite, `pz:<family>/<env>` a PettingZoo parallel env and
`smax:<map>` a SMAX battle (SMAC and SMACv2 scenarios).
"""

from __future__ import annotations

import difflib
import re

from dreamctl.errors import UsageError
from dreamctl.scores import table

BUILTIN = ("catch", "catch2", "reach")

# dm_control.suite.ALL_TASKS of dm-control 1.0.50 as (domain, task), kept here so that names resolve and `dreamctl
# envs` lists them without the extra installed (a test compares them with the installed suite).
DMC_TASKS = (
    *(("acrobot", t) for t in ("swingup", "swingup_sparse")),
    ("ball_in_cup", "catch"),
    *(("cartpole", t) for t in ("balance", "balance_sparse", "swingup", "swingup_sparse", "two_poles", "three_poles")),
    ("cheetah", "run"),
    *(("dog", t) for t in ("stand", "walk", "trot", "run", "fetch")),
    *(("finger", t) for t in ("spin", "turn_easy", "turn_hard")),
    *(("fish", t) for t in ("upright", "swim")),
    *(("hopper", t) for t in ("stand", "hop")),
    *(("humanoid", t) for t in ("stand", "walk", "run", "run_pure_state")),
    *(("humanoid_CMU", t) for t in ("stand", "walk", "run")),
    *(("lqr", t) for t in ("lqr_2_1", "lqr_6_2")),
    *(("manipulator", t) for t in ("bring_ball", "bring_peg", "insert_ball", "insert_peg")),
    ("pendulum", "swingup"),
    *(("point_mass", t) for t in ("easy", "hard")),
    *(("quadruped", t) for t in ("walk", "run", "escape", "fetch")),
    *(("reacher", t) for t in ("easy", "hard")),
    *(("stacker", t) for t in ("stack_2", "stack_4")),
    *(("swimmer", t) for t in ("swimmer6", "swimmer15")),
    *(("walker", t) for t in ("stand", "walk", "run")),
)


def dmc_task(name: str) -> tuple[str, str]:
    """`dmc:walker_walk` -> ("walker", "walk")."""
    return next(pair for pair in DMC_TASKS if f"dmc:{pair[0]}_{pair[1]}" == name)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def rom_id(game: str) -> str:
    """ale-py's ROM id of a game (usually the game's own name; james_bond's ROM is `jamesbond`)."""
    title = table()[game].ale_id.split("/", 1)[1].rsplit("-v", 1)[0]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", title).lower()


def resolve(name: str) -> str:
    """Canonical name: `catch`, a snake_case Atari game (`ms_pacman`), `dmc:<domain>_<task>`, or `gym:<id>` and
    `pz:<family>/<env>` unchanged."""
    text = name.strip()
    if text.startswith("gym:"):
        if len(text) == len("gym:"):
            raise UsageError("gym: needs a Gymnasium environment id after it, for example gym:CartPole-v1.")
        # gymnasium knows ALE's ids only once ale_py is imported, as dreamctl's own Atari env does
        if text.startswith("gym:ALE/"):
            raise UsageError(
                f"Atari games run on dreamctl's own ALE env with DreamerV2's protocol; drop the prefix: {text[4:]}."
            )
        return text
    if text.startswith("pz:"):
        if len(text) == len("pz:"):
            raise UsageError("pz: needs a PettingZoo environment after it, for example pz:mpe2/simple_spread_v3.")
        return text
    if text.lower() in BUILTIN:
        return text.lower()
    if text.lower().startswith("dmc:"):
        return _resolve_dmc(text)
    if text.lower().startswith("smax:"):
        return _resolve_smax(text)
    bare = text.split(":", 1)[1] if text.lower().startswith("atari:") else text
    if bare.startswith("ALE/"):
        bare = bare[len("ALE/") :].rsplit("-v", 1)[0]
    keys = {_key(game): game for game in table()}
    keys.update({_key(rom_id(game)): game for game in table()})
    if _key(bare) in keys and bare:
        return keys[_key(bare)]
    choices = list(BUILTIN) + sorted(table())
    close = difflib.get_close_matches(bare.lower(), choices, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `dreamctl envs` to list the known names."
    raise UsageError(f"unknown environment '{name}'{hint}")


def is_atari(name: str) -> bool:
    return name in table()


def _resolve_smax(text: str) -> str:
    from dreamctl.envs.smax import MAPS

    map_name = text[len("smax:") :].lower()  # SMAX's map names are lower case: 3m, 2s3z, smacv2_5_units, ...
    if map_name in MAPS:
        return f"smax:{map_name}"
    close = difflib.get_close_matches(map_name, MAPS, n=1, cutoff=0.6)
    hint = f"; did you mean 'smax:{close[0]}'?" if close else "; run `dreamctl envs` to list SMAX's maps."
    raise UsageError(f"unknown SMAX map '{text}'{hint}")


def _resolve_dmc(text: str) -> str:
    names = [f"dmc:{domain}_{task}" for domain, task in DMC_TASKS]
    by_key = {_key(name): name for name in names}
    if _key(text) in by_key:
        return by_key[_key(text)]
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `dreamctl envs` to list the suite's tasks."
    raise UsageError(f"unknown DeepMind Control task '{text}'{hint}")
