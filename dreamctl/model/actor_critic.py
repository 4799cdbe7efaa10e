"""Actor-critic learned purely in imagination (paper §2.2; the losses are in `losses`).

From every posterior state of the batch the actor rolls the prior forward H steps. Rewards and discounts
come from the world model's heads; lambda-returns bootstrap from a slow copy of the critic. Indices follow
DreamerV2: state s_t carries reward r_t (received on arriving in s_t) and discount d_t; the action stored at
t+1 is the one chosen in s_t; weights w_t = prod_{k<t} d_k.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamctl.config import BehaviorConfig, ModelConfig, MultiConfig
from dreamctl.layers.one_hot import Feature, OneHotColumns, OneHotFeature, gathers_active, stack_features
from dreamctl.model.attention import CentralCritic, agents_adjacent
from dreamctl.model.losses import actor_loss, critic_loss, lambda_return, present_mean
from dreamctl.model.networks import MLP, ActionHead
from dreamctl.model.rssm import State
from dreamctl.model.world_model import WorldModel


@dataclass
class Imagination:
    feat: Feature  # (H+1, N, F): concat(z, h) of s_0..s_H
    action: Tensor  # (H+1, N, A); action[t+1] was chosen in state t, action[0] is a zero placeholder
    policy: Tensor  # (H, N, ...): the actor's raw output in states 0..H-1, with the actor's graph
    present: Tensor | None  # (N,): 0 where the start's agent had finished before its world; None: all present
    available: Tensor | None  # bool (H, N, A): the actions the model expects allowed in states 0..H-1; None: all


@dataclass
class Returns:
    target: Tensor  # (H, N): V_0 .. V_{H-1}
    weight: Tensor  # (H+1, N): w_t = prod_{k<t} d_k, times 0 for an absent start; no gradient
    slow_value: Tensor  # (H+1, N): v'(s_t), the REINFORCE baseline
    reward: Tensor  # (H, N): r_0 .. r_{H-1}


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Let gradients flow *through* a module without computing gradients *for* its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class ActorCritic(nn.Module):
    """The actor, the critic and its slow copy, and how they learn from imagined trajectories.

    Args:
        cfg: horizon, discount, lambda, actor gradient and entropy, slow-critic period.
        model_cfg: the MLP sizes (shared with the world model's heads).
        feat_dim: width of the feature concat(z, h) that both heads read.
        action_dim: width of the action vector.
        discrete: one-hot categorical actions (True) or a truncated normal over [-1, 1] (False).
        agents: M, the agents of one world, adjacent in every batch (1: single-agent DreamerV2). Each agent's actor
            reads only its own feature.
        multi: the critic's kind (local or central); read only when agents > 1.
    """

    def __init__(
        self,
        cfg: BehaviorConfig,
        model_cfg: ModelConfig,
        feat_dim: int,
        action_dim: int,
        discrete: bool,
        agents: int = 1,
        multi: MultiConfig | None = None,
    ):
        super().__init__()
        self.cfg, self.action_dim, self.agents = cfg, action_dim, agents
        layers, units = model_cfg.mlp_layers, model_cfg.mlp_units
        self.actor = ActionHead(feat_dim, action_dim, discrete, layers, units)
        self.critic: nn.Module = MLP(feat_dim, 1, layers, units)
        if agents > 1 and multi is not None and multi.critic == "central":
            self.critic = CentralCritic(feat_dim, agents, layers, units, multi.attention_heads)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))
        self._updates_seen: int | None = 0  # the buffer's value on the host; read from it once after loading
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_updates_seen", None))
        self.rho = self.reinforce_mix(cfg, discrete)

    @staticmethod
    def reinforce_mix(cfg: BehaviorConfig, discrete: bool) -> float:
        """rho: 1 = pure REINFORCE (Atari), 0 = backprop through the dynamics (continuous control). `both` mixes them
        as the official code does, where actor_grad_mix is the dynamics gradient's share: rho = 1 - actor_grad_mix."""
        if cfg.actor_grad == "auto":
            return 1.0 if discrete else 0.0
        return {"reinforce": 1.0, "dynamics": 0.0, "both": 1.0 - cfg.actor_grad_mix}[cfg.actor_grad]

    def imagine(self, world_model: WorldModel, start: State, present: Tensor | None = None) -> Imagination:
        """Roll the prior forward `horizon` steps from detached start states (B, T, ...), the actor choosing actions.
        present: (B, T) or None, whether each start's agent was still in its world's episode; absent starts stay
        absent, unseen by the others' attention, and their trajectories get the weight 0 (`returns`). Where the env
        restricts actions, the actor chooses in each imagined state among those the world model expects allowed.

        With rho = 1 no gradient is needed through the rollout (the actor loss uses only log-probabilities
        of the imagined actions), so the dynamics run without autograd, and the features can travel as
        `OneHotFeature`s (see `one_hot`); otherwise gradients flow from the returns through the frozen dynamics
        into the actor's reparameterised actions. Either way the actor's own forward pass keeps its graph, so
        the actor loss reuses it instead of running the actor again.
        """
        through_dynamics = self.rho < 1.0 and torch.is_grad_enabled()
        rssm = world_model.rssm
        state = start.map(lambda x: agents_adjacent(x.detach(), self.agents))
        if present is not None:
            present = agents_adjacent(present.float(), self.agents)
        gathers = not through_dynamics and gathers_active(state.deter)

        def feature(state: State) -> Feature:
            if not gathers:
                return state.feat()
            return OneHotFeature(OneHotColumns.of(state.stoch, rssm.classes), state.deter)

        feats: list[Feature] = [feature(state)]
        actions = [torch.zeros(state.deter.shape[0], self.action_dim, device=state.deter.device)]
        outs, masks = [], []
        for _ in range(self.cfg.horizon):
            out = self.actor.net(feats[-1].detach()).float()
            with torch.no_grad():
                masks.append(world_model.available(feats[-1].detach()))
            with torch.set_grad_enabled(through_dynamics):
                action = self.actor.dist(out if through_dynamics else out.detach(), masks[-1]).sample()
                last = feats[-1]
                ones = last.ones if isinstance(last, OneHotFeature) else None
                if ones is not None and self.actor.discrete:
                    ones = ones.then(OneHotColumns.of(action, self.action_dim))
                state = rssm.img_step(state, action, ones, present)
            feats.append(feature(state))
            actions.append(action)
            outs.append(out)
        available = None if masks[0] is None else torch.stack([m for m in masks if m is not None])
        return Imagination(stack_features(feats, 0), torch.stack(actions), torch.stack(outs), present, available)

    def returns(self, world_model: WorldModel, traj: Imagination, start_terminal: Tensor) -> Returns:
        """Lambda-returns from the slow critic, and the cumulative-discount weights of each imagined step.

        start_terminal: (B, T), whether each start state ended its episode, in the batch's order.
        """
        with torch.set_grad_enabled(self.rho < 1.0 and torch.is_grad_enabled()):
            # Only the states whose outputs are read: rewards of s_0..s_{H-1}, predicted discounts of
            # s_1..s_{H-1} (s_0's discount comes from the data where a head predicts the others, as in the official
            # code; s_H's is never used).
            reward = world_model.reward(traj.feat[:-1])
            if world_model.discount_head is None:  # gamma at every step
                discount = world_model.continuation(traj.feat[:-1])
            else:
                first = world_model.discount * (1.0 - agents_adjacent(start_terminal.float(), self.agents))
                discount = torch.cat([first[None], world_model.continuation(traj.feat[1:-1])], 0)
            slow_value = self._value(self.slow_critic, traj.feat, traj.present)
            target = lambda_return(reward, slow_value[:-1], discount, slow_value[-1], self.cfg.return_lambda)
        weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount], 0), 0).detach()
        if traj.present is not None:
            weight = weight * traj.present
        return Returns(target, weight, slow_value, reward)

    def actor_loss(self, traj: Imagination, ret: Returns) -> tuple[Tensor, dict[str, Tensor]]:
        """`losses.actor_loss` over the states s_0..s_{H-2}, whose actions have a return target."""
        policy = self.actor.dist(traj.policy[:-1], None if traj.available is None else traj.available[:-1])
        entropy = policy.entropy()
        loss = actor_loss(
            policy.log_prob(traj.action[1:-1].detach()),
            entropy,
            ret.target[1:],
            ret.slow_value[:-2],
            ret.weight[:-2],
            self.rho,
            self.cfg.actor_entropy,
        )
        present = None if traj.present is None else traj.present.expand_as(entropy)
        return loss, {"loss/actor": loss.detach(), "train/actor_entropy": present_mean(entropy.detach(), present)}

    def critic_loss(self, traj: Imagination, ret: Returns) -> tuple[Tensor, dict[str, Tensor]]:
        """`losses.critic_loss` over the states s_0..s_{H-1}, read from detached features."""
        value = self._value(self.critic, traj.feat[:-1].detach(), traj.present)
        loss = critic_loss(value, ret.target, ret.weight[:-1])
        return loss, {
            "loss/critic": loss.detach(),
            "train/value": value.detach().mean(),
            "train/lambda_return": ret.target.detach().mean(),
            "train/imagined_reward": ret.reward.detach().mean(),
        }

    def _value(self, critic: nn.Module, feat: Feature, present: Tensor | None) -> Tensor:
        """(H, N, F) -> (H, N) values; a central critic's attention skips absent agents."""
        value = critic(feat, present) if isinstance(critic, CentralCritic) else critic(feat)
        return value.squeeze(-1).float()

    def update_slow_critic(self) -> None:
        """Hard copy critic -> slow critic after updates 0, N, 2N, ... (DreamerV2's update_slow_target).

        The count is kept on the host too: reading the device's buffer at every update would make the CPU wait
        for the GPU to finish the update before it could queue the next one."""
        updates = self.get_buffer("updates")
        if self._updates_seen is None:
            self._updates_seen = int(updates)
        if self._updates_seen % self.cfg.slow_critic_every == 0:
            self.slow_critic.load_state_dict(self.critic.state_dict())
        self._updates_seen += 1
        updates += 1
