"""Fused multi-level Haar DWT in Triton: all levels from one read of the input, and the matching backward.

Two kernel families, one per memory layout, each a forward and a backward:
- channels_last, the layout the engine trains in: a tile tree whose tiles run along the channels
  (kernels/haar_tiles.py);
- NCHW: a row pyramid whose tiles run along image rows (kernels/haar_rows.py).
This module launches them. Outputs are laid out as `haar_torch` documents; arithmetic is fp32, results are stored
in the tensors' dtype. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (the tests).

Bytes in flight. A memory-bound kernel needs many loads outstanding per SM. The third session's channels_last
forward (one quad's loads at a time, 64-bit offsets, 48 channels padded to 64-wide tiles) used 142 registers a
thread (ptxas, sm_90): an SM held 3 programs, each waiting on one quad's 4 loads at a time; on an H100,
(128, 48, 64, 64) bf16, 3 levels, its forward took 0.150 ms, 0.28 of copy (bench/NOTES.md). Now index arithmetic
is 32-bit (64-bit only for tensors past 2^31 elements), tiles are as wide as the largest power of two dividing
the channels (48 -> 16: no masked lanes), and a GROUP of quads (or row pairs) is loaded before any is used.
Which tile, warp count and group is fastest is the GPU's to tell: each kernel is autotuned per
shape on its first launch over its family's configurations (`python -m engine.bench.kernel_registers` gives
their registers and loads in flight without a GPU; `python -m engine.bench.dwt --configs` times them on one).
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import triton

from engine.kernels.haar_rows import _haar_rows_backward_kernel, _haar_rows_forward_kernel
from engine.kernels.haar_tiles import _haar_backward_kernel, _haar_forward_kernel
from engine.kernels.haar_torch import check_levels, memory_format_of

log = logging.getLogger("engine")
_tuned_shapes: set = set()

MAX_LEVELS = 4
MAX_BLOCK_Q, MIN_BLOCK_Q = 64, 8  # tile tree: channels a tile spans
MAX_BLOCK_X = 128  # row pyramid: input columns a tile spans
# Tile-tree configurations. TILE = BLOCK_P * BLOCK_Q positions a program; GROUP: level-1 quads whose loads go out
# together. Every one moves the high bands as one contiguous run of 16-byte vectors and launches the programs
# that share pixels side by side (haar_tiles: `_store_bands`, `_program_blocks`). On the fourteenth session's H100
# (bench/NOTES.md; bf16, channels_last, (128, 48, 64, 64), 3 levels) these five ran forward + backward at 0.68-0.76
# of copy each, and the autotuner's pick of one forward and one backward at 0.80; the eight others it timed then
# (on a 2-D grid, the bands as three tiles 3 channels apart: 0.14-0.32; gathered: 0.51-0.64) are gone, and ~60 % of
# the compiling and timing a new shape's first launch costs. The small tiles (128, 64: 3-6k programs for that
# shape) cut the tail: at TILE 512 its 768 programs are 1.2 waves of an H100, and the last wave runs on a sixth
# of the SMs. The first is the forward's pick there; (512, 2, 4) the backward's.
TILE_CONFIGS = [{"TILE": tile, "GROUP": group, "num_warps": warps}
                for tile, group, warps in ((64, 4, 1), (512, 2, 4), (128, 4, 2), (256, 4, 4), (512, 4, 8))]
# Row-pyramid configurations. TILE = BLOCK_P * BLOCK_X input pixels a row tile; GROUP: level-1 rows (input row
# pairs) whose loads go out together.
ROW_CONFIGS = [{"TILE": tile, "GROUP": group, "num_warps": warps}
               for tile, group, warps in ((512, 1, 4), (512, 2, 4), (1024, 2, 4), (1024, 4, 8), (2048, 2, 8),
                                          (256, 4, 2))]
INTERPRETER_CONFIGS = {torch.channels_last: {"TILE": 512, "GROUP": 4},  # CPU tensors: nothing to time
                       torch.contiguous_format: {"TILE": 512, "GROUP": 2}}


def _block_q(extent: int) -> int:
    """Tile width along the channels: the largest power of two dividing them (48 -> 16), so no lane is masked and
    each row stays one contiguous run; when that is under MIN_BLOCK_Q, the power of two covering them (lanes past
    it masked). At most MAX_BLOCK_Q."""
    divisor = min(extent & -extent, MAX_BLOCK_Q)
    return divisor if divisor >= MIN_BLOCK_Q else min(triton.next_power_of_2(extent), MAX_BLOCK_Q)


def _block_x(width: int, levels: int) -> int:
    """Row tile width: the power of two covering a row (up to MAX_BLOCK_X), at least 2^levels columns so that
    every level keeps one."""
    return max(min(triton.next_power_of_2(width), MAX_BLOCK_X), 1 << levels)


def _tile_geometry(dense: torch.Tensor, levels: int):
    n, c, h, w = dense.shape
    sizes = (n, c, h >> levels, w >> levels)  # N, C, HL, WL
    return sizes, n * (h >> levels) * (w >> levels), c, _block_q(c)


def _row_geometry(dense: torch.Tensor, levels: int):
    n, c, h, w = dense.shape
    sizes = (n, c, h >> levels, w)  # N, C, HL, W
    return sizes, n * c * (h >> levels), w, _block_x(w, levels)


# The autotuner's timings kept on disk (Triton's cache, keyed by Triton's version, the GPU, the kernel's source, the
# shape and the configurations): a later run of the same shape on the same machine (the grid's next dataset or
# seed) takes the choice instead of compiling and timing every configuration again. Older Tritons lack it.
AUTOTUNE_OPTIONS = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


def _autotuned(kernel, configs: list[dict], key: list[str]):
    return triton.autotune(configs=[triton.Config({k: v for k, v in c.items() if k != "num_warps"},
                                                  num_warps=c["num_warps"]) for c in configs], key=key,
                           **AUTOTUNE_OPTIONS)(kernel)


@dataclass(frozen=True)
class KernelFamily:
    """A layout's forward and backward kernels, the configurations their autotuners choose from, and how a
    tensor of that layout maps onto programs: geometry(dense, levels) -> (sizes, rows, extent, block), the
    programs covering rows x extent with tiles `block` wide along the contiguous axis (the kernels' `block_name`),
    launched on grid(row blocks, blocks along the contiguous axis)."""
    name: str
    forward: object
    backward: object
    configs: list[dict]
    geometry: Callable
    grid: Callable
    block_name: str
    width_name: str

    def __post_init__(self):
        key = ["N", "C", "HL", self.width_name, "LEVELS"]
        object.__setattr__(self, "tuned", {"forward": _autotuned(self.forward, self.configs, key),
                                           "backward": _autotuned(self.backward, self.configs, key)})


def _channel_blocks_adjacent(row_blocks: int, blocks: int) -> tuple[int]:
    """One axis, a row block's channel blocks side by side (haar_tiles._program_blocks says why)."""
    return (row_blocks * blocks,)


def _row_blocks_then_columns(row_blocks: int, blocks: int) -> tuple[int, int]:
    return row_blocks, blocks


FAMILIES = {
    torch.channels_last: KernelFamily("tile tree", _haar_forward_kernel, _haar_backward_kernel, TILE_CONFIGS,
                                      _tile_geometry, _channel_blocks_adjacent, "BLOCK_Q", "WL"),
    torch.contiguous_format: KernelFamily("row pyramid", _haar_rows_forward_kernel, _haar_rows_backward_kernel,
                                          ROW_CONFIGS, _row_geometry, _row_blocks_then_columns, "BLOCK_X", "W"),
}


def configs_for(channels_last: bool) -> list[dict]:
    """The launch configurations the autotuner picks from for tensors of that layout."""
    return FAMILIES[torch.channels_last if channels_last else torch.contiguous_format].configs


def _launch(direction: str, dense: torch.Tensor, per_level: list[torch.Tensor], levels: int,
            config: dict | None) -> None:
    """Run the `direction` kernel of `dense`'s layout over `dense` (the input, or its gradient) and the per-level
    tensors: on a GPU through its autotuner unless a config is given; on CPU tensors (TRITON_INTERPRET=1) with
    the layout's INTERPRETER_CONFIGS entry."""
    layout = memory_format_of(dense)
    family = FAMILIES[layout]
    sizes, rows, extent, block = family.geometry(dense, levels)

    def grid(meta):
        row_blocks, blocks = triton.cdiv(rows, meta["TILE"] // block), triton.cdiv(extent, block)
        return family.grid(row_blocks, blocks)

    padded = per_level + [dense] * (MAX_LEVELS - levels)  # unused slots: any valid pointer, never touched
    arguments = [dense, *padded, *sizes, *dense.stride(), *(s for tensor in padded for s in tensor.stride())]
    constants = {"LEVELS": levels, family.block_name: block,
                 "WIDE": any(_spans_wide_offsets(t) for t in (dense, *per_level))}
    if config is None and dense.is_cuda:
        shape = (direction, tuple(dense.shape), layout, dense.dtype)
        if shape not in _tuned_shapes:  # the first launch per shape times every config: say why it pauses
            log.info("Haar DWT %s (%s) for %s %s: picking one of %d launch configurations (timed once per shape "
                     "on this machine, then read from Triton's cache)", direction, family.name, tuple(dense.shape),
                     str(dense.dtype).removeprefix("torch."), len(family.configs))
            _tuned_shapes.add(shape)
        family.tuned[direction][grid](*arguments, **constants)
        return
    config = dict(config or INTERPRETER_CONFIGS[layout])
    constants["WIDE"] = config.pop("WIDE", constants["WIDE"])  # the tests force 64-bit offsets this way
    kernel = family.forward if direction == "forward" else family.backward
    kernel[grid](*arguments, **constants, **config)


def _spans_wide_offsets(tensor: torch.Tensor) -> bool:
    return sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride())) >= 2**31 - 1


