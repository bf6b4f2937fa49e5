"""TrivialAugmentWide and the normalisation in one Triton kernel: each output pixel read once, written once.

DALI's `trivial_augment_wide` runs its operations as separate kernels over the images that drew each one, then
normalises in another pass: about 1.9 ms of GPU time a batch of 128 at 256 px on an H100 (warp_affine 1.2 ms of it,
bench/NOTES.md), beside a training step that wants every SM. Here one launch does a whole batch: each image is
sampled through its own path, chosen per image (a scalar branch, so a program never runs two):
- LUT: a per-image, per-channel table of 256 entries (identity, brightness, contrast, posterize, solarize,
  autocontrast, equalize: every operation whose output pixel depends on that pixel's value alone);
- WARP: nearest sampling through the image's inverse affine matrix, 0 outside (shears, translations, rotations);
- COLOUR: a blend with the pixel's uint8 luma;
- SHARPNESS: a blend of the interior with its 3x3 smoothing, the border kept.
Then (value - mean) / std per channel, stored in the output's dtype and layout. loaders/augment.py turns
torchvision's draws into these tables and parameters (`fused_plan`); the arithmetic follows torchvision's tensor
implementation, roundings included: in Triton's interpreter the result equals the batched torch operations' bit for
bit (tests/test_augment.py); compiled, a GPU may contract a multiply-add differently and so, rarely, round a warp's
half-pixel or a luma the other way (tests/test_gpu.py bounds it). Runs on CUDA tensors, and on CPU tensors under
TRITON_INTERPRET=1 (the tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine import kernels

# jit functions read globals only as constexprs
LUT, WARP = tl.constexpr(kernels.AUGMENT_LUT), tl.constexpr(kernels.AUGMENT_WARP)
COLOUR, SHARPNESS = tl.constexpr(kernels.AUGMENT_COLOUR), tl.constexpr(kernels.AUGMENT_SHARPNESS)
# Output pixels a program, 4 warps each. Compiled for sm_90a (`python -m engine.bench.kernel_registers --augment`,
# no GPU needed): 48 registers a thread at 256 (two pixels a thread; 10 programs, 62 % of the threads an SM
# holds), 90 at 512, 128 at 1024 (four programs, 25 %). A gather of single bytes lives on how many are in flight,
# so the small block. Each pixel is computed alone, so the block changes no result: CPU tensors (Triton's
# interpreter, the tests) take 1024, 4x fewer programs to interpret.
BLOCK, INTERPRETER_BLOCK = 256, 1024


@triton.jit
def _round_half_even(value):
    """std::nearbyint under the default rounding mode, as grid_sample's nearest sampling rounds."""
    floor = tl.floor(value)
    difference = value - floor
    rounded = tl.where(difference > 0.5, floor + 1.0, floor)
    odd = (floor - 2.0 * tl.floor(floor * 0.5)) == 1.0
    return tl.where((difference == 0.5) & odd, floor + 1.0, rounded)


@triton.jit
def _to_bfloat16(value):
    """Round to nearest, ties to even, as torch's .to(torch.bfloat16) (finite values): by the bits, because Triton's
    interpreter, which the tests run, rounds a bfloat16 conversion otherwise (a GPU rounds the same either way)."""
    bits = value.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _sample(source_ptr, image_offset, row, column, channel, stride_c, stride_h, stride_w, valid):
    offsets = image_offset + channel * stride_c + row * stride_h + column * stride_w
    return tl.load(source_ptr + offsets, mask=valid, other=0).to(tl.float32)


