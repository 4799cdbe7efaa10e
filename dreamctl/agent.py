"""The agent: world model + actor-critic, their three optimisers, acting and one training update.

One update (SPEC.md §3) = a world-model step on a replay batch, then one actor and one critic step on
trajectories imagined from that batch's posterior states. Each optimiser touches only its own module.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, NamedTuple

import torch
from torch import Tensor, nn

from dreamctl.behavior import ActorCritic, frozen
from dreamctl.config import Config
from dreamctl.errors import UsageError
from dreamctl.rssm import State
from dreamctl.world_model import WorldModel, preprocess_image


def _no_clock(_phase: str) -> ContextManager:
    return contextlib.nullcontext()


class ActState(NamedTuple):
    """What acting carries from one env step to the next, per env copy."""

    latent: State
    action: Tensor  # the previous action, (N, A)


class Optimizer:
    """Adam plus DreamerV2's extras: global-norm clipping after unscaling, and weight decay that multiplies
    every parameter by (1 - wd) before the step, not scaled by the learning rate (unlike torch's AdamW)."""

    def __init__(self, module: nn.Module, lr: float, eps: float, clip: float, weight_decay: float,
                 scaler: torch.amp.GradScaler | None = None):
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.clip, self.weight_decay, self.scaler = clip, weight_decay, scaler
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps, fused=True)

    def step(self, loss: Tensor) -> Tensor:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        if self.weight_decay:
            with torch.no_grad():
                torch._foreach_mul_(self.params, 1.0 - self.weight_decay)
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
        self.opt.zero_grad(set_to_none=True)  # freed now, gradients do not sit in the heap between phases
        return norm.detach()

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        """Adam's moments and step counts as named tensors, storable in safetensors."""
        out = {}
        for name, param in self.named:
            for key, value in self.opt.state.get(param, {}).items():
                out[f"{prefix}{name}/{key}"] = value.detach().reshape(value.shape)
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], prefix: str) -> None:
        state = {}
        for index, (name, _) in enumerate(self.named):
            entry = {k[len(f"{prefix}{name}/"):]: v for k, v in tensors.items() if k.startswith(f"{prefix}{name}/")}
            if entry:
                state[index] = entry
        self.opt.load_state_dict({"state": state, "param_groups": self.opt.state_dict()["param_groups"]})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' was asked for but this machine has no CUDA GPU; use --device cpu.")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full float32."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "16" and device.type != "cuda":
        raise UsageError("precision 16 needs a CUDA device; use --precision bf16 or 32 on the CPU.")
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]


def cpu_computes_bf16() -> bool:
    """Whether this CPU has the instructions oneDNN computes bf16 with (AVX-512 or AMX). Without them torch
    emulates bf16: on an AVX2-only EPYC a bf16 matmul ran at 0.3 GFLOP/s and the debug preset's update took
    5.8x as long as in float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Agent(nn.Module):
    def __init__(self, cfg: Config, obs_shape: tuple[int, int, int], action_dim: int, discrete: bool,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg, self.action_dim, self.discrete = cfg, action_dim, discrete
        self.device = torch.device(device)
        self.amp_dtype = resolve_precision(cfg.run.precision, self.device)
        self.world_model = WorldModel(cfg.model, obs_shape, action_dim, cfg.behavior.discount)
        self.behavior = ActorCritic(cfg.behavior, cfg.model, self.world_model.rssm.feat_dim, action_dim, discrete)
        self.to(self.device)
        t = cfg.train
        use_scaler = self.amp_dtype == torch.float16
        self.optimizers = {
            name: Optimizer(module, lr, t.adam_eps, t.grad_clip, t.weight_decay,
                            torch.amp.GradScaler(self.device.type) if use_scaler else None)
            for name, module, lr in [("model", self.world_model, t.model_lr),
                                     ("actor", self.behavior.actor, t.actor_lr),
                                     ("critic", self.behavior.critic, t.critic_lr)]
        }

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def initial_act_state(self, num_envs: int) -> ActState:
        latent = self.world_model.rssm.initial(num_envs, self.device)
        return ActState(latent, torch.zeros(num_envs, self.action_dim, device=self.device))

    @torch.inference_mode()
    def policy(self, obs: Tensor, is_first: Tensor, state: ActState, greedy: bool = False
               ) -> tuple[Tensor, ActState]:
        """One batched decision for all env copies: training samples the actor, evaluation takes its mode.
        The latent is sampled in both, as in DreamerV2.

        On the CPU the policy runs in float32 whatever the training precision: autocast casts every weight
        again at each step (28 MB read at the paper size), and a bf16 step at one env copy took 1.65x as long
        as a float32 one (4.4 vs 2.7 ms on a 2-core AVX-512/AMX CPU; at 8 copies the two were equal).
        """
        with self.autocast() if self.device.type != "cpu" else contextlib.nullcontext():
            embed = self.world_model.encoder(preprocess_image(obs))
            latent = self.world_model.rssm.obs_step(state.latent, state.action, embed, is_first)
            dist = self.behavior.actor(latent.feat())
            action = (dist.mode() if greedy else dist.sample()).float()
        return action, ActState(latent, action)

    def train_step(self, batch: dict[str, Tensor], clock: Callable[[str], ContextManager] | None = None
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
                traj = self.behavior.imagine(self.world_model, model.post)
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
        self.load_state_dict({k[len("agent/"):]: v for k, v in tensors.items() if k.startswith("agent/")})
        for name, opt in self.optimizers.items():
            opt.load_state_tensors(tensors, f"optim/{name}/")
