"""The uint8 sequence replay: layout, FIFO eviction, window sampling and chunk round trips."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamctl.training.replay import Replay, decode_chunk, encode_chunk


def fill(replay: Replay, rows: int, start: int = 0) -> None:
    n = replay.num_envs
    for t in range(start, start + rows):
        replay.add(
            {
                "image": np.full((n, 4, 4, 1), t % 256, np.uint8),
                "action": np.full(n, t % 3, np.int32),
                "reward": np.arange(n, dtype=np.float32) + 8 * t,
                "is_first": np.full(n, t % 10 == 0),
                "is_last": np.full(n, t % 10 == 9),
                "is_terminal": np.zeros(n, bool),
            }
        )


def test_frames_are_stored_once_as_uint8_in_preallocated_arrays():
    replay = Replay(100, 2, {"image": (64, 64, 1)}, 6, True)
    assert replay.data["image"].dtype == np.uint8 and replay.data["image"].shape == (50, 2, 64, 64, 1)
    assert sum(replay.nbytes_per_step().values()) <= 4.2 * 1024


def test_each_observation_key_is_stored_once_in_its_own_dtype_and_round_trips_through_chunks():
    replay = Replay(40, 2, {"image": (4, 4, 3), "joints": (5,)}, 2, False)
    assert replay.data["image"].dtype == np.uint8 and replay.data["joints"].dtype == np.float32
    assert replay.data["joints"].shape == (20, 2, 5) and replay.data["action"].shape == (20, 2, 2)
    assert replay.nbytes_per_step() == {
        "image": 48,
        "joints": 20,
        "action": 8,
        "reward": 4,
        "is_first": 1,
        "is_last": 1,
        "is_terminal": 1,
    }
    rng = np.random.default_rng(0)
    for _ in range(12):
        replay.add(
            {
                "image": rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8),
                "joints": rng.normal(size=(2, 5)).astype(np.float32),
                "action": rng.uniform(-1, 1, (2, 2)),
                "reward": rng.normal(size=2),
                "is_first": np.zeros(2, bool),
                "is_last": np.zeros(2, bool),
                "is_terminal": np.zeros(2, bool),
            }
        )
    rows = replay.rows(0, 12)
    decoded = decode_chunk(encode_chunk(rows))
    assert set(decoded) == set(rows) and all(np.array_equal(decoded[k], rows[k]) for k in rows)
    batch = replay.to_torch(replay.sample(3, 4, rng), torch.device("cpu"))
    assert batch["joints"].dtype == torch.float32 and batch["joints"].shape == (3, 4, 5)
    assert batch["image"].dtype == torch.uint8


def test_sampled_windows_are_consecutive_and_start_with_is_first():
    replay = Replay(40, 2, {"image": (4, 4, 1)}, 3, True)
    fill(replay, 15)
    sample = replay.sample(32, 6, np.random.default_rng(0))
    assert sample["image"].shape == (32, 6, 4, 4, 1)
    times = sample["image"][:, :, 0, 0, 0].astype(int)
    assert np.all(np.diff(times, axis=1) == 1)
    assert sample["is_first"][:, 0].all()
    assert np.array_equal(sample["is_first"][:, 1:], times[:, 1:] % 10 == 0)


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(4, 60), envs=st.integers(1, 4), rows=st.integers(0, 120), length=st.integers(1, 8))
def test_fifo_keeps_exactly_the_newest_rows(capacity, envs, rows, length):
    replay = Replay(capacity * envs, envs, {"image": (4, 4, 1)}, 3, True)
    fill(replay, rows)
    assert len(replay) == min(rows, capacity) * envs
    assert replay.first_row == max(0, rows - capacity)
    if replay.can_sample(length):
        sample = replay.sample(16, length, np.random.default_rng(rows))
        times = sample["reward"] // 8  # the row index each sampled step was written at
        assert np.all(np.diff(times, axis=1) == 1)
        assert np.all(times[:, 0] >= replay.first_row) and np.all(times[:, -1] < rows)
    else:
        assert rows - replay.first_row < length


def test_reset_rows_have_no_action_and_actions_become_one_hot_on_the_device():
    replay = Replay(10, 1, {"image": (4, 4, 1)}, 3, True)
    replay.add(
        {
            "image": np.zeros((1, 4, 4, 1), np.uint8),
            "action": np.array([-1], np.int32),
            "reward": np.zeros(1, np.float32),
            "is_first": np.ones(1, bool),
            "is_last": np.zeros(1, bool),
            "is_terminal": np.zeros(1, bool),
        }
    )
    fill(replay, 3, start=1)
    batch = replay.to_torch(replay.sample(4, 4, np.random.default_rng(0)), torch.device("cpu"))
    assert batch["image"].dtype == torch.uint8
    assert torch.all(batch["action"][:, 0] == 0)
    assert torch.all(batch["action"][:, 1:].sum(-1) == 1)


def test_rows_round_trip_through_compressed_chunks_bit_for_bit():
    a = Replay(64, 2, {"image": (4, 4, 1)}, 3, True)
    fill(a, 50)
    b = Replay(64, 2, {"image": (4, 4, 1)}, 3, True)
    for start in range(18, 48, 10):
        b.write_rows(start, decode_chunk(encode_chunk(a.rows(start, start + 10))))
    b.write_rows(48, a.rows(48, 50))
    assert b.cursor == a.cursor
    for key in a.data:
        assert np.array_equal(a.data[key], b.data[key]), key
