"""The GPU-resident pipeline for datasets of small images (CIFAR 32 px, EuroSAT and Tiny ImageNet 64 px, any
dataset whose decoded copy fits a memory budget): every image is decoded once into a uint8 array, cached on
disk next to the dataset, and kept on the training device; each batch is gathered, resized and augmented
there, so no epoch decodes a file again (the airbench way).

Augmentation is torchvision's TrivialAugmentWide on device tensors, each image's draw seeded by (seed, epoch,
image) as in the torch pipeline, applied to the whole batch at once and equal to torchvision's per-image result: on
a GPU with triton one fused kernel that also normalises (kernels/trivial_augment.py), elsewhere one group of
torch operations per operation drawn (loaders/augment.py).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine import distributed
from engine.distributed import SINGLE, Shard
from engine.errors import UserInputError, first_sentence
from engine.locks import held_in_turn
from engine.progress import Progress
from engine.results import remove_unfinished_writes, replace_atomically
from engine.loaders.augment import augment_and_normalise, draw, fused_for
from engine.loaders.batching import BatchCounts, held_ahead, made_ahead, side_stream, to_device_async
from engine.loaders.index import DatasetIndex
from engine.loaders.splits import Sample
from engine.loaders.torch_pipeline import DeviceNormaliser, draw_seed, epoch_order, read_rgb
from engine.scheduler import memory_share

log = logging.getLogger("engine")

SMALL_SIDE = 64  # images up to this side are worth keeping resident
CPU_BUDGET_BYTES = 4 << 30
# Of the card's memory, for each split's copy. The batch autotuner fills up to MEMORY_CAP (90 %) of the card with
# the training step before any loader exists: the copy takes half of what it leaves (times the run's share, where
# runs are packed), so that it cannot push a tuned step out of memory.
GPU_BUDGET_SHARE = 0.05


def image_sides(index: DatasetIndex, samples: list[Sample], probe: int | None = None) -> set[tuple[int, int]]:
    """The distinct (height, width) of the samples' images (of the first `probe` ones), read from headers."""
    sides = set()
    for relative_path, _ in samples[:probe]:
        with Image.open(index.root / relative_path) as image:
            sides.add((image.height, image.width))
    return sides


def has_small_images(index: DatasetIndex, probe: int = 16) -> bool:
    return all(max(side) <= SMALL_SIDE for side in image_sides(index, index.train, probe))


def _budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * GPU_BUDGET_SHARE * memory_share())
    return CPU_BUDGET_BYTES


def _copy_size(index: DatasetIndex, samples: list[Sample], image_size: tuple[int, int],
               probe: int | None = None) -> tuple[tuple[int, int], int]:
    """(side, bytes) of the samples' uint8 copy: at the images' own side where they share one (of the first
    `probe`) no larger than the run's (small images, resized per batch on the device), else at the run's
    (resized once, at decoding, as the torch loader resizes: the smaller copy)."""
    sides = image_sides(index, samples, probe)
    own = sides.pop() if len(sides) == 1 else None
    side = own if own is not None and math.prod(own) <= math.prod(image_size) else tuple(image_size)
    return side, len(samples) * math.prod(side) * 3


def fits_budget(index: DatasetIndex, image_size: tuple[int, int], device: torch.device, probe: int = 16) -> bool:
    """Whether every split's decoded copy fits the resident budget on `device`, the side taken from the first
    `probe` images of each (what `--loader auto` decides on; the loader checks every image)."""
    budget = _budget(device)
    return all(_copy_size(index, split, image_size, probe)[1] <= budget
               for split in (index.train, index.test, index.val) if split)


def _cache_folder(index: DatasetIndex) -> Path:
    folder = index.root / ".engine-cache"
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = Path.home() / ".cache" / "engine" / "resident" / index.name
    log.info("%s is not writable: caching decoded images in %s", index.root, fallback)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


# How images are decoded into the copy. Raised whenever that changes, so a copy made the old way is never read:
# 3 reads floating-point greyscale as 0..1 (torch_pipeline.unit_float_grey), 2 and 1 as 0..255; 2 reads 16-bit
# greyscale by its high byte (torch_pipeline.eight_bit_grey), 1 clipped it to white.
DECODING_VERSION = 3


