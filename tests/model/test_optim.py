"""DreamerV2's optimiser: its state carried through a checkpoint."""

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
