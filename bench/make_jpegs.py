"""Synthetic JPEG files like ANCHORS.md measured (~500x375, ~39 KB, 10 classes) in the train/test layout, for
loader and end-to-end benchmarks on a machine without datasets.

    python -m engine.bench.make_jpegs /tmp/jpgs [--train 2048] [--test 100]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(root: Path, train: int = 2048, test: int = 100, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)  # smooth upscaled noise: realistic JPEG sizes
            Image.fromarray(base).resize((500, 375), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    return root


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=2048)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args(argv)
    return make_jpegs(args.root, args.train, args.test)


if __name__ == "__main__":
    main()
