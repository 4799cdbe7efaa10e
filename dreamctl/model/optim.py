"""DreamerV2's optimiser: Adam with global-norm clipping and decoupled weight decay (`dreamerv2/common/tfutils.py`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.graph import increment_version


class Optimizer:
    """Adam plus DreamerV2's extras: global-norm clipping after unscaling, and weight decay that multiplies
    every parameter by (1 - wd) before the step, not scaled by the learning rate (unlike torch's AdamW).

    Args:
        module: the parameters it trains (those that require gradients).
        lr, eps: Adam's learning rate and epsilon.
        clip: the global gradient norm is clipped to this.
        weight_decay: the factor (1 - weight_decay) applied to every parameter before each step.
        scaler: float16 loss scaling (GPUs without bfloat16), or None.
        average_gradients: replaces each parameter's gradient by its mean over data-parallel ranks
            (training/ranks.py), before unscaling and clipping; None in a single process.
    """

    def __init__(
        self,
        module: nn.Module,
        lr: float,
        eps: float,
        clip: float,
        weight_decay: float,
        scaler: torch.amp.GradScaler | None = None,
        average_gradients: Callable[[Sequence[Tensor]], None] | None = None,
    ):
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params: list[Tensor] = [p for _, p in self.named]
        self.clip, self.weight_decay, self.scaler = clip, weight_decay, scaler
        self.average_gradients = average_gradients
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps, fused=True)

    def step(self, loss: Tensor) -> Tensor:
        """One step on a scalar loss: backward, averaging across ranks, unscaling, clipping, decay, Adam. Returns the
        global gradient norm before clipping (what the logs report). As in DreamerV2's code, the decay applies even
        where a float16 loss scaler skips the step for a non-finite gradient."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.average_gradients is not None:
            # Still scaled: every rank then unscales the same numbers and agrees on skipping a step.
            self.average_gradients(self.params)
        if self.scaler is not None:
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
        # The fused Adam writes the parameters without bumping their version, which the layers' kept weight layouts
        # (`dreamctl.layers.linear.weight_layout`) read to see that a weight changed.
        increment_version(self.params)
        self.opt.zero_grad(set_to_none=True)  # freed now, gradients do not sit in the heap between phases
        return norm.detach()

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        """Adam's moments and step counts, and the float16 loss scale and its growth count, as named tensors,
        storable in safetensors."""
        out = {}
        for name, param in self.named:
            for key, value in self.opt.state.get(param, {}).items():
                out[f"{prefix}{name}/{key}"] = value.detach().reshape(value.shape)
        scaling = {} if self.scaler is None else self.scaler.state_dict()
        if scaling:  # empty before the first scaled step
            out[f"{prefix}{SCALER}scale"] = torch.tensor(scaling["scale"], dtype=torch.float64)
            out[f"{prefix}{SCALER}growth_tracker"] = torch.tensor(scaling["_growth_tracker"], dtype=torch.int64)
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], prefix: str) -> None:
        """Restore what `state_tensors` saved under `prefix`; parameters without saved moments start fresh."""
        state = {}
        for index, (name, _) in enumerate(self.named):
            entry = {k[len(f"{prefix}{name}/") :]: v for k, v in tensors.items() if k.startswith(f"{prefix}{name}/")}
            if entry:
                state[index] = entry
        self.opt.load_state_dict({"state": state, "param_groups": self.opt.state_dict()["param_groups"]})
        if self.scaler is not None and f"{prefix}{SCALER}scale" in tensors:
            self.scaler.load_state_dict(
                {
                    "scale": float(tensors[f"{prefix}{SCALER}scale"]),
                    "_growth_tracker": int(tensors[f"{prefix}{SCALER}growth_tracker"]),
                    "growth_factor": self.scaler.get_growth_factor(),
                    "backoff_factor": self.scaler.get_backoff_factor(),
                    "growth_interval": self.scaler.get_growth_interval(),
                }
            )


SCALER = "loss_scaler/"
"""The names of the loss scaler's tensors, after the optimiser's prefix (no parameter is named so)."""
