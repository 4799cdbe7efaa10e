"""The run store: ids, references, checkpoints with sha256, locks, pruning, atomic writes."""

import copy
import errno
import fcntl
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import filelock
import numpy as np
import pytest
import torch
from conftest import run_cli

from dreamctl.errors import CheckpointError, DreamctlError, RunBusyError, UsageError
from dreamctl.runs.fileio import atomic_write_bytes
from dreamctl.runs.registry import Registry, default_home
from dreamctl.runs.run import CHECKPOINT_FORMAT, SCHEMA_VERSION


def make_run(home, name=None):
    return Registry(home).create({"env": "catch", "preset": "debug", "checkpoints": [], "evals": []}, name)


def test_home_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("DREAMCTL_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "dreamctl"
    monkeypatch.setenv("DREAMCTL_HOME", str(tmp_path / "own"))
    assert default_home() == tmp_path / "own"
    assert Registry(tmp_path / "flag").root == tmp_path / "flag"
    monkeypatch.delenv("DREAMCTL_HOME")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_home() == tmp_path / "user" / ".local" / "share" / "dreamctl"


def test_references(home):
    first = make_run(home, name="alpha")
    second = make_run(home)
    reg = Registry(home)
    assert [reg.resolve(r).id for r in ("run-1", "1", "alpha", "latest", "2")] == [1, 1, 1, 2, 2]
    assert first.ref == "run-1" and second.ref == "run-2"
    for bad in ("runs/run-1", "../x", "a\\b"):
        with pytest.raises(UsageError, match="not a run reference"):
            reg.resolve(bad)
    with pytest.raises(UsageError, match="no run 'beta'"):
        reg.resolve("beta")
    for typo, meant in (("alpah", "alpha"), ("latets", "latest"), ("rum-2", "run-2"), ("run2", "run-2")):
        with pytest.raises(UsageError, match=f"did you mean '{meant}'"):
            reg.resolve(typo)
    with pytest.raises(UsageError, match="already exists"):
        make_run(home, name="alpha")
    for bad_name in ("latest", "run-3", "9lives", "has space", "a/b"):
        with pytest.raises(UsageError, match="not allowed"):
            make_run(home, name=bad_name)


def test_the_resume_command_carries_the_ranks_that_trained_the_run(home):
    run = make_run(home)
    assert run.resume_command(1) == "dreamctl resume run-1"
    assert run.resume_command(2) == "dreamctl resume run-1 --nproc 2"
    assert run.resume_command(4, steps="N") == "dreamctl resume run-1 --steps N --nproc 4"


def _create_many(home, count, queue):
    queue.put([make_run(home).id for _ in range(count)])


def test_concurrent_creates_never_share_an_id(home):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create_many, args=(home, 8, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    ids = [run_id for _ in procs for run_id in queue.get(timeout=120)]
    for p in procs:
        p.join()
    assert sorted(ids) == list(range(1, 25))


def test_checkpoint_round_trip_and_tamper_detection(home):
    run = make_run(home)
    tensors = {"a": torch.arange(10.0), "b": torch.zeros(3, dtype=torch.uint8)}
    entry = run.save_checkpoint(tensors, {"env_steps": "100"}, step=100, extra={})
    loaded, meta = run.load_checkpoint(run.find_checkpoint("latest"))
    assert meta == {"env_steps": "100"} and torch.equal(loaded["a"], tensors["a"])
    path = run.path / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        run.load_checkpoint(run.find_checkpoint(100))
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        run.load_checkpoint(run.find_checkpoint(100))
    with pytest.raises(UsageError, match="no checkpoint at step 5"):
        run.find_checkpoint(5)


def test_a_listed_step_is_never_written_again(home):
    """A stop right after a checkpoint saves the same step again; the listed file and its sha256 stay as they are
    (a rewrite would put new bytes under the old listed sha256 until run.yaml caught up)."""
    run = make_run(home)
    first = run.save_checkpoint({"a": torch.arange(4.0)}, {"x": "1", "y": "2"}, step=300, extra={})
    path = run.path / first["file"]
    written = path.stat().st_mtime_ns, path.read_bytes()
    again = run.save_checkpoint({"a": torch.arange(4.0)}, {"y": "2", "x": "1"}, step=300, extra={})
    assert again == first and (path.stat().st_mtime_ns, path.read_bytes()) == written
    assert [c["step"] for c in run.meta()["checkpoints"]] == [300]
    run.load_checkpoint(run.find_checkpoint(300))  # its sha256 still holds


def test_files_written_by_a_newer_dreamctl_are_refused_in_one_sentence_naming_both_versions(home):
    from safetensors.torch import save

    from dreamctl.runs.fileio import sha256_bytes

    run = make_run(home)
    entry = run.save_checkpoint({"a": torch.zeros(2)}, {}, step=100, extra={})
    assert run.load_checkpoint(entry)[1] == {}  # the format version is the registry's, not the caller's
    newer = save({"a": torch.zeros(2)}, metadata={"format_version": str(CHECKPOINT_FORMAT + 1)})
    (run.path / entry["file"]).write_bytes(newer)
    run.update(lambda m: m["checkpoints"][0].update(sha256=sha256_bytes(newer), bytes=len(newer)))
    newer_format = rf"format version {CHECKPOINT_FORMAT + 1}; this dreamctl reads up to {CHECKPOINT_FORMAT}\)"
    with pytest.raises(DreamctlError, match=rf"written by a newer dreamctl \({newer_format}"):
        run.load_checkpoint(run.find_checkpoint(100))
    run.update(lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(
        DreamctlError,
        match=rf"run.yaml was written by a newer dreamctl \(schema version {SCHEMA_VERSION + 1}; this dreamctl",
    ):
        run.meta()
    proc = run_cli("eval", "run-1", home=home)
    assert proc.returncode == 1 and f"schema version {SCHEMA_VERSION + 1}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_pruning_keeps_the_newest_and_the_best(home):
    run = make_run(home)
    for step in (10, 20, 30, 40):
        run.save_checkpoint({"x": torch.zeros(1)}, {}, step, {"first_chunk": step // 10})
    run.update(lambda m: m["evals"].append({"step": 20, "mean": 5.0}))
    (run.replay_dir).mkdir()
    for index in range(6):
        (run.replay_dir / f"chunk-{index}.bin").write_bytes(b"x")
    run.save_checkpoint({"x": torch.zeros(1)}, {}, 50, {"first_chunk": 5}, keep=2)
    assert [c["step"] for c in run.meta()["checkpoints"]] == [20, 40, 50]
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == [
        "step-20.safetensors",
        "step-40.safetensors",
        "step-50.safetensors",
    ]
    assert sorted(p.name for p in run.replay_dir.iterdir()) == [f"chunk-{i}.bin" for i in range(2, 6)]
    assert run.find_checkpoint("best")["step"] == 20


def test_pruning_drops_the_chunks_between_an_old_best_checkpoint_and_the_newest_ones(home):
    """A checkpoint needs chunks first_chunk ... end_chunk - 1; a best checkpoint far behind must not hold on to every
    chunk written since (a long run whose score peaked early would fill the disk). Chunks written after the newest
    checkpoint stay: the next checkpoint needs them."""
    run = make_run(home)
    chunks = {step: {"first_chunk": step // 10 - 1, "end_chunk": step // 10 + 1} for step in (10, 20, 30, 40, 50)}
    for step in (10, 20, 30, 40):
        run.save_checkpoint({"x": torch.zeros(1)}, {}, step, chunks[step])
    run.update(lambda m: m["evals"].append({"step": 10, "mean": 5.0}))
    run.replay_dir.mkdir()
    names = [f"chunk-{index}.bin" for index in range(8)] + ["chunk-1-rank1.bin", "chunk-2-rank1.bin"]
    for name in names:
        (run.replay_dir / name).write_bytes(b"x")
    run.save_checkpoint({"x": torch.zeros(1)}, {}, 50, chunks[50], keep=2)
    assert [c["step"] for c in run.meta()["checkpoints"]] == [10, 40, 50]
    left = {p.name for p in run.replay_dir.iterdir()}
    assert left == set(names) - {"chunk-2.bin", "chunk-2-rank1.bin"}


def test_a_checkpoint_lists_itself_records_progress_and_prunes_in_one_write_of_run_yaml(home, monkeypatch):
    """run.yaml is rewritten (and synced) whole at every edit: a checkpoint makes one edit, not one per change, and a
    reader never sees the new checkpoint listed beside the old progress."""
    run = make_run(home)
    for step in (10, 20):
        run.save_checkpoint({"x": torch.zeros(1)}, {}, step, {"first_chunk": 0})
    writes = []
    write_meta = run.write_meta
    monkeypatch.setattr(run, "write_meta", lambda data: writes.append(copy.deepcopy(data)) or write_meta(data))
    run.save_checkpoint({"x": torch.ones(1)}, {}, 30, {"first_chunk": 0}, keep=1, progress={"env_steps": 30})
    assert len(writes) == 1
    assert [c["step"] for c in writes[0]["checkpoints"]] == [30]
    assert writes[0]["progress"] == {"env_steps": 30}
    assert run.meta() == writes[0]
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step-30.safetensors"]


def _hold_lock(home, ready):
    run = Registry(home).resolve("1")
    with run.locked():
        ready.set()
        time.sleep(60)


@pytest.mark.parametrize(
    "prune",
    [
        lambda run: run.save_checkpoint({"x": torch.zeros(1)}, {}, 40, {"first_chunk": 0}, keep=1),
        lambda run: run.drop_checkpoints_after(10),
    ],
)
def test_a_kill_while_deleting_checkpoints_never_leaves_a_listed_file_missing(home, monkeypatch, prune):
    run = make_run(home)
    for step in (10, 20, 30):
        run.save_checkpoint({"x": torch.zeros(1)}, {}, step, {"first_chunk": 0})

    def killed(path, missing_ok=False):
        raise SystemExit("killed while deleting")

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(SystemExit):
        prune(run)
    monkeypatch.undo()
    listed = run.meta()["checkpoints"]
    assert len(listed) == 1
    assert all((run.path / c["file"]).is_file() for c in listed)


def test_lock_refuses_a_second_holder_and_dies_with_its_process(home):
    run = make_run(home)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(home, ready))
    holder.start()
    assert ready.wait(60)
    assert run.is_locked() and run.status() == "running"
    with pytest.raises(RunBusyError, match="being trained by another process"), run.locked():
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert not run.is_locked()
    assert run.status() == "interrupted"
    with run.locked():
        pass


def test_a_trainer_starting_while_list_looks_at_the_lock_is_not_refused(home):
    run = make_run(home)
    with run.locked():
        pass  # the lock file exists, as after any earlier training
    fd = os.open(run.path / "lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # `is_locked`'s shared lock, taken at this very moment
    threading.Timer(0.1, os.close, [fd]).start()  # and let go of, as is_locked does at once
    with run.locked():
        assert run.is_locked()


def test_resume_deletes_a_killed_trainers_temp_files_and_no_other_commands(home):
    run = make_run(home)
    (run.path / "videos").mkdir()
    (run.path / "checkpoints").mkdir(exist_ok=True)
    (run.path / "replay").mkdir(exist_ok=True)
    trainers = ["checkpoints/.ckpt-200.safetensors.a1.tmp", "replay/.chunk-3.bin.b2.tmp", ".metrics.jsonl.c3.tmp"]
    trainers.append(".run.yaml.d4.tmp")
    others = ["videos/.dream.png.e5.tmp", ".plot.png.f6.tmp"]  # `imagine` and `plot` may be writing them now
    for name in trainers + others:
        (run.path / name).write_bytes(b"partial")
    with run.locked():
        run.remove_temp_files()
    assert [name for name in trainers + others if (run.path / name).exists()] == others


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def broken_fsync(fd):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_damaged_run_yaml_does_not_hide_other_runs(home):
    make_run(home, name="good")
    bad = make_run(home)
    (bad.path / "run.yaml").write_text(": [")
    reg = Registry(home)
    assert [r.id for r in reg.all_runs()] == [1, 2]
    assert reg.resolve("good").id == 1
    with pytest.raises(DreamctlError, match="not valid YAML"):
        reg.resolve("2").meta()


def test_run_yaml_that_is_not_text_or_not_a_file_does_not_hide_other_runs(home):
    make_run(home, name="good")
    binary, folder = make_run(home), make_run(home)
    (binary.path / "run.yaml").write_bytes(b"\xd8\xff\x00 not utf-8")
    (folder.path / "run.yaml").unlink()
    (folder.path / "run.yaml").mkdir()
    reg = Registry(home)
    assert reg.resolve("good").id == 1
    with pytest.raises(DreamctlError, match="not valid YAML"):
        reg.resolve("2").meta()
    with pytest.raises(DreamctlError, match=r"run\.yaml cannot be read"):
        reg.resolve("3").meta()


def test_a_run_yaml_with_a_field_of_the_wrong_shape_is_unreadable_and_hides_no_run(home):
    """A hand-edited `evals: 5` made `list` and `show` fail for every run with a TypeError."""
    from dreamctl.runs.listing import run_rows
    from dreamctl.runs.summary import run_summary

    make_run(home, name="good")
    edited = make_run(home)
    text = (edited.path / "run.yaml").read_text().replace("evals: []", "evals: 5")
    (edited.path / "run.yaml").write_text(text)
    rows = run_rows(Registry(home))
    assert [row["status"] for row in rows] == [Registry(home).resolve("good").status(), "unreadable"]
    assert (
        rows[1]["reason"] == "run-2's run.yaml field `evals` is not a list of mappings; restore it or delete the run."
    )
    assert run_summary(edited)["status"] == "unreadable"


def test_asking_whether_a_run_is_locked_writes_nothing(home):
    """`list` asks every running run; on a read-only registry, or a run folder being deleted, taking the lock to
    ask created a lock file or failed with an OSError."""
    run = make_run(home)
    assert not (run.path / "lock").exists()
    assert not run.is_locked() and run.status() == "interrupted"
    assert not (run.path / "lock").exists()
    with run.locked():
        assert run.is_locked()  # another process's holding is checked in test_lock_refuses_a_second_holder...
    assert not run.is_locked()


def test_a_run_whose_run_yaml_cannot_be_written_leaves_no_folder(home, monkeypatch):
    """A full disk at `train`: the new run's folder would be an unreadable run that `latest` resolves to."""
    make_run(home)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dreamctl.runs.run.atomic_write_text", disk_full)
    with pytest.raises(DreamctlError, match=r"\(No space left on device\); pass a writable --home\.$"):
        make_run(home)
    assert [r.id for r in Registry(home).all_runs()] == [1]


def test_a_read_only_run_folder_is_said_in_one_sentence_before_any_work(home, monkeypatch):
    """eval played every episode, then failed on meta.lock with an unexpected PermissionError; resume likewise."""
    from dreamctl.tools.evaluate import evaluate

    run = make_run(home)

    for refusal in (PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "Read-only file system")):

        def denied(*args, refusal=refusal, **kwargs):
            raise refusal

        monkeypatch.setattr(filelock.FileLock, "acquire", denied)
        with pytest.raises(DreamctlError, match=r"is read-only; run\.yaml cannot be updated"):
            run.update(lambda meta: None)
        with pytest.raises(DreamctlError, match="is read-only, so it cannot be trained"), run.locked():
            pass
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user who may not write there
    with pytest.raises(DreamctlError, match="is read-only; the evaluation could not be recorded"):
        evaluate("run-1", home=home)  # refused before looking for a checkpoint (this run has none)


def test_a_home_where_no_run_can_be_made_is_said_in_one_sentence(home, monkeypatch):
    make_run(home)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user who may not write there
    with pytest.raises(DreamctlError, match=rf"^cannot create the registry at {home} \(.* is read-only\); pass"):
        Registry(home).check_home()  # asked before the env is built and the run is timed
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(filelock.FileLock, "acquire", read_only)  # a home that turned read-only after the check
    with pytest.raises(DreamctlError, match=r"\(Read-only file system\); pass a writable --home\.$"):
        make_run(home)


def test_a_file_a_trainer_deletes_while_list_measures_the_run_is_skipped(home, monkeypatch):
    run = make_run(home)
    (run.path / "pruned").write_bytes(b"x" * 1000)
    size = run.disk_bytes()
    real_is_file = Path.is_file

    def pruned_in_between(path):  # is_file sees the checkpoint; the trainer deletes it before stat
        found = real_is_file(path)
        if path.name == "pruned":
            path.unlink()
        return found

    monkeypatch.setattr(Path, "is_file", pruned_in_between)
    assert run.disk_bytes() == size - 1000


def test_a_checkpoint_that_cannot_be_read_is_said_in_one_sentence(home, monkeypatch):
    run = make_run(home)
    run.save_checkpoint({"w": torch.zeros(3)}, {}, 10, {})
    [entry] = run.meta()["checkpoints"]

    def unreadable(path):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(
        CheckpointError, match=r"^checkpoint .*step-10.safetensors cannot be read \(Permission denied\)\.$"
    ):
        run.load_checkpoint(entry)


def test_every_new_folder_and_file_of_a_run_is_flushed_into_its_parent(home, monkeypatch):
    """After a power cut, run.yaml may list only what the disk kept: the run's folder in runs/, checkpoints/ and
    replay/ in the run's folder, each file in its folder; and a video is where `imagine` said it wrote it."""
    from dreamctl.runs import fileio, registry
    from dreamctl.tools import video

    synced = []
    real = fileio.fsync_dir

    def recorded(folder):
        synced.append(Path(folder))
        real(folder)

    monkeypatch.setattr(fileio, "fsync_dir", recorded)
    monkeypatch.setattr(registry, "fsync_dir", recorded)
    monkeypatch.setattr(video, "fsync_dir", recorded)
    run = make_run(home)
    run.save_checkpoint({"w": torch.zeros(3)}, {}, 10, {})
    run.write_chunk(0, {"reward": np.zeros((2, 4), np.float32)})
    fileio.make_folder(run.path / "videos")  # as `imagine` makes it
    video.write_video(run.path / "videos" / "dream.gif", np.zeros((2, 8, 8, 3), np.uint8))
    parents = {home / "runs", run.path, run.path / "checkpoints", run.path / "replay", run.path / "videos"}
    assert parents <= set(synced)


def test_package_never_unpickles():
    root = Path(__file__).resolve().parents[2] / "dreamctl"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for banned in ("torch.load", "pickle", "allow_pickle=True"):
            assert banned not in text, f"{path} contains {banned}"


def test_the_best_checkpoint_is_the_best_greedy_evaluation(home):
    """A sampled evaluation (`eval --sample`) measures another policy, so it neither picks nor keeps `best`."""
    run = make_run(home)
    for step in (10, 20, 30):
        run.save_checkpoint({"x": torch.zeros(1)}, {}, step, {"first_chunk": 0})
    run.update(lambda m: m["evals"].append({"step": 10, "mean": 5.0}))
    run.update(lambda m: m["evals"].append({"step": 20, "mean": 9.0, "policy": "sample"}))
    run.update(lambda m: m["evals"].append({"step": 30, "mean": 4.0, "policy": "greedy"}))
    assert run.find_checkpoint("best")["step"] == 10
    run.save_checkpoint({"x": torch.zeros(1)}, {}, 40, {"first_chunk": 0}, keep=1)
    assert [c["step"] for c in run.meta()["checkpoints"]] == [10, 40]


def test_redoing_history_drops_the_later_checkpoints_and_their_evaluations(home):
    """Resuming from step 10 redoes 20 and 30: their old evaluations must not make the new step-30 checkpoint `best`."""
    run = make_run(home)
    for step in (10, 20, 30):
        run.save_checkpoint({"x": torch.zeros(1)}, {}, step, {"first_chunk": 0})
    run.update(lambda m: m["evals"].extend([{"step": 10, "mean": 1.0}, {"step": 30, "mean": 9.0}]))
    run.update(lambda m: m.update(warnings=[{"step": 5, "message": "a"}, {"step": 25, "message": "b"}]))
    run.update(lambda m: m.update(progress={"env_steps": 30}, score={"value": 9.0, "episodes": 3}))
    run.drop_checkpoints_after(10)
    run.save_checkpoint({"x": torch.ones(1)}, {}, 30, {"first_chunk": 0})  # the redone history's
    assert [e["step"] for e in run.meta()["evals"]] == [10]
    assert run.find_checkpoint("best")["step"] == 10
    assert run.meta()["warnings"] == [{"step": 5, "message": "a"}] and "score" not in run.meta()


@pytest.mark.parametrize("where", ["mkstemp", "fsync", "append", "mkdir", "tensorboard"])
def test_a_full_disk_is_one_sentence_wherever_a_write_meets_it(tmp_path, monkeypatch, where):
    import errno
    import tempfile

    from dreamctl.runs.fileio import append_line, make_folder
    from dreamctl.runs.metrics import MetricsLogger

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", full)
        with pytest.raises(DreamctlError, match="the disk is full while writing"):
            atomic_write_bytes(tmp_path / "f.bin", b"new")
    elif where == "fsync":  # the new bytes did not all reach the disk: the old file stays, the temp file goes
        (tmp_path / "f.bin").write_bytes(b"old")
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(DreamctlError, match=r"the disk is full while writing .*\(nothing was overwritten\)"):
            atomic_write_bytes(tmp_path / "f.bin", b"new")
        assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and (tmp_path / "f.bin").read_bytes() == b"old"
    elif where == "append":
        monkeypatch.setattr("builtins.open", full)
        with pytest.raises(DreamctlError, match="the disk is full while appending"):
            append_line(tmp_path / "metrics.jsonl", "{}")
    elif where == "mkdir":
        monkeypatch.setattr(Path, "mkdir", full)
        with pytest.raises(DreamctlError, match="the disk is full while making"):
            make_folder(tmp_path / "checkpoints")
    else:
        monkeypatch.setattr(os, "makedirs", full)  # how TensorBoard's writer makes tb/
        with pytest.raises(DreamctlError, match="the disk is full while making the TensorBoard log"):
            MetricsLogger(tmp_path)


def test_the_window_score_counts_frames_as_episodes_do_in_a_world_of_two_agents(home):
    """An episode records the frame its world reached (agent steps / agents x action repeat); the score's window
    must end at the same count, not at the agent steps x action repeat, which a world of two agents never reaches."""
    from types import SimpleNamespace

    from dreamctl.config import load_config
    from dreamctl.runs.lifecycle import window_score

    run = make_run(home)
    cfg = load_config("catch2", ["train.steps=600", "train.score_window_frames=100"])
    lines = [{"step": s, "frame": s // 2, "return": r} for s, r in ((300, 1.0), (500, 3.0), (600, 5.0))]
    (run.path / "episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    spec = SimpleNamespace(num_agents=2, action_repeat=1)
    trainer = SimpleNamespace(env=SimpleNamespace(spec=spec), frames=lambda: 600 // 2)
    score = window_score(run, trainer, cfg)
    assert (score["value"], score["episodes"]) == (4.0, 2)


def test_the_logs_a_checkpoint_continues_are_on_the_disk_before_it(tmp_path, monkeypatch):
    """A resume cuts the logs back to its checkpoint's step: the rows before it must survive a power cut with it."""
    from dreamctl.runs.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path)
    logger.scalars(10, {"loss": 1.0})
    logger.episode(10, {"return": 1.0, "length": 5})
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    logger.sync()
    logger.close()
    assert {str(tmp_path / "metrics.jsonl"), str(tmp_path / "episodes.jsonl"), str(tmp_path)} <= set(synced)
