"""INT8 dynamic quantization of the towers (torch ``quantize_dynamic``).

Dynamic quantization converts ``nn.Linear`` layers: all of MiniLM's
transformer layers and the projections/heads.  The image tower's 3-D
convolutions have no dynamic-quantized kernel and stay FP32; the speedup and
metric change are measured by ``bench/bench_model.py`` and recorded in
docs/model.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def quantize_linear(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` dynamically quantized to INT8."""
    import warnings

    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the API is what 2.13 ships.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(module).eval(), {nn.Linear}, dtype=torch.qint8)


def quantize_dual(model: nn.Module) -> nn.Module:
    """The dual encoder with its linear projections and heads in INT8."""
    return quantize_linear(model)
