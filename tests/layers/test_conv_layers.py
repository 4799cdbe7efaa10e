"""Each reformulated conv and transposed conv equals the plain torch layer, in float64 and under bf16 autocast."""

from collections.abc import Callable

import pytest
import torch

from dreamctl.layers.conv import Conv2dByPatches, Conv2dChannelsLast, Conv2dSpaceToDepth, channels_last_elu
from dreamctl.layers.deconv import (
    ConvTranspose2dAfterElu,
    ConvTranspose2dBiasBySum,
    ConvTranspose2dOn1x1,
    elu_then_tap_products,
)


def assert_fast_layer_equals_plain(
    fast: torch.nn.Module, plain: torch.nn.Module, make_input: Callable[[], torch.Tensor]
) -> None:
    """Same outputs and same gradients (input, weight, bias) as the plain torch layer, with a non-zero bias.
    ConvTranspose2dAfterElu is compared with the plain layer after an ELU (it overwrites its input).

    Compared in float64, so the check is of the maths, not of float32 summation order (a weight gradient sums
    thousands of terms, whose float32 rounding differs between formulations by more than any fixed tolerance).
    """
    fast.double()
    plain.double().load_state_dict(fast.state_dict())
    torch.nn.init.normal_(plain.bias)
    fast.bias.data.copy_(plain.bias)
    x = make_input().double().requires_grad_(True)
    if isinstance(fast, ConvTranspose2dAfterElu):
        y_fast, y_plain = fast(x.clone()), plain(torch.nn.functional.elu(x))
    else:
        y_fast, y_plain = fast(x), plain(x)
    assert y_fast.shape == y_plain.shape
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y_fast)
    for a, b in zip(
        torch.autograd.grad(y_fast, [x, fast.weight, fast.bias], g),
        torch.autograd.grad(y_plain, [x, plain.weight, plain.bias], g),
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fast_first_deconv_equals_the_plain_transposed_conv():
    torch.manual_seed(0)
    assert_fast_layer_equals_plain(
        ConvTranspose2dOn1x1(96, 24, 5, stride=2),
        torch.nn.ConvTranspose2d(96, 24, 5, stride=2),
        lambda: torch.randn(7, 96, 1, 1),
    )


@pytest.mark.parametrize("cin, size, channels_last", [(1, 64, True), (3, 64, False), (3, 9, True), (2, 11, False)])
def test_space_to_depth_conv_equals_the_plain_conv(cin, size, channels_last):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert_fast_layer_equals_plain(
        Conv2dSpaceToDepth(cin, 6, 4, stride=2),
        torch.nn.Conv2d(cin, 6, 4, stride=2),
        lambda: torch.randn(3, cin, size, size).contiguous(memory_format=layout),
    )


@pytest.mark.parametrize("channels_last", [True, False])
def test_acting_conv_equals_the_plain_conv_with_and_without_gradients(channels_last):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert_fast_layer_equals_plain(
        Conv2dChannelsLast(6, 8, 4, stride=2),
        torch.nn.Conv2d(6, 8, 4, stride=2),
        lambda: torch.randn(3, 6, 14, 14).contiguous(memory_format=layout),
    )
    fast, plain = Conv2dChannelsLast(6, 8, 4, stride=2).double(), torch.nn.Conv2d(6, 8, 4, stride=2).double()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(3, 6, 14, 14, dtype=torch.float64).contiguous(memory_format=layout)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cin, cout, size", [(192, 384, 6), (3, 5, 9), (4, 2, 4)])
def test_patch_conv_equals_the_plain_conv(cin, cout, size):
    torch.manual_seed(0)
    assert_fast_layer_equals_plain(
        Conv2dByPatches(cin, cout, 4, stride=2),
        torch.nn.Conv2d(cin, cout, 4, stride=2),
        lambda: torch.randn(3, cin, size, size),
    )


@pytest.mark.parametrize("cin, cout, k, size", [(48, 1, 6, 30), (16, 3, 6, 7), (8, 4, 5, 5), (6, 2, 4, 3)])
def test_subpixel_deconv_equals_the_plain_transposed_conv(cin, cout, k, size):
    torch.manual_seed(0)
    assert_fast_layer_equals_plain(
        ConvTranspose2dAfterElu(cin, cout, k, stride=2),
        torch.nn.ConvTranspose2d(cin, cout, k, stride=2),
        lambda: torch.randn(5, cin, size, size),
    )


BF16_CASES = {
    "space_to_depth": (
        lambda: Conv2dSpaceToDepth(1, 8, 4, stride=2),
        lambda: torch.nn.Conv2d(1, 8, 4, stride=2),
        (4, 1, 16, 16),
    ),
    "patch": (
        lambda: Conv2dByPatches(16, 32, 4, stride=2),
        lambda: torch.nn.Conv2d(16, 32, 4, stride=2),
        (4, 16, 6, 6),
    ),
    "first_deconv": (
        lambda: ConvTranspose2dOn1x1(32, 16, 5, stride=2),
        lambda: torch.nn.ConvTranspose2d(32, 16, 5, stride=2),
        (4, 32, 1, 1),
    ),
    "bias_sum_deconv": (
        lambda: ConvTranspose2dBiasBySum(16, 8, 5, stride=2),
        lambda: torch.nn.ConvTranspose2d(16, 8, 5, stride=2),
        (4, 16, 5, 5),
    ),
    "bias_sum_deconv_by_products": (
        lambda: ConvTranspose2dBiasBySum(16, 8, 5, stride=2, forward_by_products=True),
        lambda: torch.nn.ConvTranspose2d(16, 8, 5, stride=2),
        (4, 16, 5, 5),
    ),
    "subpixel_deconv": (
        lambda: ConvTranspose2dAfterElu(8, 1, 6, stride=2),
        lambda: torch.nn.ConvTranspose2d(8, 1, 6, stride=2),
        (9, 8, 13, 13),
    ),
}


@pytest.mark.parametrize("case", sorted(BF16_CASES))
def test_fast_layers_under_bf16_autocast_agree_with_the_exact_layer(case):
    """Under bf16 autocast every fast layer still gives the plain layer's maths, to bf16's precision."""
    make_fast, make_plain, shape = BF16_CASES[case]
    torch.manual_seed(0)
    fast, plain = make_fast(), make_plain().double()
    plain.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    x = torch.randn(*shape)
    x64 = x.double().requires_grad_(True)
    y64 = plain(torch.nn.functional.elu(x64) if isinstance(fast, ConvTranspose2dAfterElu) else x64)
    xb = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(xb * 1.0)
    assert y.shape == y64.shape
    g = torch.randn_like(y64)
    got = torch.autograd.grad(y, [xb, fast.weight], g.to(y.dtype))
    expected = torch.autograd.grad(y64, [x64, plain.weight], g)
    for a, b in zip([y, *got], [y64, *expected]):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b.detach(), rtol=0, atol=0.03 * scale)


