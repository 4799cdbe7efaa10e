"""A trainer's whole state <-> named tensors and string metadata, the contents of a checkpoint.

Everything the loop carries is saved: networks, slow critic and optimiser moments, the torch, numpy and Python RNGs,
the envs' own state where they can save it, the acting state (latent and previous action), the last observation,
the running episodes' returns and lengths, and the replay rows not yet written to a chunk file. So a run restored
from a checkpoint continues bit for bit where it was saved.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dreamctl.envs.base import Step, restore_rng, rng_state_bytes
from dreamctl.model.agent import ActState
from dreamctl.model.rssm import State
from dreamctl.training.trainer import collapse_warning

if TYPE_CHECKING:
    from dreamctl.training.trainer import Trainer


def trainer_state(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Everything needed to continue exactly, as named CPU tensors plus JSON-encoded metadata."""
    tensors = trainer.agent.state_tensors()
    tensors["rng/torch"] = torch.get_rng_state()
    if trainer.device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(trainer.device)
    tensors["rng/numpy"] = torch.from_numpy(rng_state_bytes(trainer.rng))
    tensors["rng/python"] = _bytes_tensor(json.dumps(random.getstate()))
    for key, array in trainer.env.get_state().items():  # copied where read-only (JAX's arrays are)
        tensors[f"env/{key}"] = torch.from_numpy(np.require(array, requirements=["C", "W"]))
    for key, value in zip(("deter", "stoch", "logits"), trainer.act_state.latent, strict=True):
        tensors[f"act/{key}"] = value
    tensors["act/action"] = trainer.act_state.action
    if trainer.obs is not None:
        for key, array in trainer.obs.obs.items():
            tensors[f"obs/obs/{key}"] = torch.from_numpy(np.ascontiguousarray(array))
        for field in Step._fields[1:]:
            if getattr(trainer.obs, field) is not None:  # is_present is None where every agent is present
                tensors[f"obs/{field}"] = torch.from_numpy(np.ascontiguousarray(getattr(trainer.obs, field)))
    tensors["episode/return"] = torch.from_numpy(trainer.episodes_running.ret)
    tensors["episode/length"] = torch.from_numpy(trainer.episodes_running.length)
    for key, value in trainer.metric_sums.items():  # so that a resumed run logs the same means
        tensors[f"metrics/{key}"] = value
    chunk = trainer.cfg.run.replay_chunk
    tail_start = trainer.replay.cursor // chunk * chunk
    for key, rows in trainer.replay.rows(tail_start, trainer.replay.cursor).items():
        tensors[f"replay/{key}"] = torch.from_numpy(rows)
    meta: dict[str, Any] = {
        "env_steps": trainer.env_steps,
        "updates": trainer.updates,
        "episodes": trainer.episodes,
        "replay_cursor": trainer.replay.cursor,
        "wall_time": trainer.wall_time,
        "last_return": trainer.last_return,
        "env_saved": bool(trainer.env.saveable),
        "low_kl_updates": int(trainer.low_kl_updates),
        "metric_count": trainer.metric_count,
    }
    return ({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, {k: json.dumps(v) for k, v in meta.items()})


def restore_trainer(
    trainer: Trainer,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, str],
    load_chunk: Callable[[int], dict[str, np.ndarray]],
) -> str | None:
    """Put a checkpoint's state into a freshly built trainer of the same config; `load_chunk(k)` reads chunk k.

    Returns None where the envs continue their episodes; otherwise the trainer starts new ones, from envs as they
    were built, and the reason is returned: NOT_SAVEABLE (as ALE's vector env), a saved state that does not fit the
    env here (written under other versions of its libraries), or another rank's reason (`rank r: ...`).
    """
    info = {k: json.loads(v) for k, v in meta.items()}
    device = trainer.device
    networks = {k: v.to(device) for k, v in tensors.items() if k.startswith(("agent/", "optim/"))}  # not the replay
    trainer.agent.load_state_tensors(networks)
    chunk = trainer.cfg.run.replay_chunk
    cursor = int(info["replay_cursor"])
    for index in trainer.chunks_needed(cursor):
        trainer.replay.write_rows(index * chunk, load_chunk(index))
    tail = {key: tensors[f"replay/{key}"].numpy() for key in trainer.replay.data if f"replay/{key}" in tensors}
    trainer.replay.write_rows(cursor // chunk * chunk, tail)  # fields older checkpoints lack: see ABSENT_MEANS
    trainer.env_steps, trainer.updates = int(info["env_steps"]), int(info["updates"])
    trainer.episodes, trainer.wall_time = int(info["episodes"]), float(info["wall_time"])
    trainer.last_return = info["last_return"]
    trainer.low_kl_updates.fill_(int(info.get("low_kl_updates", 0)))  # absent before the collapse watch
    trainer.warning = collapse_warning(int(trainer.low_kl_updates))  # the progress line warns from the first tick
    trainer.metric_sums = {k[len("metrics/") :]: v.to(device) for k, v in tensors.items() if k.startswith("metrics/")}
    trainer.metric_count = int(info.get("metric_count", 0))  # absent before the sums were saved
    torch.set_rng_state(tensors["rng/torch"])
    if device.type == "cuda" and "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
    restore_rng(trainer.rng, tensors["rng/numpy"].numpy())
    random.setstate(_to_tuple(json.loads(bytes(tensors["rng/python"].numpy()).decode())))
    env_state = {k[len("env/") :]: v.numpy() for k, v in tensors.items() if k.startswith("env/")}
    reason = None if trainer.env.saveable and env_state and info["env_saved"] else NOT_SAVEABLE
    misfit = None if reason else trainer.env.state_fits(env_state)
    if misfit:
        reason = f"the env's saved state does not fit it here ({misfit})"
    if trainer.ranks is not None:  # all ranks continue their episodes or none: their step schedules must match
        reasons = trainer.ranks.all_gather(reason)
        reason = reason or next((f"rank {rank}: {said}" for rank, said in enumerate(reasons) if said), None)
    if reason is None:
        trainer.env.set_state(env_state)
        fields = {f: tensors[f"obs/{f}"].numpy() for f in Step._fields[1:] if f"obs/{f}" in tensors}
        trainer.obs = Step(_observation(tensors), **fields)
        latent = State(*(tensors[f"act/{key}"].to(device) for key in ("deter", "stoch", "logits")))
        trainer.act_state = ActState(latent, tensors["act/action"].to(device))
        trainer.episodes_running.ret = tensors["episode/return"].numpy().copy()
        trainer.episodes_running.length = tensors["episode/length"].numpy().copy()
        return None
    trainer.obs = None  # run() starts new episodes, storing their first frames like any other step
    return reason


NOT_SAVEABLE = "the env cannot save its state"
"""Why a resume of an env that never saves its state (ALE's vector env) starts new episodes, as designed."""


def _observation(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The last observation's arrays; checkpoints written before observations were dicts hold the image alone."""
    if "obs/obs" in tensors:
        return {"image": tensors["obs/obs"].numpy()}
    return {k[len("obs/obs/") :]: v.numpy() for k, v in tensors.items() if k.startswith("obs/obs/")}


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
