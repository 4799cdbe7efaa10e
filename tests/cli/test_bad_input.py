"""Every bad input ends with one sentence on stderr, exit 2 (usage) or 1 (failure), no traceback,
and leaves the runs already in the registry usable."""

import json
import os
import subprocess

import pytest
import yaml
from conftest import dreamctl_command, fast_args, run_cli


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    home = tmp_path_factory.mktemp("bad") / "home"
    run_cli(
        "train", "catch", "--preset", "debug", "--steps", "300", "--name", "keep", *fast_args(), home=home, check=True
    )
    not_yaml = tmp_path_factory.mktemp("files") / "preset.yaml"
    not_yaml.write_text("model: {deter: [1, 2\n")
    return home, not_yaml


CASES = [
    ("unknown env", ["train", "pongg"], 2, "did you mean 'pong'"),
    ("unknown preset", ["train", "catch", "--preset", "nope"], 2, "unknown preset 'nope'"),
    ("unknown key", ["train", "catch", "--set", "model.detr=3"], 2, "did you mean 'model.deter'"),
    ("wrong type", ["train", "catch", "--set", "train.batch_size=big"], 2, "must be an integer"),
    ("zero steps", ["train", "catch", "--steps", "0"], 2, "--steps"),
    ("mistyped command", ["trian"], 2, "Did you mean 'train'? See `dreamctl --help`."),
    ("zero slow-critic period", ["train", "catch", "--set", "behavior.slow_critic_every=0"], 2, "must be positive"),
    ("mistyped run id", ["show", "rum-1"], 2, "(did you mean 'run-1'?)"),
    ("negative seed", ["train", "catch", "--seed", "-1"], 2, "--seed"),
    ("zero episodes", ["eval", "keep", "--episodes", "0"], 2, "--episodes"),
    ("missing run", ["eval", "run-99"], 2, "no run 'run-99'"),
    ("mistyped run name", ["show", "kepp"], 2, "no run 'kepp' under"),
    ("mistyped run name's hint", ["eval", "kep"], 2, "(did you mean 'keep'?)"),
    ("mistyped status", ["list", "--status", "finshed"], 2, "(did you mean 'finished'?)"),
    ("path as run", ["eval", "../runs/run-1"], 2, "not a run reference"),
    ("missing checkpoint", ["eval", "keep", "--checkpoint", "123"], 2, "no checkpoint at step 123"),
    ("bad checkpoint word", ["eval", "keep", "--checkpoint", "newest"], 2, "--checkpoint"),
    ("option without its value", ["eval", "keep", "--episodes"], 2, "requires an argument; see `dreamctl eval --help`"),
    ("empty registry's latest", ["show", "latest", "--home", "/nonexistent-dreamctl-home"], 2, "train catch --preset"),
    (
        "a file as the registry",
        ["list", "--home", "/etc/passwd"],
        2,
        "/etc/passwd is a file, not a dreamctl registry",
    ),
    ("mistyped precision", ["train", "catch", "--precision", "8"], 2, "--precision must be one of auto, 32, bf16, 16"),
    ("mistyped device", ["resume", "keep", "--device", "gpu"], 2, "--device must be auto, cpu or cuda[:i]"),
    ("superscript checkpoint", ["eval", "keep", "--checkpoint", "²"], 2, "must be a step number, latest or best"),
    ("horizon of one", ["train", "catch", "--set", "behavior.horizon=1", "--dry-run"], 2, "horizon must be at least 2"),
    ("image size", ["train", "pong", "--set", "env.image_size=32", "--dry-run"], 2, "set env.image_size=64"),
    ("seed too large", ["train", "catch", "--seed", "1073741824", "--dry-run"], 2, "less than or equal to 1073741823"),
    ("eval seed too large", ["eval", "keep", "--seed", str(2**64)], 2, "less than or equal to 1073741823"),
    ("set seed too large", ["train", "catch", "--set", "train.seed=1073741824"], 2, "train.seed must be at most"),
    ("huge number", ["train", "catch", "--set", f"model.kl_scale={10**400}"], 2, "an integer of 401 digits"),
    ("huge integer", ["train", "catch", "--set", f"train.steps={10**30}"], 2, "an integer below 2^63"),
    ("unwritable out", ["imagine", "keep", "--out", "/proc/forbidden/dream.mp4"], 2, "cannot write"),
    ("video format", ["imagine", "keep", "--out", "dream.avi"], 2, "must end in .mp4 or .gif"),
    (
        "unsafe resume override",
        ["resume", "keep", "--steps", "400", "--set", "model.deter=8"],
        2,
        "cannot change on resume",
    ),
    ("resume below progress", ["resume", "keep", "--steps", "100"], 2, "already at 300"),
    ("duplicate name", ["train", "catch", "--name", "keep"], 2, "already exists"),
    ("bad status filter", ["list", "--status", "sleeping"], 2, "--status must be one of"),
    ("bad device", ["train", "catch", "--device", "tpu"], 2, "--device"),
    ("device with a suffix", ["train", "catch", "--device", "cudax"], 2, "--device must be auto, cpu or cuda[:i]"),
    ("bad device in --set", ["train", "catch", "--set", "run.device=tpu"], 2, "run.device must be auto, cpu or cuda"),
    ("bad device to eval", ["eval", "keep", "--device", "gpu"], 2, "--device must be auto, cpu or cuda[:i]"),
    ("override not YAML", ["train", "catch", "--set", "model.deter=["], 2, "is not valid YAML"),
    (
        "mistyped resume override",
        ["resume", "keep", "--set", "run.chekpoint_every=5"],
        2,
        "did you mean 'run.checkpoint_every'",
    ),
    ("resume override without =", ["resume", "keep", "--set", "foo"], 2, "must look like key=value"),
    ("cuda without gpu", ["train", "catch", "--device", "cuda"], 2, "no CUDA GPU"),
    ("fp16 on cpu", ["train", "catch", "--precision", "16", "--device", "cpu"], 2, "precision 16 needs"),
    ("gym id missing", ["train", "gym:NoSuchEnv-v0"], 2, "could not be made"),
    ("gym: before an Atari id", ["train", "gym:ALE/Pong-v5"], 2, "drop the prefix: ALE/Pong-v5"),
    ("no key selected", ["train", "gym:CartPole-v1", "--set", "env.mlp_keys=^$"], 2, "no observation of gym:Cart"),
    ("unknown option", ["list", "--colour"], 2, "No such option"),
    ("pz AEC-only", ["train", "pz:classic/tictactoe_v3"], 2, "only PettingZoo's AEC"),
    ("pz unlike agents", ["train", "pz:mpe2/simple_adversary_v3"], 2, "different observation or action spaces"),
    ("pz unknown env", ["train", "pz:butterfly/nope_v1"], 2, "is not a PettingZoo env dreamctl can find"),
    ("pz mistyped env", ["train", "pz:mpe2/simple_sprad_v3"], 2, "(did you mean 'pz:mpe2/simple_spread_v3'?)"),
    ("pz without version", ["train", "pz:butterfly/cooperative_pong"], 2, "needs the env's version"),
    ("pz without env", ["train", "pz:mpe2"], 2, "must look like pz:<family>/<env>"),
    ("batch splits a world", ["train", "catch2", "--set", "train.batch_size=15"], 2, "multiple of the env's 2 agents"),
    ("smax unknown map", ["train", "smax:smacv2_5_unit"], 2, "did you mean 'smax:smacv2_5_units'?"),
    ("smax action repeat", ["train", "smax:3m", "--set", "env.action_repeat=2"], 2, "set env.action_repeat=1"),
    ("built-in action repeat", ["train", "reach", "--set", "env.action_repeat=2"], 2, "set env.action_repeat=1"),
    ("built-in image size", ["train", "catch", "--set", "env.image_size=32", "--dry-run"], 2, "env.image_size=64"),
    ("built-in colour", ["train", "catch2", "--set", "env.grayscale=false"], 2, "set env.grayscale=true"),
    ("Atari-only setting", ["train", "catch", "--set", "env.reward_clip=true"], 2, "env.reward_clip applies only to"),
    (
        "Atari preset on another env",
        ["train", "gym:CartPole-v1", "--preset", "atari", "--dry-run"],
        2,
        "env.sticky_actions, env.noop_max and env.max_pool apply only to Atari games, which gym:CartPole-v1 is not",
    ),
    ("rendering outside gym", ["train", "reach", "--set", "env.render_pixels=true"], 2, "env.render_pixels is for gym"),
    ("env name in --set", ["train", "catch", "--set", "env.name=pong"], 2, "the env is the ENV argument (catch)"),
    ("attention for one agent", ["train", "catch", "--set", "multi.communication=attention"], 2, "catch has one agent"),
    (
        "central critic for one agent in a dry run",
        ["train", "reach", "--set", "multi.critic=central", "--dry-run"],
        2,
        "so multi.critic=central would change nothing",
    ),
    (
        "batch split among ranks in a dry run",
        ["train", "catch", "--nproc", "2", "--set", "train.batch_size=3", "--dry-run"],
        2,
        "must be a multiple of 2 (1 agent x 2 ranks)",
    ),
    (
        "batch splits a world in a dry run",
        ["train", "catch2", "--set", "train.batch_size=15", "--dry-run"],
        2,
        "multiple of the env's 2 agents",
    ),
    (
        "heads do not divide",
        ["train", "catch2", "--set", "multi.communication=attention", "--set", "multi.attention_heads=7"],
        2,
        "multiple of multi.attention_heads",
    ),
    (
        "chunks longer than the replay",
        [
            "train",
            "catch2",
            "--set",
            "train.replay_capacity=64",
            "--set",
            "train.batch_length=4",
            "--set",
            "run.replay_chunk=32",
        ],
        2,
        "run.replay_chunk (32) must not exceed the 8 rows the replay keeps for 8 env copies",
    ),
    (
        "windows longer than the replay",
        ["train", "catch2", "--set", "train.replay_capacity=64", "--set", "train.batch_length=12"],
        2,
        "train.batch_length (12) must not exceed the 8 rows",
    ),
    (
        "replay beyond memory",
        ["train", "catch", "--steps", "100000000000", "--set", "train.replay_capacity=100000000000"],
        1,
        "lower train.replay_capacity",
    ),
]