@triton.jit
def _augment_normalise_kernel(source_ptr, out_ptr, modes_ptr, params_ptr, luts_ptr, mean_ptr, inverse_std_ptr,
                              height, width, src_n, src_c, src_h, src_w, out_n, out_c, out_h, out_w,
                              BLOCK: tl.constexpr, BFLOAT16: tl.constexpr):
    image = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = pixels < height * width
    row, column = pixels // width, pixels % width
    image_offset = image.to(tl.int64) * src_n
    out_offset = image.to(tl.int64) * out_n + row * out_h + column * out_w
    mode = tl.load(modes_ptr + image)
    params_ptr += image * 6
    p0, p1, p2 = tl.load(params_ptr), tl.load(params_ptr + 1), tl.load(params_ptr + 2)
    p3, p4, p5 = tl.load(params_ptr + 3), tl.load(params_ptr + 4), tl.load(params_ptr + 5)
    if mode == WARP:
        # torchvision's _affine_grid: the output pixel's centred coordinates through the inverse matrix (already
        # divided by half the sides), then grid_sample's unnormalisation and nearest rounding; zeros outside
        x_centred = column.to(tl.float32) + (1.0 - width) * 0.5
        y_centred = row.to(tl.float32) + (1.0 - height) * 0.5
        grid_x = x_centred * p0 + y_centred * p1 + p2
        grid_y = x_centred * p3 + y_centred * p4 + p5
        source_x = _round_half_even(((grid_x + 1.0) * width - 1.0) / 2.0)
        source_y = _round_half_even(((grid_y + 1.0) * height - 1.0) / 2.0)
        valid = inside & (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
        source_row, source_column = source_y.to(tl.int32), source_x.to(tl.int32)
    else:
        valid, source_row, source_column = inside, row, column
    luma = tl.zeros([BLOCK], dtype=tl.float32)
    if mode == COLOUR:
        red = _sample(source_ptr, image_offset, row, column, 0, src_c, src_h, src_w, inside)
        green = _sample(source_ptr, image_offset, row, column, 1, src_c, src_h, src_w, inside)
        blue = _sample(source_ptr, image_offset, row, column, 2, src_c, src_h, src_w, inside)
        luma = (red * 0.2989 + green * 0.587 + blue * 0.114).to(tl.uint8).to(tl.float32)  # truncated, as uint8
    for channel in tl.static_range(3):
        value = _sample(source_ptr, image_offset, source_row, source_column, channel, src_c, src_h, src_w, valid)
        if mode == LUT:
            value = tl.load(luts_ptr + (image * 3 + channel) * 256 + value.to(tl.int32), mask=inside, other=0)
            value = value.to(tl.float32)
        elif mode == COLOUR:
            # torch's add_(other, alpha=...) rounds its multiply-add once (a fused multiply-add); so does this, in
            # float64, where the product of two float32 values is exact (tl.fma would be too on a GPU, but the
            # interpreter the tests run rounds it twice)
            blend = (luma.to(tl.float64) * p1.to(tl.float64) + (value * p0).to(tl.float64)).to(tl.float32)
            value = tl.minimum(tl.maximum(blend, 0.0), 255.0).to(tl.uint8).to(tl.float32)
        elif mode == SHARPNESS:
            interior = inside & (row >= 1) & (row < height - 1) & (column >= 1) & (column < width - 1)
            neighbours = tl.zeros([BLOCK], dtype=tl.float32)
            for dy in tl.static_range(3):
                for dx in tl.static_range(3):
                    if dy * 3 + dx != 4:
                        neighbours += _sample(source_ptr, image_offset, row + dy - 1, column + dx - 1, channel,
                                              src_c, src_h, src_w, interior)
            blurred = _round_half_even(neighbours * (1.0 / 13.0) + value * (5.0 / 13.0))
            blended = tl.minimum(tl.maximum(value + (blurred - value) * p0, 0.0), 255.0).to(tl.uint8)
            value = tl.where(interior, blended.to(tl.float32), value)
        normalised = (value - tl.load(mean_ptr + channel)) * tl.load(inverse_std_ptr + channel)
        if BFLOAT16:
            stored = _to_bfloat16(normalised)
        else:
            stored = normalised.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + out_offset + channel * out_c, stored, mask=inside)


def augment_normalise(images: torch.Tensor, modes: torch.Tensor, params: torch.Tensor, luts: torch.Tensor,
                      mean: torch.Tensor, inverse_std: torch.Tensor, dtype: torch.dtype,
                      memory_format: torch.memory_format) -> torch.Tensor:
    """(N, 3, H, W) uint8, any strides -> (N, 3, H, W) `dtype` in `memory_format`: image i through its mode
    (int32 `modes[i]`), float32 `params[i]` (6 values) and uint8 `luts[i]` (3 x 256), then ((v - mean) * inverse_std)
    per channel (float32, 3 values each: the 0..255 scale)."""
    count, channels, height, width = images.shape
    if channels != 3:
        raise ValueError(f"the fused TrivialAugmentWide takes RGB images, not {channels} channels")
    out = torch.empty(images.shape, dtype=dtype, device=images.device, memory_format=memory_format)
    if count == 0:
        return out
    block = BLOCK if images.is_cuda else INTERPRETER_BLOCK
    grid = (count, triton.cdiv(height * width, block))
    _augment_normalise_kernel[grid](images, out, modes, params, luts, mean, inverse_std, height, width,
                                    *images.stride(), *out.stride(), BLOCK=block, BFLOAT16=dtype == torch.bfloat16,
                                    num_warps=4)
    return out
