"""TrivialAugmentWide on a batch of uint8 images on the device: torchvision's transform image by image (what the
resident loader did before) against the batched implementation (loaders/augment.py), with and without the
normalisation after it, and the fused kernel that does both in one launch (kernels/trivial_augment.py; where it
runs: CUDA with triton, or TRITON_INTERPRET=1), same images, same seeds. The batched rows get their draws made
before the clock starts, as what a loader pays for its own (`augment.random_draws`, one generator a batch: ~0.2 ms
for 128 images) is not the ~3 ms that torchvision's draw from a fresh generator per image costs the host; until the
thirty-second session they made them inside it (the fused row's 7.56 ms a batch on an H100 included it).

    python -m engine.bench.augment --device cuda --size 64 --batch 256     # on a GPU (the resident path's case)
    python -m engine.bench.augment --device cuda --size 256 --batch 128    # DALI's batches, augmented by the engine
    python -m engine.bench.augment --quick --device cpu                     # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
from functools import lru_cache

import torch
from torchvision.transforms import v2

from engine.bench.timing import time_per_call
from engine.loaders.augment import augment_and_normalise, augmented, draw, fused_available
from engine.loaders.torch_pipeline import DeviceNormaliser


def per_image(images: torch.Tensor, seeds: list[int], draws) -> torch.Tensor:
    """torchvision's transform, each image after torch.manual_seed(its seed): the draws are its own."""
    transform, out = v2.TrivialAugmentWide(), torch.empty_like(images)
    for slot, (image, seed) in enumerate(zip(images, seeds)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out[slot] = transform(image)
    return out


def batched(images: torch.Tensor, seeds: list[int], draws) -> torch.Tensor:
    return augmented(images, draws)


@lru_cache
def _normaliser(device: torch.device) -> DeviceNormaliser:
    """Made once, outside the timing: its constants' copy to a GPU would synchronise."""
    return DeviceNormaliser(device, torch.channels_last, torch.bfloat16)


def normalised(fused: bool):
    """Augmented and normalised as the loaders hand a batch over: bf16, channels_last."""
    def run(images: torch.Tensor, seeds: list[int], draws) -> torch.Tensor:
        return augment_and_normalise(images, draws, _normaliser(images.device), fused)
    return run


IMPLEMENTATIONS = {"torchvision per image": per_image, "batched": batched,
                   "batched, normalised": normalised(fused=False), "fused kernel, normalised": normalised(fused=True)}


def kernel_runs(device: torch.device) -> bool:
    return fused_available(device) or os.environ.get("TRITON_INTERPRET") == "1"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="16 px, batch 16, 2 iterations (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    size, batch, iterations = (16, 16, 2) if args.quick else (args.size, args.batch, args.iterations)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    seeds, rows = list(range(batch)), []
    draws = [draw(seed) for seed in seeds]  # the draws torchvision makes from the seeds: the same work for every row
    for name, augment in IMPLEMENTATIONS.items():
        if name.startswith("fused") and not kernel_runs(device):
            print(json.dumps({"implementation": name, "skipped": f"the kernel needs triton and a GPU, not {device}"}))
            continue
        seconds = time_per_call(lambda: augment(images, seeds, draws), device, warmup=2, iterations=iterations)
        rows.append({"implementation": name, "device": str(device), "size": size, "batch": batch,
                     "ms_per_batch": round(seconds * 1e3, 2), "images_per_s": round(batch / seconds, 1)})
        print(json.dumps(rows[-1]))
    return rows


if __name__ == "__main__":
    main()
