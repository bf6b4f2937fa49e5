"""Fused multi-level Haar DWT in Triton: all levels from one read of the input, and the matching backward.

Each program takes BLOCK blocks of 2^L x 2^L input pixels (one block per level-L output position and channel)
and loads each block as one row of a [BLOCK, 4^L] tile in Z-order: bit pairs (y_k, x_k) of the row index,
finest last. The four pixels of every 2x2 quad are then 4 adjacent entries, so one level is a reshape to
[BLOCK, 4^(L-1), 4] and four signed sums over the last axis; the low-pass result is again a Z-ordered tile for
the next level. The backward walks the same pyramid from the coarsest level down (Haar synthesis: the transform
is orthogonal), adding each level's own LL gradient on the way, and writes the input gradient once.

Positions are enumerated channel-fastest for channels_last tensors (coalesced loads across channels) and
column-fastest otherwise. All arithmetic is fp32; results are stored in the tensors' dtype.
Outputs are laid out as `haar_torch` documents. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.haar_torch import check_levels, memory_format_of

MAX_LEVELS = 4
TILE_ELEMENTS = 4096  # BLOCK * 4^L values in flight per program: 32 fp32 registers a thread at 4 warps


@triton.jit
def _zorder_to_yx(index, BITS: tl.constexpr):
    """Row and column inside a 2^BITS x 2^BITS block from a Z-order index (y bit above x bit, finest last)."""
    y = index * 0
    x = index * 0
    for bit in tl.static_range(BITS):
        x += ((index >> (2 * bit)) & 1) << bit
        y += ((index >> (2 * bit + 1)) & 1) << bit
    return y, x


@triton.jit
def _program_blocks(N, C, HL, WL, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """This program's blocks: (n, c, i, j) of each level-L output position (i, j index 2^L x 2^L input blocks),
    and the mask of those that exist."""
    position = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if CHANNELS_LAST:
        c = position % C
        j = (position // C) % WL
        i = (position // (C * WL)) % HL
        n = position // (C * WL * HL)
    else:
        j = position % WL
        i = (position // WL) % HL
        c = (position // (WL * HL)) % C
        n = position // (WL * HL * C)
    return n, c, i, j, position < N * C * HL * WL


@triton.jit
def _quad_signs():
    quad = tl.arange(0, 4)
    sign_y = (1 - 2 * (quad // 2)).to(tl.float32)  # +1 for the top pixels a, b; -1 for the bottom c, d
    sign_x = (1 - 2 * (quad % 2)).to(tl.float32)  # +1 for the left pixels a, c; -1 for the right b, d
    return sign_y[None, None, :], sign_x[None, None, :], (sign_y * sign_x)[None, None, :]


@triton.jit
def _grid_offsets(n, c, i, j, s_n, s_c, s_h, s_w, LEVEL: tl.constexpr, LEVELS: tl.constexpr):
    """Offsets [BLOCK, 4^(LEVELS-LEVEL)], in Z-order, of channel c's values at level LEVEL inside each block
    (level 0: the input pixels)."""
    BITS: tl.constexpr = LEVELS - LEVEL
    inner = tl.arange(0, 1 << (2 * BITS))
    dy, dx = _zorder_to_yx(inner, BITS)
    y = (i << BITS)[:, None] + dy[None, :]
    x = (j << BITS)[:, None] + dx[None, :]
    return (n * s_n + c * s_c)[:, None] + y * s_h + x * s_w


@triton.jit
def _band_offsets(n, c, i, j, C, s_n, s_c, s_h, s_w, LEVEL: tl.constexpr, LEVELS: tl.constexpr):
    """Offsets of channel c's LL at level LEVEL inside each block, and the channel stride to its first high band
    (channel C + 3c); band k adds k more channel strides."""
    low = _grid_offsets(n, c, i, j, s_n, s_c, s_h, s_w, LEVEL, LEVELS)
    to_high = (C + 2 * c)[:, None] * s_c  # channel C + 3c, relative to channel c
    return low, to_high


@triton.jit
def _analysis_level(tile, out_ptr, n, c, i, j, C, s_n, s_c, s_h, s_w, mask,
                    LEVEL: tl.constexpr, LEVELS: tl.constexpr, BLOCK: tl.constexpr):
    """One level: store its LL and high bands, return the LL tile for the next level."""
    GROUPS: tl.constexpr = 1 << (2 * (LEVELS - LEVEL))
    quads = tl.reshape(tile, (BLOCK, GROUPS, 4))
    sign_y, sign_x, sign_xy = _quad_signs()
    low = tl.sum(quads, axis=2) * 0.5
    high_y = tl.sum(quads * sign_y, axis=2) * 0.5
    high_x = tl.sum(quads * sign_x, axis=2) * 0.5
    high_xy = tl.sum(quads * sign_xy, axis=2) * 0.5
    offsets, to_high = _band_offsets(n, c, i, j, C, s_n, s_c, s_h, s_w, LEVEL, LEVELS)
    store_mask = mask[:, None]
    tl.store(out_ptr + offsets, low, mask=store_mask)
    tl.store(out_ptr + offsets + to_high, high_y, mask=store_mask)
    tl.store(out_ptr + offsets + to_high + s_c, high_x, mask=store_mask)
    tl.store(out_ptr + offsets + to_high + 2 * s_c, high_xy, mask=store_mask)
    return low


@triton.jit
def _haar_forward_kernel(x_ptr, out1, out2, out3, out4, N, C, HL, WL, x_n, x_c, x_h, x_w,
                         o1_n, o1_c, o1_h, o1_w, o2_n, o2_c, o2_h, o2_w, o3_n, o3_c, o3_h, o3_w,
                         o4_n, o4_c, o4_h, o4_w,
                         LEVELS: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    n, c, i, j, mask = _program_blocks(N, C, HL, WL, CHANNELS_LAST, BLOCK)
    pixels = _grid_offsets(n, c, i, j, x_n, x_c, x_h, x_w, 0, LEVELS)
    tile = tl.load(x_ptr + pixels, mask=mask[:, None], other=0.0).to(tl.float32)
    tile = _analysis_level(tile, out1, n, c, i, j, C, o1_n, o1_c, o1_h, o1_w, mask, 1, LEVELS, BLOCK)
    if LEVELS >= 2:
        tile = _analysis_level(tile, out2, n, c, i, j, C, o2_n, o2_c, o2_h, o2_w, mask, 2, LEVELS, BLOCK)
    if LEVELS >= 3:
        tile = _analysis_level(tile, out3, n, c, i, j, C, o3_n, o3_c, o3_h, o3_w, mask, 3, LEVELS, BLOCK)
    if LEVELS >= 4:
        tile = _analysis_level(tile, out4, n, c, i, j, C, o4_n, o4_c, o4_h, o4_w, mask, 4, LEVELS, BLOCK)


@triton.jit
def _synthesis_level(low_grad, grad_ptr, n, c, i, j, C, s_n, s_c, s_h, s_w, mask,
                     LEVEL: tl.constexpr, LEVELS: tl.constexpr, BLOCK: tl.constexpr, FIRST: tl.constexpr):
    """Gradient of level LEVEL's input (Z-ordered, 4x as many entries) from the gradient of its output plus the
    gradient already reaching its LL from the coarser levels (`low_grad`, ignored when FIRST)."""
    GROUPS: tl.constexpr = 1 << (2 * (LEVELS - LEVEL))
    offsets, to_high = _band_offsets(n, c, i, j, C, s_n, s_c, s_h, s_w, LEVEL, LEVELS)
    load_mask = mask[:, None]
    g_low = tl.load(grad_ptr + offsets, mask=load_mask, other=0.0).to(tl.float32)
    if not FIRST:
        g_low += low_grad
    g_y = tl.load(grad_ptr + offsets + to_high, mask=load_mask, other=0.0).to(tl.float32)
    g_x = tl.load(grad_ptr + offsets + to_high + s_c, mask=load_mask, other=0.0).to(tl.float32)
    g_xy = tl.load(grad_ptr + offsets + to_high + 2 * s_c, mask=load_mask, other=0.0).to(tl.float32)
    sign_y, sign_x, sign_xy = _quad_signs()
    quads = (g_low[:, :, None] + sign_y * g_y[:, :, None] + sign_x * g_x[:, :, None]
             + sign_xy * g_xy[:, :, None]) * 0.5
    return tl.reshape(quads, (BLOCK, GROUPS * 4))


@triton.jit
def _haar_backward_kernel(grad_x_ptr, g1, g2, g3, g4, N, C, HL, WL, x_n, x_c, x_h, x_w,
                          g1_n, g1_c, g1_h, g1_w, g2_n, g2_c, g2_h, g2_w, g3_n, g3_c, g3_h, g3_w,
                          g4_n, g4_c, g4_h, g4_w,
                          LEVELS: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    n, c, i, j, mask = _program_blocks(N, C, HL, WL, CHANNELS_LAST, BLOCK)
    low = tl.zeros((BLOCK, 1), dtype=tl.float32)
    if LEVELS >= 4:
        low = _synthesis_level(low, g4, n, c, i, j, C, g4_n, g4_c, g4_h, g4_w, mask, 4, LEVELS, BLOCK, LEVELS == 4)
    if LEVELS >= 3:
        low = _synthesis_level(low, g3, n, c, i, j, C, g3_n, g3_c, g3_h, g3_w, mask, 3, LEVELS, BLOCK, LEVELS == 3)
    if LEVELS >= 2:
        low = _synthesis_level(low, g2, n, c, i, j, C, g2_n, g2_c, g2_h, g2_w, mask, 2, LEVELS, BLOCK, LEVELS == 2)
    low = _synthesis_level(low, g1, n, c, i, j, C, g1_n, g1_c, g1_h, g1_w, mask, 1, LEVELS, BLOCK, LEVELS == 1)
    pixels = _grid_offsets(n, c, i, j, x_n, x_c, x_h, x_w, 0, LEVELS)
    tl.store(grad_x_ptr + pixels, low, mask=mask[:, None])


def _launch(kernel, dense: torch.Tensor, per_level: list[torch.Tensor], levels: int) -> None:
    """Run `kernel` over every 2^L x 2^L block of `dense` (the input, or the input's gradient)."""
    n, c, h, w = dense.shape
    blocks_high, blocks_wide = h >> levels, w >> levels
    block = max(1, TILE_ELEMENTS >> (2 * levels))
    padded = per_level + [dense] * (MAX_LEVELS - levels)  # unused slots: any valid pointer, never touched
    strides = [s for tensor in padded for s in tensor.stride()]
    grid = (triton.cdiv(n * c * blocks_high * blocks_wide, block),)
    kernel[grid](dense, *padded, n, c, blocks_high, blocks_wide, *dense.stride(), *strides, LEVELS=levels,
                 CHANNELS_LAST=memory_format_of(dense) == torch.channels_last, BLOCK=block)


def check_supported_levels(levels: int) -> None:
    if levels > MAX_LEVELS:
        raise ValueError(f"the fused Haar DWT handles up to {MAX_LEVELS} levels, got {levels}")


def haar_dwt_triton(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    check_levels(x.shape, levels)
    check_supported_levels(levels)
    n, c, h, w = x.shape
    layout = memory_format_of(x)
    outputs = [torch.empty((n, 4 * c, h >> level, w >> level), device=x.device, dtype=x.dtype, memory_format=layout)
               for level in range(1, levels + 1)]
    _launch(_haar_forward_kernel, x, outputs, levels)
    return outputs


def haar_dwt_backward_triton(output_grads: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    levels = len(output_grads)
    check_supported_levels(levels)
    n, c4, h1, w1 = output_grads[0].shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    grad = torch.empty((n, c4 // 4, 2 * h1, 2 * w1), device=output_grads[0].device, dtype=output_grads[0].dtype,
                       memory_format=layout)
    _launch(_haar_backward_kernel, grad, list(output_grads), levels)
    return grad
