"""Fused kernels. `haar_dwt(x, levels)`: the multi-level Haar DWT that WaveMix uses; kernels/trivial_augment.py:
TrivialAugmentWide and the normalisation of a batch in one launch (loaders/augment.py plans and calls it).

`haar_dwt` is one operator (`torch.ops.engine.haar_dwt`) with a registered backward and fake implementation,
so autograd and torch.compile (fullgraph) see a single op. On CUDA it runs the fused Triton kernels; elsewhere
the plain-torch implementation, which is also the oracle the tests compare against.
"""
from __future__ import annotations

import logging

import torch

from engine.kernels.haar_torch import (check_levels, haar_dwt_backward_torch, haar_dwt_torch, memory_format_of)

log = logging.getLogger("engine")
# The fused TrivialAugmentWide's per-image paths: kernels/trivial_augment.py branches on them, loaders/augment.py
# plans each image's. Here, where importing them needs no triton.
AUGMENT_LUT, AUGMENT_WARP, AUGMENT_COLOUR, AUGMENT_SHARPNESS = 0, 1, 2, 3
_said: set[str] = set()


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def warn_once(message: str) -> None:
    """A slower path must not hide: say it, once a process."""
    if message not in _said:
        log.warning(message)
        _said.add(message)


def _use_triton(tensor: torch.Tensor) -> bool:
    if not tensor.is_cuda:
        return False
    if triton_available():
        return True
    warn_once("triton is not installed: the Haar DWT runs as plain torch ops on the GPU (slower)")
    return False


@torch.library.custom_op("engine::haar_dwt", mutates_args=())
def _haar_dwt(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    if _use_triton(x):
        from engine.kernels.haar_triton import haar_dwt_triton
        return haar_dwt_triton(x, levels)
    layout = memory_format_of(x)
    return [output.contiguous(memory_format=layout) for output in haar_dwt_torch(x, levels)]


@_haar_dwt.register_fake
def _(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    check_levels(x.shape, levels)
    n, c, h, w = x.shape
    return [x.new_empty((n, 4 * c, h >> level, w >> level)).contiguous(memory_format=memory_format_of(x))
            for level in range(1, levels + 1)]


@torch.library.custom_op("engine::haar_dwt_backward", mutates_args=())
def _haar_dwt_backward(output_grads: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if _use_triton(output_grads[0]):
        from engine.kernels.haar_triton import haar_dwt_backward_triton
        return haar_dwt_backward_triton(output_grads, channels_last)
    return haar_dwt_backward_torch(output_grads).contiguous(memory_format=layout)


@_haar_dwt_backward.register_fake
def _(output_grads: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    n, c4, h1, w1 = output_grads[0].shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return output_grads[0].new_empty((n, c4 // 4, 2 * h1, 2 * w1)).contiguous(memory_format=layout)


def _setup_context(ctx, inputs, output) -> None:
    x, levels = inputs
    ctx.channels_last = memory_format_of(x) == torch.channels_last
    ctx.shapes = [tuple(o.shape) for o in output]


def _backward(ctx, output_grads):
    # Outputs nobody used arrive as None: their gradient is zero.
    given = next(g for g in output_grads if g is not None)
    grads = [given.new_zeros(shape) if g is None else g for g, shape in zip(output_grads, ctx.shapes)]
    return _haar_dwt_backward(grads, ctx.channels_last), None


_haar_dwt.register_autograd(_backward, setup_context=_setup_context)


def haar_dwt(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Levels 1..`levels` of the 2-D Haar DWT of `x` (N, C, H, W), H and W divisible by 2^levels.

    Returns one tensor per level, (N, 4C, H/2^l, W/2^l): LL first, then the three high bands of each channel
    (channel C + 3c + k), in the memory format of `x`. See kernels/haar_torch.py for the exact definition.
    """
    check_levels(x.shape, levels)
    return _haar_dwt(x, levels)


__all__ = ["haar_dwt", "haar_dwt_torch", "haar_dwt_backward_torch", "memory_format_of"]
