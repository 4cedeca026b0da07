"""3-D convolutions through oneDNN at inference, whatever their size.

PyTorch picks a CPU convolution's kernel per call.  For a 3-D convolution of one volume (batch 1) with a
3 x 3 x 3 kernel it takes oneDNN only when ``batch x channels x depth x height`` of the input exceeds 20,480,
and otherwise its reference ``slow_conv3d`` (im2col and a matrix product).  Most of the U-Net's layers fall
under that line: 51 of its 66 convolutions per forward pass ran in ``slow_conv3d`` and took 87 % of the
time.  Through oneDNN the same forward pass takes about a fifth of the time, with outputs within float32
rounding (docs/model.md, "Speed").

:func:`use_onednn` switches a module's ``nn.Conv3d`` layers to :class:`OneDNNConv3d` in place; parameters,
buffers and state-dict keys stay as they are, so a model's weights and version do not change.
:func:`plain_convolutions` switches them back (the benchmark's plain forward pass).
"""

from __future__ import annotations

import torch
from torch import nn


class OneDNNConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` that runs through ``torch.mkldnn_convolution`` when it can.

    It falls back to ``nn.Conv3d.forward`` in training, with gradients on, off the CPU, for other dtypes,
    and for padding other than explicit zeros, where PyTorch's own choice stands.

    Shapes:
        input (B, C_in, D, H, W) -> (B, C_out, D', H', W'), as ``nn.Conv3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            return super().forward(x)
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                        self.groups)


def use_onednn(module: nn.Module) -> nn.Module:
    """``module`` with every plain ``nn.Conv3d`` inside it made a :class:`OneDNNConv3d` (in place).

    Nothing changes where this PyTorch has no oneDNN.
    """
    if not torch.backends.mkldnn.is_available():
        return module
    for m in module.modules():
        # exactly nn.Conv3d: a subclass (a quantized or otherwise special convolution) keeps its own forward
        if type(m) is nn.Conv3d:
            m.__class__ = OneDNNConv3d
    return module


def plain_convolutions(module: nn.Module) -> nn.Module:
    """``module`` with every :class:`OneDNNConv3d` back to ``nn.Conv3d`` (in place)."""
    for m in module.modules():
        if type(m) is OneDNNConv3d:
            m.__class__ = nn.Conv3d
    return module


__all__ = ["OneDNNConv3d", "plain_convolutions", "use_onednn"]
