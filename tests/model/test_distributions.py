"""The latent and action distributions: straight-through one-hot samples and the truncated normal."""

import torch

from dreamctl.model.distributions import OneHotDist, TruncNormalDist


def test_straight_through_sample_is_one_hot_and_carries_softmax_gradient():
    torch.manual_seed(0)
    logits = torch.randn(64, 8, requires_grad=True)
    sample = OneHotDist(logits).sample()
    assert torch.all(sample.detach().sum(-1) == 1) and torch.all((sample.detach() == 0) | (sample.detach() == 1))
    weights = torch.randn(64, 8)
    (grad,) = torch.autograd.grad((sample * weights).sum(), logits)
    probs = logits.softmax(-1)
    (expected,) = torch.autograd.grad((probs * weights).sum(), logits)
    torch.testing.assert_close(grad, expected)


def test_one_hot_samples_follow_the_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0]).expand(200_000, 3)
    freq = OneHotDist(logits).sample().detach().mean(0)
    torch.testing.assert_close(freq, torch.tensor([0.0, 1.0, 2.0]).softmax(-1), atol=5e-3, rtol=0)


def test_truncated_normal_stays_inside_bounds_and_is_normalised():
    torch.manual_seed(0)
    mean, std = torch.full((400_000, 1), 0.7), torch.full((400_000, 1), 0.6)
    dist = TruncNormalDist(mean, std)
    x = dist.sample()
    assert x.min() > -1 and x.max() < 1
    grid = torch.linspace(-1 + 1e-6, 1 - 1e-6, 20001)[:, None]
    density = TruncNormalDist(torch.full((1, 1), 0.7), torch.full((1, 1), 0.6)).log_prob(grid).exp()
    assert abs(torch.trapezoid(density, grid[:, 0]).item() - 1.0) < 1e-3
    entropy_mc = -dist.log_prob(x).mean()
    assert abs(entropy_mc.item() - dist.entropy()[0].item()) < 0.01


def test_truncated_normal_sample_is_reparameterised():
    mean = torch.zeros(1000, 2, requires_grad=True)
    TruncNormalDist(mean, torch.full((1000, 2), 0.3)).sample().sum().backward()
    assert mean.grad.abs().sum() > 0
