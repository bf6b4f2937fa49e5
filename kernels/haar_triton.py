"""Fused multi-level Haar DWT in Triton: all levels from one read of the input, and the matching backward.

Both directions walk the same tile tree. Each program owns a [BLOCK_P, BLOCK_Q] tile of level-L output
positions: the Q axis is the memory-contiguous one (channels for channels_last tensors, columns for NCHW ones),
so pixels are read and written as coalesced tiles, and the P axis enumerates the rest. For each position it
walks the 2^L x 2^L input block under it as a tree, unrolled at compile time: the 4^(L-1) level-1 quads in
Z-order (bit pairs (y, x), finest last), so the four children of every coarser node come one after another.

Forward: a quad's four pixels, loaded as four tiles, give the level-1 bands at once; its LL is added, with the
child's signs, into the running bands of its level-2 parent, which is stored (and pushed up to level 3) after
its fourth child, and so on: elementwise on tiles, no reductions. Backward: each node, on its first visit,
loads its bands' gradients, adds what reaches its LL from its parent, and synthesises its four children (the
transform is orthogonal); the level-1 quads' children are the input gradient, stored as four pixel tiles.

Channel c's high bands are channels C + 3c + k, adjacent in channels_last memory: both kernels move them as one
interleaved [.., 4] tile (slot 3 masked), so a warp's access is one contiguous run. Measured on an H100 before
that (bench/NOTES.md, third session; (128, 48, 64, 64) bf16 channels_last, 3 levels), with each band on its own,
3 channels apart (a warp's 64 bytes spread over ~24 memory sectors): forward 0.150 ms (0.28 of copy), and a
tile-tree backward 0.51 ms, slower than the Z-order backward this one replaces (0.09-0.27 ms). In NCHW the Q
axis holds level-L columns, 2^L pixels apart: loads and stores there stay strided (the old Z-order forward was
faster in fp32 NCHW: 0.485 against 0.688 ms); channels_last is the layout the engine trains in.

All arithmetic is fp32; results are stored in the tensors' dtype. Outputs are laid out as `haar_torch`
documents. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.haar_torch import check_levels, memory_format_of

MAX_LEVELS = 4
TILE = 512  # BLOCK_P * BLOCK_Q: 4 values a thread per tile at 4 warps
MAX_BLOCK_Q = 64


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
def _band_slots():
    """[1, 1, 4]: slot k of a channel's interleaved high bands; slot 3 is padding (tensor sides are powers of 2)."""
    return tl.arange(0, 4)[None, None, :]


@triton.jit
def _store_bands(ptr, base, to_high, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr, low, high_y, high_x,
                 high_xy, mask, CHANNELS_LAST: tl.constexpr):
    at = base + y * s_h + x * s_w
    tl.store(ptr + at, low, mask=mask)
    if CHANNELS_LAST:
        # Channel c's three high bands are channels C + 3c + k: adjacent in memory. Interleaved into one
        # [.., 4] tile (slot 3 masked), a warp's store covers one contiguous run; three separate stores, 3
        # channels apart, would each touch ~3x the memory sectors they fill.
        # join stacks along a new last axis, so join(join(p, q), join(r, s)) flattens to p, r, q, s
        bands = tl.reshape(tl.join(tl.join(high_y, high_xy), tl.join(high_x, high_xy)),
                           (high_y.shape[0], high_y.shape[1], 4))
        slot = _band_slots()
        tl.store(ptr + (at + to_high)[:, :, None] + slot * s_c, bands, mask=mask[:, :, None] & (slot < 3))
    else:
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
                 mask, CHANNELS_LAST: tl.constexpr):
    """Store a complete node's bands (its four children's signed sums, halved) and return its LL."""
    low = low * 0.5
    _store_bands(ptr, base, to_high, s_c, s_h, s_w, y, x, low, high_y * 0.5, high_x * 0.5, high_xy * 0.5, mask,
                 CHANNELS_LAST)
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
                     (a - b + c_ - d) * 0.5, (a - b - c_ + d) * 0.5, mask, CHANNELS_LAST)
        if LEVELS >= 2:
            l2, y2, x2, xy2 = _add_child(l2, y2, x2, xy2, low1, t & 3)
            if (t & 3) == 3:  # level-2 node t >> 2 is complete
                low2 = _finish_node(l2, y2, x2, xy2, out2, base2, high2, o2_c, o2_h, o2_w, y1 >> 1, x1 >> 1, mask,
                                    CHANNELS_LAST)
                l2, y2, x2, xy2 = zero, zero, zero, zero
                if LEVELS >= 3:
                    l3, y3, x3, xy3 = _add_child(l3, y3, x3, xy3, low2, (t >> 2) & 3)
                    if (t & 15) == 15:  # level-3 node t >> 4 is complete
                        low3 = _finish_node(l3, y3, x3, xy3, out3, base3, high3, o3_c, o3_h, o3_w, y1 >> 2,
                                            x1 >> 2, mask, CHANNELS_LAST)
                        l3, y3, x3, xy3 = zero, zero, zero, zero
                        if LEVELS >= 4:
                            l4, y4, x4, xy4 = _add_child(l4, y4, x4, xy4, low3, (t >> 4) & 3)
                            if (t & 63) == 63:
                                _finish_node(l4, y4, x4, xy4, out4, base4, high4, o4_c, o4_h, o4_w, 0, 0, mask,
                                                         CHANNELS_LAST)


