"""Learning checks and the full-length exact-resume check (pytest -m slow; minutes each)."""

import json
import time

import pytest

from conftest import run_cli
from dreamctl.agent import cpu_computes_bf16
from test_resume import assert_identical, interrupt_then_resume

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("precision", ["32", pytest.param("bf16", marks=pytest.mark.skipif(
    not cpu_computes_bf16(), reason="this CPU has no bf16 instructions, and dreamctl refuses bf16 on it"))])
def test_debug_preset_learns_catch(tmp_path, precision):
    """Train catch with the debug preset, then 20 greedy evaluation episodes average at least 8 (of 10),
    all within 15 minutes of wall time."""
    home = tmp_path / "home"
    began = time.monotonic()
    run_cli("train", "catch", "--preset", "debug", "--seed", "1", "--precision", precision, home=home,
            timeout=20 * 60, check=True)
    result = json.loads(run_cli("eval", "latest", "--episodes", "20", "--json", home=home, check=True).stdout)
    elapsed = time.monotonic() - began
    print(f"precision {precision}: mean return {result['mean']:.2f} over 20 episodes in {elapsed:.0f} s")
    assert result["mean"] >= 8.0, result["returns"]
    assert elapsed <= 15 * 60


ARGS = ["train", "catch", "--preset", "debug", "--seed", "5"]


@pytest.fixture(scope="module")
def whole_3000(tmp_path_factory):
    home = tmp_path_factory.mktemp("whole3000") / "home"
    run_cli(*ARGS, "--steps", "3000", home=home, timeout=20 * 60, check=True)
    return home


def test_3000_steps_in_one_go_equal_1500_then_resume(whole_3000, tmp_path):
    home = tmp_path / "home"
    run_cli(*ARGS, "--steps", "1500", home=home, timeout=20 * 60, check=True)
    run_cli("resume", "run-1", "--steps", "3000", home=home, timeout=20 * 60, check=True)
    assert_identical(whole_3000, home)


def test_3000_steps_in_one_go_equal_a_sigint_then_resume(whole_3000, tmp_path):
    interrupt_then_resume(ARGS, 3000, tmp_path / "home", max_delay=60.0)
    assert_identical(whole_3000, tmp_path / "home")
