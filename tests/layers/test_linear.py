"""The oneDNN route for float32 linear layers: same maths as F.linear, taken where it should be."""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamctl.layers import linear as linear_module
from dreamctl.layers.linear import Linear, linear, onednn_active, use_onednn
from dreamctl.model.agent import Agent

needs_onednn = pytest.mark.skipif(linear_module._OP is None, reason="this torch build has no oneDNN linear op")


@pytest.fixture(autouse=True)
def onednn_route(monkeypatch):
    """Every test here runs with the oneDNN route on where torch has it, whichever route this CPU takes by default,
    and for products of every size (the tests' small products would otherwise stay on the BLAS)."""
    monkeypatch.setattr(linear_module, "SMALL_PRODUCT", 0)
    with use_onednn(True):
        yield


def assert_within_float32_rounding(
    got: torch.Tensor, expected: torch.Tensor, abs_products: torch.Tensor, terms: int
) -> None:
    """|got - exact| <= terms * 2^-23 * sum_i |a_i b_i|: the worst-case float32 rounding of a sum of `terms` products
    (any summation order), so the check holds for every formulation of the same sums and fails for other maths."""
    error = (got.double() - expected).abs()
    assert bool((error <= terms * 2**-23 * abs_products + 1e-300).all()), error.max().item()


@needs_onednn
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    inputs=st.integers(1, 70),
    outputs=st.integers(1, 50),
    lead=st.sampled_from([(), (3,), (2, 3)]),
    bias=st.booleans(),
    layout=st.sampled_from(["plain", "t", "slice"]),
)
def test_onednn_linear_equals_exact_linear_to_float32_rounding(rows, inputs, outputs, lead, bias, layout):
    torch.manual_seed(rows * 7919 + inputs * 31 + outputs)
    x = torch.randn(*lead, rows, inputs, requires_grad=True)
    weight = {
        "plain": lambda: torch.randn(outputs, inputs),
        "t": lambda: torch.randn(inputs, outputs).t(),
        "slice": lambda: torch.randn(outputs, inputs + 5)[:, 2 : 2 + inputs],
    }[layout]().requires_grad_()
    b = torch.randn(outputs, requires_grad=True) if bias else None
    assert onednn_active(x, weight)
    y = linear(x, weight, b)
    probe = torch.randn_like(y)
    got = torch.autograd.grad((y * probe).sum(), [t for t in (x, weight, b) if t is not None])

    x64, w64, p64 = x.detach().double(), weight.detach().double(), probe.double()
    b64 = None if b is None else b.detach().double()
    flat_x, flat_p = x64.reshape(-1, inputs), p64.reshape(-1, outputs)
    assert y.shape == probe.shape == (*lead, rows, outputs) and y.dtype == torch.float32
    assert_within_float32_rounding(
        y, F.linear(x64, w64, b64), F.linear(x64.abs(), w64.abs(), None if b64 is None else b64.abs()), inputs + 1
    )
    assert_within_float32_rounding(got[0], p64 @ w64, p64.abs() @ w64.abs(), outputs)
    assert_within_float32_rounding(got[1], flat_p.t() @ flat_x, flat_p.abs().t() @ flat_x.abs(), flat_x.shape[0])
    if bias:
        assert_within_float32_rounding(got[2], flat_p.sum(0), flat_p.abs().sum(0), flat_x.shape[0])


@needs_onednn
def test_input_gradient_only_where_asked():
    x, weight = torch.randn(5, 4), torch.randn(3, 4, requires_grad=True)
    y = linear(x, weight)
    (grad,) = torch.autograd.grad(y.sum(), weight)
    torch.testing.assert_close(grad, torch.ones(5, 3).t() @ x)


