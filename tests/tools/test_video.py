"""Videos: frames enlarged as they are encoded, and a full disk said in one sentence."""

import errno
import tracemalloc

import av
import numpy as np
import pytest

from dreamctl.errors import DreamctlError
from dreamctl.tools import video


def test_frames_are_enlarged_one_at_a_time_as_they_are_encoded(tmp_path):
    """300 grey 64x64 frames enlarged 4 times in RGB all at once would take 59 MB; one at a time, 0.2 MB each."""
    frames = np.random.default_rng(0).integers(0, 256, (300, 64, 64, 1), dtype=np.uint8)
    frames[:, :32] = 200  # a flat half, which the encoder keeps exactly enough to read back
    path = tmp_path / "episode.mp4"
    tracemalloc.start()
    try:
        video.write_video(path, frames, fps=15, scale=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 300 and decoded[0].shape == (256, 256, 3)
    assert np.abs(decoded[0][:120].astype(int) - 200).max() <= 2


def test_a_full_disk_while_writing_a_video_is_one_sentence_and_leaves_nothing(tmp_path, monkeypatch):
    """The disk fills while frames are encoded, after the encoder has written into the temporary file."""
    made, encode = [], av.VideoFrame.from_ndarray

    def full_at_frame_50(image, format):
        if len(made) == 0 and len(calls) == 50:
            made.extend(tmp_path.iterdir())
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(1)
        return encode(image, format=format)

    calls: list[int] = []
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", full_at_frame_50)
    path = tmp_path / "episode.mp4"
    with pytest.raises(DreamctlError) as said:
        video.write_video(path, np.zeros((60, 16, 16, 3), np.uint8))
    assert str(said.value) == f"the disk is full while writing the video {path}; free some space and try again."
    assert made and list(tmp_path.iterdir()) == []
