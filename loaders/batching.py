"""What every input pipeline shares: how many batches an epoch has and how many images they hold, for this
process's shard of the split (the whole split outside a distributed run)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from engine.distributed import Shard


def to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the device. A plain `.to(cuda)` (and `torch.tensor(...,
    device=cuda)`) from pageable memory synchronises the stream: a loader doing it per batch would wait for the
    previous training step to finish, so the next batch's host work and kernel launches could no longer overlap
    the GPU's work. From pinned memory the copy is asynchronous, and torch's pinned allocator keeps the block
    until the copy has run."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


# CUDA stream priorities: lower is higher, 0 is the default; -1 is above it on every GPU and torch release.
HIGH_PRIORITY = -1


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The stream a loader makes its batches ahead on (`made_ahead`), at high priority; None off a GPU.

    A batch is a chain of small dependent kernels (a gather, an augmentation op by op, a normalisation). At the
    training's priority each of them waits for the SMs behind whatever training kernel was launched before it,
    so the chain can take as many training kernels' time as it has links, and with long kernels (resnet50's,
    tens of them at ~1 ms) outlast the step it should hide behind, which then waits for it. At high priority the
    block scheduler gives each link the next SMs that free up: the chain finishes early in the step, at the same
    SM time, since priority reorders work and adds none."""
    return torch.cuda.Stream(device, priority=HIGH_PRIORITY) if device.type == "cuda" else None


def made_ahead(makers: Iterable[Callable[[], tuple[torch.Tensor, ...]]], side: torch.cuda.Stream | None,
               read: tuple[torch.Tensor, ...] = ()) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches `makers` make, each made on the CUDA stream `side` one batch ahead of the one handed over, so
    that the next batch's kernels (a gather, an augmentation) run beside the current training step instead of
    between two steps. Each handed-over batch is ordered before whatever the consumer's stream does next, and its
    memory is kept until that stream is done with it; so are the consumer's tensors that the makers `read`, for
    the side stream (a batch made ahead and never taken, when the consumer stops early, still reads them).
    Without a side stream (the CPU), each batch is made when asked."""
    if side is None:
        for make in makers:
            yield make()
        return
    side.wait_stream(torch.cuda.current_stream(side.device))  # after what the consumer enqueued (the order's copy)
    for tensor in read:
        tensor.record_stream(side)
    pending = None
    for make in makers:
        with torch.cuda.stream(side):
            made = make()
        ready = torch.cuda.Event()
        ready.record(side)
        if pending is not None:
            yield _handed_over(*pending)
        pending = made, ready
    if pending is not None:
        yield _handed_over(*pending)


def held_ahead(side: torch.cuda.Stream | None) -> int:
    """Batches `made_ahead` holds beyond the one handed over: one with a side stream, none without."""
    return 0 if side is None else 1


def _handed_over(tensors: tuple[torch.Tensor, ...], ready: torch.cuda.Event) -> tuple[torch.Tensor, ...]:
    consumer = torch.cuda.current_stream(tensors[0].device)
    consumer.wait_event(ready)
    for tensor in tensors:
        tensor.record_stream(consumer)  # made on the side stream: not reused before the consumer's work is done
    return tensors


def batch_taken(batch_size: int, images: int) -> int:
    """The batch a step takes: the one asked, or all the images where they are fewer (a 1 % fraction)."""
    return max(1, min(batch_size, images))


class BatchCounts:
    """Training drops the last partial batch when there is more than one batch: a fixed batch shape keeps
    compiled graphs and BatchNorm statistics well-formed (a last batch of one image breaks BatchNorm), and the
    order changes every epoch, so every image is still seen. Evaluation keeps every image."""

    # How many batches the pipeline can have made ahead of the one asked for (benchmarks take them untimed):
    # none where each batch is made when asked.
    queued_batches = 0

    @staticmethod
    def misread(image) -> str | None:
        """Why this loader would not read the image whose header PIL opened as `image` as PIL reads it (the torch
        and resident loaders read with PIL); None where it would."""
        return None

    def _set_counts(self, size: int, batch_size: int, train: bool, shard: Shard) -> None:
        self.shard = shard
        self.size = shard.size(size, train)
        self.batch_size = batch_taken(batch_size, self.size)
        self.drop_last = train and self.size > self.batch_size

    @property
    def num_images(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.size

    def __len__(self) -> int:
        full, partial = divmod(self.size, self.batch_size)
        return full + (1 if partial and not self.drop_last else 0)
