"""A trainer restored from a checkpoint: the speeds it logs count only its own work, and data-parallel ranks agree
on whether their episodes continue."""

import time

import numpy as np
import torch
from conftest import tiny_config

from dreamctl.envs.base import BatchedEnv, EnvSpec, Step
from dreamctl.training.state import NOT_SAVEABLE, restore_trainer, trainer_state
from dreamctl.training.trainer import COLLAPSE_UPDATES, Hooks, Trainer, collapse_warning

TICK_SECONDS = 0.02


class Counter(BatchedEnv):
    """Copies that observe their step count; each step takes at least `pause` seconds. It saves its state."""

    saveable = True

    def __init__(self, num_envs: int, pause: float = 0.0):
        self.num_envs, self.pause, self.t = num_envs, pause, 0
        self.spec = EnvSpec("counter", {"state": (1,)}, 2, True, 1)

    def _step(self, first: bool) -> Step:
        n = self.num_envs
        obs = {"state": np.full((n, 1), self.t, np.float32)}
        return Step(obs, np.zeros(n, np.float32), np.full(n, first), np.zeros(n, bool), np.zeros(n, bool))

    def reset(self) -> Step:
        return self._step(first=True)

    def step(self, action: np.ndarray) -> Step:
        time.sleep(self.pause)
        self.t += 1
        return self._step(first=False)

    def get_state(self) -> dict[str, np.ndarray]:
        return {"t": np.array([self.t])}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"][0])


def _config():
    return tiny_config("train.prefill=100000", "env.num_envs=2")  # random play only: no updates to wait for


def test_a_resumed_trainer_logs_the_speed_of_its_own_steps_not_of_the_restored_ones():
    first = Trainer(_config(), Counter(2), torch.device("cpu"))
    first.run(400)
    tensors, meta = trainer_state(first)
    resumed = Trainer(_config(), Counter(2, pause=TICK_SECONDS), torch.device("cpu"))
    assert restore_trainer(resumed, tensors, meta, load_chunk=lambda k: {}) is None
    resumed.run(440)  # 20 ticks of 2 agent steps, each at least TICK_SECONDS long
    speed = resumed.flush_metrics()["train/agent_steps_per_s"]
    assert 0 < speed <= 40 / (20 * TICK_SECONDS)  # the 400 restored steps are not this interval's


class OtherRankCouldNotRestore:
    """The one collective restore_trainer makes, answered as when rank 1's envs could not be restored."""

    def all_gather(self, reason: str | None) -> list[str | None]:
        return [reason, "the env cannot save its state"]


def test_every_rank_starts_new_episodes_when_one_rank_cannot_continue_its_own():
    first = Trainer(_config(), Counter(2), torch.device("cpu"))
    first.run(40)
    tensors, meta = trainer_state(first)
    resumed = Trainer(_config(), Counter(2), torch.device("cpu"))
    resumed.ranks = OtherRankCouldNotRestore()  # type: ignore[assignment]
    reason = restore_trainer(resumed, tensors, meta, load_chunk=lambda k: {})
    assert reason == "rank 1: the env cannot save its state"
    assert resumed.obs is None and resumed.env.t == 0  # this rank could have continued, and does not
    assert resumed.env_steps == 40  # the counters are restored either way, so every rank's schedule is the same
    fresh = Trainer(_config(), Counter(2), torch.device("cpu"))
    assert torch.equal(resumed.act_state.latent.deter, fresh.act_state.latent.deter)


class Unsaveable(Counter):
    saveable = False  # as ALE's vector env


class MetricSteps(Hooks):
    """Notes the agent steps of each metrics row."""

    def __init__(self):
        self.rows: list[int] = []

    def on_metrics(self, step: int, scalars: dict[str, float]) -> None:
        self.rows.append(step)


def test_a_log_step_that_falls_in_the_restarted_episodes_first_frames_is_logged():
    """Envs that cannot continue start new episodes on resume, storing their first frames as a step of its own: a log
    step crossed by it still gets a row (402, crossed by the tick that starts them and steps once, 400 -> 404)."""
    cfg = tiny_config("train.prefill=100000", "env.num_envs=2", "run.log_every=402")
    first = Trainer(cfg, Unsaveable(2), torch.device("cpu"))
    first.run(400)
    tensors, meta = trainer_state(first)
    resumed = Trainer(cfg, Unsaveable(2), torch.device("cpu"), hooks=MetricSteps())
    assert restore_trainer(resumed, tensors, meta, load_chunk=lambda k: {}) == NOT_SAVEABLE
    resumed.run(410)
    assert resumed.hooks.rows == [404, 410]  # 410: the last row of a stint


def test_a_trainer_restored_in_a_collapse_warns_from_its_first_tick():
    """The low-KL count comes back with the checkpoint, and the warning with it: the progress line of a resumed run
    that had collapsed says so at once, not after its first log interval."""
    first = Trainer(_config(), Counter(2), torch.device("cpu"))
    first.run(40)
    first.low_kl_updates.fill_(COLLAPSE_UPDATES)
    tensors, meta = trainer_state(first)
    resumed = Trainer(_config(), Counter(2), torch.device("cpu"))
    restore_trainer(resumed, tensors, meta, load_chunk=lambda k: {})
    assert resumed.progress(80).warning == collapse_warning(COLLAPSE_UPDATES) is not None


def test_a_resumed_collapse_is_recorded_once_and_a_new_collapse_again():
    """run.yaml's warning names the update its low-KL streak began at: a trainer restored in that streak is already
    warned about, one restored in a later streak (the model recovered, then collapsed again) is not."""
    from dreamctl.runs.run_hooks import collapse_recorded

    trainer = Trainer(_config(), Counter(2), torch.device("cpu"))
    trainer.updates = 5000
    trainer.low_kl_updates.fill_(COLLAPSE_UPDATES + 500)  # a streak that began at update 3,500
    trainer.warning = collapse_warning(COLLAPSE_UPDATES + 500)
    this_streak = {"step": 9000, "message": trainer.warning, "streak_start": 3500}
    an_earlier_one = {"step": 4000, "message": trainer.warning, "streak_start": 1000}
    from_an_older_dreamctl = {"step": 4000, "message": trainer.warning}
    assert collapse_recorded([an_earlier_one, this_streak], trainer)
    assert not collapse_recorded([an_earlier_one], trainer)
    assert collapse_recorded([from_an_older_dreamctl], trainer)  # it cannot say which streak: taken as this one
    trainer.warning = None
    assert not collapse_recorded([this_streak], trainer)
