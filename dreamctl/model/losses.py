"""DreamerV2's losses, each a pure function of tensors whose shapes it states (docs/architecture.md lists them
beside the paper's equations).

World model (paper Eq. 2, Algorithm 2), with a term per observation key (image_nll or vector_nll):
    L = sum_keys scale_key * nll_key + reward_scale * reward_nll + discount_scale * discount_nll + kl_scale * KL_bal
Behaviour (paper Eqs. 4-6), over trajectories imagined from every posterior state:
    V_t = r_t + d_t ((1 - lambda) v'(s_{t+1}) + lambda V_{t+1}),   V_H = v'(s_H)           lambda_return
    L_actor = -mean_t w_t [rho log pi(a_t|s_t) sg(V_{t+1} - v'(s_t)) + (1 - rho) V_{t+1} + eta H[pi(.|s_t)]]
    L_critic = mean_t w_t 0.5 (v(s_t) - sg(V_t))^2
Index convention (DreamerV2's code): state s_t carries the reward r_t received on arriving in it and the discount
d_t; the action a_t chosen in s_t is stored at index t + 1; w_t = prod_{k<t} d_k.
Where several agents share a world and one finished before the others, its rows until the world's episode ends are
padding: the world model's terms average over the present rows only (`present`, (B, T), 1 or 0), and imagination
gives the starts of absent rows the weight w = 0. The behaviour losses keep DreamerV2's mean over every start: an
absent start adds 0 to it, so a batch with fewer present agents gives those losses a smaller scale, which Adam's
normalised step mostly divides out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def present_mean(x: Tensor, present: Tensor | None = None) -> Tensor:
    """The mean of x (B, T) over the rows where present (B, T) is 1; over all rows where present is None."""
    if present is None:
        return x.mean()
    return (x * present).sum() / present.sum().clamp_min(1.0)


def image_nll(mean: Tensor, image: Tensor, present: Tensor | None = None) -> Tensor:
    """-log N(image; mean, 1) up to its constant: 0.5 (x - mean)^2 summed over the pixels, averaged over the
    present rows.

    mean, image: (B, T, C, H, W) -> scalar. The sum over pixels (not a mean) sets the image's weight against the KL.
    """
    return present_mean(0.5 * (mean.float() - image).square().sum((-3, -2, -1)), present)


def vector_nll(mean: Tensor, target: Tensor, present: Tensor | None = None) -> Tensor:
    """-log N(target; mean, 1) up to its constant for a vector observation: 0.5 (x - mean)^2 summed over the
    vector, averaged over the present rows. mean, target: (B, T, size) -> scalar."""
    return present_mean(0.5 * (mean.float() - target).square().sum(-1), present)


def reward_nll(pred: Tensor, target: Tensor, present: Tensor | None = None) -> Tensor:
    """-log N(target; pred, 1) up to its constant, averaged over the present rows: pred, target (B, T) -> scalar."""
    return present_mean(0.5 * (pred - target).square(), present)


def discount_nll(logits: Tensor, target: Tensor, present: Tensor | None = None) -> Tensor:
    """Bernoulli cross-entropy against the soft target gamma (1 - is_terminal), averaged over the present rows:
    logits, target (B, T) -> scalar."""
    return present_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), present)


def categorical_kl(post_logits: Tensor, prior_logits: Tensor) -> Tensor:
    """KL(q || p) of independent categoricals, summed over the latent variables: (..., stoch, classes) -> (...)."""
    log_q = post_logits.float().log_softmax(-1)
    log_p = prior_logits.float().log_softmax(-1)
    return (log_q.exp() * (log_q - log_p)).sum((-2, -1))


def kl_balance(
    post_logits: Tensor, prior_logits: Tensor, balance: float = 0.8, free: float = 0.0, present: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """KL balancing (paper Eq. 2, Algorithm 2): balance * max(KL[sg(q) || p], free) + (1 - balance) *
    max(KL[q || sg(p)], free), each KL averaged over the batch's present rows (present: (B, T) or None) before the
    free-nats floor (`free_avg`).

    With balance 0.8 the prior is trained toward the posterior with 4 times the weight (0.8 / 0.2) with which the
    posterior is regularised toward the prior. post_logits, prior_logits: (B, T, stoch, classes).
    Returns (loss, the mean KL's value).
    """
    kl_prior = present_mean(categorical_kl(post_logits.detach(), prior_logits), present)
    kl_post = present_mean(categorical_kl(post_logits, prior_logits.detach()), present)
    loss = balance * kl_prior.clamp_min(free) + (1.0 - balance) * kl_post.clamp_min(free)
    return loss, kl_prior.detach()


def lambda_return(reward: Tensor, value: Tensor, discount: Tensor, bootstrap: Tensor, lambda_: float) -> Tensor:
    """V_t = r_t + d_t ((1 - lambda) v_{t+1} + lambda V_{t+1}) for t = 0..T-1, with V_T = bootstrap (paper Eq. 4).

    reward, value, discount: (T, ...), value[t] = v(s_t); bootstrap: (...) = v(s_T). Returns (T, ...).
    """
    next_value = torch.cat([value[1:], bootstrap[None]], 0)
    inputs = reward + discount * (1.0 - lambda_) * next_value
    returns, last = [], bootstrap
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + discount[t] * lambda_ * last
        returns.append(last)
    return torch.stack(returns[::-1], 0)


def actor_loss(
    log_prob: Tensor,
    entropy: Tensor,
    target: Tensor,
    baseline: Tensor,
    weight: Tensor,
    rho: float,
    entropy_scale: float,
) -> Tensor:
    """-mean_t w_t [rho log pi(a_t|s_t) sg(V_{t+1} - v'(s_t)) + (1 - rho) V_{t+1} + eta H[pi(.|s_t)]] (paper Eq. 6).

    All (H - 1, N), for the states s_0..s_{H-2} whose actions have a return target: log_prob = log pi(sg(a_t)|s_t),
    entropy = H[pi(.|s_t)], target = V_{t+1}, baseline = v'(s_t) from the slow critic, weight = w_t.
    rho = 1 is REINFORCE (the advantage uses V_{t+1}, as DreamerV2's code does), rho = 0 backpropagates V_{t+1}
    through the dynamics. Returns a scalar.
    """
    objective = entropy_scale * entropy
    if rho > 0:
        objective = objective + rho * log_prob * (target - baseline).detach()
    if rho < 1:
        objective = objective + (1.0 - rho) * target
    return -(weight * objective).mean()


def critic_loss(value: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """mean_t w_t 0.5 (v(s_t) - sg(V_t))^2 for t = 0..H-1 (paper Eq. 5): value, target, weight (H, N) -> scalar."""
    return (weight * 0.5 * (value - target.detach()).square()).mean()
