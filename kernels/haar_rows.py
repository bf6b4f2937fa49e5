"""The NCHW Haar DWT kernels: a row pyramid. In NCHW memory a channel's rows are contiguous, so each program owns
[BLOCK_P, BLOCK_X] tiles of image rows: P enumerates (n, c, level-L row), X input columns. It reads the 2^L input
rows under each level-L row as whole tiles (coalesced, vectorised), walks them as a binary tree (two level-l rows
make one level-(l+1) row), and pairs columns inside the tile (reshape + split; join to interleave them back in
the backward). A thread's consecutive columns, which vector loads give it, pair in its own registers.

Level-l rows are BLOCK_X >> l wide; the host makes BLOCK_X a power of two >= 2^L. The forward stores each band
plane's row as one contiguous tile; the backward synthesises each node's two child rows from its bands' gradients
plus what reaches its LL from its parent, down to the input's rows. Same launch arguments as the tile tree
(kernels/haar_tiles.py) with W the input width; arithmetic in fp32, results in the tensors' dtype.
"""
from __future__ import annotations

import triton
import triton.language as tl

from engine.kernels.haar_tiles import _pick


@triton.jit
def _row_indices(N, C, HL, BLOCK_P: tl.constexpr, WIDE: tl.constexpr):
    """(n, c, i) of this program's level-L rows, each [BLOCK_P, 1], and the mask of those that exist."""
    row = tl.program_id(0)
    if WIDE:
        row = row.to(tl.int64)
    p = (row * BLOCK_P + tl.arange(0, BLOCK_P))[:, None]
    return p // (HL * C), (p // HL) % C, p % HL, p < N * C * HL


@triton.jit
def _columns(W, BLOCK_X: tl.constexpr, LEVEL: tl.constexpr, LEVELS: tl.constexpr):
    """[1, BLOCK_X >> LEVEL] columns of level LEVEL (0: the input) under this program, and their mask. Levels
    above LEVELS are unused: they get one column rather than none."""
    WIDTH: tl.constexpr = BLOCK_X >> LEVEL if LEVEL <= LEVELS else 1
    x = (tl.program_id(1) * WIDTH + tl.arange(0, WIDTH))[None, :]
    return x, x < (W >> LEVEL)


@triton.jit
def _rows_base(n, c, i, C, s_n, s_c, s_h, LEVEL: tl.constexpr, LEVELS: tl.constexpr):
    """Offset of channel c's first level-LEVEL row under each level-L row, and from there to its first high band
    (channel C + 3c)."""
    SHIFT: tl.constexpr = LEVELS - LEVEL if LEVEL <= LEVELS else 0
    return n * s_n + c * s_c + (i << SHIFT) * s_h, (C + 2 * c) * s_c


@triton.jit
def _row_level(n, c, i, in_rows, C, W, s_n, s_c, s_h, BLOCK_X: tl.constexpr, LEVEL: tl.constexpr,
               LEVELS: tl.constexpr):
    """Level LEVEL's columns under this program, their mask, the offset of channel c's first row there, and from
    that row to its first high band."""
    x, mask = _columns(W, BLOCK_X, LEVEL, LEVELS)
    base, to_high = _rows_base(n, c, i, C, s_n, s_c, s_h, LEVEL, LEVELS)
    return x, mask & in_rows, base, to_high


@triton.jit
def _pick_row(top, bottom, INDEX: tl.constexpr):
    picked = top
    if INDEX == 1:
        picked = bottom
    return picked


# --- Forward -----------------------------------------------------------------------------------------------------
@triton.jit
def _load_rows(x_ptr, base, x_h, x_w, x, mask, T: tl.constexpr):
    """Input rows 2T and 2T + 1 under each level-L row, in the input's dtype."""
    at = x_ptr + base + (2 * T) * x_h + x * x_w
    return tl.load(at, mask=mask, other=0.0), tl.load(at + x_h, mask=mask, other=0.0)