# --- Backward: the same tile tree, walked down -------------------------------------------------------------------
@triton.jit
def _load_bands(ptr, base, to_high, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr, mask,
                CHANNELS_LAST: tl.constexpr):
    """The four bands' gradients of the nodes at (y, x) in each tile entry's block, in fp32: the transpose of
    `_store_bands`, with the same interleaved read of the high bands for channels_last tensors."""
    at = base + y * s_h + x * s_w
    low = tl.load(ptr + at, mask=mask, other=0.0).to(tl.float32)
    if CHANNELS_LAST:
        slot = _band_slots()
        bands = tl.load(ptr + (at + to_high)[:, :, None] + slot * s_c, mask=mask[:, :, None] & (slot < 3),
                        other=0.0).to(tl.float32)
        # split takes the last axis apart: slots (0, 2) and (1, 3), the inverse of `_store_bands`' joins
        first, second = tl.split(tl.reshape(bands, (low.shape[0], low.shape[1], 2, 2)))
        high_y, high_xy = tl.split(first)
        high_x, _ = tl.split(second)
    else:
        high_y = tl.load(ptr + at + to_high, mask=mask, other=0.0).to(tl.float32)
        high_x = tl.load(ptr + at + to_high + s_c, mask=mask, other=0.0).to(tl.float32)
        high_xy = tl.load(ptr + at + to_high + 2 * s_c, mask=mask, other=0.0).to(tl.float32)
    return low, high_y, high_x, high_xy


@triton.jit
def _node_children(ptr, base, to_high, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr, from_parent, mask,
                   CHANNELS_LAST: tl.constexpr):
    """Gradients of a node's four children (top-left, top-right, bottom-left, bottom-right) by Haar synthesis
    (the transform is orthogonal), from its own bands' gradients plus what reaches its LL from the coarser
    levels (`from_parent`)."""
    low, high_y, high_x, high_xy = _load_bands(ptr, base, to_high, s_c, s_h, s_w, y, x, mask, CHANNELS_LAST)
    low += from_parent
    return ((low + high_y + high_x + high_xy) * 0.5, (low + high_y - high_x - high_xy) * 0.5,
            (low - high_y + high_x - high_xy) * 0.5, (low - high_y - high_x + high_xy) * 0.5)


@triton.jit
def _pick(child0, child1, child2, child3, CHILD: tl.constexpr):
    picked = child0
    if CHILD == 1:
        picked = child1
    if CHILD == 2:
        picked = child2
    if CHILD == 3:
        picked = child3
    return picked


