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
python3 -m engine.bench.make_jpegs /tmp/jpgs || exit 1
for backbone in resnet50 mobilenet_v3_large; do
  timeout 200 python3 -m engine.bench.loaders --data /tmp/jpgs --backbone "$backbone" --image-size 256 \
    --batch-size 128 --workers 15 --steps 30 2>&1 | grep -v -i deprecat | tee -a "$out/loaders.jsonl"
done
for size in 32 64; do
  timeout 120 python3 -m engine.bench.augment --device cuda --size "$size" --batch 256 2>&1 | tee -a "$out/augment.jsonl"
done
