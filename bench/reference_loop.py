"""The paper's authors' published training loop, faithfully: an fp32 model with autocast around the loss only,
a GradScaler, PIL + torchvision transforms (Resize, TrivialAugmentWide, ToTensor, Normalize), a DataLoader with 2
workers, and a `.item()` every batch. Used by bench/compare.py as the baseline the engine is measured against.
On a machine without CUDA the autocast and the scaler are off (the loop is otherwise the same). The model is
torchvision's, or for WaveMix the published formulation (bench/references.py: pytorch_wavelets' transforms)."""
from __future__ import annotations

import time
from itertools import islice

import torch
import torchvision
import torchvision.transforms as T

from engine.bench.references import reference_wavemix
from engine.loaders.torch_pipeline import IMAGENET_MEAN, IMAGENET_STD
from engine.trainer import cudnn_benchmark

AUTHORS_WORKERS = 2
# backbones the authors did not take from torchvision: name -> builder(num_classes)
AUTHORS_MODELS = {"wavemix": reference_wavemix}


def authors_model(backbone: str, num_classes: int) -> torch.nn.Module:
    build = AUTHORS_MODELS.get(backbone)
    if build is None:
        return torchvision.models.get_model(backbone, weights=None, num_classes=num_classes)
    return build(num_classes)


def reference_epoch_rate(folder: str, backbone: str, image_size: tuple[int, int], batch_size: int,
                         device: torch.device, workers: int = AUTHORS_WORKERS, warmup_steps: int = 3,
                         max_steps: int | None = None) -> float:
    """Images/s of the authors' loop over an ImageFolder (`folder`/<class>/<image>) within one epoch, after
    `warmup_steps` steps that are not timed, to the epoch's end or `max_steps`. The workers start in the warm-up:
    the authors' loop pays that start-up every epoch, and leaving it out favours the reference (a ratio against it
    errs low, on a small benchmark folder most). cuDNN's algorithm search is off, as in the authors' code."""
    with cudnn_benchmark(False):
        return _epoch_rate(folder, backbone, image_size, batch_size, device, workers, warmup_steps, max_steps)


def _epoch_rate(folder: str, backbone: str, image_size: tuple[int, int], batch_size: int, device: torch.device,
                workers: int, warmup_steps: int, max_steps: int | None) -> float:
    transform = T.Compose([T.Resize(list(image_size)), T.TrivialAugmentWide(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(folder, transform=transform)
    model = authors_model(backbone, len(dataset.classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    criterion = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=cuda, drop_last=True)
    if len(loader) <= warmup_steps:
        raise ValueError(f"{folder}: {len(loader)} batches of {batch_size} in an epoch; the authors' loop needs more "
                         f"than its {warmup_steps} warm-up steps to be timed")

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)  # fp32: the authors' autocast covers only the loss
        with torch.autocast(device.type, enabled=cuda):
            loss = criterion(outputs, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        _ = loss.item()  # the per-batch host synchronisation of the original

    batches = iter(loader)
    for images, labels in islice(batches, warmup_steps):
        train_step(images, labels)
    seen, started = 0, time.perf_counter()
    for images, labels in islice(batches, max_steps):  # None: the rest of the epoch
        train_step(images, labels)
        seen += len(images)
    if cuda:
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - started)
