#!/usr/bin/env bash
# One device call for the throughput work (issue 6): per backbone, the autotuned batch and its images/s, end to
# end over synthetic (engine profile), packing, and the engine over the authors' loop (bench/compare.py), all on
# the same card in the same run. Logs in $OUT. Stage DALI first (bench/stage_gpu_site.sh, then its calls) so
# that /tmp/site holds it; without it the engine uses the resident or torch loader (the log says which).
# About 9 minutes on an H100: the profile runs fill the profile store (ENGINE_PROFILES) and the inductor cache,
# so compare.py pays for neither again for those backbones.
source bench/gpu_setup.sh
export ENGINE_PROFILES=$out/profiles.json
python3 -m engine.bench.make_jpegs /tmp/jpgs || exit 1
for backbone in resnet50 mobilenet_v3_large; do
  timeout 130 python3 -m engine profile --backbone "$backbone" --data /tmp/jpgs --image-size 256 --steps 20 \
    --packing --json 2>>"$out/profile.log" | tee -a "$out/profile.jsonl"
done
timeout 280 python3 -m engine.bench.compare --data /tmp/jpgs --backbones resnet50,mobilenet_v3_large,convnext_tiny \
  2>&1 | grep -v -i deprecat | tee "$out/compare.jsonl"
