"""Fused multi-level Haar DWT in Triton: all levels from one read of the input, and the matching backward.

Two kernels of different shapes, each the faster of the two designs we measured for its direction on an H100
(bench/NOTES.md, 2026-11-26, (128, 48, 64, 64) bf16 channels_last, 3 levels):

Forward, a tile tree (0.150 ms, against 0.284 ms for the Z-order design). Each program owns a
[BLOCK_P, BLOCK_Q] tile of level-L output positions: the Q axis is the memory-contiguous one (channels for
channels_last inputs, columns for NCHW ones), so the input is read as coalesced tiles, and the P axis enumerates
the rest. For each position it walks the 2^L x 2^L input block under it as a tree, unrolled at compile time:
the 4^(L-1) level-1 quads in Z-order (bit pairs (y, x), finest last), so the four children of every coarser
node come one after another. A quad's four pixels, loaded as four tiles, give the level-1 bands at once; its LL
is added, with the child's signs, into the running bands of its level-2 parent, which is stored (and pushed up
to level 3) after its fourth child, and so on: elementwise on tiles, no reshapes or reductions.

Backward, Z-order tiles (0.09-0.27 ms over two runs, against 0.51 ms for a tile-tree backward, whose high-band
loads, 3 channels apart, compile to scalar 2-byte loads). Each program takes BLOCK blocks of 2^L x 2^L input
pixels and holds each block as one row of a [BLOCK, 4^L] tile in Z-order, so the four pixels of every 2x2 quad
are 4 adjacent entries. It walks the pyramid from the coarsest level down (Haar synthesis: the transform is orthogonal),
adding each level's own LL gradient on the way, and writes the input gradient once. Blocks are enumerated
channel-fastest for channels_last tensors and column-fastest otherwise.

All arithmetic is fp32; results are stored in the tensors' dtype. Outputs are laid out as `haar_torch`
documents. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.haar_torch import check_levels, memory_format_of

MAX_LEVELS = 4
FORWARD_TILE = 512  # BLOCK_P * BLOCK_Q of the forward: 4 values a thread per tile at 4 warps
MAX_BLOCK_Q = 64
BACKWARD_TILE = 4096  # BLOCK * 4^L values in flight per backward program: 32 fp32 registers a thread at 4 warps


# --- Forward: tile tree -----------------------------------------------------------------------------------------
@triton.jit
def _tile_indices(N, C, HL, WL, CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(n, c, i, j) of this program's level-L positions, each broadcastable to [BLOCK_P, BLOCK_Q], and the mask
    of those that exist. channels_last: Q is the channel; NCHW: Q is the column j."""
    p = (tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P))[:, None]
    q = (tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q))[None, :]
    if CHANNELS_LAST:
        c = q
        j = p % WL
        i = (p // WL) % HL
        n = p // (WL * HL)
        mask = (p < N * HL * WL) & (q < C)
    else:
        j = q
        i = p % HL
        c = (p // HL) % C
        n = p // (HL * C)
        mask = (p < N * C * HL) & (q < WL)
    return n, c, i, j, mask


@triton.jit
def _level_offsets(n, c, i, j, C, s_n, s_c, s_h, s_w, LEVEL: tl.constexpr, LEVELS: tl.constexpr):
    """Offsets of channel c's LL at the top-left level-LEVEL position under each tile entry (level 0: the input
    pixels), and the offset from there to its first high band (channel C + 3c). Levels above LEVELS are unused:
    they get level LEVELS' offsets rather than a negative shift."""
    SHIFT: tl.constexpr = LEVELS - LEVEL if LEVEL <= LEVELS else 0
    base = n * s_n + c * s_c + (i << SHIFT) * s_h + (j << SHIFT) * s_w
    return base, (C + 2 * c) * s_c


@triton.jit
def _store_bands(ptr, base, to_high, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr, low, high_y, high_x,
                 high_xy, mask):
    at = base + y * s_h + x * s_w
    tl.store(ptr + at, low, mask=mask)
    tl.store(ptr + at + to_high, high_y, mask=mask)
    tl.store(ptr + at + to_high + s_c, high_x, mask=mask)
    tl.store(ptr + at + to_high + 2 * s_c, high_xy, mask=mask)


@triton.jit
def _add_child(low, high_y, high_x, high_xy, child_low, CHILD: tl.constexpr):
    """Add a child's LL into its parent's running (unscaled) bands; CHILD is its place in the quad: 0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right."""
    sign_y: tl.constexpr = 1 - 2 * (CHILD >> 1)
    sign_x: tl.constexpr = 1 - 2 * (CHILD & 1)
    return (low + child_low, high_y + sign_y * child_low, high_x + sign_x * child_low,
            high_xy + (sign_y * sign_x) * child_low)


@triton.jit
def _finish_node(low, high_y, high_x, high_xy, ptr, base, to_high, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr,
                 mask):
    """Store a complete node's bands (its four children's signed sums, halved) and return its LL."""
    low = low * 0.5
    _store_bands(ptr, base, to_high, s_c, s_h, s_w, y, x, low, high_y * 0.5, high_x * 0.5, high_xy * 0.5, mask)
    return low


@triton.jit
def _haar_forward_kernel(x_ptr, out1, out2, out3, out4, N, C, HL, WL, x_n, x_c, x_h, x_w,
                         o1_n, o1_c, o1_h, o1_w, o2_n, o2_c, o2_h, o2_w, o3_n, o3_c, o3_h, o3_w,
                         o4_n, o4_c, o4_h, o4_w, LEVELS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    n, c, i, j, mask = _tile_indices(N, C, HL, WL, CHANNELS_LAST, BLOCK_P, BLOCK_Q)
    pixels, _ = _level_offsets(n, c, i, j, C, x_n, x_c, x_h, x_w, 0, LEVELS)
    base1, high1 = _level_offsets(n, c, i, j, C, o1_n, o1_c, o1_h, o1_w, 1, LEVELS)
    base2, high2 = _level_offsets(n, c, i, j, C, o2_n, o2_c, o2_h, o2_w, 2, LEVELS)
    base3, high3 = _level_offsets(n, c, i, j, C, o3_n, o3_c, o3_h, o3_w, 3, LEVELS)
    base4, high4 = _level_offsets(n, c, i, j, C, o4_n, o4_c, o4_h, o4_w, 4, LEVELS)
    zero = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    l2, y2, x2, xy2 = zero, zero, zero, zero  # running sums of the current level-2, -3 and -4 nodes
    l3, y3, x3, xy3 = zero, zero, zero, zero
    l4, y4, x4, xy4 = zero, zero, zero, zero
    for t in tl.static_range(1 << (2 * (LEVELS - 1))):
        # level-1 position (y1, x1) of quad t, and of its level-2 and level-3 ancestors, inside the block
        y1 = ((t >> 1) & 1) | ((t >> 2) & 2) | ((t >> 3) & 4)
        x1 = (t & 1) | ((t >> 1) & 2) | ((t >> 2) & 4)
        a = tl.load(x_ptr + pixels + (2 * y1) * x_h + (2 * x1) * x_w, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(x_ptr + pixels + (2 * y1) * x_h + (2 * x1 + 1) * x_w, mask=mask, other=0.0).to(tl.float32)
        c_ = tl.load(x_ptr + pixels + (2 * y1 + 1) * x_h + (2 * x1) * x_w, mask=mask, other=0.0).to(tl.float32)
        d = tl.load(x_ptr + pixels + (2 * y1 + 1) * x_h + (2 * x1 + 1) * x_w, mask=mask, other=0.0).to(tl.float32)
        low1 = (a + b + c_ + d) * 0.5
        _store_bands(out1, base1, high1, o1_c, o1_h, o1_w, y1, x1, low1, (a + b - c_ - d) * 0.5,
                     (a - b + c_ - d) * 0.5, (a - b - c_ + d) * 0.5, mask)
        if LEVELS >= 2:
            l2, y2, x2, xy2 = _add_child(l2, y2, x2, xy2, low1, t & 3)
            if (t & 3) == 3:  # level-2 node t >> 2 is complete
                low2 = _finish_node(l2, y2, x2, xy2, out2, base2, high2, o2_c, o2_h, o2_w, y1 >> 1, x1 >> 1, mask)
                l2, y2, x2, xy2 = zero, zero, zero, zero
                if LEVELS >= 3:
                    l3, y3, x3, xy3 = _add_child(l3, y3, x3, xy3, low2, (t >> 2) & 3)
                    if (t & 15) == 15:  # level-3 node t >> 4 is complete
                        low3 = _finish_node(l3, y3, x3, xy3, out3, base3, high3, o3_c, o3_h, o3_w, y1 >> 2,
                                            x1 >> 2, mask)
                        l3, y3, x3, xy3 = zero, zero, zero, zero
                        if LEVELS >= 4:
                            l4, y4, x4, xy4 = _add_child(l4, y4, x4, xy4, low3, (t >> 4) & 3)
                            if (t & 63) == 63:
                                _finish_node(l4, y4, x4, xy4, out4, base4, high4, o4_c, o4_h, o4_w, 0, 0, mask)


# --- Backward: Z-order tiles ----------------------------------------------------------------------------------
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


def _block_q(extent: int) -> int:
    """Tile width along the contiguous axis: the power of two covering it, up to MAX_BLOCK_Q. Covering all of a
    pixel's channels (48 -> 64, a quarter of the lanes masked) keeps each row of a load one contiguous run."""
    return min(triton.next_power_of_2(extent), MAX_BLOCK_Q)


def _forward_grid(x: torch.Tensor, levels: int) -> tuple[tuple[int, int], bool, int, int]:
    """(grid, channels_last, BLOCK_P, BLOCK_Q) of the forward kernel over `x`."""
    n, c, h, w = x.shape
    blocks_high, blocks_wide = h >> levels, w >> levels
    channels_last = memory_format_of(x) == torch.channels_last
    rows, extent = (n * blocks_high * blocks_wide, c) if channels_last else (n * c * blocks_high, blocks_wide)
    block_q = _block_q(extent)
    block_p = max(1, FORWARD_TILE // block_q)
    return (triton.cdiv(rows, block_p), triton.cdiv(extent, block_q)), channels_last, block_p, block_q


def _backward_grid(grad: torch.Tensor, levels: int) -> tuple[tuple[int], bool, int]:
    """(grid, channels_last, BLOCK) of the backward kernel writing `grad`."""
    n, c, h, w = grad.shape
    block = max(1, BACKWARD_TILE >> (2 * levels))
    return ((triton.cdiv(n * c * (h >> levels) * (w >> levels), block),),
            memory_format_of(grad) == torch.channels_last, block)


def _level_arguments(dense: torch.Tensor, per_level: list[torch.Tensor], levels: int) -> list:
    """Both kernels' leading arguments: the dense tensor (the input, or its gradient) and the per-level ones,
    padded to MAX_LEVELS (unused slots: any valid pointer, never touched), the sizes they index with, then every
    tensor's strides."""
    n, c, h, w = dense.shape
    padded = per_level + [dense] * (MAX_LEVELS - levels)
    strides = [s for tensor in padded for s in tensor.stride()]
    return [dense, *padded, n, c, h >> levels, w >> levels, *dense.stride(), *strides]


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
    grid, channels_last, block_p, block_q = _forward_grid(x, levels)
    _haar_forward_kernel[grid](*_level_arguments(x, outputs, levels), LEVELS=levels, CHANNELS_LAST=channels_last,
                               BLOCK_P=block_p, BLOCK_Q=block_q)
    return outputs


def haar_dwt_backward_triton(output_grads: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    levels = len(output_grads)
    check_supported_levels(levels)
    n, c4, h1, w1 = output_grads[0].shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    grad = torch.empty((n, c4 // 4, 2 * h1, 2 * w1), device=output_grads[0].device, dtype=output_grads[0].dtype,
                       memory_format=layout)
    grid, grad_channels_last, block = _backward_grid(grad, levels)
    _haar_backward_kernel[grid](*_level_arguments(grad, list(output_grads), levels), LEVELS=levels,
                                CHANNELS_LAST=grad_channels_last, BLOCK=block)
    return grad
