"""The latent and action distributions: straight-through one-hot samples and the truncated normal."""

import math

import torch

from dreamctl.model import distributions
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


def test_one_hot_log_prob_entropy_and_mode_worked_by_hand():
    """probs (1/2, 1/4, 1/4), from logits with any offset: H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2."""
    dist = OneHotDist(torch.tensor([0.5, 0.25, 0.25]).log() + 3.0)
    torch.testing.assert_close(dist.entropy(), torch.tensor(1.5 * math.log(2.0)))
    torch.testing.assert_close(dist.log_prob(torch.tensor([0.0, 1.0, 0.0])), torch.tensor(math.log(0.25)))
    torch.testing.assert_close(dist.mode(), torch.tensor([1.0, 0.0, 0.0]))


def test_truncated_normal_log_prob_and_entropy_worked_by_hand():
    """Mean 0, std 1 on [-1, 1]: mass Z = erf(1 / sqrt 2) = 0.682689, ln Z = -0.381715; log p(0) = -ln sqrt(2 pi)
    - ln Z = -0.918939 + 0.381715 = -0.537224; H = ln(sqrt(2 pi e) Z) + (a phi(a) - b phi(b)) / (2 Z) with a = -1,
    b = 1, phi(1) = 0.241971: 1.037224 - 0.354437 = 0.682786 (the uniform on [-1, 1] has ln 2 = 0.693147, the most any
    density there can have)."""
    dist = TruncNormalDist(torch.zeros(1), torch.ones(1))
    torch.testing.assert_close(dist.log_prob(torch.zeros(1)), torch.tensor(-0.537224), atol=1e-6, rtol=0)
    torch.testing.assert_close(dist.entropy(), torch.tensor(0.682786), atol=1e-6, rtol=0)


def test_truncated_normal_away_from_its_centre_worked_by_hand():
    """Mean 0.5, std 0.5 at x = 0: z = -1, a = (-1 - 0.5) / 0.5 = -3, b = 1; Z = Phi(1) - Phi(-3) = 0.841345 -
    0.001350 = 0.839995, ln Z = -0.174360; log p(0) = -z^2 / 2 - ln sqrt(2 pi) - ln 0.5 - ln Z = -0.5 - 0.918939 +
    0.693147 + 0.174360 = -0.551432; H = ln(sqrt(2 pi e) 0.5 Z) + (a phi(a) - b phi(b)) / (2 Z) with phi(-3) =
    0.004432, phi(1) = 0.241971: 0.551432 + (-0.013296 - 0.241971) / 1.679990 = 0.551432 - 0.151945 = 0.399487."""
    dist = TruncNormalDist(torch.full((1,), 0.5), torch.full((1,), 0.5))
    torch.testing.assert_close(dist.log_prob(torch.zeros(1)), torch.tensor(-0.551432), atol=2e-6, rtol=0)
    torch.testing.assert_close(dist.entropy(), torch.tensor(0.399487), atol=2e-6, rtol=0)


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


def test_truncated_normal_keeps_float64_for_the_float64_checks():
    """In float64 the density integrates to 1 and the closed-form entropy equals -integral p log p to 1e-9, which
    float32 could not show (it agrees to about 3e-7)."""
    mean, std = torch.tensor([[0.7, -0.2]], dtype=torch.float64), torch.tensor([[0.6, 0.1]], dtype=torch.float64)
    dist = TruncNormalDist(mean, std)
    assert dist.sample().dtype == torch.float64 and dist.entropy().dtype == torch.float64
    grid = torch.linspace(-1, 1, 400_001, dtype=torch.float64)
    for i in range(2):
        one = TruncNormalDist(mean[:, i : i + 1], std[:, i : i + 1])
        log_p = one.log_prob(grid[:, None])
        assert log_p.dtype == torch.float64
        assert abs(torch.trapezoid(log_p.exp(), grid).item() - 1.0) < 1e-9
        assert abs(torch.trapezoid(-log_p.exp() * log_p, grid).item() - one.entropy().item()) < 1e-9


def test_truncated_normal_sample_gradient_is_the_implicit_reparameterisation_gradient():
    """A sample x = F^-1(u; mean, std) moves with its parameters as F(x; mean, std) = u demands:
    dx/dtheta = -(dF/dtheta)(x) / f(x), the gradient TFP's TruncatedNormal (and so DreamerV2's actor) uses.
    F and f are written out here in float64 from the normal's CDF and density."""
    torch.manual_seed(0)
    mean = torch.tensor([[0.3, -0.9, 0.95, 0.0, -0.2]], requires_grad=True)
    std = torch.tensor([[0.1, 0.5, 0.2, 2.0, 0.7]], requires_grad=True)
    x = TruncNormalDist(mean, std).sample()
    got_mean, got_std = (g.double()[0] for g in torch.autograd.grad(x.sum(), [mean, std]))  # x_i reads theta_i only

    value = x.detach().double()[0]
    m = mean.detach().double()[0].requires_grad_()
    s = std.detach().double()[0].requires_grad_()

    def normal_cdf(z):
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))

    mass = normal_cdf((1 - m) / s) - normal_cdf((-1 - m) / s)
    cdf = (normal_cdf((value - m) / s) - normal_cdf((-1 - m) / s)) / mass
    density = torch.exp(-0.5 * ((value - m) / s) ** 2) / (math.sqrt(2 * math.pi) * s * mass)
    cdf_by_mean, cdf_by_std = torch.autograd.grad(cdf.sum(), [m, s])
    torch.testing.assert_close(got_mean, -cdf_by_mean / density.detach(), rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(got_std, -cdf_by_std / density.detach(), rtol=2e-3, atol=1e-5)


def test_truncated_normal_clip_passes_the_gradient_straight_through(monkeypatch):
    """A sample at a bound is clipped 1e-6 inside it, with the gradient of the sample before the clip."""
    monkeypatch.setattr(distributions, "uniform_like", torch.ones_like)  # u = 1: the sample lands on the upper bound

    def sample_and_gradient():
        mean = torch.tensor([[0.8]], requires_grad=True)
        x = TruncNormalDist(mean, torch.tensor([[0.3]])).sample()
        return x.detach(), torch.autograd.grad(x.sum(), mean)[0]

    x, grad = sample_and_gradient()
    assert x.item() == torch.tensor(1 - TruncNormalDist.clip).item()
    monkeypatch.setattr(TruncNormalDist, "clip", 0.0)
    unclipped, expected = sample_and_gradient()
    assert unclipped.item() > x.item()
    assert expected.item() != 0
    torch.testing.assert_close(grad, expected)
