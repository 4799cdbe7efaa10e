"""The collapsed-world-model warning: when it fires, what it says, and that a run made to collapse raises it."""

import json

import yaml
from conftest import run_cli, set_args

from dreamctl.training.trainer import COLLAPSE_UPDATES, collapse_warning


def test_the_warning_needs_a_thousand_low_kl_updates_in_a_row_and_is_one_sentence():
    assert COLLAPSE_UPDATES == 1000
    assert collapse_warning(0) is None and collapse_warning(999) is None
    message = collapse_warning(1000)
    assert message is not None and "collapsed" in message and "model.free_nats" in message
    assert message.endswith(".") and ". " not in message


# A small catch model that a huge KL scale (and no free nats) squeezes onto its prior: 1,200 updates, one per step.
COLLAPSING = [
    "train.prefill=100",
    "train.train_every=1",
    "train.batch_size=4",
    "train.batch_length=8",
    "env.num_envs=1",
    "model.kl_scale=1000",
    "model.free_nats=0",
    "model.deter=32",
    "model.hidden=32",
    "model.mlp_units=32",
    "model.cnn_depth=4",
    "behavior.horizon=3",
    "run.log_every=100",
    "run.checkpoint_every=1300",
]


def test_a_run_made_to_collapse_is_warned_about_once_in_the_terminal_and_in_run_yaml(home):
    sets = set_args(COLLAPSING)
    proc = run_cli("train", "catch", "--preset", "debug", "--steps", "1300", *sets, home=home, check=True)
    assert proc.stdout.count("warning: the world model has collapsed") == 1, proc.stdout
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    [warning] = meta["warnings"]
    assert warning["message"].startswith("the world model has collapsed") and 1100 <= warning["step"] <= 1200
    rows = [json.loads(line) for line in (home / "runs" / "run-1" / "metrics.jsonl").read_text().splitlines()]
    counts = [row["model/low_kl_updates"] for row in rows if "model/low_kl_updates" in row]
    assert counts[-1] >= COLLAPSE_UPDATES
    # Resumed still collapsed, the run is not warned about again: it is the same collapse.
    run_cli("resume", "run-1", "--steps", "1500", home=home, check=True)
    meta = yaml.safe_load((home / "runs" / "run-1" / "run.yaml").read_text())
    assert meta["warnings"] == [warning] and meta["progress"]["env_steps"] == 1500
