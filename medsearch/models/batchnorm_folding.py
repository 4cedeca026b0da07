"""Batch norms folded into the convolutions before them, in a copy of a network, for inference.

In eval mode a batch norm is an affine map per channel, so it can be merged into the weights and bias of the
convolution that feeds it (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the copy computes the same function
up to float rounding with one pass over the activations fewer per block.  For the nodule detector's networks,
which score a scan's 96 candidate patches in chunks of 32, that is about a fifth of their time
(docs/model.md, "Speed").  The original network, its state dict and its file stay as they are.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def folded_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode in which every MONAI ``Convolution`` block whose batch norm comes
    right after its convolution has the norm folded into the convolution (and an identity in its place).

    Blocks that normalise first, use another norm, or transpose their convolution keep their layers.

    Raises:
        ValueError: ``module`` is in training mode, where a batch norm uses the batch's statistics and
            cannot be folded.
    """
    if module.training:
        raise ValueError("a network in training mode cannot have its batch norms folded; call .eval() first.")
    from monai.networks.blocks import Convolution

    folded = copy.deepcopy(module).eval()
    for block in folded.modules():
        if not isinstance(block, Convolution) or not hasattr(block, "adn"):
            continue
        conv, order = block.conv, list(block.adn._modules)
        # the norm must be the first of the block's norm / dropout / activation, right after the convolution
        if (type(conv) in _CONVS and order and order[0] == "N" and type(block.adn.N) in _NORMS
                and block.adn.N.track_running_stats):
            block.conv = fuse_conv_bn_eval(conv, block.adn.N)
            block.adn.N = nn.Identity()
    return folded


__all__ = ["folded_copy"]
