"""DreamerV2's optimiser: its state carried through a checkpoint."""

import pytest
import torch

from dreamctl.model.optim import Optimizer


def _one_weight() -> torch.nn.Linear:
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    return layer


def _step(layer: torch.nn.Linear, opt: Optimizer, gradient: float = 1e-4) -> None:
    opt.step(gradient * layer.weight.sum())  # d loss / d w = gradient


def test_a_restored_optimizer_takes_the_step_the_original_takes_next():
    layer, copy = _one_weight(), _one_weight()
    opt = Optimizer(layer, lr=1.0, eps=1e-5, clip=100.0, weight_decay=0.0)
    for _ in range(2):
        _step(layer, opt)
    restored = Optimizer(copy, lr=1.0, eps=1e-5, clip=100.0, weight_decay=0.0)
    with torch.no_grad():
        copy.weight.copy_(layer.weight)
    saved = {key: value.clone() for key, value in opt.state_tensors("optim/").items()}  # as a checkpoint holds them
    restored.load_state_tensors(saved, "optim/")
    _step(layer, opt)
    _step(copy, restored)
    assert torch.equal(copy.weight, layer.weight)


def _two_weights(a: float, b: float) -> torch.nn.Module:
    module = torch.nn.Module()
    module.a = torch.nn.Parameter(torch.tensor([a]))
    module.b = torch.nn.Parameter(torch.tensor([b]))
    return module


def test_the_global_gradient_norm_is_clipped_before_adam_sees_it_worked_by_hand():
    """Gradients 3 and 4 (global norm 5) clipped to norm 1 reach Adam as 0.6 and 0.8 (a clip of each tensor alone
    would pass 1 and 1): its first moments are (1 - 0.9) g and its second (1 - 0.999) g^2."""
    module = _two_weights(0.0, 0.0)
    opt = Optimizer(module, lr=1e-3, eps=1e-5, clip=1.0, weight_decay=0.0)
    norm = opt.step(3.0 * module.a.sum() + 4.0 * module.b.sum())
    torch.testing.assert_close(norm, torch.tensor(5.0))  # the norm before clipping, as the logs report it
    state = [opt.opt.state[p] for p in (module.a, module.b)]
    torch.testing.assert_close(torch.cat([s["exp_avg"] for s in state]), torch.tensor([0.06, 0.08]))
    torch.testing.assert_close(torch.cat([s["exp_avg_sq"] for s in state]), torch.tensor([0.00036, 0.00064]))


@pytest.mark.parametrize("lr", [1.0, 1e-3])
def test_weight_decay_multiplies_each_weight_by_one_minus_wd_whatever_the_learning_rate(lr):
    """With a zero gradient Adam's step is 0, so only the decay moves the weights: 1 -> 0.9 and -2 -> -1.8 with
    wd = 0.1 (torch's AdamW would decay by lr * wd)."""
    module = _two_weights(1.0, -2.0)
    opt = Optimizer(module, lr=lr, eps=1e-5, clip=100.0, weight_decay=0.1)
    opt.step(0.0 * (module.a.sum() + module.b.sum()))
    torch.testing.assert_close(torch.cat([module.a, module.b]).detach(), torch.tensor([0.9, -1.8]))


@pytest.mark.parametrize(("gradient", "step"), [(1e-5, -0.5), (1.0, -1.0 / (1.0 + 1e-5))])
def test_adams_epsilon_is_added_to_the_corrected_root_of_the_second_moment_worked_by_hand(gradient, step):
    """At the first step Adam's corrected moments are g and g^2, so the step is lr g / (|g| + eps): with lr 1 and
    eps 1e-5, a gradient of 1e-5 moves the weight by 0.5, one of 1 by 0.99999 (torch's placement of eps, which
    docs/architecture.md compares with Keras')."""
    layer = _one_weight()
    _step(layer, Optimizer(layer, lr=1.0, eps=1e-5, clip=100.0, weight_decay=0.0), gradient)
    torch.testing.assert_close(layer.weight.detach(), torch.tensor([[step]]), atol=1e-6, rtol=0)
