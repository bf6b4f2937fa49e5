"""The portable input pipeline: PIL decode + torchvision transforms in DataLoader workers.

Workers hand over uint8 CHW tensors; conversion to float and ImageNet normalisation happen on the training
device (`DeviceNormaliser`), which moves a quarter of the bytes across PCIe and spares the CPU the
arithmetic.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from engine.errors import UnreadableImageError
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
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err


class ImageFiles(Dataset):
    def __init__(self, index: DatasetIndex, samples: list[Sample], transform):
        self.root = index.root
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        relative_path, label = self.samples[position]
        return self.transform(read_rgb(self.root / relative_path)), label


class DeviceNormaliser:
    """uint8 NCHW batch on the host -> normalised float batch on the device, in the run's memory format."""

    def __init__(self, device: torch.device, memory_format: torch.memory_format):
        self.device = device
        self.memory_format = memory_format
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.inverse_std = 1 / (torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
        return (images.float() - self.mean) * self.inverse_std, labels.to(self.device, non_blocking=True)


class TorchBatches:
    """Batches of one split for the trainer: `len()` steps, `epoch(e)` iterates them on the device.

    Training batches are reshuffled each epoch from a generator seeded by (seed, epoch), so an epoch sees the
    same order and augmentation draws whether or not the run was resumed before it.
    """

    def __init__(self, index: DatasetIndex, samples: list[Sample], *, image_size: tuple[int, int], augment: bool,
                 batch_size: int, train: bool, device: torch.device, seed: int, workers: int,
                 channels_last: bool):
        self.dataset = ImageFiles(index, samples, build_transform(image_size, augment and train))
        self.batch_size = min(batch_size, len(samples))
        self.train = train
        self.device = device
        self.seed = seed
        self.workers = workers
        self.normalise = DeviceNormaliser(device, torch.channels_last if channels_last else torch.contiguous_format)
        # Training drops the last partial batch: a fixed batch shape keeps compiled graphs and BatchNorm
        # statistics well-formed (a last batch of one image breaks BatchNorm); the order changes every
        # epoch, so every image is still seen.
        self.drop_last = train and len(samples) > self.batch_size

    @property
    def num_images(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.dataset)

    def __len__(self) -> int:
        full, partial = divmod(len(self.dataset), self.batch_size)
        return full + (1 if partial and not self.drop_last else 0)

    def epoch(self, epoch: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=self.train, drop_last=self.drop_last,
                            num_workers=self.workers, generator=generator,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for images, labels in loader:
            yield self.normalise(images, labels)
