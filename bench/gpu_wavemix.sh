#!/usr/bin/env bash
# One call on a lent GPU for the fused DWT and WaveMix (issue 3): GPU tests, the DWT per launch configuration,
# then (WAVEMIX_STEP=1) the train-step benchmark; logs in $OUT, each row written as it is measured.
# Needs pytorch_wavelets and PyWavelets (the reference) as wheels in .whl/ (see the device tool's README):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pytorch_wavelets==1.3.0 PyWavelets
# then run this with carry [".whl"] (or after bench/stage_gpu_site.sh, which holds them too). Each step has its
# own time limit so that one slow compile cannot take the whole call. On the ninth session's H100 the GPU tests
# did not finish in 200 s (8 of 29): each dtype and layout the public op sees was autotuned, 12-16 Triton
# compiles of ~1.5 s each. Now only WaveMix's case (bf16, channels_last) is, the others run the first launch
# configuration (every one gives its result bit for bit). The fourteenth session's H100: 41 passed in 183 s on
# four xdist workers, then the DWT rows, 205 s in all, with 13 tile-tree configurations. Now 5, and the inductor
# test compiles WaveMix at depth 2 (118 s at 16): predicted ~150 s in all.
# The step benchmark (reference 318.7 img/s, fused compiled 1378.2, 4.32x, ninth session) adds ~3.5-5 minutes:
# WAVEMIX_STEP=1. The fused compiled step's first step took 103.5 s then; the fourteenth session's did not end in
# the ~170 s its 200 s limit left (13 DWT launch configurations autotuned forward and backward by then), so 330.
# WAVEMIX_ALL=1 adds the plain-torch compiled and the fused fp32 steps to it (about 2 minutes more).
# WAVEMIX_PARTS picks the parts (default tests,dwt, plus step as above): a session whose device time is short
# splits them over the calls that carry the DALI staging (WAVEMIX_PARTS=step runs the step benchmark alone).
source bench/gpu_setup.sh
parts=${WAVEMIX_PARTS:-tests,dwt}
{ [ "${WAVEMIX_STEP:-0}" = 1 ] || [ "${WAVEMIX_ALL:-0}" = 1 ]; } && parts=$parts,step
has_part() { [[ ",$parts," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
# four pytest-xdist workers (the GPU image has it): the tests' time is mostly Triton compiling, one core each
xdist=$(python3 -c 'import xdist' 2>/dev/null && echo '-n 4')
has_part tests && timeout "${GPU_TESTS_LIMIT:-330}" python3 -m pytest -v $xdist --durations=10 -m gpu \
  tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
# every launch configuration, forward and backward apart, beside the copy and the autotuned op (the plain-torch
# compiled rows were measured in the third session)
has_part dwt && timeout 120 python3 -m engine.bench.dwt --dtype bf16 --channels-last --configs 2>&1 \
  | tee -a "$out/dwt.jsonl"
has_part step || exit 0
# the reference first (the 4x target is against it), then ours from the most to the least important
# (--kernels: where each variant's device time goes, by kernel and by kind, for the step's non-DWT share)
# WAVEMIX_VARIANTS replaces the list, e.g. fused:amp:compiled,fused:amp:graphs: whether CUDA graphs take the host's
# launches out of the fused step (its kernels added up to 68 of its 94 ms on the twenty-first session's H100)
variants=${WAVEMIX_VARIANTS:-reference:fp32:eager,fused:amp:compiled}
[ "${WAVEMIX_ALL:-0}" = 1 ] && variants=$variants,fused:amp:eager,plain:amp:compiled,fused:fp32:eager
timeout 330 python3 -m engine.bench.wavemix_step --kernels 15 --stem --variants "$variants" \
  2>&1 | tee "$out/wavemix_step.jsonl"
