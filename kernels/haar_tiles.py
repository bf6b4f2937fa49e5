"""The channels_last Haar DWT kernels: a tile tree. Each program owns a [BLOCK_P, BLOCK_Q] tile of level-L output
positions: Q is the channel, the memory-contiguous axis, so pixels are read and written as coalesced tiles, and P
enumerates (n, i, j). For each position it walks the 2^L x 2^L input block under it as a tree, unrolled at compile
time: the 4^(L-1) level-1 quads in Z-order (bit pairs (y, x), finest last), so the four children of every coarser
node come one after another.

Forward: a quad's four pixels, loaded as four tiles, give the level-1 bands at once; its LL is added, with the
child's signs, into the running bands of its level-2 parent, which is stored (and pushed up to level 3) after
its fourth child, and so on: elementwise on tiles, no reductions. Backward: each node, on its first visit,
loads its bands' gradients, adds what reaches its LL from its parent, and synthesises its four children (the
transform is orthogonal); the level-1 quads' children are the input gradient, stored as four pixel tiles.

Channel c's high bands are channels C + 3c + k, adjacent in channels_last memory. The three band tiles are
gathered (`tl.gather`) into channel order, a [.., 4 BLOCK_Q] tile whose first 3 BLOCK_Q entries are one contiguous
run of memory, moved as 16-byte vectors. Moved as three tiles 3 channels apart instead, each element was its own
2-byte access (252 scalar `st.global.b16` a thread in the forward at TILE 512), and on an H100 forward + backward
ran at 0.14-0.32 of copy against 0.51-0.64 gathered (bench/NOTES.md, fourteenth session); that layout is gone.
Arithmetic in fp32, results in the tensors' dtype.
"""
from __future__ import annotations

import triton
import triton.language as tl


# --- Shared by both directions -------------------------------------------------------------------------------
@triton.jit
def _program_blocks(C, BLOCK_Q: tl.constexpr):
    """(row block, channel block) of this program. A pixel's channels are one contiguous run (96 bytes for
    WaveMix's 48 bf16 channels) that tiles BLOCK_Q wide split between programs. The grid is one axis whose channel
    blocks vary fastest, so the programs sharing pixels run side by side and each pixel's run is fetched from DRAM
    once. On a 2-D grid (row blocks fastest) they were launched a row of blocks apart, each reading its 32-byte
    part when the others' had left L2: on an H100 the same configurations ran 19-36 % slower that way
    (bench/NOTES.md, fourteenth session)."""
    blocks = tl.cdiv(C, BLOCK_Q)
    return tl.program_id(0) // blocks, tl.program_id(0) % blocks


@triton.jit
def _tile_indices(N, C, HL, WL, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, WIDE: tl.constexpr):
    """(n, c, i, j) of this program's level-L positions, each broadcastable to [BLOCK_P, BLOCK_Q], the mask of
    those that exist, the [BLOCK_P, 1] mask of the rows (positions) that exist, the program's channel block and
    the length of its run of high bands (3 (C - c0), c0 its first channel). Index arithmetic is 32-bit unless
    WIDE (a tensor spans 2^31 elements or more): 64-bit offsets cost registers, and registers decide how many
    programs, and so how many loads, an SM keeps in flight."""
    row, channel_block = _program_blocks(C, BLOCK_Q)
    if WIDE:
        row = row.to(tl.int64)
    p = (row * BLOCK_P + tl.arange(0, BLOCK_P))[:, None]
    c = (channel_block * BLOCK_Q + tl.arange(0, BLOCK_Q))[None, :]
    rows = p < N * HL * WL
    run_channels = 3 * (C - channel_block * BLOCK_Q)
    return p // (WL * HL), c, (p // WL) % HL, p % WL, rows & (c < C), rows, channel_block, run_channels


@triton.jit
def _level_offsets(n, c, i, j, C, s_n, s_c, s_h, s_w, channel_block, BLOCK_Q: tl.constexpr, LEVEL: tl.constexpr,
                   LEVELS: tl.constexpr):
    """Offsets of channel c's LL at the top-left level-LEVEL position under each tile entry (level 0: the input
    pixels) and, per row, the offset of the program's run of high bands (channels C + 3 c0 ..., c0 its first
    channel), moved whole. Levels above LEVELS are unused: they get level LEVELS' offsets rather than a negative
    shift."""
    SHIFT: tl.constexpr = LEVELS - LEVEL if LEVEL <= LEVELS else 0
    rows = n * s_n + (i << SHIFT) * s_h + (j << SHIFT) * s_w
    return rows + c * s_c, rows + (C + 3 * (channel_block * BLOCK_Q)) * s_c


