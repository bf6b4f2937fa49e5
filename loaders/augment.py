"""TrivialAugmentWide on a whole batch of uint8 images, on their device, with torchvision's semantics.

torchvision's `v2.TrivialAugmentWide` transforms one image per call: on a GPU, a batch of 128 costs 128 chains
of small kernels. Here each image still makes its own draw, exactly the draws torchvision makes from that image's
seed (operation, magnitude bin, sign), and then each operation runs once over all the images that drew it, each
image with its own magnitude: at most 14 groups of kernels per batch.

Each operation follows torchvision's tensor implementation (v2.functional: the inverse affine matrix and grid of
`affine`/`rotate` with nearest sampling and fill 0, rotate's exact rot90 paths, `_blend` for brightness, colour,
contrast and sharpness, the posterize mask, the solarize threshold; autocontrast and equalize are torchvision's
own batched functions). The tests compare with torchvision image by image on the CPU: equal, bit for bit.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from functools import lru_cache, partial

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from engine import kernels
from engine.kernels import AUGMENT_COLOUR as COLOUR, AUGMENT_LUT as LUT, AUGMENT_SHARPNESS as SHARPNESS
from engine.kernels import AUGMENT_WARP as WARP
from engine.loaders.batching import to_device_async
from engine.trainer import cudnn_benchmark

log = logging.getLogger("engine")

NUM_BINS = 31  # torchvision's default, which the engine uses
# torchvision's augmentation space, in its order (the first draw indexes it): name -> (magnitudes, signed).
# The wide space's magnitudes do not depend on the image size.
SPACE = {name: (magnitudes(NUM_BINS, 0, 0), signed)
         for name, (magnitudes, signed) in v2.TrivialAugmentWide._AUGMENTATION_SPACE.items()}
NAMES = tuple(SPACE)


def _magnitude(name: str, magnitude_bin: int, negative: bool) -> float:
    magnitudes, signed = SPACE[name]
    if magnitudes is None:
        return 0.0
    magnitude = float(magnitudes[magnitude_bin])
    return -magnitude if signed and negative else magnitude


def draw(seed: int) -> tuple[str, float]:
    """The (operation, magnitude) torchvision's TrivialAugmentWide draws after torch.manual_seed(seed)."""
    generator = torch.Generator().manual_seed(seed)
    name = NAMES[int(torch.randint(len(NAMES), (), generator=generator))]
    if SPACE[name][0] is None:
        return name, 0.0
    magnitude_bin = int(torch.randint(NUM_BINS, (), generator=generator))
    return name, _magnitude(name, magnitude_bin, SPACE[name][1] and bool(torch.rand((), generator=generator) <= 0.5))


def random_draws(generator: np.random.Generator, count: int) -> list[tuple[str, float]]:
    """`count` draws from TrivialAugmentWide's distribution (an operation, then a magnitude bin and a sign, each
    uniform), made together: for batches that carry no image identity to seed each by (DALI's), where 128 torch
    generators a batch would cost the host milliseconds."""
    operations = generator.integers(len(NAMES), size=count)
    magnitude_bins = generator.integers(NUM_BINS, size=count)
    negative = generator.random(count) <= 0.5
    return [(NAMES[operation], _magnitude(NAMES[operation], magnitude_bin, sign))
            for operation, magnitude_bin, sign in zip(operations.tolist(), magnitude_bins.tolist(), negative.tolist())]


def _values(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small host list (per-image parameters, slots) as a tensor on `device`, without a synchronisation."""
    return to_device_async(torch.tensor(values, dtype=dtype), device)


def trivial_augment_wide(images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """(N, C, H, W) uint8 -> the same, image i augmented as torchvision would after torch.manual_seed(seeds[i])."""
    return augmented(images, [draw(seed) for seed in seeds])


def augmented(images: torch.Tensor, draws: list[tuple[str, float]]) -> torch.Tensor:
    """(N, C, H, W) uint8 -> the same, image i through `draws[i]` = (operation, magnitude)."""
    groups = defaultdict(list)
    for slot, (name, magnitude) in enumerate(draws):
        groups[name].append((slot, magnitude))
    out = images.clone()
    for name, members in groups.items():
        if name == "Identity":
            continue
        slots = _values([slot for slot, _ in members], images.device)
        out[slots] = OPERATIONS[name](images[slots], [magnitude for _, magnitude in members])
    return out


# --- Geometry: torchvision's inverse affine matrix and sampling grid, one matrix per image ----------------------------
def _inverse_affine(center: tuple[float, float], angle: float, translate: tuple[float, float],
                    shear: tuple[float, float]) -> list[float]:
    """torchvision's `_get_inverse_affine_matrix` at scale 1 (angle and shear in degrees, center relative to the
    image centre): the matrix that maps output pixels to input pixels."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += cx - matrix[0] * (cx + tx) - matrix[1] * (cy + ty)
    matrix[5] += cy - matrix[3] * (cx + tx) - matrix[4] * (cy + ty)
    return matrix


