#!/usr/bin/env bash
# One device session for the throughput work (issue 6): per backbone, the autotuned batch and its images/s,
# end-to-end over synthetic (engine profile), packing, and the engine over the authors' loop (bench/compare.py),
# all on the same card in the same run. Logs in $OUT. Without DALI staged, the engine uses the resident or torch
# loader (the log says which); stage DALI first (../shared/device/stage-gpu-wheels.sh) for the full picture.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
export PYTHONUNBUFFERED=1 ENGINE_PROFILES=$out/profiles.json
python3 -m engine.bench.make_jpegs /tmp/jpgs || exit 1
for backbone in resnet50 mobilenet_v3_large regnet_y_3_2gf convnext_tiny; do
  timeout 150 python3 -m engine profile --backbone "$backbone" --data /tmp/jpgs --image-size 256 --steps 20 \
    --packing --json 2>>"$out/profile.log" | tee -a "$out/profile.jsonl"
done
timeout 400 python3 -m engine.bench.compare --data /tmp/jpgs 2>&1 | grep -v -i deprecat | tee "$out/compare.jsonl"
