#!/usr/bin/env bash
# One call on a lent GPU for the fused DWT and WaveMix (issue 3): GPU tests, then both benchmarks, logs in $OUT.
# Needs pytorch_wavelets and PyWavelets (the reference) as wheels in .whl/ (see the device tool's README):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pytorch_wavelets==1.3.0 PyWavelets
# then run this with carry [".whl"].
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
for args in "--dtype bf16 --channels-last --compile" "--dtype fp32 --compile"; do
  timeout 120 python3 -m engine.bench.dwt $args 2>&1 | tee -a "$out/dwt.jsonl"
done
timeout 420 python3 -m engine.bench.wavemix_step 2>&1 | tee "$out/wavemix_step.jsonl"