def test_route_is_float32_on_the_cpu_outside_autocast_only():
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    assert onednn_active(x, w) == (linear_module._OP is not None)
    assert not onednn_active(x.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_active(x, w)
        assert linear(x, w).dtype == torch.bfloat16  # autocast's own bf16 product, as F.linear does
    with use_onednn(False):
        assert not onednn_active(x, w)
    assert onednn_active(x, w) == (linear_module._OP is not None)


@pytest.mark.parametrize(
    "vendor, flags, slow",
    [
        ("GenuineIntel", "fpu avx2 avx512f avx512bw", False),
        ("AuthenticAMD", "fpu avx2 avx512f avx512bw avx512_bf16", True),
        ("AuthenticAMD", "fpu avx avx2 fma", False),  # Zen 3: MKL's AVX2 kernels are what the CPU has
        ("HygonGenuine", "fpu avx2 avx512f", True),
    ],
)
def test_onednn_is_the_default_route_only_where_mkl_is_slow(tmp_path, monkeypatch, vendor, flags, slow):
    cpuinfo = tmp_path / "cpuinfo"
    cpu = f"vendor_id\t: {vendor}\ncpu family\t: 25\nflags\t\t: {flags}\n"
    cpuinfo.write_text(f"processor\t: 0\n{cpu}\nprocessor\t: 1\n{cpu}")
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    assert linear_module._blas_is_slow(str(cpuinfo)) == slow
    assert not linear_module._blas_is_slow(str(tmp_path / "missing"))  # unknown CPU: keep torch's own route
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    assert linear_module._blas_is_slow(str(cpuinfo))


def test_linear_module_keeps_nn_linears_state_dict():
    fast, plain = Linear(6, 4), torch.nn.Linear(6, 4)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def onednn_calls(monkeypatch) -> dict[str, int]:
    """{"n": how many times oneDNN's linear op has been called since the test began}."""
    calls = {"n": 0}
    op = linear_module._OP

    def counting(*args):
        calls["n"] += 1
        return op(*args)

    monkeypatch.setattr(linear_module, "_OP", counting)
    return calls


@needs_onednn
def test_a_training_update_and_acting_run_their_linears_on_onednn(onednn_calls):
    calls = onednn_calls
    cfg = tiny_config()
    agent = Agent(cfg, {"image": (64, 64, 1)}, 3, True)
    batch = random_batch(cfg)
    agent.train_step(batch)
    assert calls["n"] > 50
    before = calls["n"]
    agent.policy(
        {"image": batch["image"][:, 0]}, batch["is_first"][:, 0].bool(), agent.initial_act_state(cfg.train.batch_size)
    )
    assert calls["n"] > before
    with use_onednn(False):
        before = calls["n"]
        agent.train_step(batch)
        assert calls["n"] == before


@needs_onednn
def test_small_products_with_small_weights_run_on_the_blas_and_the_others_on_onednn(monkeypatch, onednn_calls):
    monkeypatch.setattr(linear_module, "SMALL_PRODUCT", 64 * 128 * 128)
    monkeypatch.setattr(linear_module, "SMALL_WEIGHT", 128 * 128 + 1)
    calls = onednn_calls
    weight = torch.randn(128, 128, requires_grad=True)
    small, large = torch.randn(63, 128, requires_grad=True), torch.randn(64, 128, requires_grad=True)
    for x, expected in ((small, 0), (large, 3)):  # forward, and the backward's two products
        calls["n"] = 0
        y = linear(x, weight)
        y.sum().backward()
        assert calls["n"] == expected
        assert torch.allclose(y, x @ weight.t(), atol=1e-4)
    wide = torch.randn(129, 128)  # one row, but a weight of SMALL_WEIGHT elements or more
    calls["n"] = 0
    with torch.no_grad():
        linear(torch.randn(1, 128), wide)
    assert calls["n"] == 1


@pytest.mark.parametrize("weight_decay", [0.0, 1e-6])
def test_weight_layouts_kept_for_acting_follow_every_change_of_the_weights(weight_decay):
    """Acting keeps re-laid-out weights between calls; an optimiser step or a load must replace them, with or
    without weight decay (the fused Adam alone writes the weights without bumping their version)."""
    torch.manual_seed(0)
    agent = Agent(tiny_config(f"train.weight_decay={weight_decay}"), {"image": (64, 64, 1)}, 3, True)
    obs = torch.randint(0, 255, (2, 64, 64, 1), dtype=torch.uint8)
    first = torch.ones(2, dtype=torch.bool)

    def act_twice():
        torch.manual_seed(1)
        kept = agent.policy({"image": obs}, first, agent.initial_act_state(2))[1].latent.logits
        torch.manual_seed(1)
        with torch.enable_grad():  # while gradients are recorded nothing is kept: every layout is made afresh
            fresh = agent.policy.__wrapped__(agent, {"image": obs}, first, agent.initial_act_state(2))
        return kept, fresh[1].latent.logits.detach()

    kept, fresh = act_twice()
    torch.testing.assert_close(kept, fresh, rtol=1e-6, atol=1e-6)
    optimizer = agent.optimizers["model"]
    loss = sum(p.square().sum() for p in agent.world_model.parameters())
    optimizer.step(loss)  # fused Adam updates the weights in place
    after_step, fresh = act_twice()
    assert not torch.equal(after_step, kept)
    torch.testing.assert_close(after_step, fresh, rtol=1e-6, atol=1e-6)
    agent.load_state_dict(Agent(tiny_config(), {"image": (64, 64, 1)}, 3, True).state_dict())
    after_load, fresh = act_twice()
    assert not torch.equal(after_load, after_step)
    torch.testing.assert_close(after_load, fresh, rtol=1e-6, atol=1e-6)