def _content_key(index: DatasetIndex, samples: list[Sample]) -> str:
    """Names the decoded copy of these files as they are now: an image replaced under the same name (a corrupt
    one fixed, a dataset prepared again) changes its size or modification time, so a stale copy is never read."""
    stamps = [f"decoding {DECODING_VERSION}"]
    for relative, _ in samples:
        stat = (index.root / relative).stat()
        stamps.append(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha1("\n".join(stamps).encode()).hexdigest()[:16]


def decoded_images(index: DatasetIndex, samples: list[Sample], side: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 of the samples, from the disk cache, or decoded (and resized to `side` where a source
    image differs) and cached."""
    path = _cache_folder(index) / f"{_content_key(index, samples)}-{side[0]}x{side[1]}.npy"
    shape = (len(samples), side[0], side[1], 3)
    copy = _read_copy(path, shape)
    if copy is not None:
        return copy
    # a grid's cells of one dataset start together on several GPUs: one decodes, using every core, the others
    # wait for its copy instead of each decoding the same images on a share of the cores
    with held_in_turn(path.with_name(f".{path.name}.lock"), f"decoding {index.name}'s images into {path}"):
        copy = _read_copy(path, shape, say_damage=True)
        if copy is not None:
            return copy
        remove_unfinished_writes(path.parent, path.name)  # a killed decode's
        return _decode_into(path, index, samples, side)


def _read_copy(path: Path, shape: tuple[int, ...], say_damage: bool = False) -> np.ndarray | None:
    """The decoded copy at `path`, or None where there is none or it is damaged (a disk fault, a copy cut short
    by hand): it is a cache, decoded again rather than ending the run."""
    if not path.exists():
        return None
    try:
        copy = np.load(path)
    except (ValueError, EOFError, OSError) as err:
        problem = first_sentence(err)
    else:
        if copy.shape == shape and copy.dtype == np.uint8:
            return copy
        problem = f"{copy.dtype} {copy.shape}, not uint8 {shape}"
    if say_damage:
        log.warning("the decoded copy %s is damaged (%s): decoding again", path, problem)
    return None


def _decode_into(path: Path, index: DatasetIndex, samples: list[Sample], side: tuple[int, int]) -> np.ndarray:
    threads = os.cpu_count() or 1
    log.info("decoding %d images once into %s (%d threads)", len(samples), path, threads)
    array = np.empty((len(samples), side[0], side[1], 3), np.uint8)

    def decode(position: int) -> None:
        image = read_rgb(index.root / samples[position][0])
        if image.size != (side[1], side[0]):
            image = image.resize((side[1], side[0]), Image.BILINEAR)
        array[position] = np.asarray(image)

    # PIL releases the GIL while it decodes and resizes: threads share the work without copying the array
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool, \
            Progress(f"decoding {index.name}", len(samples)) as progress:
        for _ in pool.map(decode, range(len(samples))):  # consumed, so that a decoding error is raised here
            progress.update(1)
    replace_atomically(path, lambda handle: np.save(handle, array))
    return array


class ResidentBatches(BatchCounts):
    """Batches of one split, from a uint8 copy of the whole split held on the device."""

    @staticmethod
    def parallelism(workers: int) -> str:
        return "decoded once, then gathered and augmented on the device"  # the decoding uses every core

    def __init__(self, index: DatasetIndex, samples: list[Sample], *, image_size: tuple[int, int], augment: bool,
                 batch_size: int, train: bool, device: torch.device, seed: int, workers: int, channels_last: bool,
                 dtype: torch.dtype = torch.float32, shard: Shard = SINGLE):
        side, needed = _copy_size(index, samples, image_size)
        if needed > _budget(device):
            raise UserInputError(f"{index.name}'s decoded images need {needed / 2**30:.1f} GiB, over the resident "
                                 f"loader's budget on {device} ({_budget(device) / 2**30:.1f} GiB); use --loader "
                                 f"dali or torch")
        # In a distributed run rank 0 decodes and caches; the others then read its cache instead of decoding
        # the same files at the same time.
        array = distributed.main_first(lambda: decoded_images(index, samples, side))
        if array is None:
            array = decoded_images(index, samples, side)
        # NHWC bytes seen as NCHW: channels_last without a copy.
        self.images = torch.from_numpy(array).to(device).permute(0, 3, 1, 2)
        self.labels = torch.tensor([label for _, label in samples], device=device)
        self.image_size = tuple(image_size)
        self.augment = augment and train
        self._set_counts(len(samples), batch_size, train, shard)
        self.train, self.seed, self.device = train, seed, device
        self.normalise = DeviceNormaliser.for_loader(device, channels_last, dtype)
        self.fused_augment = self.augment and fused_for("resident loader", device)
        # On a GPU each batch is made on a side stream one batch ahead (`made_ahead`): its gather, augmentation and
        # normalisation run beside the training step, not between steps on the training's own stream.
        self.side_stream = side_stream(device)

    @property
    def queued_batches(self) -> int:
        """The one batch made ahead on the side stream, where there is one."""
        return held_ahead(self.side_stream)

    def _resized(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == self.image_size:
            return images
        resized = F.interpolate(images.float(), size=self.image_size, mode="bilinear", antialias=True)
        return resized.round_().clamp_(0, 255).to(torch.uint8)

    def epoch(self, epoch: int):
        order = self.shard.take(epoch_order(len(self.labels), self.seed, epoch, self.train), self.train)
        order_on_device = to_device_async(order, self.device)  # once per epoch, and without a synchronisation
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        return made_ahead((partial(self._batch, epoch, order, order_on_device, start) for start in starts),
                          self.side_stream, read=(order_on_device,))

    def _batch(self, epoch: int, order: torch.Tensor, order_on_device: torch.Tensor, start: int):
        positions = order[start:start + self.batch_size]  # on the host: the augmentation draws need them
        on_device = order_on_device[start:start + self.batch_size]
        images, labels = self._resized(self.images[on_device]), self.labels[on_device]
        if not self.augment:
            return self.normalise(images, labels)
        draws = [draw(draw_seed(self.seed, epoch, p)) for p in positions.tolist()]
        return augment_and_normalise(images, draws, self.normalise, self.fused_augment), labels
