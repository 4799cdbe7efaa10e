"""Sequence replay: preallocated rings per env copy, written in lockstep, sampled uniformly.

Row t holds one step of every env copy: each observation key in its own dtype (uint8 images, float32 vectors), the
action that led to it, the reward received on arriving, and is_first / is_last / is_terminal (and, where a world
has several agents, is_present: see envs/base.py's Step). Because every env
step yields exactly one row (see envs/base.py), the rings of all copies share one write cursor and a row's position
is `t % rows_per_env`.

Sampling draws an env copy (a whole world's agents together, where it has several) and a window of `length`
consecutive rows uniformly among the windows in memory.
A window may span an episode boundary: `is_first` marks it and the RSSM restarts from zeros there, and
`is_first` is forced at every window's start, as in DreamerV2's replay. Frames stay uint8 until the sampled batch
is moved to the device.

Rows can be exported and imported by logical index; `encode_chunk` / `decode_chunk` turn them into compressed
safetensors bytes, which is how a run's experience survives a resume.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from dreamctl.envs.base import ObsSpace, is_image

ABSENT_MEANS = {"is_present": True}
"""Fields a row may leave out, and what they hold then: agents are present unless a row says otherwise (rows and
chunks written before the field was kept, envs whose agents end together)."""


class Replay:
    """Args:
    capacity: rows kept in all, summed over env copies (first in, first out).
    num_envs: env copies written in lockstep.
    obs_space: the observation keys and their shapes (images uint8, vectors float32).
    action_dim: number of discrete actions (stored as an int32 index, -1 for none) or continuous dimensions.
    discrete: whether actions are discrete.
    agents: M, the agents of one world, which are M adjacent env copies (envs/agents.py); a sample holds whole
        worlds, the M agents of each in adjacent rows over one window.
    """

    def __init__(
        self, capacity: int, num_envs: int, obs_space: ObsSpace, action_dim: int, discrete: bool, agents: int = 1
    ):
        self.rows_per_env = capacity // num_envs
        self.num_envs, self.action_dim, self.discrete, self.agents = num_envs, action_dim, discrete, agents
        shape = (self.rows_per_env, num_envs)
        # np.zeros is lazily committed, so memory grows with the rows actually written.
        self.data = {
            **{
                key: np.zeros(shape + tuple(obs), np.uint8 if is_image(obs) else np.float32)
                for key, obs in obs_space.items()
            },
            "action": np.zeros(shape, np.int32) if discrete else np.zeros(shape + (action_dim,), np.float32),
            "reward": np.zeros(shape, np.float32),
            "is_first": np.zeros(shape, bool),
            "is_last": np.zeros(shape, bool),
            "is_terminal": np.zeros(shape, bool),
        }
        if agents > 1:
            self.data["is_present"] = np.zeros(shape, bool)
        self.cursor = 0  # rows ever written

    def __len__(self) -> int:
        """Steps held (summed over env copies)."""
        return min(self.cursor, self.rows_per_env) * self.num_envs

    @property
    def first_row(self) -> int:
        """Logical index of the oldest row still in memory."""
        return max(0, self.cursor - self.rows_per_env)

    def add(self, row: dict[str, np.ndarray]) -> None:
        """One step of every env copy: each field has leading axis num_envs (fields the replay does not keep are
        ignored, and those of `ABSENT_MEANS` may be left out)."""
        pos = self.cursor % self.rows_per_env
        for key in self.data:
            self.data[key][pos] = row[key] if key in row else ABSENT_MEANS[key]
        self.cursor += 1

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Copies of logical rows [start, stop), which must still be in memory."""
        if not self.first_row <= start <= stop <= self.cursor:
            raise IndexError(f"rows [{start}, {stop}) are not in memory ({self.first_row}..{self.cursor})")
        index = np.arange(start, stop) % self.rows_per_env
        return {key: self.data[key][index] for key in self.data}

    def write_rows(self, start: int, rows: dict[str, np.ndarray]) -> None:
        """Put rows back at their logical positions (restoring from chunks); advances the cursor."""
        count = len(rows["reward"])
        index = np.arange(start, start + count) % self.rows_per_env
        for key in self.data:
            self.data[key][index] = rows[key] if key in rows else ABSENT_MEANS[key]
        self.cursor = max(self.cursor, start + count)

    def can_sample(self, length: int) -> bool:
        return self.cursor - self.first_row >= length

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """(batch, length) windows, uniformly over worlds and over window starts in memory; batch must be a
        multiple of the agents per world, whose rows come out world-major."""
        m = self.agents
        worlds = rng.integers(0, self.num_envs // m, size=batch // m)
        envs = (worlds[:, None] * m + np.arange(m)).reshape(-1)
        starts = np.repeat(rng.integers(self.first_row, self.cursor - length + 1, size=batch // m), m)
        times = (starts[:, None] + np.arange(length)[None]) % self.rows_per_env
        out = {key: self.data[key][times, envs[:, None]] for key in self.data}
        out["is_first"][:, 0] = True
        return out

    def to_torch(self, sample: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
        """Move a sampled batch to the device; images stay uint8, actions become one-hot floats there.

        A GPU receives it from pinned memory: a copy from pageable memory makes the CPU wait until the GPU has
        finished everything queued so far, so the update could not be queued while the previous one runs."""
        pinned = device.type == "cuda"
        out = {
            key: (torch.from_numpy(value).pin_memory() if pinned else torch.from_numpy(value)).to(
                device, non_blocking=True
            )
            for key, value in sample.items()
        }
        if self.discrete:  # index -1 marks "no action" (an episode's first step): an all-zero vector
            index = out["action"].long()
            one_hot = torch.nn.functional.one_hot(index.clamp_min(0), self.action_dim).float()
            out["action"] = one_hot * (index >= 0).unsqueeze(-1)
        for key in ("reward", "is_first", "is_last", "is_terminal", "is_present"):
            if key in out:
                out[key] = out[key].float()
        return out

    def nbytes_per_step(self) -> dict[str, int]:
        """Bytes one env copy's step takes in each field."""
        return {key: v[0, 0].nbytes if v[0, 0].shape else v.itemsize for key, v in self.data.items()}


def encode_chunk(rows: dict[str, np.ndarray], level: int = 1) -> bytes:
    """Rows -> zlib-compressed safetensors bytes (frames compress well; level 1 keeps writes cheap)."""
    return zlib.compress(st_save({key: np.ascontiguousarray(value) for key, value in rows.items()}), level)


def decode_chunk(data: bytes) -> dict[str, np.ndarray]:
    return st_load(zlib.decompress(data))