def _warp(images: torch.Tensor, matrices: list[list[float]]) -> torch.Tensor:
    """Nearest-neighbour sampling through each image's inverse matrix, 0 outside (torchvision's `_affine_grid`
    and `_apply_grid_transform` without a fill mask, batched over the matrices)."""
    count, _, height, width = images.shape
    device = images.device
    theta = _values(matrices, device, torch.float32).view(count, 2, 3)
    base = torch.empty(1, height, width, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height,
                                      device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scale = _values([0.5 * width, 0.5 * height], device, torch.float32)
    grid = base.view(1, height * width, 3).expand(count, -1, -1).bmm(theta.transpose(1, 2) / scale)
    sampled = F.grid_sample(images.float(), grid.view(count, height, width, 2), mode="nearest",
                            padding_mode="zeros", align_corners=False)
    return sampled.round_().to(images.dtype)


def _along(axis: int, value: float) -> tuple[float, float]:
    """(value, 0) for x (axis 0), (0, value) for y (axis 1)."""
    return (value, 0.0) if axis == 0 else (0.0, value)


def _shear_matrix(height: int, width: int, magnitude: float, axis: int) -> list[float]:
    corner = (-0.5 * width, -0.5 * height)  # TrivialAugment shears about the top-left corner
    return _inverse_affine(corner, 0.0, (0.0, 0.0), _along(axis, math.degrees(math.atan(magnitude))))


def _translate_matrix(magnitude: float, axis: int) -> list[float]:
    return _inverse_affine((0.0, 0.0), 0.0, _along(axis, float(int(magnitude))), (0.0, 0.0))


def _rotate_matrix(angle: float) -> list[float]:
    return _inverse_affine((0.0, 0.0), -angle, (0.0, 0.0), (0.0, 0.0))


def _quarter_turns(angle: float, height: int, width: int) -> int | None:
    """torchvision rotates by rot90, exactly, for multiples of 90 degrees (of 180 only, on a non-square image)."""
    turns = {0.0: 0, 180.0: 2, **({90.0: 1, 270.0: 3} if height == width else {})}
    return turns.get(angle % 360)


def _shear(images, magnitudes, axis: int):
    height, width = images.shape[-2:]
    return _warp(images, [_shear_matrix(height, width, m, axis) for m in magnitudes])


def _translate(images, magnitudes, axis: int):
    return _warp(images, [_translate_matrix(m, axis) for m in magnitudes])


def _rotate(images, magnitudes):
    """torchvision's rotate: exact rot90 for quarter turns (`_quarter_turns`), else the warp about the centre."""
    height, width = images.shape[-2:]
    turns = [_quarter_turns(m, height, width) for m in magnitudes]
    out = torch.empty_like(images)
    warped = [(slot, m % 360) for slot, (m, turn) in enumerate(zip(magnitudes, turns)) if turn is None]
    for slot, turn in enumerate(turns):
        if turn is not None:
            out[slot] = torch.rot90(images[slot], k=turn, dims=(-2, -1))
    if warped:
        slots = _values([slot for slot, _ in warped], images.device)
        out[slots] = _warp(images[slots], [_rotate_matrix(angle) for _, angle in warped])
    return out


# --- Colour: torchvision's blends with one factor per image -------------------------------------------------------
def _per_image(values, images: torch.Tensor) -> torch.Tensor:
    return _values(values, images.device, torch.float32).view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, ratios: list[float]) -> torch.Tensor:
    """ratio * image + (1 - ratio) * other, clamped and truncated to uint8, as torchvision's `_blend`."""
    ratio = _per_image(ratios, images)
    weight = _per_image([1.0 - r for r in ratios], images)  # 1 - ratio in double, as torchvision's alpha
    # addcmul: one fused multiply-add, as torchvision's add_(other, alpha=...), so the roundings agree too
    return images.mul(ratio).addcmul_(other.expand_as(images), weight).clamp_(0, 255).to(images.dtype)