@triton.jit
def _row_bands(top, bottom, BLOCK_P: tl.constexpr, WIDTH: tl.constexpr):
    """The four bands (each WIDTH / 2 wide) of two rows WIDTH wide: columns paired inside the tile."""
    a, b = tl.split(tl.reshape(top, (BLOCK_P, WIDTH // 2, 2)))
    c, d = tl.split(tl.reshape(bottom, (BLOCK_P, WIDTH // 2, 2)))
    return (a + b + c + d) * 0.5, (a + b - c - d) * 0.5, (a - b + c - d) * 0.5, (a - b - c + d) * 0.5


@triton.jit
def _store_row(ptr, base, to_high, s_c, s_h, s_w, ROW: tl.constexpr, x, mask, low, high_y, high_x, high_xy):
    at = base + ROW * s_h + x * s_w
    tl.store(ptr + at, low, mask=mask)
    tl.store(ptr + at + to_high, high_y, mask=mask)
    tl.store(ptr + at + to_high + s_c, high_x, mask=mask)
    tl.store(ptr + at + to_high + 2 * s_c, high_xy, mask=mask)


@triton.jit
def _haar_rows_forward_kernel(x_ptr, out1, out2, out3, out4, N, C, HL, W, x_n, x_c, x_h, x_w,
                              o1_n, o1_c, o1_h, o1_w, o2_n, o2_c, o2_h, o2_w, o3_n, o3_c, o3_h, o3_w,
                              o4_n, o4_c, o4_h, o4_w, LEVELS: tl.constexpr, BLOCK_X: tl.constexpr,
                              WIDE: tl.constexpr, TILE: tl.constexpr, GROUP: tl.constexpr):
    BLOCK_P: tl.constexpr = TILE // BLOCK_X
    ROWS: tl.constexpr = 1 << (LEVELS - 1)  # level-1 rows under a level-L row
    G: tl.constexpr = GROUP if GROUP < ROWS else ROWS
    n, c, i, in_rows = _row_indices(N, C, HL, BLOCK_P, WIDE)
    x0, m0, pixels, _ = _row_level(n, c, i, in_rows, C, W, x_n, x_c, x_h, BLOCK_X, 0, LEVELS)
    x1, m1, base1, high1 = _row_level(n, c, i, in_rows, C, W, o1_n, o1_c, o1_h, BLOCK_X, 1, LEVELS)
    x2, m2, base2, high2 = _row_level(n, c, i, in_rows, C, W, o2_n, o2_c, o2_h, BLOCK_X, 2, LEVELS)
    x3, m3, base3, high3 = _row_level(n, c, i, in_rows, C, W, o3_n, o3_c, o3_h, BLOCK_X, 3, LEVELS)
    x4, m4, base4, high4 = _row_level(n, c, i, in_rows, C, W, o4_n, o4_c, o4_h, BLOCK_X, 4, LEVELS)
    WIDTH1: tl.constexpr = BLOCK_X >> 1  # level-l rows are BLOCK_X >> l wide (unused levels: 1)
    WIDTH2: tl.constexpr = BLOCK_X >> 2 if LEVELS >= 3 else 1
    WIDTH3: tl.constexpr = BLOCK_X >> 3 if LEVELS >= 4 else 1
    pending2 = tl.zeros((BLOCK_P, WIDTH1), dtype=tl.float32)  # the top LL row of a pair, awaiting the bottom one
    pending3 = tl.zeros((BLOCK_P, WIDTH2), dtype=tl.float32)
    pending4 = tl.zeros((BLOCK_P, WIDTH3), dtype=tl.float32)
    unused = tl.zeros((BLOCK_P, BLOCK_X), dtype=x_ptr.dtype.element_ty)
    t0, b0, t1, b1, t2, b2, t3, b3 = unused, unused, unused, unused, unused, unused, unused, unused
    for t in tl.static_range(ROWS):
        if t % G == 0:  # a group's rows are loaded before any is used: more loads in flight
            t0, b0 = _load_rows(x_ptr, pixels, x_h, x_w, x0, m0, t)
            if G >= 2:
                t1, b1 = _load_rows(x_ptr, pixels, x_h, x_w, x0, m0, t + 1)
            if G >= 4:
                t2, b2 = _load_rows(x_ptr, pixels, x_h, x_w, x0, m0, t + 2)
                t3, b3 = _load_rows(x_ptr, pixels, x_h, x_w, x0, m0, t + 3)
        top = _pick(t0, t1, t2, t3, t % G).to(tl.float32)
        bottom = _pick(b0, b1, b2, b3, t % G).to(tl.float32)
        low1, y1, z1, d1 = _row_bands(top, bottom, BLOCK_P, BLOCK_X)
        _store_row(out1, base1, high1, o1_c, o1_h, o1_w, t, x1, m1, low1, y1, z1, d1)
        if LEVELS >= 2:
            if t % 2 == 0:
                pending2 = low1
            else:  # level-2 row t >> 1 is complete
                low2, y2, z2, d2 = _row_bands(pending2, low1, BLOCK_P, BLOCK_X >> 1)
                _store_row(out2, base2, high2, o2_c, o2_h, o2_w, t >> 1, x2, m2, low2, y2, z2, d2)
                if LEVELS >= 3:
                    if (t >> 1) % 2 == 0:
                        pending3 = low2
                    else:
                        low3, y3, z3, d3 = _row_bands(pending3, low2, BLOCK_P, BLOCK_X >> 2)
                        _store_row(out3, base3, high3, o3_c, o3_h, o3_w, t >> 2, x3, m3, low3, y3, z3, d3)
                        if LEVELS >= 4:
                            if (t >> 2) % 2 == 0:
                                pending4 = low3
                            else:
                                low4, y4, z4, d4 = _row_bands(pending4, low3, BLOCK_P, BLOCK_X >> 3)
                                _store_row(out4, base4, high4, o4_c, o4_h, o4_w, 0, x4, m4, low4, y4, z4, d4)


# --- Backward ----------------------------------------------------------------------------------------------------
@triton.jit
def _load_row(ptr, base, to_high, s_c, s_h, s_w, ROW: tl.constexpr, x, mask):
    """The four bands' gradients of level row ROW under each level-L row, in the tensor's dtype."""
    at = base + ROW * s_h + x * s_w
    return (tl.load(ptr + at, mask=mask, other=0.0), tl.load(ptr + at + to_high, mask=mask, other=0.0),
            tl.load(ptr + at + to_high + s_c, mask=mask, other=0.0),
            tl.load(ptr + at + to_high + 2 * s_c, mask=mask, other=0.0))


@triton.jit
def _row_children(low, high_y, high_x, high_xy, from_parent, BLOCK_P: tl.constexpr, WIDTH: tl.constexpr):
    """Gradients of a row's two child rows (top, bottom; WIDTH wide, twice the row) by Haar synthesis, from its
    bands' gradients plus what reaches its LL from its parent; columns interleaved back by join."""
    low = low.to(tl.float32) + from_parent
    high_y, high_x, high_xy = high_y.to(tl.float32), high_x.to(tl.float32), high_xy.to(tl.float32)
    top = tl.reshape(tl.join((low + high_y + high_x + high_xy) * 0.5, (low + high_y - high_x - high_xy) * 0.5),
                     (BLOCK_P, WIDTH))
    bottom = tl.reshape(tl.join((low - high_y + high_x - high_xy) * 0.5, (low - high_y - high_x + high_xy) * 0.5),
                        (BLOCK_P, WIDTH))
    return top, bottom


@triton.jit
def _haar_rows_backward_kernel(grad_x_ptr, g1, g2, g3, g4, N, C, HL, W, x_n, x_c, x_h, x_w,
                               g1_n, g1_c, g1_h, g1_w, g2_n, g2_c, g2_h, g2_w, g3_n, g3_c, g3_h, g3_w,
                               g4_n, g4_c, g4_h, g4_w, LEVELS: tl.constexpr, BLOCK_X: tl.constexpr,
                               WIDE: tl.constexpr, TILE: tl.constexpr, GROUP: tl.constexpr):
    BLOCK_P: tl.constexpr = TILE // BLOCK_X
    ROWS: tl.constexpr = 1 << (LEVELS - 1)
    G: tl.constexpr = GROUP if GROUP < ROWS else ROWS
    n, c, i, in_rows = _row_indices(N, C, HL, BLOCK_P, WIDE)
    x0, m0, pixels, _ = _row_level(n, c, i, in_rows, C, W, x_n, x_c, x_h, BLOCK_X, 0, LEVELS)
    x1, m1, base1, high1 = _row_level(n, c, i, in_rows, C, W, g1_n, g1_c, g1_h, BLOCK_X, 1, LEVELS)
    x2, m2, base2, high2 = _row_level(n, c, i, in_rows, C, W, g2_n, g2_c, g2_h, BLOCK_X, 2, LEVELS)
    x3, m3, base3, high3 = _row_level(n, c, i, in_rows, C, W, g3_n, g3_c, g3_h, BLOCK_X, 3, LEVELS)
    x4, m4, base4, high4 = _row_level(n, c, i, in_rows, C, W, g4_n, g4_c, g4_h, BLOCK_X, 4, LEVELS)
    WIDTH1: tl.constexpr = BLOCK_X >> 1  # level-l rows are BLOCK_X >> l wide (unused levels: 1)
    WIDTH2: tl.constexpr = BLOCK_X >> 2 if LEVELS >= 2 else 1
    WIDTH3: tl.constexpr = BLOCK_X >> 3 if LEVELS >= 3 else 1
    WIDTH4: tl.constexpr = BLOCK_X >> 4 if LEVELS >= 4 else 1
    # The LL-gradient rows a node hands its two children (rows of the level below), and zeros of each width.
    zero1, zero2 = tl.zeros((BLOCK_P, WIDTH1), dtype=tl.float32), tl.zeros((BLOCK_P, WIDTH2), dtype=tl.float32)
    zero3, zero4 = tl.zeros((BLOCK_P, WIDTH3), dtype=tl.float32), tl.zeros((BLOCK_P, WIDTH4), dtype=tl.float32)
    k2_top, k2_bottom = zero1, zero1
    k3_top, k3_bottom = zero2, zero2
    k4_top, k4_bottom = zero3, zero3
    unused = tl.zeros((BLOCK_P, WIDTH1), dtype=g1.dtype.element_ty)
    l0, y0, z0, d0 = unused, unused, unused, unused  # level-1 bands of a group of G rows (past G: unused)
    l1, y1, z1, d1 = unused, unused, unused, unused
    l2, y2, z2, d2 = unused, unused, unused, unused
    l3, y3, z3, d3 = unused, unused, unused, unused
    for t in tl.static_range(ROWS):
        if t % G == 0:
            l0, y0, z0, d0 = _load_row(g1, base1, high1, g1_c, g1_h, g1_w, t, x1, m1)
            if G >= 2:
                l1, y1, z1, d1 = _load_row(g1, base1, high1, g1_c, g1_h, g1_w, t + 1, x1, m1)
            if G >= 4:
                l2, y2, z2, d2 = _load_row(g1, base1, high1, g1_c, g1_h, g1_w, t + 2, x1, m1)
                l3, y3, z3, d3 = _load_row(g1, base1, high1, g1_c, g1_h, g1_w, t + 3, x1, m1)
        # each node on its first visit, before its children: level-4 row 0, level-3 row t >> 2, ...
        if LEVELS >= 4:
            if t % 8 == 0:
                low, high_y, high_x, high_xy = _load_row(g4, base4, high4, g4_c, g4_h, g4_w, 0, x4, m4)
                k4_top, k4_bottom = _row_children(low, high_y, high_x, high_xy, zero4, BLOCK_P, WIDTH3)
        if LEVELS >= 3:
            if t % 4 == 0:
                from4 = zero3
                if LEVELS >= 4:
                    from4 = _pick_row(k4_top, k4_bottom, (t >> 2) & 1)
                low, high_y, high_x, high_xy = _load_row(g3, base3, high3, g3_c, g3_h, g3_w, t >> 2, x3, m3)
                k3_top, k3_bottom = _row_children(low, high_y, high_x, high_xy, from4, BLOCK_P, WIDTH2)
        if LEVELS >= 2:
            if t % 2 == 0:
                from3 = zero2
                if LEVELS >= 3:
                    from3 = _pick_row(k3_top, k3_bottom, (t >> 1) & 1)
                low, high_y, high_x, high_xy = _load_row(g2, base2, high2, g2_c, g2_h, g2_w, t >> 1, x2, m2)
                k2_top, k2_bottom = _row_children(low, high_y, high_x, high_xy, from3, BLOCK_P, WIDTH1)
        from2 = zero1
        if LEVELS >= 2:
            from2 = _pick_row(k2_top, k2_bottom, t & 1)
        top, bottom = _row_children(_pick(l0, l1, l2, l3, t % G), _pick(y0, y1, y2, y3, t % G),
                                    _pick(z0, z1, z2, z3, t % G), _pick(d0, d1, d2, d3, t % G), from2,
                                    BLOCK_P, BLOCK_X)
        at = grad_x_ptr + pixels + (2 * t) * x_h + x0 * x_w
        tl.store(at, top, mask=m0)
        tl.store(at + x_h, bottom, mask=m0)