@triton.jit
def _haar_backward_kernel(grad_x_ptr, g1, g2, g3, g4, N, C, HL, WL, x_n, x_c, x_h, x_w,
                          g1_n, g1_c, g1_h, g1_w, g2_n, g2_c, g2_h, g2_w, g3_n, g3_c, g3_h, g3_w,
                          g4_n, g4_c, g4_h, g4_w, LEVELS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    n, c, i, j, mask = _tile_indices(N, C, HL, WL, CHANNELS_LAST, BLOCK_P, BLOCK_Q)
    pixels, _ = _level_offsets(n, c, i, j, C, x_n, x_c, x_h, x_w, 0, LEVELS)
    base1, high1 = _level_offsets(n, c, i, j, C, g1_n, g1_c, g1_h, g1_w, 1, LEVELS)
    base2, high2 = _level_offsets(n, c, i, j, C, g2_n, g2_c, g2_h, g2_w, 2, LEVELS)
    base3, high3 = _level_offsets(n, c, i, j, C, g3_n, g3_c, g3_h, g3_w, 3, LEVELS)
    base4, high4 = _level_offsets(n, c, i, j, C, g4_n, g4_c, g4_h, g4_w, 4, LEVELS)
    zero = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    k2a, k2b, k2c, k2d = zero, zero, zero, zero  # children of the current level-2, -3 and -4 nodes
    k3a, k3b, k3c, k3d = zero, zero, zero, zero
    k4a, k4b, k4c, k4d = zero, zero, zero, zero
    # The forward's walk in the same Z-order, each node synthesised on its first visit, before its children.
    for t in tl.static_range(1 << (2 * (LEVELS - 1))):
        y1 = ((t >> 1) & 1) | ((t >> 2) & 2) | ((t >> 3) & 4)
        x1 = (t & 1) | ((t >> 1) & 2) | ((t >> 2) & 4)
        if LEVELS >= 4:
            if (t & 63) == 0:
                k4a, k4b, k4c, k4d = _node_children(g4, base4, high4, g4_c, g4_h, g4_w, 0, 0, zero, mask,
                                                    CHANNELS_LAST)
        if LEVELS >= 3:
            if (t & 15) == 0:
                from4 = zero
                if LEVELS >= 4:
                    from4 = _pick(k4a, k4b, k4c, k4d, (t >> 4) & 3)
                k3a, k3b, k3c, k3d = _node_children(g3, base3, high3, g3_c, g3_h, g3_w, y1 >> 2, x1 >> 2, from4,
                                                    mask, CHANNELS_LAST)
        if LEVELS >= 2:
            if (t & 3) == 0:
                from3 = zero
                if LEVELS >= 3:
                    from3 = _pick(k3a, k3b, k3c, k3d, (t >> 2) & 3)
                k2a, k2b, k2c, k2d = _node_children(g2, base2, high2, g2_c, g2_h, g2_w, y1 >> 1, x1 >> 1, from3,
                                                    mask, CHANNELS_LAST)
        from2 = zero
        if LEVELS >= 2:
            from2 = _pick(k2a, k2b, k2c, k2d, t & 3)
        a, b, c_, d = _node_children(g1, base1, high1, g1_c, g1_h, g1_w, y1, x1, from2, mask, CHANNELS_LAST)
        quad = pixels + (2 * y1) * x_h + (2 * x1) * x_w  # top-left input pixel of quad t
        tl.store(grad_x_ptr + quad, a, mask=mask)
        tl.store(grad_x_ptr + quad + x_w, b, mask=mask)
        tl.store(grad_x_ptr + quad + x_h, c_, mask=mask)
        tl.store(grad_x_ptr + quad + x_h + x_w, d, mask=mask)


def _block_q(extent: int) -> int:
    """Tile width along the contiguous axis: the power of two covering it, up to MAX_BLOCK_Q. Covering all of a
    pixel's channels (48 -> 64, a quarter of the lanes masked) keeps each row of a load one contiguous run."""
    return min(triton.next_power_of_2(extent), MAX_BLOCK_Q)


def _tile_grid(dense: torch.Tensor, levels: int) -> tuple[tuple[int, int], bool, int, int]:
    """(grid, channels_last, BLOCK_P, BLOCK_Q) of either kernel over `dense` (the input, or its gradient)."""
    n, c, h, w = dense.shape
    blocks_high, blocks_wide = h >> levels, w >> levels
    channels_last = memory_format_of(dense) == torch.channels_last
    rows, extent = (n * blocks_high * blocks_wide, c) if channels_last else (n * c * blocks_high, blocks_wide)
    block_q = _block_q(extent)
    block_p = max(1, TILE // block_q)
    return (triton.cdiv(rows, block_p), triton.cdiv(extent, block_q)), channels_last, block_p, block_q


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
    grid, channels_last, block_p, block_q = _tile_grid(x, levels)
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
    grid, grad_channels_last, block_p, block_q = _tile_grid(grad, levels)
    _haar_backward_kernel[grid](*_level_arguments(grad, list(output_grads), levels), LEVELS=levels,
                                CHANNELS_LAST=grad_channels_last, BLOCK_P=block_p, BLOCK_Q=block_q)
    return grad