def file_bytes(folder):
    """Every file under `folder` and its bytes (the OS lock files aside, which only record who holds them)."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock"}


@pytest.mark.parametrize("name, args, code, text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_sentence(registry, name, args, code, text):
    home, _ = registry
    before = (home / "runs" / "run-1" / "run.yaml").read_text()
    proc = run_cli(*args, home=home)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert text in lines[0]
    assert (home / "runs" / "run-1" / "run.yaml").read_text() == before
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["run-1"]


@pytest.mark.parametrize(
    "preset, sets, refused",
    [
        ("catch2", ["env.name=catch2", "multi.communication=attention", "multi.critic=central"], None),
        ("multiagent", ["env.name=pz:mpe2/simple_v3"], None),  # its preset attends; a one-agent pz: env ignores it
        ("smax", ["env.name=smax:3m"], None),
        ("debug", ["env.name=catch", "multi.critic=central"], "catch has one agent"),
        ("vector", ["env.name=gym:CartPole-v1", "multi.communication=attention"], "gym:CartPole-v1 has one agent"),
        ("atari", ["env.name=pong", "multi.communication=attention"], "pong has one agent"),
        ("dmc", ["env.name=dmc:walker_walk", "env.action_set=full"], "env.action_set applies only to Atari games"),
        ("atari", ["env.name=pong", "env.action_set=full", "env.life_loss=true"], None),
    ],
)
def test_a_new_run_refuses_the_settings_its_env_would_ignore(preset, sets, refused):
    from dreamctl.config import load_config
    from dreamctl.envs import check_new_run_env
    from dreamctl.errors import UsageError

    cfg = load_config(preset, sets)
    if refused is None:
        check_new_run_env(cfg)
    else:
        with pytest.raises(UsageError, match=refused):
            check_new_run_env(cfg)


@pytest.mark.parametrize(
    "sets, agents, ranks, warned",
    [
        (["train.steps=200", "train.prefill=200"], 1, 1, True),  # the prefill's end, no pretraining
        (["train.steps=200", "train.prefill=200", "train.pretrain=10"], 1, 1, False),  # pretraining at its end
        (["train.steps=201", "train.prefill=200"], 1, 1, False),  # 204 steps: 2 updates
        (["train.steps=201", "train.prefill=206"], 1, 1, True),  # 204 steps, still random
        (["train.steps=201", "train.prefill=206"], 1, 2, False),  # 2 ranks: ticks of 8, the run ends at 208
        (["train.steps=700", "train.prefill=640", "env.num_envs=64"], 1, 1, True),  # 11 rows, windows of 16
        (["train.steps=700", "train.prefill=300"], 2, 1, False),
    ],
)
def test_the_no_update_warning_counts_ticks_updates_and_rows_as_the_trainer_does(sets, agents, ranks, warned):
    from dreamctl.cli.train import _no_update_warning
    from dreamctl.config import load_config

    cfg = load_config("debug", ["train.train_every=2", *sets])  # 4 env copies, windows of 16 rows
    assert (_no_update_warning(cfg, agents, ranks) is not None) == warned


def test_a_dry_run_refuses_before_it_prints_the_config(registry):
    """`--dry-run > config.yaml` must not save a config that `train` refuses."""
    home, _ = registry
    proc = run_cli("train", "catch2", "--set", "train.batch_size=3", "--dry-run", home=home)
    assert proc.returncode == 2 and "multiple of the env's 2 agents" in proc.stderr and proc.stdout == ""


def test_preset_that_is_not_yaml(registry):
    home, not_yaml = registry
    proc = run_cli("train", "catch", "--preset", str(not_yaml), home=home)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_checkpoint_is_refused_and_nothing_else_changes(registry, tmp_path):
    home, _ = registry
    import shutil

    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    run = copy / "runs" / "run-1"
    meta = yaml.safe_load((run / "run.yaml").read_text())
    ckpt = run / meta["checkpoints"][-1]["file"]
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 3] ^= 0x01
    ckpt.write_bytes(bytes(data))
    files = file_bytes(run)
    for args in (["eval", "keep", "--json"], ["resume", "keep", "--steps", "400"]):
        proc = run_cli(*args, home=copy)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "does not match the sha256" in proc.stderr and ckpt.name in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    after = file_bytes(run)
    assert after == files
    listing = json.loads(run_cli("list", "--json", home=copy, check=True).stdout)
    assert listing[0]["status"] == "finished"


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_refused(monkeypatch, has_bf16):
    from dreamctl.config import load_config
    from dreamctl.errors import UsageError
    from dreamctl.runs import system as runs

    monkeypatch.setattr(runs, "cpu_computes_bf16", lambda: has_bf16)
    cfg = load_config("debug", ["run.precision=bf16", "run.device=cpu"])
    if has_bf16:
        assert runs.configure_torch(cfg).type == "cpu"
    else:
        with pytest.raises(UsageError, match="use --precision 32"):
            runs.configure_torch(cfg)
    assert runs.configure_torch(load_config("debug", ["run.precision=32", "run.device=cpu"])).type == "cpu"


def test_a_home_that_is_a_file_is_refused_before_the_run_is_timed(tmp_path):
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("")
    proc = run_cli("train", "catch", "--home", str(not_a_folder / "registry"), home=tmp_path / "unused")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        f"error: cannot create the registry at {not_a_folder / 'registry'} ({not_a_folder} is a file); "
        "pass a writable --home."
    )
    assert "≈" not in proc.stdout  # no time estimate came first


def test_a_home_whose_folders_cannot_be_made_is_refused_before_the_run_is_timed(tmp_path):
    """/proc refuses a new folder whatever its access bits say (and they do not bind root, as in CI)."""
    proc = run_cli("train", "catch", "--home", "/proc/dreamctl-registry", home=tmp_path / "unused")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot create the registry at /proc/dreamctl-registry (")
    assert proc.stderr.strip().endswith("); pass a writable --home.")
    assert "≈" not in proc.stdout  # no time estimate came first


@pytest.mark.parametrize(
    "args", [["list", "--json"], ["show", "keep", "--json"], ["eval", "keep", "-n", "1", "--json"]]
)
def test_json_for_a_reader_that_went_away_is_no_failure(registry, args):
    """`dreamctl list --json | head -c 100` under `set -o pipefail`: the command did its work and its reader chose to
    stop, so it exits 0 and says nothing (its print() exited 1 in silence)."""
    home, _ = registry
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first byte is written
    env = {**os.environ, "DREAMCTL_HOME": str(home)}
    proc = subprocess.run(dreamctl_command() + args, stdout=writer, stderr=subprocess.PIPE, text=True, env=env)
    os.close(writer)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_imagine_that_cannot_make_the_runs_videos_folder_says_so(registry):
    home, _ = registry
    blocker = home / "runs" / "run-1" / "videos"
    assert not blocker.exists()
    blocker.write_text("a file where the folder goes")
    try:
        proc = run_cli("imagine", "keep", "--horizon", "2", home=home)
    finally:
        blocker.unlink()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cannot make {blocker} (File exists); pass --out FILE"), proc.stderr


def test_a_refused_resume_prints_nothing_on_stdout(registry):
    """The progress bar opened before the resume was checked, and left a blank line above the refusal."""
    home, _ = registry
    proc = run_cli("resume", "keep", "--set", "model.deter=3", home=home)
    assert proc.returncode == 2 and "model.deter cannot change on resume" in proc.stderr
    assert proc.stdout == ""


def test_an_unexpected_failure_is_one_line_and_exit_1_and_debug_shows_its_traceback(monkeypatch, capsys):
    from dreamctl import cli, scores

    def broken():
        raise RuntimeError("a library's message\nover two lines")

    monkeypatch.setattr(scores, "table", broken)
    monkeypatch.setattr("sys.argv", ["dreamctl", "envs"])
    monkeypatch.delenv("DREAMCTL_DEBUG", raising=False)
    assert cli.run() == 1
    assert capsys.readouterr().err == (
        "error: unexpected RuntimeError: a library's message over two lines; rerun with DREAMCTL_DEBUG=1 to see the "
        "traceback.\n"
    )
    monkeypatch.setenv("DREAMCTL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="over two lines"):
        cli.run()


def test_a_resume_that_would_not_fit_in_memory_is_refused_before_anything_changes(registry, tmp_path):
    """The replay comes back whole, and its capacity cannot change on resume: a machine without the memory for it
    says so in one sentence (as `train` does), instead of leaving the run to the kernel's OOM killer."""
    import shutil

    home, _ = registry
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    path = copy / "runs" / "run-1" / "run.yaml"
    meta = yaml.safe_load(path.read_text())
    meta["config"]["train"]["replay_capacity"] = 10**11  # as trained on a machine with room for it
    path.write_text(yaml.safe_dump(meta))
    files = file_bytes(copy)
    proc = run_cli("resume", "keep", "--steps", str(10**11), home=copy)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "GiB is available; resume it on a machine with that much free memory." in proc.stderr
    assert file_bytes(copy) == files