def test_in_place_elu_gives_elu_and_its_gradient_and_refuses_a_second_backward():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    y = channels_last_elu(x * 1.0)  # an intermediate, as conv outputs are: the leaf cannot be overwritten
    torch.testing.assert_close(y, torch.nn.functional.elu(x), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(y, x, g, retain_graph=True)
    (expected,) = torch.autograd.grad(torch.nn.functional.elu(x), x, g)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y, x, g)


@pytest.mark.parametrize("by_products", [False, True])
@pytest.mark.parametrize(
    "cin, cout, k, size, channels_last", [(12, 6, 5, 5, True), (8, 4, 6, 7, True), (8, 4, 6, 7, False)]
)
def test_bias_sum_deconv_equals_the_plain_transposed_conv(cin, cout, k, size, channels_last, by_products):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert_fast_layer_equals_plain(
        ConvTranspose2dBiasBySum(cin, cout, k, stride=2, forward_by_products=by_products),
        torch.nn.ConvTranspose2d(cin, cout, k, stride=2),
        lambda: torch.randn(3, cin, size, size).contiguous(memory_format=layout),
    )


def test_bf16_partial_products_are_summed_in_float32_and_rounded_once():
    """A library's bf16 convolution sums in float32 and rounds once. Here 256 + eight 1s: bf16 holds 264, but adding
    the 1s one at a time in bf16 rounds each 257 back to 256 (its spacing there is 2)."""
    x = torch.ones(1, 1, 5, 5).contiguous(memory_format=torch.channels_last)
    taps = torch.tensor([256.0] + [1.0] * 8).reshape(9, 1)  # (row tap, column tap, channel), the 256 added first
    with torch.no_grad():
        y = elu_then_tap_products(x.bfloat16(), taps.bfloat16())  # elu(1) = 1
    assert y.dtype == torch.bfloat16 and y[0, 0, 4, 4].item() == 264.0  # the pixel all nine taps reach

    deconv = ConvTranspose2dBiasBySum(1, 1, 6, stride=2, forward_by_products=True)
    with torch.no_grad():
        deconv.weight.zero_()
        deconv.bias.zero_()
        deconv.weight[0, 0, ::2, ::2] = 1.0  # the nine taps that reach output pixel (4, 4) from a 3x3 input
        deconv.weight[0, 0, 0, 0] = 256.0  # the first of them in the order the taps are added
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = deconv(torch.ones(1, 1, 3, 3).contiguous(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16 and y[0, 0, 4, 4].item() == 264.0
