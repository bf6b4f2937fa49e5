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

import math
from collections import defaultdict
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from engine.loaders.batching import to_device_async
from engine.trainer import cudnn_benchmark

NUM_BINS = 31  # torchvision's default, which the engine uses
# torchvision's augmentation space, in its order (the first draw indexes it): name -> (magnitudes, signed).
# The wide space's magnitudes do not depend on the image size.
SPACE = {name: (magnitudes(NUM_BINS, 0, 0), signed)
         for name, (magnitudes, signed) in v2.TrivialAugmentWide._AUGMENTATION_SPACE.items()}
NAMES = tuple(SPACE)


def draw(seed: int) -> tuple[str, float]:
    """The (operation, magnitude) torchvision's TrivialAugmentWide draws after torch.manual_seed(seed)."""
    generator = torch.Generator().manual_seed(seed)
    name = NAMES[int(torch.randint(len(NAMES), (), generator=generator))]
    magnitudes, signed = SPACE[name]
    if magnitudes is None:
        return name, 0.0
    magnitude = float(magnitudes[int(torch.randint(NUM_BINS, (), generator=generator))])
    if signed and torch.rand((), generator=generator) <= 0.5:
        magnitude *= -1
    return name, magnitude


def _values(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small host list (per-image parameters, slots) as a tensor on `device`, without a synchronisation."""
    return to_device_async(torch.tensor(values, dtype=dtype), device)


def trivial_augment_wide(images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """(N, C, H, W) uint8 -> the same, image i augmented as torchvision would after torch.manual_seed(seeds[i])."""
    groups = defaultdict(list)
    for slot, seed in enumerate(seeds):
        name, magnitude = draw(seed)
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


def _shear(images, magnitudes, axis: int):
    height, width = images.shape[-2:]
    corner = (-0.5 * width, -0.5 * height)  # TrivialAugment shears about the top-left corner
    return _warp(images, [_inverse_affine(corner, 0.0, (0.0, 0.0), _along(axis, math.degrees(math.atan(m))))
                          for m in magnitudes])


def _translate(images, magnitudes, axis: int):
    return _warp(images, [_inverse_affine((0.0, 0.0), 0.0, _along(axis, float(int(m))), (0.0, 0.0))
                          for m in magnitudes])


def _rotate(images, magnitudes):
    """torchvision's rotate: exact rot90 for multiples of 90 degrees (of 180 only, on a non-square image), else
    the warp about the centre."""
    square = images.shape[-1] == images.shape[-2]
    quarter_turns = {0.0: 0, 180.0: 2, **({90.0: 1, 270.0: 3} if square else {})}
    out = torch.empty_like(images)
    warped = [(slot, m % 360) for slot, m in enumerate(magnitudes) if m % 360 not in quarter_turns]
    for slot, m in enumerate(magnitudes):
        if m % 360 in quarter_turns:
            out[slot] = torch.rot90(images[slot], k=quarter_turns[m % 360], dims=(-2, -1))
    if warped:
        slots = _values([slot for slot, _ in warped], images.device)
        out[slots] = _warp(images[slots], [_inverse_affine((0.0, 0.0), -angle, (0.0, 0.0), (0.0, 0.0))
                                           for _, angle in warped])
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
