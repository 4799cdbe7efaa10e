"""DreamerV2's optimiser: Keras' Adam epsilon, and its step count carried through a checkpoint."""

import torch

from dreamctl.model.optim import Optimizer


def _one_weight() -> torch.nn.Linear:
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    return layer


def _step(layer: torch.nn.Linear, opt: Optimizer, gradient: float = 1e-4) -> None:
    opt.step(gradient * layer.weight.sum())  # d loss / d w = gradient


def test_adam_adds_epsilon_as_keras_does_before_the_bias_correction():
    # Keras (TensorFlow's Adam, the paper's): w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), with
    # g = 1e-4 at every step, lr 1, b1 0.9, b2 0.999, eps 1e-5:
    # t = 1: m = 1e-5, v = 1e-11: 0.316228 * 1e-5 / (3.16228e-6 + 1e-5) = 0.240253
    # t = 2: m = 1.9e-5, v = 1.999e-11: 0.235317 * 1.9e-5 / (4.47102e-6 + 1e-5) = 0.308964
    # t = 3: 0.353775. torch's eps added after the correction would move the weight 0.909 at the first step.
    layer = _one_weight()
    opt = Optimizer(layer, lr=1.0, eps=1e-5, clip=100.0, weight_decay=0.0)
    moves = []
    for _ in range(3):
        before = layer.weight.item()
        _step(layer, opt)
        moves.append(before - layer.weight.item())
    torch.testing.assert_close(torch.tensor(moves), torch.tensor([0.240253, 0.308964, 0.353775]), rtol=1e-5, atol=0)


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
    assert restored.steps_taken == 2
    _step(layer, opt)
    _step(copy, restored)
    assert torch.equal(copy.weight, layer.weight)
