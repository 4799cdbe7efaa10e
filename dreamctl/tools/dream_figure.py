"""The dream of a run's vector observations as a figure: one panel per dimension, truth beside the model.

The model observes the first C steps (its posterior reconstructions are drawn), then dreams the rest from its prior
under the real actions, as in the dream video of images; a dashed line marks where the dream begins. A `.png`,
`.svg` or `.pdf` is the whole horizon; an `.mp4` or `.gif` draws it step by step.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from dreamctl.errors import DreamctlError
from dreamctl.runs.fileio import atomic_write_bytes
from dreamctl.tools.video import write_video

FIGURE_FORMATS = (".png", ".svg", ".pdf")


def write_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib Figure in the format its suffix names (FIGURE_FORMATS), as `write_output` writes."""
    rendered = io.BytesIO()
    fig.savefig(rendered, format=path.suffix.lower().lstrip("."), dpi=100)
    write_output(path, rendered.getvalue())


def write_output(path: Path, data: bytes) -> None:
    """Write a file the user asked for, atomically: an older file of that name stays whole until the new one is
    complete, and a write that fails says why in one sentence."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise DreamctlError(f"cannot write {path}: {exc.strerror or exc}.") from None


def dimensions(values: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """(key, index) of every dimension of the vector observations (K, T, size), in key order."""
    return [(key, i) for key, value in values.items() for i in range(value.shape[-1])]


def write_vector_figure(path: Path, truth: dict[str, np.ndarray], model: dict[str, np.ndarray], context: int) -> int:
    """Draw every dimension of `truth` and `model` (key -> (K, T, size)); returns the number of panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = dimensions(truth)
    steps = next(iter(truth.values())).shape[1]
    fig = Figure(figsize=(8, 0.4 + 1.4 * len(panels)))
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    lines = []
    for ax, (key, i) in zip(axes[:, 0], panels, strict=True):
        for k in range(truth[key].shape[0]):
            (real,) = ax.plot([], [], color="black", linewidth=1, alpha=0.8, label="truth" if k == 0 else None)
            (dream,) = ax.plot([], [], color="tab:red", linewidth=1, alpha=0.8, label="model" if k == 0 else None)
            lines.append((real, dream, truth[key][k, :, i], model[key][k, :, i]))
        low = min(truth[key][..., i].min(), model[key][..., i].min())
        high = max(truth[key][..., i].max(), model[key][..., i].max())
        margin = 0.05 * (high - low) + 1e-3
        ax.set_ylim(low - margin, high + margin)
        ax.set_xlim(0, steps - 1)
        ax.axvline(context - 0.5, color="tab:green", linestyle="--", linewidth=1)
        ax.set_ylabel(f"{key}[{i}]", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[0, 0].set_title(f"observed {context} steps (left of the dashed line), then dreamed", fontsize=9)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()

    def draw(upto: int) -> None:
        for real, dream, y_true, y_model in lines:
            real.set_data(np.arange(upto), y_true[:upto])
            dream.set_data(np.arange(upto), y_model[:upto])

    if path.suffix.lower() in FIGURE_FORMATS:
        draw(steps)
        write_figure(fig, path)
    else:
        frames = []
        for upto in range(1, steps + 1):
            draw(upto)
            canvas.draw()
            frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
        write_video(path, np.stack(frames), fps=10)
    return len(panels)
