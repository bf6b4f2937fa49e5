"""The formulations we measure against and test against: WaveMix blocks on other DWT implementations.

- reference: pytorch_wavelets' DWTForward(wave='db1', mode='zero'), as the published WaveMix computes it:
  three separate transforms per block (J=1, J=2, J=3: six single-level DWTs), LL of each, high bands of J=3.
- plain: the plain-torch Haar of kernels/haar_torch.py (autograd through slicing), three levels in one pass.
- fused: the engine's `haar_dwt` operator (Triton on CUDA).

`reference_wavemix` is the whole published model in that formulation (the published stem too), for the
authors' training loop (bench/reference_loop.py).
"""
from __future__ import annotations

import sys
import types

import torch

from engine.kernels import haar_dwt, haar_dwt_torch
from engine.models.wavemix import LEVELS, Level3WaveBlock, wavemix_192_16


def import_pytorch_wavelets():
    """pytorch_wavelets 1.3 imports pkg_resources (gone from recent setuptools) for its DTCWT tables only;
    a stand-in lets its DWT import. Returns the DWTForward class."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            sys.modules["pkg_resources"] = types.SimpleNamespace(resource_stream=None)
    from pytorch_wavelets import DWTForward
    return DWTForward


class ReferenceDWT(torch.nn.Module):
    """Levels 1..L in the engine's output layout, computed the reference way (one DWTForward per level)."""

    def __init__(self, levels: int = LEVELS):
        super().__init__()
        dwt_forward = import_pytorch_wavelets()
        self.transforms = torch.nn.ModuleList(dwt_forward(J=j, wave="db1", mode="zero") for j in range(1, levels + 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        lows = [transform(x)[0] for transform in self.transforms]
        highs = self.transforms[-1](x)[1]  # the reference reshapes the last transform's bands for every level
        n = x.shape[0]
        return [torch.cat((low, high.reshape(n, -1, *high.shape[-2:])), dim=1) for low, high in zip(lows, highs)]


def _block_forward_with(dwt):
    def forward(block: Level3WaveBlock, x: torch.Tensor) -> torch.Tensor:
        level1, level2, level3 = dwt(block.reduction(x))
        x3 = block.feedforward3(level3)
        x2 = block.feedforward2(torch.cat((level2, x3), dim=1))
        return block.feedforward1(torch.cat((level1, x2), dim=1))
    return forward


def dwt_implementations(device: torch.device) -> dict:
    """name -> callable(x) returning the three levels."""
    reference = ReferenceDWT().to(device)
    return {"reference": reference, "plain": lambda x: haar_dwt_torch(x, LEVELS),
            "fused": lambda x: haar_dwt(x, LEVELS)}


def use_dwt(model: torch.nn.Module, dwt) -> torch.nn.Module:
    """Make every wave block of `model` compute its DWT with `dwt` (the weights are untouched)."""
    for block in model.modules():
        if isinstance(block, Level3WaveBlock):
            block.forward = types.MethodType(_block_forward_with(dwt), block)
    return model


def reference_wavemix(num_classes: int) -> torch.nn.Module:
    """WaveMix-192/16 computed as the published code computes it: the stem's three convolutions one after the
    other and pytorch_wavelets' six transforms in every block (fp32 only: it crashes under autocast). The
    transforms are a submodule, so `.to(device)` moves their filters with the weights."""
    model = use_dwt(wavemix_192_16(num_classes), dwt := ReferenceDWT())
    model.conv.composed = False
    model.reference_dwt = dwt
    return model
