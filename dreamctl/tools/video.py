"""Writing frames to .mp4 (H.264 through PyAV's bundled FFmpeg) or .gif, and a tiny digit font for labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dreamctl.errors import DreamctlError, UsageError
from dreamctl.runs.fileio import DISK_FULL, disk_full, fsync_dir

FORMATS = (".mp4", ".gif")

# 3x5 bitmaps of the digits 0-9, one row of three bits per line.
_DIGITS = [
    "111101101101111",
    "010110010010111",
    "111001111100111",
    "111001111001111",
    "101101111001001",
    "111100111001111",
    "111100111101111",
    "111001010010010",
    "111101111101111",
    "111101111001111",
]


def check_output(path: Path, formats: tuple[str, ...] = FORMATS) -> Path:
    """Refuse, before any work is done, an output path that cannot be written or has none of `formats`."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in formats:
        raise UsageError(f"output '{path}' must end in {', '.join(formats[:-1])} or {formats[-1]}.")
    if path.is_dir():
        raise UsageError(f"cannot write '{path}': it is a folder.")
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"cannot write '{path}': {path.parent} is a file, not a folder.")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write '{path}': the folder {path.parent} does not exist.")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write '{path}': the file is read-only.")
    try:
        with open(path.parent / f".{path.name}.probe", "wb"):
            pass
        (path.parent / f".{path.name}.probe").unlink()
    except OSError:
        raise UsageError(f"cannot write '{path}': the folder {path.parent} is not writable.") from None
    return path


def draw_number(image: np.ndarray, value: int, row: int, col: int, scale: int = 2, color=(255, 255, 0)) -> None:
    """Draw a non-negative integer in place on an (H, W, 3) uint8 image."""
    for i, char in enumerate(str(value)):
        glyph = np.array([int(b) for b in _DIGITS[int(char)]], bool).reshape(5, 3)
        glyph = glyph.repeat(scale, 0).repeat(scale, 1)
        top, left = row, col + i * 4 * scale
        region = image[top : top + glyph.shape[0], left : left + glyph.shape[1]]
        region[glyph[: region.shape[0], : region.shape[1]]] = color


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    return frames.repeat(factor, -3).repeat(factor, -2) if factor > 1 else frames


def to_rgb(frames: np.ndarray) -> np.ndarray:
    return frames.repeat(3, -1) if frames.shape[-1] == 1 else frames


def write_video(path: Path, frames: np.ndarray, fps: int = 15, scale: int = 1) -> None:
    """frames: uint8 (T, H, W, 1 or 3), each drawn `scale` times larger in RGB as it is encoded (a whole Atari episode
    enlarged at once would take gigabytes). Written to a temp name first, so a failed write leaves nothing behind,
    and flushed with its folder entry, as every file dreamctl writes."""
    import av

    path = Path(path)
    height, width = frames.shape[1] * scale // 2 * 2, frames.shape[2] * scale // 2 * 2  # H.264 wants even sizes
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), mode="w") as container:
            if path.suffix.lower() == ".gif":
                stream = container.add_stream("gif", rate=fps)
                stream.pix_fmt = "rgb8"
            else:
                stream = container.add_stream("libx264", rate=fps)
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18"}
            stream.width, stream.height = width, height
            for frame in frames:
                image = np.ascontiguousarray(upscale(to_rgb(frame), scale)[:height, :width])
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    except BaseException as exc:  # Ctrl-C while encoding too: no hidden temp file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            if exc.errno in DISK_FULL:
                raise disk_full(f"writing the video {path}") from None
            raise DreamctlError(f"could not write the video {path} ({exc.strerror or exc}).") from None
        raise
