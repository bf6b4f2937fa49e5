"""The portable input pipeline: PIL decode + torchvision transforms in DataLoader workers.

Workers hand over uint8 CHW tensors; conversion to float and ImageNet normalisation happen on the training
device (`DeviceNormaliser`), which moves a quarter of the bytes across PCIe and spares the CPU the
arithmetic.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from engine.distributed import SINGLE, Shard
from engine.errors import UnreadableImageError
from engine.loaders.batching import BatchCounts, held_ahead, made_ahead, side_stream
from engine.loaders.index import DatasetIndex
from engine.loaders.splits import Sample

# ImageNet statistics the torchvision weights were trained with (torchvision.transforms._presets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(image_size: tuple[int, int], augment: bool) -> v2.Compose:
    steps = [v2.Resize(image_size, antialias=True)]
    if augment:
        steps.append(v2.TrivialAugmentWide())
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)


def read_rgb(path) -> Image.Image:
    """The image as RGB, fully decoded now so a corrupt file fails here with its name."""
    try:
        with Image.open(path) as image:
            return EIGHT_BIT_READERS.get(image.mode, lambda same: same)(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err


def eight_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit greyscale as 8-bit by its high byte, as DALI's decoder reads the same file, so every loader sees the
    same picture. Mode "I" (32-bit) holds 8-bit values in some files: those are kept as they are."""
    values = np.asarray(image).astype(np.uint32)
    if image.mode != "I" or values.max(initial=0) > 255:
        values = values >> 8
    return Image.fromarray(np.minimum(values, 255).astype(np.uint8), "L")


def unit_float_grey(image: Image.Image) -> Image.Image:
    """Floating-point greyscale (TIFFs from microscopy and remote sensing) as DALI's decoder reads it: 0..1 is black
    to white, outside it clipped. PIL's convert("RGB") takes the values as 0..255, so 0..1 would come out black."""
    values = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L")


# The modes whose convert("RGB") in PIL is not the picture DALI decodes from the same file, read as DALI reads them.
# Greyscale wider than 8 bits, as PIL opens 16-bit PNGs and TIFFs (medical and microscopy images): its convert("RGB")
# clips each value to 255, so nearly every pixel would come out white.
EIGHT_BIT_READERS = {**dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N", "I"), eight_bit_grey), "F": unit_float_grey}


def draw_seed(seed: int, epoch: int, position: int = 0) -> int:
    """One 63-bit seed per (run seed, epoch, sample): shuffling and augmentation become pure functions of these,
    the same with any number of workers and whether or not the run was resumed."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + position) & (2**63 - 1)


class ImageFiles(Dataset):
    """Indexed by (epoch, position): each sample's random augmentation is drawn from its own seed."""

    def __init__(self, index: DatasetIndex, samples: list[Sample], transform, seed: int):
        self.root = index.root
        self.samples = samples
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, position = key
        relative_path, label = self.samples[position]
        image = read_rgb(self.root / relative_path)
        with torch.random.fork_rng(devices=[]):  # leaves the training process's own RNG stream untouched
            torch.manual_seed(draw_seed(self.seed, epoch, position))
            return self.transform(image), label


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """Positions 0..size-1 in the order an epoch visits them: a fresh seeded permutation each training epoch
    (the same on every rank of a distributed run, which then takes its own share of it), file order otherwise."""
    if not shuffle:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(draw_seed(seed, epoch)))


class EpochSampler(Sampler):
    """Yields (epoch, position) keys of this shard's share of the epoch's order. It runs in the main process, so
    `set_epoch` reaches it even when the workers persist across epochs."""

    def __init__(self, size: int, seed: int, shuffle: bool, shard: Shard = SINGLE):
        self.size, self.seed, self.shuffle, self.shard, self.epoch = size, seed, shuffle, shard, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.shard.size(self.size, self.shuffle)

    def __iter__(self):
        order = self.shard.take(epoch_order(self.size, self.seed, self.epoch, self.shuffle), self.shuffle)
        return ((self.epoch, position) for position in order.tolist())


class DeviceNormaliser:
    """uint8 NCHW batch on the host -> normalised batch on the device, in the run's memory format and input dtype
    (the autocast dtype under mixed precision: the model's first layer would cast to it anyway)."""

    def __init__(self, device: torch.device, memory_format: torch.memory_format, dtype: torch.dtype):
        self.device, self.memory_format, self.dtype = device, memory_format, dtype
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.inverse_std = 1 / (torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255)

    @classmethod
    def for_loader(cls, device: torch.device, channels_last: bool, dtype: torch.dtype) -> "DeviceNormaliser":
        """The normaliser of a loader built with the loaders' `channels_last` and `dtype` keywords."""
        return cls(device, torch.channels_last if channels_last else torch.contiguous_format, dtype)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(images), labels.to(self.device, non_blocking=True)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
        return ((images.float() - self.mean) * self.inverse_std).to(self.dtype)


class TorchBatches(BatchCounts):
    """Batches of one split for the trainer: `len()` steps, `epoch(e)` iterates them on the device.

    Training batches are reshuffled each epoch from a generator seeded by (seed, epoch), and each image's
    augmentation by (seed, epoch, image), so an epoch sees the same batches whether or not the run was resumed
    before it (and, in a distributed run, whichever rank reads them). Workers persist across epochs: none is
    started again per epoch.
    """

    @staticmethod
    def parallelism(workers: int) -> str:
        return f"worker processes: {workers}" if workers else "decoding in the main process"

    def __init__(self, index: DatasetIndex, samples: list[Sample], *, image_size: tuple[int, int], augment: bool,
                 batch_size: int, train: bool, device: torch.device, seed: int, workers: int,
                 channels_last: bool, dtype: torch.dtype = torch.float32, shard: Shard = SINGLE):
        self.dataset = ImageFiles(index, samples, build_transform(image_size, augment and train), seed)
        self._set_counts(len(samples), batch_size, train, shard)
        self.normalise = DeviceNormaliser.for_loader(device, channels_last, dtype)
        self.sampler = EpochSampler(len(samples), seed, shuffle=train, shard=shard)
        self.loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                 drop_last=self.drop_last, num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=device.type == "cuda",
                                 # its own generator: the loader's seed draws stay out of the training RNG stream
                                 generator=torch.Generator().manual_seed(draw_seed(seed, -1)))
        # On a GPU each batch's copy to the device and normalisation run on a side stream one batch ahead
        # (`made_ahead`), beside the training step rather than queued on its stream between two steps.
        self.side_stream = side_stream(device)
        # each worker works that far ahead, and one batch more is on the device
        self.queued_batches = workers * (self.loader.prefetch_factor or 0) + held_ahead(self.side_stream)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        yield from made_ahead((partial(self.normalise, images, labels) for images, labels in self.loader),
                              self.side_stream)


def unreadable_files(index: DatasetIndex, samples: list[Sample],
                     misread: Callable[[Image.Image], str | None] = BatchCounts.misread) -> dict[str, str]:
    """Files among `samples` whose image header or structure is broken (PIL's verify: no full decode, so a
    100k-image dataset takes seconds), or that the run's loader would misread (`misread`, on the header PIL
    opened), each with why ("" where the file is broken). Truncated image data can still pass; the torch loader
    then names the file when it decodes it."""
    bad = {}
    for relative_path, _ in samples:
        try:
            with Image.open(index.root / relative_path) as image:
                why = misread(image)
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            why = ""
        if why is not None:
            bad[relative_path] = why
    return bad
