"""The built-in `demo` dataset: procedurally drawn textured shapes, generated on first use.

Six classes of patterns (stripes, checks, dots, rings, solid, speckle). Each image has a random two-colour
gradient background with clutter (lines and small polygons), and one patch of its class's pattern in two random
colours of contrasting brightness, with random period, angle, outline (disc, square, ellipse), size and
position, plus pixel noise.
Hard enough that a randomly initialised network needs several epochs (ResNet-50 from scratch: about 34 % after
3 epochs, 74 % after 14); easy enough that it learns on a 2-core CPU in about three minutes (bench/NOTES.md).
Written as JPEG files in the standard train/test layout, so every loader reads it exactly like a user's dataset.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import UserInputError
from engine.results import read_json

log = logging.getLogger("engine")

GENERATOR_VERSION = 3  # bump when the drawing changes: part of every image's seed; an older copy is replaced
SIDE = 64  # pixels, square; drawn at 4x and downsampled for anti-aliased edges
SUPERSAMPLE = 4
IMAGES_PER_CLASS = {"train": 100, "test": 30}
JPEG_QUALITY = 90


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _luminance(colour) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _ink_and_paper(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two random colours far apart in brightness, so the pattern shows in every channel; which is darker is
    random too."""
    while True:
        dark, light = _colour(rng), _colour(rng)
        if _luminance(dark) < 90 and _luminance(light) > 165:
            return (dark, light) if rng.random() < 0.5 else (light, dark)


def _rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _regular_polygon(sides: int, radius: float) -> list[tuple[float, float]]:
    return [(radius * math.cos(2 * math.pi * i / sides), radius * math.sin(2 * math.pi * i / sides))
            for i in range(sides)]


# Class patterns: boolean "ink" masks from coordinates u, v (rotated, in pixels of the drawn image), the
# distance from the patch centre, and the period p. Textures rather than outlines: a randomly initialised
# network picks up local, repeated structure within a few epochs, while outlines of shapes need far more data.
def _stripes(u, v, dist, p, rng):
    return (u // (p / 2)) % 2 == 0


def _checks(u, v, dist, p, rng):
    return ((u // (p / 2)) + (v // (p / 2))) % 2 == 0


def _dots(u, v, dist, p, rng):
    return (u % p - p / 2) ** 2 + (v % p - p / 2) ** 2 < (0.3 * p) ** 2


def _rings(u, v, dist, p, rng):
    return (dist // (p / 2)) % 2 == 0


def _solid(u, v, dist, p, rng):
    return np.ones_like(u, dtype=bool)


def _speckle(u, v, dist, p, rng):
    cells = max(2, int(u.shape[0] / (0.4 * p)) + 1)
    noise = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8)).resize(u.shape[::-1], Image.BILINEAR)
    return np.asarray(noise) > 127


CLASSES = {"stripes": _stripes, "checks": _checks, "dots": _dots, "rings": _rings, "solid": _solid, "speckle": _speckle}


def _patch(rng: np.random.Generator, pattern, r: float, ink, paper) -> Image.Image:
    """A 2r x 2r RGBA patch: the pattern in two colours, cut to a disc, square or ellipse of random angle."""
    size = int(2 * r)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    angle = rng.uniform(0, math.pi)
    u = (xx - r) * math.cos(angle) + (yy - r) * math.sin(angle) + size
    v = -(xx - r) * math.sin(angle) + (yy - r) * math.cos(angle) + size
    dist = np.hypot(xx - r, yy - r)
    period = rng.uniform(0.22, 0.4) * r
    on = pattern(u, v, dist, period, rng)
    outline = rng.integers(3)
    su, sv = (u - size) / r, (v - size) / r
    inside = [dist <= r, np.maximum(abs(su), abs(sv)) <= 0.72, su ** 2 + (sv / 0.6) ** 2 <= 1][outline]
    pixels = np.zeros((size, size, 4), np.uint8)
    pixels[..., :3] = np.where(on[..., None], ink, paper)
    pixels[..., 3] = np.where(inside, 255, 0)
    return Image.fromarray(pixels, "RGBA")


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    start, end = np.array(_colour(rng), float), np.array(_colour(rng), float)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:side, 0:side] / side
    t = np.clip((xx * math.cos(angle) + yy * math.sin(angle) + 1) / 2, 0, 1)[..., None]
    pixels = (start * (1 - t) + end * t).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    for _ in range(rng.integers(1, 4)):
        points = [tuple(rng.uniform(0, side, 2)) for _ in range(2)]
        draw.line(points, fill=_colour(rng), width=SUPERSAMPLE)
    for _ in range(rng.integers(0, 2)):
        cx, cy = rng.uniform(0, side, 2)
        r = rng.uniform(0.04, 0.1) * side
        draw.polygon(_rotated(_regular_polygon(int(rng.integers(3, 7)), r), rng.uniform(0, 6.3), cx, cy),
                     fill=_colour(rng))


def draw_image(label: int, split_id: int, index: int) -> Image.Image:
    """One image of class `label`; the same arguments give the same pixels."""
    rng = np.random.default_rng([GENERATOR_VERSION, split_id, label, index])
    side = SIDE * SUPERSAMPLE
    image = _background(rng, side)
    draw = ImageDraw.Draw(image)
    _clutter(draw, rng, side)
    r = rng.uniform(0.36, 0.5) * side
    x, y = rng.uniform(0, side - 2 * r, 2)
    ink, paper = _ink_and_paper(rng)
    patch = _patch(rng, list(CLASSES.values())[label], r, ink, paper)
    image.paste(patch, (int(x), int(y)), patch)
    image = image.resize((SIDE, SIDE), Image.LANCZOS)
    noisy = np.asarray(image, np.int16) + rng.normal(0, 5, (SIDE, SIDE, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _write(folder: Path) -> None:
    for split_id, (split, count) in enumerate(IMAGES_PER_CLASS.items()):
        for label, name in enumerate(CLASSES):
            class_dir = folder / split / name
            class_dir.mkdir(parents=True)
            for index in range(count):
                draw_image(label, split_id, index).save(class_dir / f"{name}_{index:04d}.jpg", quality=JPEG_QUALITY)
    meta = {"name": "demo", "classes": list(CLASSES), "generator_version": GENERATOR_VERSION,
            "counts": {split: count * len(CLASSES) for split, count in IMAGES_PER_CLASS.items()}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def ensure_demo(data_root: Path) -> Path:
    """The demo dataset's folder under `data_root`, generated first if it is not there.

    Generated into a private temporary folder and renamed into place, so an interrupted generation never
    leaves a folder that looks complete, and two processes generating at once both end with one copy.
    """
    target = Path(data_root) / "demo"
    if is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".demo.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    log.info("generating the demo dataset in %s (once)", target)
    _write(temporary)
    if target.exists() and not is_current(target):  # made by an older generator
        shutil.rmtree(target, ignore_errors=True)
    try:
        temporary.rename(target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def is_current(folder: Path) -> bool:
    """Whether `folder` holds a complete demo dataset made by this generator."""
    try:
        meta = read_json(Path(folder) / "meta.json")
    except UserInputError:  # cut short: made again
        return False
    return meta is not None and meta.get("generator_version") == GENERATOR_VERSION