def _grey(images: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(images).float()  # uint8 luma, i.e. floored, as torchvision blends with


def _brightness(images, magnitudes):
    return images.mul(_per_image([1.0 + m for m in magnitudes], images)).clamp_(0, 255).to(images.dtype)


def _colour(images, magnitudes):
    return _blend(images, _grey(images), [1.0 + m for m in magnitudes])


def _contrast(images, magnitudes):
    return _blend(images, _grey(images).mean(dim=(-3, -2, -1), keepdim=True), [1.0 + m for m in magnitudes])


def _sharpness(images, magnitudes):
    """Blend with a 3x3 smoothing of the interior (border pixels stay), as torchvision's adjust_sharpness."""
    channels, height, width = images.shape[-3:]
    if height <= 2 or width <= 2:
        return images
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = _values([[a, a, a], [a, b, a], [a, a, a]], images.device).expand(channels, 1, 3, 3)
    output = images.float()
    # Without cuDNN's algorithm search (on while training): how many images drew Sharpness changes from batch to
    # batch, so each new count would be a new shape for it to time, tens of milliseconds each, for a blur its
    # heuristic choice runs well (the likely reason the resident loader made only 0.9-1.1k img/s alone on an H100).
    with cudnn_benchmark(False):
        blurred = F.conv2d(output, kernel, groups=channels).round_()
    interior = output[..., 1:-1, 1:-1]
    weight = _per_image([1.0 - (1.0 + m) for m in magnitudes], images)  # 1 - factor, in double as torchvision
    interior.addcmul_(blurred.sub_(interior), weight)
    return output.clamp_(0, 255).to(images.dtype)


# --- Pixel maps -------------------------------------------------------------------------------------------------------
def _posterize(images, magnitudes):
    masks = [((1 << int(bits)) - 1) << (8 - int(bits)) if int(bits) < 8 else 255 for bits in magnitudes]
    return images & _values(masks, images.device, torch.uint8).view(-1, 1, 1, 1)


def _solarize(images, magnitudes):
    threshold = _per_image([255.0 * m for m in magnitudes], images)
    return torch.where(images >= threshold, 255 - images, images)


OPERATIONS = {
    "ShearX": partial(_shear, axis=0), "ShearY": partial(_shear, axis=1),
    "TranslateX": partial(_translate, axis=0), "TranslateY": partial(_translate, axis=1),
    "Rotate": _rotate, "Brightness": _brightness, "Color": _colour, "Contrast": _contrast, "Sharpness": _sharpness,
    "Posterize": _posterize, "Solarize": _solarize,
    "AutoContrast": lambda images, magnitudes: TF.autocontrast(images),
    "Equalize": lambda images, magnitudes: TF.equalize(images),
}


# --- The fused kernel's plan (kernels/trivial_augment.py): a mode, six parameters and a table per image --------------
# The kernel samples every pixel once, so each operation above is recast as what it does to one pixel: a table
# of 256 values per channel, a warp matrix, or a blend's weights. Tables that need no pixels are made on the host;
# those that need an image's statistics (its mean luma, its extremes, its histogram) on the device, by the same
# tensor arithmetic as torchvision's, over the images that drew them.
IDENTITY_TABLE = np.arange(256, dtype=np.uint8)
_TABLE_INPUT = np.arange(256, dtype=np.float32)


def _posterize_table(bits: float) -> np.ndarray:
    bits = int(bits)
    return IDENTITY_TABLE & np.uint8(((1 << bits) - 1) << (8 - bits) if bits < 8 else 255)


def _solarize_table(magnitude: float) -> np.ndarray:
    return np.where(_TABLE_INPUT >= np.float32(255.0 * magnitude), 255 - IDENTITY_TABLE, IDENTITY_TABLE)


HOST_TABLES = {  # operation -> magnitude -> (256,) uint8, every channel alike
    "Identity": lambda magnitude: IDENTITY_TABLE,
    "Brightness": lambda magnitude: np.clip(_TABLE_INPUT * np.float32(1.0 + magnitude), 0, 255).astype(np.uint8),
    "Posterize": _posterize_table,
    "Solarize": _solarize_table,
}


def _table_input(count: int, device: torch.device) -> torch.Tensor:
    """(count, 1, 1, 256) uint8: every pixel value, as an 'image' the per-pixel arithmetic runs over."""
    return torch.arange(256, dtype=torch.uint8, device=device).expand(count, 1, 1, 256)


def _contrast_tables(images: torch.Tensor, magnitudes: list[float]) -> torch.Tensor:
    means = _grey(images).mean(dim=(-3, -2, -1), keepdim=True)
    tables = _blend(_table_input(len(images), images.device), means, [1.0 + m for m in magnitudes])
    return tables.view(len(images), 1, 256).expand(-1, 3, -1)


def _autocontrast_tables(images: torch.Tensor, magnitudes: list[float]) -> torch.Tensor:
    """torchvision's autocontrast_image per channel; torch.where instead of its masked assignment, which would
    synchronise the device."""
    pixels = images.float()
    minimum, maximum = pixels.amin(dim=(-2, -1), keepdim=True), pixels.amax(dim=(-2, -1), keepdim=True)
    flat = maximum == minimum
    inverse_scale = torch.where(flat, 1.0, maximum.sub(minimum).mul_(1.0 / 255))
    minimum = torch.where(flat, 0.0, minimum)
    values = _table_input(1, images.device).float()
    return values.sub(minimum).div_(inverse_scale).clamp_(0, 255).to(torch.uint8).view(len(images), 3, 256)


def _equalize_tables(images: torch.Tensor, magnitudes: list[float]) -> torch.Tensor:
    """torchvision's equalize_image, stopped at its lookup table (identity where it leaves a channel as it is)."""
    flat = images.flatten(start_dim=-2).long()
    histogram = flat.new_zeros(flat.shape[:-1] + (256,), dtype=torch.int32)
    histogram.scatter_add_(dim=-1, index=flat, src=histogram.new_ones(1).expand_as(flat))
    cumulative = histogram.cumsum(dim=-1)
    last = cumulative.argmax(dim=-1, keepdim=True)
    step = (flat.shape[-1] - histogram.gather(dim=-1, index=last)).div_(255, rounding_mode="floor")
    tables = cumulative[..., :-1].add(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    tables = torch.cat([tables.new_zeros(tables.shape[:-1] + (1,)), tables], dim=-1).to(torch.uint8)
    return torch.where(step.ne(0), tables, _table_input(1, images.device).view(1, 1, 256))


DEVICE_TABLES = {"Contrast": _contrast_tables, "AutoContrast": _autocontrast_tables, "Equalize": _equalize_tables}


def _rotation_for_kernel(height: int, width: int, angle: float) -> list[float] | None:
    """The inverse matrix of a rotation, None for none; a quarter turn's with exact 0 and 1 entries, so that
    nearest sampling lands on whole pixels as torchvision's rot90 does."""
    turns = _quarter_turns(angle, height, width)
    if turns == 0:
        return None
    matrix = _rotate_matrix(angle % 360)
    return matrix if turns is None else [float(round(value)) for value in matrix]


MATRICES = {  # operation -> (height, width, magnitude) -> inverse affine matrix (None: the identity)
    "ShearX": lambda height, width, m: _shear_matrix(height, width, m, 0),
    "ShearY": lambda height, width, m: _shear_matrix(height, width, m, 1),
    "TranslateX": lambda height, width, m: _translate_matrix(m, 0),
    "TranslateY": lambda height, width, m: _translate_matrix(m, 1),
    "Rotate": _rotation_for_kernel,
}
BLENDS = {  # operation -> (kernel mode, magnitude -> its float32 parameters), as _colour and _sharpness blend
    "Color": (COLOUR, lambda m: [1.0 + m, 1.0 - (1.0 + m)]),
    "Sharpness": (SHARPNESS, lambda m: [1.0 - (1.0 + m)]),
}


def _kernel_matrix(matrix: list[float], height: int, width: int) -> np.ndarray:
    """torchvision's float32 theta divided by half the sides, as its _affine_grid rescales it."""
    return np.float32(matrix) / np.float32([0.5 * width] * 3 + [0.5 * height] * 3)


@lru_cache(maxsize=4096)
def _host_plan(name: str, magnitude: float, height: int, width: int) -> tuple[int, np.ndarray, np.ndarray]:
    """An image's (mode, 6 float32 parameters, 256-entry table) for an operation that needs none of its pixels.
    Made once a run for each of the few hundred (operation, magnitude) pairs at the run's image size: a batch's
    plan then costs the host a lookup an image instead of its matrix or table (bench/NOTES.md, thirty-second
    session)."""
    params = np.zeros(6, np.float32)
    if name in MATRICES:
        matrix = MATRICES[name](height, width, magnitude)
        if matrix is None:
            return LUT, params, IDENTITY_TABLE
        return WARP, _kernel_matrix(matrix, height, width), IDENTITY_TABLE
    if name in BLENDS:
        mode, weights = BLENDS[name][0], BLENDS[name][1](magnitude)
        params[:len(weights)] = weights
        return mode, params, IDENTITY_TABLE
    return LUT, params, HOST_TABLES[name](magnitude)


def fused_plan(images: torch.Tensor, draws: list[tuple[str, float]]):
    """(modes, params, tables) on the images' device for `kernels.trivial_augment.augment_normalise`: image i
    through `draws[i]` = (operation, magnitude), as `draw` returns them."""
    count, _, height, width = images.shape
    modes, params = np.full(count, LUT, np.int32), np.zeros((count, 6), np.float32)
    tables = np.empty((count, 3, 256), np.uint8)
    on_device = defaultdict(list)
    for slot, (name, magnitude) in enumerate(draws):
        if name in DEVICE_TABLES:
            on_device[name].append((slot, magnitude))  # its table is made below; its mode and parameters: LUT, 0
            continue
        modes[slot], params[slot], tables[slot] = _host_plan(name, magnitude, height, width)
    device = images.device
    tables = to_device_async(torch.from_numpy(tables), device)
    for name, members in on_device.items():
        slots = _values([slot for slot, _ in members], device)
        tables[slots] = DEVICE_TABLES[name](images[slots], [magnitude for _, magnitude in members])
    return to_device_async(torch.from_numpy(modes), device), to_device_async(torch.from_numpy(params), device), tables


def fused_trivial_augment(images: torch.Tensor, draws: list[tuple[str, float]], mean: torch.Tensor,
                          inverse_std: torch.Tensor, dtype: torch.dtype,
                          memory_format: torch.memory_format) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> TrivialAugmentWide by `draws`, normalised ((v - mean) * inverse_std, 0..255 scale,
    3 values each) to `dtype` in `memory_format`, by one kernel over the batch (plus the statistics some
    operations need). CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    from engine.kernels.trivial_augment import augment_normalise

    modes, params, tables = fused_plan(images, draws)
    return augment_normalise(images, modes, params, tables, mean.reshape(3).float(), inverse_std.reshape(3).float(),
                             dtype, memory_format)


def fused_available(device: torch.device) -> bool:
    """Whether the fused kernel runs for batches on `device`: CUDA, with triton. Elsewhere the batched torch
    operations above do the same work (on a GPU without triton that is slower, and said once)."""
    if device.type != "cuda":
        return False
    if kernels.triton_available():
        return True
    kernels.warn_once("triton is not installed: TrivialAugmentWide runs as batched torch ops on the GPU (slower)")
    return False


def fused_for(loader: str, device: torch.device) -> bool:
    """`fused_available`, with the line in the run's log that says which path augments `loader`'s batches."""
    fused = fused_available(device)
    log.info("%s: TrivialAugmentWide and the normalisation by %s", loader,
             "one fused kernel a batch" if fused else "batched torch operations")
    return fused


def augment_and_normalise(images: torch.Tensor, draws: list[tuple[str, float]], normalise, fused: bool):
    """(N, 3, H, W) uint8 on the device -> augmented by `draws` and normalised by `normalise` (a
    torch_pipeline.DeviceNormaliser: its mean, scale, dtype and memory format), by the fused kernel or by the
    batched torch operations and the normaliser: the same numbers (tests/test_augment.py)."""
    if fused:
        return fused_trivial_augment(images, draws, normalise.mean, normalise.inverse_std, normalise.dtype,
                                     normalise.memory_format)
    return normalise.images(augmented(images, draws))
