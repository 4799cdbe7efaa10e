"""The benchmarks of benchmarks/ run and report the figures docs/performance.md is made of.

Small settings on the debug preset: the figures themselves are machine-dependent and not checked here, only that
each script works, prints one JSON line, and that its numbers hang together.
"""

import json
import subprocess
import sys
from pathlib import Path

from dreamctl.config import load_config
from dreamctl.envs import make_env
from dreamctl.model.agent import Agent

ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_update_benchmark_reports_the_time_split_flops_peak_and_mfu_for_each_kind_of_layers():
    result = bench("update", "--preset", "debug", "--updates", "2", "--warmup", "1", "--layers", "fast,plain")
    assert [run["layers"] for run in result["runs"]] == ["fast", "plain"]
    for run in result["runs"]:
        seconds = run["seconds_per_update"]
        assert seconds["n"] == 2 and 0 < seconds["min"] <= seconds["median"] <= seconds["max"]
        assert set(run["split_seconds"]) == {"model_forward", "model_backward", "imagine", "actor", "critic"}
        assert 0 < sum(run["split_seconds"].values()) <= seconds["max"] + 1e-3
        assert run["matmul_peak_gflops"] == max(run["matmul_peaks_gflops"].values()) > 0
        assert run["gflop_per_update"] > 1 and 0 < run["mfu"] < 1
        assert 0 < run["gflop_gathered"] < run["gflop_per_update"] / 4  # imagination's one-hot products, dense
        expected = run["gflop_per_update"] / seconds["median"] / run["matmul_peak_gflops"]
        assert abs(run["mfu"] - expected) < 0.01
    fast, plain = result["runs"]
    assert fast["gflop_per_update"] == plain["gflop_per_update"]  # the same update, counted the same way
    gain = plain["seconds_per_update"]["median"] / fast["seconds_per_update"]["median"]
    assert abs(result["fast_layers_speedup"]["32"] - gain) < 0.01


def test_update_benchmark_times_a_batch_of_the_overridden_size():
    result = bench("update", "--preset", "debug", "--updates", "1", "--warmup", "1", "--set", "train.batch_size=6")
    assert result["batch"] == [6, 16]


def test_update_benchmark_times_the_model_of_the_env_it_is_given_agents_included():
    """catch2 with attention: the timed model is the one training builds for two agents (its attention across
    agents included), fed a batch of catch2's own play."""
    sets = ["--set", "multi.communication=attention", "--set", "train.batch_size=4"]
    result = bench("update", "--preset", "catch2", "--env", "catch2", "--updates", "1", "--warmup", "0", *sets)
    cfg = load_config("catch2", ["multi.communication=attention"])
    spec = make_env(cfg.env, 0).spec
    agent = Agent(cfg, spec.obs_space, spec.action_dim, spec.discrete, agents=spec.num_agents)
    assert result["env"] == "catch2" and result["agents"] == spec.num_agents == 2 and result["batch"] == [4, 16]
    assert result["runs"][0]["parameters"] == sum(p.numel() for p in agent.parameters() if p.requires_grad)
    assert any(".communication." in name for name, _ in agent.named_parameters())


def test_collect_benchmark_reports_policy_and_prefill_rates_for_1_and_8_copies():
    result = bench("collect", "--preset", "debug", "--seconds", "2", "--rounds", "1")
    rates = [result[f"{kind}_{n}_env"] for kind in ("policy", "prefill") for n in (1, 8)]
    assert all(rate > 0 for rate in rates)
    assert abs(result["policy_ratio_8_to_1"] - result["policy_8_env"] / result["policy_1_env"]) < 0.01


def test_collect_benchmark_takes_any_env_and_numbers_of_copies():
    result = bench("collect", "--preset", "pixels", "--env", "reach", "--copies", "3,1", "--seconds", "1", "--rounds=1")
    assert result["env"] == "reach" and {"policy_1_env", "policy_3_env", "prefill_3_env"} <= set(result)
    assert abs(result["policy_ratio_3_to_1"] - result["policy_3_env"] / result["policy_1_env"]) < 0.01


def test_memory_benchmark_reports_replay_bytes_within_the_target_and_peak_rss():
    result = bench("memory", "--preset", "debug", "--capacity", "2000", "--updates", "2")
    assert result["bytes_per_step"] == 64 * 64 + 11  # the frame, an int32 action, a float32 reward, three flags
    assert result["kib_per_step"] <= 4.2
    assert 0 < result["peak_minus_replay_gib"] < result["peak_rss_gib"]


def test_dynamics_benchmark_reports_the_kl_by_step_and_dreamed_errors_at_each_measurement():
    result = bench("dynamics", "--preset", "debug", "--steps", "400", "--updates", "4", "--every", "2")
    assert result["env"] == "catch" and result["agent_steps"] >= 400
    assert [point["updates"] for point in result["points"]] == [0, 2, 4]
    seconds = [point["seconds"] for point in result["points"]]
    assert seconds[0] == 0 and seconds == sorted(seconds)
    length = len(result["points"][0]["kl_by_step"])
    for point in result["points"]:
        assert len(point["kl_by_step"]) == length and all(kl >= 0 for kl in point["kl_by_step"])
        errors = point["dreamed_error"]
        assert set(errors) == {"real", "other"}
        assert all(len(e) == length - 5 and min(e) > 0 for e in errors.values())
