"""The agent: world model + actor-critic, their three optimisers, acting and one training update.

One update (paper Algorithm 1) = a world-model step on a replay batch, then one actor and one critic step on
trajectories imagined from that batch's posterior states. Each optimiser touches only its own module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from dreamctl.config import Config
from dreamctl.keys import ACTION_MASK_KEY
from dreamctl.model.actor_critic import ActorCritic, frozen
from dreamctl.model.optim import Optimizer
from dreamctl.model.rssm import State
from dreamctl.model.world_model import WorldModel


def _no_clock(_phase: str) -> ContextManager:
    return contextlib.nullcontext()


class ActState(NamedTuple):
    """What acting carries from one env step to the next, per env copy."""

    latent: State
    action: Tensor  # the previous action, (N, A)


class Agent(nn.Module):
    """DreamerV2's agent.

    Args:
        cfg: the run's config (model, behavior and train sections are read).
        obs_space: observation key -> shape: (H, W, C) for a uint8 image, (size,) for a float32 vector.
        action_dim: number of discrete actions, or continuous action dimensions.
        discrete: whether actions are discrete (one-hot) or continuous in [-1, 1].
        device: where the networks live.
        amp_dtype: the autocast dtype of training (bfloat16 or float16), or None for float32 throughout.
        agents: the agents of one world (envs/agents.py), adjacent in every batch; 1 for single-agent envs.
        average_gradients: the data-parallel ranks' gradient averaging (training/ranks.py), or None.
    """

    def __init__(
        self,
        cfg: Config,
        obs_space: Mapping[str, tuple[int, ...]],
        action_dim: int,
        discrete: bool,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        agents: int = 1,
        average_gradients: Callable[[Sequence[Tensor]], None] | None = None,
    ):
        super().__init__()
        self.cfg, self.action_dim, self.discrete = cfg, action_dim, discrete
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.world_model = WorldModel(cfg.model, obs_space, action_dim, cfg.behavior.discount, agents, cfg.multi)
        feat = self.world_model.rssm.feat_dim
        self.behavior = ActorCritic(cfg.behavior, cfg.model, feat, action_dim, discrete, agents, cfg.multi)
        self.to(self.device)
        self._register_load_state_dict_pre_hook(_rename_old_parameters)
        t = cfg.train
        use_scaler = self.amp_dtype == torch.float16
        self.optimizers = {
            name: Optimizer(
                module,
                lr,
                t.adam_eps,
                t.grad_clip,
                t.weight_decay,
                torch.amp.GradScaler(self.device.type) if use_scaler else None,
                average_gradients,
            )
            for name, module, lr in [
                ("model", self.world_model, t.model_lr),
                ("actor", self.behavior.actor, t.actor_lr),
                ("critic", self.behavior.critic, t.critic_lr),
            ]
        }

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def initial_act_state(self, num_envs: int) -> ActState:
        latent = self.world_model.rssm.initial(num_envs, self.device)
        return ActState(latent, torch.zeros(num_envs, self.action_dim, device=self.device))

    @torch.inference_mode()
    def policy(
        self,
        obs: Mapping[str, Tensor],
        is_first: Tensor,
        state: ActState,
        greedy: bool = False,
        present: Tensor | None = None,
    ) -> tuple[Tensor, ActState]:
        """One batched decision for all env copies: training samples the actor, evaluation takes its mode.
        The latent is sampled in both, as in DreamerV2. obs: key -> (N, ...), is_first: (N,), present: (N,) or
        None, 0 for agents that finished before the others of their world (the others do not attend to them).
        Where the env restricts actions (obs `action_mask`), the actor chooses only among those it allows.

        On the CPU the policy runs in float32 whatever the training precision: autocast would cast every weight
        again at each step, which costs more than bfloat16 saves at acting's batch sizes (docs/performance.md).
        """
        with self.autocast() if self.device.type != "cpu" else contextlib.nullcontext():
            embed = self.world_model.embed(self.world_model.preprocess(obs))
            latent = self.world_model.rssm.obs_step(state.latent, state.action, embed, is_first, present)
            mask = obs.get(ACTION_MASK_KEY)
            dist = self.behavior.actor(latent.feat(), None if mask is None else mask > 0.5)
            action = (dist.mode() if greedy else dist.sample()).float()
        return action, ActState(latent, action)

    def train_step(
        self, batch: dict[str, Tensor], clock: Callable[[str], ContextManager] | None = None
    ) -> dict[str, Tensor]:
        """One update. `clock(phase)` (optional) wraps each phase, for the benchmarks' time split."""
        phase = clock or _no_clock
        with phase("model_forward"), self.autocast():
            model = self.world_model.loss(batch)
        metrics = dict(model.metrics)
        with phase("model_backward"):
            metrics["grad/model"] = self.optimizers["model"].step(model.loss)
        with frozen(self.world_model):
            with phase("imagine"), self.autocast():
                traj = self.behavior.imagine(self.world_model, model.post, batch.get("is_present"))
                ret = self.behavior.returns(self.world_model, traj, batch["is_terminal"])
            with phase("actor"):
                with self.autocast():
                    actor_loss, actor_metrics = self.behavior.actor_loss(traj, ret)
                metrics["grad/actor"] = self.optimizers["actor"].step(actor_loss)
        with phase("critic"):
            with self.autocast():
                critic_loss, critic_metrics = self.behavior.critic_loss(traj, ret)
            metrics["grad/critic"] = self.optimizers["critic"].step(critic_loss)
        self.behavior.update_slow_critic()
        return {**metrics, **actor_metrics, **critic_metrics}

    def state_tensors(self) -> dict[str, Tensor]:
        out = {f"agent/{k}": v for k, v in self.state_dict().items()}
        for name, opt in self.optimizers.items():
            out.update(opt.state_tensors(f"optim/{name}/"))
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        tensors = {_current_name(k): v for k, v in tensors.items()}
        self.load_state_dict({k[len("agent/") :]: v for k, v in tensors.items() if k.startswith("agent/")})
        for name, opt in self.optimizers.items():
            opt.load_state_tensors(tensors, f"optim/{name}/")


RENAMED = (
    ("communication.encoder.layers.", "communication.layers."),
    ("attention.encoder.layers.", "attention.layers."),
)
"""Checkpoints written before the attention layers were dreamctl's own (model/attention.py) reached them through
nn.TransformerEncoder's `encoder.layers`; the parameters are the same, so they load under the new names."""


def _current_name(key: str) -> str:
    for old, new in RENAMED:
        key = key.replace(old, new)
    return key


def _rename_old_parameters(state_dict: dict[str, Tensor], *_: object) -> None:
    """load_state_dict's pre-hook: the networks of an older checkpoint under today's names (see RENAMED)."""
    for key in [k for k in state_dict if _current_name(k) != k]:
        state_dict[_current_name(key)] = state_dict.pop(key)
