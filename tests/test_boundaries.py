"""The packages' import rules, read from every module's imports (top-level and inside functions alike)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dreamctl"

FORBIDDEN = {
    "model": ("training", "runs", "tools", "cli", "terminal", "envs"),
    "layers": ("model", "training", "runs", "tools", "cli", "terminal", "envs", "config"),
    "training": ("runs", "tools", "cli", "terminal"),
    "runs": ("tools", "cli", "terminal"),
    "envs": ("model", "training", "runs", "tools", "cli", "terminal", "layers"),
    "tools": ("cli", "terminal"),
}
"""For each package of dreamctl, the packages and modules of dreamctl it must never import (`cli` and `terminal`
are the command line; below it everything is a library that prints nothing)."""


def imported_modules(source: str) -> set[str]:
    """Every module an `import` or `from ... import` statement in `source` names (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str, source: str) -> list[str]:
    """The imports of `source`, a module of dreamctl.<package>, that the rules forbid."""
    banned = [f"dreamctl.{name}" for name in FORBIDDEN[package]]
    return sorted(m for m in imported_modules(source) if any(m == b or m.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_their_rules_allow(package):
    found = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        bad = violations(package, path.read_text())
        if bad:
            found[str(path.relative_to(PACKAGE.parent))] = bad
    assert not found, f"forbidden imports: {found}"


def test_the_check_catches_a_model_module_that_imports_the_runs():
    source = (PACKAGE / "model" / "losses.py").read_text()
    assert violations("model", source) == []
    assert violations("model", source + "\nimport dreamctl.runs\n") == ["dreamctl.runs"]
    assert violations("model", source + "\ndef f():\n    from dreamctl.runs.run import Run\n") == [
        "dreamctl.runs.run",
        "dreamctl.runs.run.Run",
    ]
    assert violations("layers", "from dreamctl import model\n") == ["dreamctl.model"]
