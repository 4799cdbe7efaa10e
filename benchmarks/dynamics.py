"""How fast the world model alone learns an env's action-conditioned dynamics from random play.

    python -m benchmarks.dynamics --preset pixels [--env reach] [--steps 6000] [--updates 1500] [--every 250]
                                  [--set model.kl_scale=1.0]

Collects `--steps` agent steps of uniformly random actions with the preset's env copies, then trains the world model
alone (its loss and optimiser as in training; no actor or critic) on windows sampled from them. Before the first
update and every `--every` updates it measures, on a fixed batch of 64 windows of another seed's random play:

- `kl_by_step`: KL[q || p] from the posterior to the prior at each step of the window, in nats. The first step
  starts from the empty state, so it stays high; the later ones fall as the prior learns to predict the posterior
  from the previous state and action.
- `dreamed_error`: from the posterior state at step 4 the prior dreams to the window's end under the real actions
  (`real`) and under the actions of another window of the batch (`other`); the squared error of the decoded
  observations against the real ones, summed per step, averaged over the windows and 4 dreams, for each step ahead.
  A model whose dreams follow the actions errs less under `real` than under `other`; where they are equal its
  dreams ignore the actions, and an actor that learns through them has nothing to follow.

Prints one JSON line; each point's `seconds` is the time the updates before it took (measurements excluded). It runs
on the CPU, whatever `run.device` says: the figures it gives are read beside the CPU presets' runs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dreamctl.config import load_config
from dreamctl.envs import make_env, resolve
from dreamctl.model.losses import categorical_kl
from dreamctl.training.trainer import Trainer

OBSERVED = 5
"""Steps of each evaluation window the posterior sees before the dream starts."""
DREAMS = 4
"""Dreams per window (the prior samples its latents), averaged."""


def random_play(preset: str, env: str | None, steps: int, seed: int, sets: list[str]) -> Trainer:
    """A trainer whose replay holds `steps` agent steps of uniformly random actions."""
    names = [] if env is None else [f"env.name={resolve(env)}"]
    cfg = load_config(preset, [*names, f"train.seed={seed}", *sets, "train.prefill=1000000000"])
    trainer = Trainer(cfg, make_env(cfg.env, seed), torch.device("cpu"))
    trainer.start()
    while trainer.env_steps < steps:
        trainer.collect_step()
    return trainer


@torch.no_grad()
def measure(trainer: Trainer, batch: dict[str, torch.Tensor]) -> dict[str, object]:
    """The KL at each step of `batch` and the dreamed observations' error under the real and another window's
    actions (see the module's docstring)."""
    model = trainer.agent.world_model
    truth = model.preprocess(batch)
    post = model.rssm.observe(model.embed(truth), batch["action"], batch["is_first"])
    kl = categorical_kl(post.logits, model.rssm.prior(post.deter)).mean(0)
    length = batch["action"].shape[1]
    errors = {}
    for name, actions in [("real", batch["action"]), ("other", batch["action"].roll(1, 0))]:
        total = torch.zeros(length - OBSERVED)
        for _ in range(DREAMS):
            state = post.map(lambda x: x[:, OBSERVED - 1])
            for k, t in enumerate(range(OBSERVED, length)):
                state = model.rssm.img_step(state, actions[:, t])
                means = model.decode(state.feat())
                total[k] += sum(float(((means[key] - truth[key][:, t]) ** 2).flatten(1).sum(1).mean()) for key in means)
        errors[name] = [round(float(e) / DREAMS, 2) for e in total]
    return {"kl_by_step": [round(float(x), 2) for x in kl], "dreamed_error": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pixels")
    parser.add_argument("--env", default=None, help="any name `dreamctl train` takes (default: the preset's)")
    parser.add_argument("--steps", type=int, default=6000, help="agent steps of random play to train on")
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250, help="updates between measurements")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="a config override, key=value")
    args = parser.parse_args()
    trainer = random_play(args.preset, args.env, args.steps, args.seed, args.overrides)
    t = trainer.cfg.train
    if t.batch_length <= OBSERVED:
        parser.error(f"train.batch_length must exceed {OBSERVED}, the steps observed before each dream.")
    held_out = random_play(args.preset, args.env, 64 * t.batch_length, args.seed + 1000, args.overrides)
    rng = np.random.default_rng(args.seed)
    batch = held_out.replay.to_torch(held_out.replay.sample(64, t.batch_length, rng), trainer.device)
    model, optimizer = trainer.agent.world_model, trainer.agent.optimizers["model"]
    points, trained = [], 0.0
    for update in range(args.updates + 1):
        if update % args.every == 0 or update == args.updates:
            points.append({"updates": update, "seconds": round(trained, 1), **measure(trainer, batch)})
        if update == args.updates:
            break
        began = time.perf_counter()
        sample = trainer.replay.sample(t.batch_size, t.batch_length, trainer.rng)
        with trainer.agent.autocast():
            loss = model.loss(trainer.replay.to_torch(sample, trainer.device)).loss
        optimizer.step(loss)
        trained += time.perf_counter() - began
    summary = {"benchmark": "dynamics", "env": trainer.cfg.env.name, "preset": args.preset}
    print(json.dumps({**summary, "overrides": args.overrides, "agent_steps": trainer.env_steps, "points": points}))


if __name__ == "__main__":
    main()
