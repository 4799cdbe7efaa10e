"""Faster formulations of plain torch layers, each equal to the layer its name starts with.

`Conv2d*` equal `nn.Conv2d`, `ConvTranspose2d*` equal `nn.ConvTranspose2d` (`ConvTranspose2dAfterElu` equals it
applied to the ELU of its input, which it overwrites), `Linear` equals `nn.Linear`,
`TransformerEncoderLayer` equals `nn.TransformerEncoderLayer` (same parameters and state-dict names, so checkpoints
do not depend on the formulation); float64 tests compare each with its plain layer. `plain_layers()` is the one
switch back to torch's own layers, products and unrolls.
Nothing here knows about DreamerV2: `dreamctl.model` uses these layers, never the other way round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dreamctl.layers.attention import TransformerEncoderLayer
from dreamctl.layers.conv import Conv2dByPatches, Conv2dChannelsLast, Conv2dSpaceToDepth
from dreamctl.layers.deconv import ConvTranspose2dAfterElu, ConvTranspose2dBiasBySum, ConvTranspose2dOn1x1
from dreamctl.layers.linear import Linear, use_onednn
from dreamctl.layers.one_hot import use_gathers
from dreamctl.layers.switch import reformulated, reformulations

REFORMULATED_LAYERS = (
    Conv2dSpaceToDepth,
    Conv2dChannelsLast,
    Conv2dByPatches,
    ConvTranspose2dOn1x1,
    ConvTranspose2dBiasBySum,
    ConvTranspose2dAfterElu,
    Linear,
    TransformerEncoderLayer,
)
"""Every layer class computed by a formulation of a plain torch layer's maths."""

__all__ = [
    "REFORMULATED_LAYERS",
    "Conv2dByPatches",
    "Conv2dChannelsLast",
    "Conv2dSpaceToDepth",
    "ConvTranspose2dAfterElu",
    "ConvTranspose2dBiasBySum",
    "ConvTranspose2dOn1x1",
    "Linear",
    "TransformerEncoderLayer",
    "plain_layers",
    "reformulated",
    "reformulations",
    "use_gathers",
    "use_onednn",
]


@contextlib.contextmanager
def plain_layers() -> Iterator[None]:
    """Every reformulated layer, unroll, linear and one-hot product as torch's plain layer, within the block."""
    with reformulations(False), use_onednn(False), use_gathers(False):
        yield