@triton.jit
def _run_entries(Q: tl.constexpr, run_channels, rows):
    """[1, 4Q] entries m of a program's run of high bands (channel c0 + m // 3, band m % 3: memory order) and the
    mask of those that exist: the first 3Q (4Q is the power of two above), of channels below C (`run_channels`:
    3 (C - c0)), on rows that exist."""
    m = tl.arange(0, 4 * Q)[None, :]
    return m, rows & (m < 3 * Q) & (m < run_channels)


@triton.jit
def _pick(value0, value1, value2, value3, INDEX: tl.constexpr):
    """One of four values, chosen at compile time."""
    picked = value0
    if INDEX == 1:
        picked = value1
    if INDEX == 2:
        picked = value2
    if INDEX == 3:
        picked = value3
    return picked


# --- Forward: the tile tree, walked up ----------------------------------------------------------------------------
@triton.jit
def _load_quad(x_ptr, pixels, x_h, x_w, T: tl.constexpr, mask):
    """The four pixels (a b / c d) of level-1 quad T under each tile entry, in the input's dtype. Quads come in
    Z-order: bit pairs (y, x) of T, finest last."""
    Y: tl.constexpr = 2 * (((T >> 1) & 1) | ((T >> 2) & 2) | ((T >> 3) & 4))
    X: tl.constexpr = 2 * ((T & 1) | ((T >> 1) & 2) | ((T >> 2) & 4))
    at = x_ptr + pixels + Y * x_h + X * x_w
    return (tl.load(at, mask=mask, other=0.0), tl.load(at + x_w, mask=mask, other=0.0),
            tl.load(at + x_h, mask=mask, other=0.0), tl.load(at + x_h + x_w, mask=mask, other=0.0))


