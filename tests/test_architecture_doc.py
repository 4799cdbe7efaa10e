"""docs/architecture.md names real code: every backticked `dreamctl.` name in it resolves to a module attribute.

A name resolves when its longest importable prefix imports as a module and getattr reaches the rest, so both
`dreamctl.model.losses.kl_balance` and `dreamctl.model.rssm.RSSM.img_step` count. Nothing is trained here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

BACKTICKED = re.compile(r"`(dreamctl\.[^`]*)`")
"""Every backticked span that starts with `dreamctl.`; each must be a dotted name (a trailing `()` is allowed)."""
DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
TABLE_HEADING = re.compile(r"^#+ .*paper equation", re.IGNORECASE)
MIN_TABLE_NAMES = 15


def doc_text() -> str:
    assert DOC.is_file(), f"{DOC} is missing"
    return DOC.read_text(encoding="utf-8")


def names_in(text: str) -> list[str]:
    """The backticked `dreamctl.` spans of `text`, in order of first appearance, with a trailing `()` removed."""
    found = [span.removesuffix("()") for span in BACKTICKED.findall(text)]
    return list(dict.fromkeys(found))


def equation_table(text: str) -> str:
    """The rows of the first Markdown table after the "Paper equation -> function" heading."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if TABLE_HEADING.match(line)), None)
    assert start is not None, f"{DOC.name} has no heading containing 'paper equation'"
    rows, seen_table = [], False
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.lstrip().startswith("|"):
            rows.append(line)
            seen_table = True
        elif seen_table and line.strip():
            break
    assert rows, f"no table follows the equation heading of {DOC.name}"
    return "\n".join(rows)


def resolve(name: str) -> object:
    """Import the longest importable module prefix of `name`, then getattr the remaining parts.

    Raises LookupError naming what failed: no importable prefix, or the first attribute that is missing.
    Errors raised while importing a module that exists (a broken import inside it) propagate unchanged.
    """
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only "this prefix is not a module" moves on to a shorter prefix; a missing dependency does not.
            if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue
            raise
        for depth, attr in enumerate(parts[cut:], start=cut):
            if not hasattr(obj, attr):
                raise LookupError(f"{'.'.join(parts[:depth])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no prefix of {name} is an importable module")


def test_every_backticked_dreamctl_name_in_the_doc_resolves():
    names = names_in(doc_text())
    assert names, f"{DOC.name} names no `dreamctl.` attribute at all"
    malformed = [n for n in names if not DOTTED.fullmatch(n)]
    assert not malformed, f"backticked spans in {DOC.name} that are not dotted names: {malformed}"
    unresolved = {}
    for name in names:
        try:
            resolve(name)
        except LookupError as exc:
            unresolved[name] = str(exc)
    assert not unresolved, (
        f"{len(unresolved)} name(s) in {DOC.name} do not resolve to code; rename them in the doc or restore the code:\n"
        + "\n".join(f"  {name}: {why}" for name, why in unresolved.items())
    )


def test_the_equation_table_names_at_least_15_functions():
    table_names = names_in(equation_table(doc_text()))
    assert len(table_names) >= MIN_TABLE_NAMES, (
        f"the equation table of {DOC.name} names {len(table_names)} `dreamctl.` functions, "
        f"fewer than {MIN_TABLE_NAMES}: {table_names}"
    )


def test_every_row_of_the_equation_table_names_a_function():
    rows = equation_table(doc_text()).splitlines()[2:]  # skip the header and the |---| line
    bare = [row for row in rows if not names_in(row)]
    assert not bare, "rows of the equation table without a backticked `dreamctl.` name:\n" + "\n".join(bare)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dreamctl.model.losses.kl_balance", "kl_balance"),
        ("dreamctl.model.rssm.RSSM.img_step", "img_step"),
        ("dreamctl.layers", "dreamctl.layers"),
    ],
)
def test_resolve_follows_modules_then_attributes(name, expected):
    obj = resolve(name)
    assert getattr(obj, "__name__", None) == expected


@pytest.mark.parametrize(
    "name, message",
    [
        ("dreamctl.model.losses.no_such_loss", "dreamctl.model.losses has no attribute 'no_such_loss'"),
        ("dreamctl.model.rssm.RSSM.no_step", "dreamctl.model.rssm.RSSM has no attribute 'no_step'"),
        ("dreamctl.no_such_package.thing", "dreamctl has no attribute 'no_such_package'"),
    ],
)
def test_resolve_names_what_is_missing(name, message):
    with pytest.raises(LookupError, match=re.escape(message)):
        resolve(name)
