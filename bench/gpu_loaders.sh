#!/usr/bin/env bash
# One device session for the input pipelines (issue 4): loader-only and end-to-end rates of torch, DALI and the
# resident path beside synthetic data, resnet50 and mobilenet_v3_large at 256 px, batch 128. Logs in $OUT.
# DALI is not on the GPU machine: stage it first with ../shared/device/stage-gpu-wheels.sh and make the part
# calls it prints; the last one ends with "&& bash bench/gpu_loaders.sh" (PYTHONPATH=/tmp/site set there).
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
export PYTHONUNBUFFERED=1
# 2048 JPEGs of ~500x375 in 10 classes (as ANCHORS.md measured), plus a small test split
python3 - <<'PY'
import os, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, count in (("train", 2048), ("test", 100)):
    for i in range(count):
        folder = f"/tmp/jpgs/{split}/c{i % 10}"
        os.makedirs(folder, exist_ok=True)
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(base).resize((500, 375), Image.BICUBIC).save(f"{folder}/{i}.jpg", quality=90)
PY
for backbone in resnet50 mobilenet_v3_large; do
  timeout 200 python3 -m engine.bench.loaders --data /tmp/jpgs --backbone "$backbone" --image-size 256 \
    --batch-size 128 --workers 15 --steps 30 2>&1 | grep -v -i deprecat | tee -a "$out/loaders.jsonl"
done
