"""What every input pipeline shares: how many batches an epoch has and how many images they hold, for this
process's shard of the split (the whole split outside a distributed run)."""
from __future__ import annotations

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


class BatchCounts:
    """Training drops the last partial batch when there is more than one batch: a fixed batch shape keeps
    compiled graphs and BatchNorm statistics well-formed (a last batch of one image breaks BatchNorm), and the
    order changes every epoch, so every image is still seen. Evaluation keeps every image."""

    # How many batches the pipeline can have made ahead of the one asked for (benchmarks take them untimed):
    # none where each batch is made when asked (the resident path, on the training's own stream).
    queued_batches = 0

    def _set_counts(self, size: int, batch_size: int, train: bool, shard: Shard) -> None:
        self.shard = shard
        self.size = shard.size(size, train)
        self.batch_size = max(1, min(batch_size, self.size))
        self.drop_last = train and self.size > self.batch_size

    @property
    def num_images(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.size

    def __len__(self) -> int:
        full, partial = divmod(self.size, self.batch_size)
        return full + (1 if partial and not self.drop_last else 0)
