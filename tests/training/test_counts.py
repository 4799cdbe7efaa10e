"""What a trainer counts: agent steps (every agent's decisions) and frames (every world's, each agent step of a world
shared by its agents)."""

import numpy as np
import torch
from conftest import tiny_config

from dreamctl.envs import make_env
from dreamctl.runs.run_hooks import progress_of
from dreamctl.tools.plot import RunLog
from dreamctl.training.trainer import Trainer


def test_a_two_agent_world_counts_each_agents_steps_and_its_own_frames_once():
    cfg = tiny_config("env.name=catch2", "env.num_envs=4", "train.prefill=100000", "train.batch_size=4")
    env = make_env(cfg.env, 0)
    try:
        trainer = Trainer(cfg, env, torch.device("cpu"))
        episodes = []
        trainer.hooks.on_episode = episodes.append  # type: ignore[method-assign]
        trainer.run(1200)  # 8 agent copies: the reset and 149 ticks of 4 worlds x 2 agents
    finally:
        env.close()
    assert env.spec.num_agents == 2 and env.spec.action_repeat == 1
    assert trainer.env_steps == 1200 and trainer.frames() == 600  # 150 frames of each of the 4 worlds
    assert progress_of(trainer)["frames"] == trainer.progress(1200).frames == 600
    assert episodes and all(e.end_frame == e.end_step // 2 for e in episodes)


def test_plotted_frames_are_a_worlds_steps_times_its_action_repeat():
    log = RunLog("run-1", "run-1", {}, action_repeat=4, agents=2, episodes=[], evals=[], metrics=[])
    assert np.array_equal(log.x([100, 400], "frames"), [200, 800])


def test_evaluations_and_checkpoints_fall_on_their_steps_before_the_final_one():
    """Every `run.eval_every` agent steps an evaluation (which writes its checkpoint), every `run.checkpoint_every`
    a checkpoint where no evaluation is due; the final step is neither (the caller writes the final checkpoint and
    `dreamctl eval` evaluates it, as the official loop evaluates before each stint, not after the last)."""
    cfg = tiny_config("train.prefill=100000", "run.eval_every=300", "run.checkpoint_every=200")
    env = make_env(cfg.env, 0)
    calls = []
    try:
        trainer = Trainer(cfg, env, torch.device("cpu"))
        trainer.hooks.on_eval = lambda t: calls.append(("eval", t.env_steps))  # type: ignore[method-assign]
        trainer.hooks.on_checkpoint = lambda t: calls.append(("checkpoint", t.env_steps))  # type: ignore[method-assign]
        trainer.run(600)
    finally:
        env.close()
    assert calls == [("checkpoint", 200), ("eval", 300), ("checkpoint", 400)]