def check_supported_levels(levels: int) -> None:
    if levels > MAX_LEVELS:
        raise ValueError(f"the fused Haar DWT handles up to {MAX_LEVELS} levels, got {levels}")


def haar_dwt_triton(x: torch.Tensor, levels: int, config: dict | None = None) -> list[torch.Tensor]:
    """The forward kernel; `config` (one of `configs_for(layout)`; WIDE to force 64-bit offsets) bypasses the
    autotuner."""
    check_levels(x.shape, levels)
    check_supported_levels(levels)
    n, c, h, w = x.shape
    layout = memory_format_of(x)
    outputs = [torch.empty((n, 4 * c, h >> level, w >> level), device=x.device, dtype=x.dtype, memory_format=layout)
               for level in range(1, levels + 1)]
    _launch("forward", x, outputs, levels, config)
    return outputs


def haar_dwt_backward_triton(output_grads: list[torch.Tensor], channels_last: bool,
                             config: dict | None = None) -> torch.Tensor:
    levels = len(output_grads)
    check_supported_levels(levels)
    n, c4, h1, w1 = output_grads[0].shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    grad = torch.empty((n, c4 // 4, 2 * h1, 2 * w1), device=output_grads[0].device, dtype=output_grads[0].dtype,
                       memory_format=layout)
    _launch("backward", grad, list(output_grads), levels, config)
    return grad


def chosen_configs() -> dict[str, list]:
    """What the autotuners picked so far in this process, per family and direction: (key, config) pairs."""
    return {f"{family.name} {direction}": [(list(map(str, key)), str(config)) for key, config in tuned.cache.items()]
            for family in FAMILIES.values() for direction, tuned in family.tuned.items()}
