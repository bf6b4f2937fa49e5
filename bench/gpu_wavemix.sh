#!/usr/bin/env bash
# One call on a lent GPU for the fused DWT and WaveMix (issue 3): GPU tests, then both benchmarks, logs in $OUT.
# Needs pytorch_wavelets and PyWavelets (the reference) as wheels in .whl/ (see the device tool's README):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pytorch_wavelets==1.3.0 PyWavelets
# then run this with carry [".whl"] (or after bench/stage_gpu_site.sh, which holds them too). Each step has its
# own time limit so that one slow compile cannot take the whole call: 5-7 minutes in all on an H100 (the
# GPU tests compile every launch configuration of both kernel families). WAVEMIX_ALL=1 adds the plain-torch
# compiled and the fused fp32 steps (about 2 minutes more, ~90 s of it compiling the plain-torch model).
source bench/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
timeout 270 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
timeout 70 python3 -m engine.bench.dwt --dtype bf16 --channels-last --compile --configs 2>&1 | tee -a "$out/dwt.jsonl"
timeout 40 python3 -m engine.bench.dwt --dtype fp32 --configs 2>&1 | tee -a "$out/dwt.jsonl"
# the reference first (the 4x target is against it), then ours from the most to the least important
# (--kernels: where each variant's device time goes, by kernel and by kind, for the step's non-DWT share)
variants=reference:fp32:eager,fused:amp:compiled,fused:amp:eager
[ "${WAVEMIX_ALL:-0}" = 1 ] && variants=$variants,plain:amp:compiled,fused:fp32:eager
timeout 180 python3 -m engine.bench.wavemix_step --kernels 15 --stem --variants "$variants" \
  2>&1 | tee "$out/wavemix_step.jsonl"
