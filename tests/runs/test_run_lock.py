"""The training lock: one trainer at a time, and `list`'s or `show`'s look at the lock never refuses a trainer."""

import fcntl
import os
import threading

import pytest

from dreamctl.errors import RunBusyError
from dreamctl.runs.run_lock import RunLock


def test_a_trainer_starting_while_list_looks_at_the_lock_is_not_refused(tmp_path):
    lock = RunLock(tmp_path, "run-1")
    with lock.hold():
        pass  # the lock file exists, as after any earlier training
    fd = os.open(tmp_path / "lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # `is_held`'s shared lock, taken at this very moment
    threading.Timer(0.1, os.close, [fd]).start()  # and let go of, as is_held does at once
    with lock.hold():
        assert RunLock(tmp_path, "run-1").is_held()


def test_a_second_trainer_is_refused_in_one_sentence(tmp_path):
    with RunLock(tmp_path, "run-1").hold():
        with pytest.raises(RunBusyError, match=r"^run-1 is being trained by another process; .*first\.$"):
            with RunLock(tmp_path, "run-1").hold():
                pass