@triton.jit
def _store_bands(ptr, base, run, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr, low, high_y, high_x, high_xy,
                 mask, rows, run_channels):
    tl.store(ptr + base + y * s_h + x * s_w, low, mask=mask)
    # Channel c's three high bands are channels C + 3c + k: the program's bands are one contiguous run of
    # 3 BLOCK_Q channels. Joined per channel (join(join(p, q), join(r, s)) flattens to p, r, q, s: high_y,
    # high_x, high_xy, high_xy), then gathered into memory order: entry m is slot m % 3 of channel m // 3.
    P: tl.constexpr = high_y.shape[0]
    Q: tl.constexpr = high_y.shape[1]
    joined = tl.reshape(tl.join(tl.join(high_y, high_xy), tl.join(high_x, high_xy)), (P, 4 * Q))
    m, run_mask = _run_entries(Q, run_channels, rows)
    source = tl.broadcast_to(tl.where(m < 3 * Q, 4 * (m // 3) + m % 3, 0), (P, 4 * Q))
    tl.store(ptr + run + y * s_h + x * s_w + m * s_c, tl.gather(joined, source, 1), mask=run_mask)


@triton.jit
def _add_child(low, high_y, high_x, high_xy, child_low, CHILD: tl.constexpr):
    """Add a child's LL into its parent's running (unscaled) bands; CHILD is its place in the quad: 0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right."""
    sign_y: tl.constexpr = 1 - 2 * (CHILD >> 1)
    sign_x: tl.constexpr = 1 - 2 * (CHILD & 1)
    return (low + child_low, high_y + sign_y * child_low, high_x + sign_x * child_low,
            high_xy + (sign_y * sign_x) * child_low)


@triton.jit
def _finish_node(low, high_y, high_x, high_xy, ptr, base, run, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr,
                 mask, rows, run_channels):
    """Store a complete node's bands (its four children's signed sums, halved) and return its LL."""
    low = low * 0.5
    _store_bands(ptr, base, run, s_c, s_h, s_w, y, x, low, high_y * 0.5, high_x * 0.5, high_xy * 0.5, mask, rows,
                 run_channels)
    return low


@triton.jit
def _haar_forward_kernel(x_ptr, out1, out2, out3, out4, N, C, HL, WL, x_n, x_c, x_h, x_w,
                         o1_n, o1_c, o1_h, o1_w, o2_n, o2_c, o2_h, o2_w, o3_n, o3_c, o3_h, o3_w,
                         o4_n, o4_c, o4_h, o4_w, LEVELS: tl.constexpr,
                         BLOCK_Q: tl.constexpr, WIDE: tl.constexpr, TILE: tl.constexpr, GROUP: tl.constexpr):
    BLOCK_P: tl.constexpr = TILE // BLOCK_Q
    QUADS: tl.constexpr = 1 << (2 * (LEVELS - 1))
    G: tl.constexpr = GROUP if GROUP < QUADS else QUADS
    n, c, i, j, mask, rows, channel_block, run_channels = _tile_indices(N, C, HL, WL, BLOCK_P, BLOCK_Q, WIDE)
    pixels, _ = _level_offsets(n, c, i, j, C, x_n, x_c, x_h, x_w, channel_block, BLOCK_Q, 0, LEVELS)
    base1, run1 = _level_offsets(n, c, i, j, C, o1_n, o1_c, o1_h, o1_w, channel_block, BLOCK_Q, 1, LEVELS)
    base2, run2 = _level_offsets(n, c, i, j, C, o2_n, o2_c, o2_h, o2_w, channel_block, BLOCK_Q, 2, LEVELS)
    base3, run3 = _level_offsets(n, c, i, j, C, o3_n, o3_c, o3_h, o3_w, channel_block, BLOCK_Q, 3, LEVELS)
    base4, run4 = _level_offsets(n, c, i, j, C, o4_n, o4_c, o4_h, o4_w, channel_block, BLOCK_Q, 4, LEVELS)
    zero = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    l2, y2, x2, xy2 = zero, zero, zero, zero  # running sums of the current level-2, -3 and -4 nodes
    l3, y3, x3, xy3 = zero, zero, zero, zero
    l4, y4, x4, xy4 = zero, zero, zero, zero
    unused = tl.zeros((BLOCK_P, BLOCK_Q), dtype=x_ptr.dtype.element_ty)
    a0, b0, c0, d0 = unused, unused, unused, unused  # the pixels of a group of G quads (slots past G: unused)
    a1, b1, c1, d1 = unused, unused, unused, unused
    a2, b2, c2, d2 = unused, unused, unused, unused
    a3, b3, c3, d3 = unused, unused, unused, unused
    for t in tl.static_range(QUADS):
        # A group's loads go out together, before any of its quads is used: G quads in flight, not one.
        if t % G == 0:
            a0, b0, c0, d0 = _load_quad(x_ptr, pixels, x_h, x_w, t, mask)
            if G >= 2:
                a1, b1, c1, d1 = _load_quad(x_ptr, pixels, x_h, x_w, t + 1, mask)
            if G >= 4:
                a2, b2, c2, d2 = _load_quad(x_ptr, pixels, x_h, x_w, t + 2, mask)
                a3, b3, c3, d3 = _load_quad(x_ptr, pixels, x_h, x_w, t + 3, mask)
        a = _pick(a0, a1, a2, a3, t % G).to(tl.float32)
        b = _pick(b0, b1, b2, b3, t % G).to(tl.float32)
        c_ = _pick(c0, c1, c2, c3, t % G).to(tl.float32)
        d = _pick(d0, d1, d2, d3, t % G).to(tl.float32)
        # level-1 position (y1, x1) of quad t inside the block; its ancestors' are its bits shifted
        y1 = ((t >> 1) & 1) | ((t >> 2) & 2) | ((t >> 3) & 4)
        x1 = (t & 1) | ((t >> 1) & 2) | ((t >> 2) & 4)
        low1 = (a + b + c_ + d) * 0.5
        _store_bands(out1, base1, run1, o1_c, o1_h, o1_w, y1, x1, low1, (a + b - c_ - d) * 0.5,
                     (a - b + c_ - d) * 0.5, (a - b - c_ + d) * 0.5, mask, rows, run_channels)
        if LEVELS >= 2:
            l2, y2, x2, xy2 = _add_child(l2, y2, x2, xy2, low1, t & 3)
            if (t & 3) == 3:  # level-2 node t >> 2 is complete
                low2 = _finish_node(l2, y2, x2, xy2, out2, base2, run2, o2_c, o2_h, o2_w, y1 >> 1, x1 >> 1, mask,
                                    rows, run_channels)
                l2, y2, x2, xy2 = zero, zero, zero, zero
                if LEVELS >= 3:
                    l3, y3, x3, xy3 = _add_child(l3, y3, x3, xy3, low2, (t >> 2) & 3)
                    if (t & 15) == 15:  # level-3 node t >> 4 is complete
                        low3 = _finish_node(l3, y3, x3, xy3, out3, base3, run3, o3_c, o3_h, o3_w, y1 >> 2,
                                            x1 >> 2, mask, rows, run_channels)
                        l3, y3, x3, xy3 = zero, zero, zero, zero
                        if LEVELS >= 4:
                            l4, y4, x4, xy4 = _add_child(l4, y4, x4, xy4, low3, (t >> 4) & 3)
                            if (t & 63) == 63:
                                _finish_node(l4, y4, x4, xy4, out4, base4, run4, o4_c, o4_h, o4_w, 0, 0, mask,
                                             rows, run_channels)


# --- Backward: the same tile tree, walked down -------------------------------------------------------------------
@triton.jit
def _load_bands(ptr, base, run, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr, mask, rows, run_channels):
    """The four bands' gradients of the nodes at (y, x) under each tile entry, in the tensor's dtype: the
    transpose of `_store_bands`, with the same run of high bands read whole."""
    low = tl.load(ptr + base + y * s_h + x * s_w, mask=mask, other=0.0)
    # band k of channel q is entry 3q + k of the run; gathered into four slots a channel (entry 4q + k: high_y,
    # high_x, high_xy, padding) and split apart, the inverse of `_store_bands`' joins and gather
    P: tl.constexpr = low.shape[0]
    Q: tl.constexpr = low.shape[1]
    m, run_mask = _run_entries(Q, run_channels, rows)
    bands = tl.load(ptr + run + y * s_h + x * s_w + m * s_c, mask=run_mask, other=0.0)
    source = tl.broadcast_to(tl.where(m % 4 < 3, 3 * (m // 4) + m % 4, 0), (P, 4 * Q))
    slots = tl.reshape(tl.gather(bands, source, 1), (P, Q, 2, 2))
    even, odd = tl.split(slots)  # slot 2a + b: b = 0 (high_y, high_xy) and b = 1 (high_x, padding)
    high_y, high_xy = tl.split(even)
    high_x, _ = tl.split(odd)
    return low, high_y, high_x, high_xy


@triton.jit
def _load_quad_bands(ptr, base, run, s_c, s_h, s_w, T: tl.constexpr, mask, rows, run_channels):
    """`_load_bands` of level-1 quad T (Z-order, as `_load_quad`)."""
    Y: tl.constexpr = ((T >> 1) & 1) | ((T >> 2) & 2) | ((T >> 3) & 4)
    X: tl.constexpr = (T & 1) | ((T >> 1) & 2) | ((T >> 2) & 4)
    return _load_bands(ptr, base, run, s_c, s_h, s_w, Y, X, mask, rows, run_channels)


@triton.jit
def _children(low, high_y, high_x, high_xy, from_parent):
    """Gradients of a node's four children (top-left, top-right, bottom-left, bottom-right) by Haar synthesis
    (the transform is orthogonal), from its own bands' gradients plus what reaches its LL from the coarser
    levels (`from_parent`)."""
    low = low.to(tl.float32) + from_parent
    high_y, high_x, high_xy = high_y.to(tl.float32), high_x.to(tl.float32), high_xy.to(tl.float32)
    return ((low + high_y + high_x + high_xy) * 0.5, (low + high_y - high_x - high_xy) * 0.5,
            (low - high_y + high_x - high_xy) * 0.5, (low - high_y - high_x + high_xy) * 0.5)


@triton.jit
def _node_children(ptr, base, run, s_c, s_h, s_w, y: tl.constexpr, x: tl.constexpr, from_parent, mask, rows,
                   run_channels):
    low, high_y, high_x, high_xy = _load_bands(ptr, base, run, s_c, s_h, s_w, y, x, mask, rows, run_channels)
    return _children(low, high_y, high_x, high_xy, from_parent)


@triton.jit
def _haar_backward_kernel(grad_x_ptr, g1, g2, g3, g4, N, C, HL, WL, x_n, x_c, x_h, x_w,
                          g1_n, g1_c, g1_h, g1_w, g2_n, g2_c, g2_h, g2_w, g3_n, g3_c, g3_h, g3_w,
                          g4_n, g4_c, g4_h, g4_w, LEVELS: tl.constexpr,
                          BLOCK_Q: tl.constexpr, WIDE: tl.constexpr, TILE: tl.constexpr, GROUP: tl.constexpr):
    BLOCK_P: tl.constexpr = TILE // BLOCK_Q
    QUADS: tl.constexpr = 1 << (2 * (LEVELS - 1))
    G: tl.constexpr = GROUP if GROUP < QUADS else QUADS
    n, c, i, j, mask, rows, channel_block, run_channels = _tile_indices(N, C, HL, WL, BLOCK_P, BLOCK_Q, WIDE)
    pixels, _ = _level_offsets(n, c, i, j, C, x_n, x_c, x_h, x_w, channel_block, BLOCK_Q, 0, LEVELS)
    base1, run1 = _level_offsets(n, c, i, j, C, g1_n, g1_c, g1_h, g1_w, channel_block, BLOCK_Q, 1, LEVELS)
    base2, run2 = _level_offsets(n, c, i, j, C, g2_n, g2_c, g2_h, g2_w, channel_block, BLOCK_Q, 2, LEVELS)
    base3, run3 = _level_offsets(n, c, i, j, C, g3_n, g3_c, g3_h, g3_w, channel_block, BLOCK_Q, 3, LEVELS)
    base4, run4 = _level_offsets(n, c, i, j, C, g4_n, g4_c, g4_h, g4_w, channel_block, BLOCK_Q, 4, LEVELS)
    zero = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    k2a, k2b, k2c, k2d = zero, zero, zero, zero  # children of the current level-2, -3 and -4 nodes
    k3a, k3b, k3c, k3d = zero, zero, zero, zero
    k4a, k4b, k4c, k4d = zero, zero, zero, zero
    unused = tl.zeros((BLOCK_P, BLOCK_Q), dtype=g1.dtype.element_ty)
    l0, y0, x0, xy0 = unused, unused, unused, unused  # level-1 bands of a group of G quads (past G: unused)
    l1, y1_, x1_, xy1 = unused, unused, unused, unused
    l2, y2, x2, xy2 = unused, unused, unused, unused
    l3, y3, x3, xy3 = unused, unused, unused, unused
    # The forward's walk in the same Z-order, each node synthesised on its first visit, before its children.
    for t in tl.static_range(QUADS):
        if t % G == 0:  # as in the forward: a group's loads go out together
            l0, y0, x0, xy0 = _load_quad_bands(g1, base1, run1, g1_c, g1_h, g1_w, t, mask, rows, run_channels)
            if G >= 2:
                l1, y1_, x1_, xy1 = _load_quad_bands(g1, base1, run1, g1_c, g1_h, g1_w, t + 1, mask, rows,
                                                     run_channels)
            if G >= 4:
                l2, y2, x2, xy2 = _load_quad_bands(g1, base1, run1, g1_c, g1_h, g1_w, t + 2, mask, rows,
                                                   run_channels)
                l3, y3, x3, xy3 = _load_quad_bands(g1, base1, run1, g1_c, g1_h, g1_w, t + 3, mask, rows,
                                                   run_channels)
        y1 = ((t >> 1) & 1) | ((t >> 2) & 2) | ((t >> 3) & 4)
        x1 = (t & 1) | ((t >> 1) & 2) | ((t >> 2) & 4)
        if LEVELS >= 4:
            if (t & 63) == 0:
                k4a, k4b, k4c, k4d = _node_children(g4, base4, run4, g4_c, g4_h, g4_w, 0, 0, zero, mask, rows,
                                                    run_channels)
        if LEVELS >= 3:
            if (t & 15) == 0:
                from4 = zero
                if LEVELS >= 4:
                    from4 = _pick(k4a, k4b, k4c, k4d, (t >> 4) & 3)
                k3a, k3b, k3c, k3d = _node_children(g3, base3, run3, g3_c, g3_h, g3_w, y1 >> 2, x1 >> 2, from4,
                                                    mask, rows, run_channels)
        if LEVELS >= 2:
            if (t & 3) == 0:
                from3 = zero
                if LEVELS >= 3:
                    from3 = _pick(k3a, k3b, k3c, k3d, (t >> 2) & 3)
                k2a, k2b, k2c, k2d = _node_children(g2, base2, run2, g2_c, g2_h, g2_w, y1 >> 1, x1 >> 1, from3,
                                                    mask, rows, run_channels)
        from2 = zero
        if LEVELS >= 2:
            from2 = _pick(k2a, k2b, k2c, k2d, t & 3)
        a, b, c_, d = _children(_pick(l0, l1, l2, l3, t % G), _pick(y0, y1_, y2, y3, t % G),
                                _pick(x0, x1_, x2, x3, t % G), _pick(xy0, xy1, xy2, xy3, t % G), from2)
        quad = pixels + (2 * y1) * x_h + (2 * x1) * x_w  # top-left input pixel of quad t
        tl.store(grad_x_ptr + quad, a, mask=mask)
        tl.store(grad_x_ptr + quad + x_w, b, mask=mask)
        tl.store(grad_x_ptr + quad + x_h, c_, mask=mask)
        tl.store(grad_x_ptr + quad + x_h + x_w, d, mask=mask)
