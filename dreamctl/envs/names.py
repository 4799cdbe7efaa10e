"""Environment names: every common spelling of an Atari game resolves to one snake_case name.

`pong`, `Pong`, `ALE/Pong-v5` and `atari:pong` are the same game; `ms_pacman`, `mspacman` and `MsPacman` too.
`catch` is the built-in game and `gym:<id>` any installed Gymnasium environment.
"""

from __future__ import annotations

import difflib
import re

from dreamctl.errors import UsageError
from dreamctl.scores import table

BUILTIN = ("catch",)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def rom_id(game: str) -> str:
    """ale-py's ROM id of a game (usually the game's own name; james_bond's ROM is `jamesbond`)."""
    title = table()[game].ale_id.split("/", 1)[1].rsplit("-v", 1)[0]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", title).lower()


def resolve(name: str) -> str:
    """Canonical name: `catch`, a snake_case Atari game (`ms_pacman`), or `gym:<id>` unchanged."""
    text = name.strip()
    if text.startswith("gym:"):
        if len(text) == len("gym:"):
            raise UsageError("gym: needs a Gymnasium environment id after it, for example gym:CartPole-v1.")
        return text
    if text.lower() in BUILTIN:
        return text.lower()
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
