"""What a run's trainer hands to its folder: `RunHooks` streams chunks, checkpoints, logs, episodes, evaluations and
the collapse warning into the run (the trainer itself does no I/O), and `save_checkpoint` writes one checkpoint (the
other ranks' state gathered through rank 0) and prunes the older ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dreamctl.config import Config
from dreamctl.runs.evals import evaluation_result, record_evaluation
from dreamctl.runs.metrics import MetricsLogger
from dreamctl.runs.run import Run
from dreamctl.runs.sharded import gather_state
from dreamctl.training.ranks import Ranks
from dreamctl.training.rollout import evaluation_episodes
from dreamctl.training.state import trainer_state
from dreamctl.training.trainer import Episode, Hooks, Progress, Trainer


class RunHooks(Hooks):
    """Streams what the trainer produces into the run folder."""

    def __init__(
        self,
        run: Run,
        cfg: Config,
        logger: MetricsLogger,
        progress: Callable[[Progress], None] | None,
        ranks: Ranks | None = None,
        warned: bool = False,
    ):
        """warned: the run's collapse warning stands already (a resumed run restored in its collapse), so it is not
        added to run.yaml again."""
        self.run, self.cfg, self.logger, self.progress, self.ranks = run, cfg, logger, progress, ranks
        self.latest: Progress | None = None
        self.warned = warned

    def on_progress(self, progress: Progress) -> None:
        self.latest = progress
        if self.progress:
            self.progress(progress)

    def on_metrics(self, step: int, scalars: dict[str, float]) -> None:
        """Logs, the progress in run.yaml (so `dreamctl list` stays current during a long run) and, when the world
        model collapses, the warning under run.yaml's `warnings`."""
        self.logger.scalars(step, scalars)
        self.logger.flush()
        p = self.latest  # reported just before, with the warning of this flush
        if p is None:
            return
        new_warning = p.warning is not None and not self.warned
        self.warned = p.warning is not None
        streak_start = p.updates - int(scalars["model/low_kl_updates"])  # which collapse a warning is of

        def record(m: dict[str, Any]) -> None:  # one edit of run.yaml per flush
            if new_warning:
                m.setdefault("warnings", []).append({"step": step, "message": p.warning, "streak_start": streak_start})
            m["progress"] = progress_record(p.env_steps, p.frames, p.updates, p.wall_time)

        self.run.update(record)

    def on_episode(self, episode: Episode) -> None:
        record = {
            "return": episode.ret,
            "length": episode.length,
            "frames": episode.frames,
            "capped": episode.capped,
            "frame": episode.end_frame,
            "wall_time": episode.wall_time,
            "env": episode.env_index,
        }
        if episode.won is not None:
            record["won"] = episode.won
        self.logger.episode(episode.end_step, record)

    def on_chunk(self, index: int, rows: dict[str, np.ndarray]) -> None:
        every_rank = [rows] if self.ranks is None else self.ranks.gather(rows)
        assert every_rank is not None
        for rank, rank_rows in enumerate(every_rank):
            self.run.write_chunk(index, rank_rows, rank)

    def on_checkpoint(self, trainer: Trainer) -> None:
        save_checkpoint(self.run, trainer, self.cfg, self.logger)

    def on_eval(self, trainer: Trainer) -> None:
        save_checkpoint(self.run, trainer, self.cfg, self.logger)
        meta = self.run.meta()
        playback = evaluation_episodes(
            trainer.agent, self.cfg.env, self.cfg.run.eval_episodes, self.cfg.train.seed + 10_000
        )
        result = evaluation_result(playback, meta, sample=False)
        record_evaluation(self.run, trainer.env_steps, result)
        scalars = {"eval/return": result["mean"]}
        if result["win_rate"] is not None:
            scalars["eval/win_rate"] = result["win_rate"]
        self.logger.scalars(trainer.env_steps, scalars)
        if self.ranks is not None:
            self.ranks.wait_for_root()  # the other ranks waited there while this one evaluated


def collapse_recorded(warnings: list[dict[str, Any]], trainer: Trainer) -> bool:
    """Whether run.yaml already warns of the collapse a restored trainer is in: a warning of the same low-KL streak
    (the update it began at), or any warning where an older run.yaml did not say which streak it was."""
    if trainer.warning is None:
        return False
    streak_start = trainer.updates - int(trainer.low_kl_updates)
    return any(w.get("streak_start", streak_start) == streak_start for w in warnings)


def save_checkpoint(run: Run, trainer: Trainer, cfg: Config, logger: MetricsLogger) -> None:
    """Write the trainer's checkpoint (after the logs it continues are on the disk) and prune the older ones."""
    logger.sync()
    tensors, metadata = trainer_state(trainer)
    if trainer.ranks is not None:
        merged = gather_state(trainer.ranks, tensors)
        assert merged is not None, "rank 0 alone saves checkpoints"
        tensors = merged
    chunks = trainer.chunks_needed(trainer.replay.cursor)
    extra = {"updates": trainer.updates, "first_chunk": chunks.start, "end_chunk": chunks.stop}
    run.save_checkpoint(tensors, metadata, trainer.env_steps, extra, cfg.run.keep_checkpoints, progress_of(trainer))


def progress_record(env_steps: int, frames: int, updates: int, wall_time: float) -> dict[str, Any]:
    return {
        "env_steps": env_steps,
        "frames": frames,
        "updates": updates,
        "wall_time": round(wall_time, 2),
    }


def progress_of(trainer: Trainer) -> dict[str, Any]:
    return progress_record(trainer.env_steps, trainer.frames(), trainer.updates, trainer.wall_time)
