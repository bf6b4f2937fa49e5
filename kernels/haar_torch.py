"""Multi-level 2-D Haar DWT (db1, zero padding, even sizes) in plain torch: the CPU path and the oracle.

Output layout, per level l = 1..L, one tensor of shape (N, 4C, H / 2^l, W / 2^l): channels [0, C) are the
low-pass band LL_l; channel C + 3c + k is high band k of input channel c, with k = 0, 1, 2 the (LH, HL, HH)
bands of pytorch_wavelets' DWTForward(wave='db1', mode='zero'), whose `yh[l].reshape(N, 3C, h, w)` is exactly
this channel order. That is the tensor the WaveMix block concatenates, so the block needs no copy.

For the 2x2 input block [[a, b], [c, d]]:
    LL = (a + b + c + d) / 2      H0 = (a + b - c - d) / 2      H1 = (a - b + c - d) / 2      H2 = (a - b - c + d) / 2
Level l + 1 transforms LL_l.
"""
from __future__ import annotations

import torch


def check_levels(shape: torch.Size | tuple[int, ...], levels: int) -> None:
    if levels < 1:
        raise ValueError(f"haar_dwt needs levels >= 1, got {levels}")
    if len(shape) != 4:
        raise ValueError(f"haar_dwt needs an (N, C, H, W) input, got shape {tuple(shape)}")
    multiple = 2 ** levels
    height, width = shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(f"haar_dwt with {levels} levels needs input sides divisible by 2^{levels} = {multiple}, "
                         f"got {height}x{width}")


def haar_level(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One level: (LL, the level's output tensor [LL, H0..H2 interleaved per channel])."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    low = (a + b + c + d) / 2
    highs = torch.stack(((a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2), dim=2)
    return low, torch.cat((low, highs.flatten(1, 2)), dim=1)


def haar_dwt_torch(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    check_levels(x.shape, levels)
    outputs = []
    low = x
    for _ in range(levels):
        low, output = haar_level(low)
        outputs.append(output)
    return outputs


def haar_level_transpose(output_grad: torch.Tensor, low_grad: torch.Tensor | None) -> torch.Tensor:
    """The gradient of one level's input from its output's gradient (plus any gradient reaching its LL from the
    next level). The transform is orthogonal, so this is the inverse transform (Haar synthesis)."""
    channels = output_grad.shape[1] // 4
    g_low = output_grad[:, :channels]
    if low_grad is not None:
        g_low = g_low + low_grad
    g_highs = output_grad[:, channels:].unflatten(1, (channels, 3))
    g0, g1, g2 = g_highs.unbind(dim=2)
    quads = ((g_low + g0 + g1 + g2) / 2, (g_low + g0 - g1 - g2) / 2,  # a, b
             (g_low - g0 + g1 - g2) / 2, (g_low - g0 - g1 + g2) / 2)  # c, d
    n, c, h, w = g_low.shape
    grad = g_low.new_empty(n, c, 2 * h, 2 * w)
    grad[..., 0::2, 0::2], grad[..., 0::2, 1::2], grad[..., 1::2, 0::2], grad[..., 1::2, 1::2] = quads
    return grad


def haar_dwt_backward_torch(output_grads: list[torch.Tensor]) -> torch.Tensor:
    """The input's gradient from the gradients of every level's output, coarsest level first."""
    low_grad = None
    for output_grad in reversed(output_grads):
        low_grad = haar_level_transpose(output_grad, low_grad)
    return low_grad


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided 4-D tensor, else contiguous: the layout every DWT output follows."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
