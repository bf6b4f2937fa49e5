#!/usr/bin/env bash
# One device call for the input pipelines (issue 4), its targets first, as a call cut short by the session's
# device time keeps what ran: DALI (augmenting itself, then with the engine augmenting) and the resident path end
# to end against synthetic data (resnet50 and mobilenet_v3_large at 256 px, batch 128, eager; resident is auto's
# choice for small images, and for any dataset whose copy fits where DALI is missing; if it beats DALI here, it
# should be for every dataset that fits), DALI alone at the anchor's batch (256) beside the ANCHORS.md script on
# the same card, then five tries at mobilenet's end to end (below). About 7 minutes on an H100. LOADERS_ALL=1 adds
# the torch loader to the end-to-end rows (measured on an H100 in the third session), DALI alone with 15 threads
# and the batched augmentation: about 8.
# The engine's own path (compiled, autotuned) against the authors' loop is bench/gpu_throughput.sh.
# DALI is not on the GPU machine: stage it first (bench/stage_gpu_site.sh) so that /tmp/site holds it. For the
# anchor beside ours:  mkdir -p .anchors && cp ../shared/device/dali_anchor.py .anchors/  and carry ".anchors" too.
source bench/gpu_setup.sh
all=${LOADERS_ALL:-0}
# LOADERS (comma-separated, bench/loaders.py's names): the end-to-end rows' loaders, fewer (e.g. LOADERS=dali) when
# device time is short, as each adds ~15-25 s a backbone. dali-engine: the engine's fused TrivialAugmentWide kernel
# in place of DALI's augmentation and normalisation (--dali-augmenter engine): DALI's ~1.9 ms of those kernels a
# batch beside the step become one launch on the step's stream. Beside dali in one process, the two rows share the
# card's drift. The thirty-second session's H200 (five rounds): resnet50 0.899 of synthetic against DALI's own
# 0.969, mobilenet_v3_large 0.791 against 0.936, alone 12.9k img/s against 19.1k, while the kernel took 0.06 ms a
# batch and DALI's kernels beside the step fell from 2.3 to 0.3 ms: it loses in a wait, the host's or DALI's.
loaders=${LOADERS:-dali,dali-engine,resident}
threads=8
[ "$all" = 1 ] && loaders=dali,dali-engine,resident,torch && threads="8 15"
# ROUNDS (default 3): more where two rows' ratios must be told apart on a card whose synthetic rate drifts (the
# thirty-second session's H100: resnet50's read 2598-2900 img/s within one row). The limits grow with them: at a
# fixed 50 s, that session's mobilenet row with the engine augmenting (a Triton compile more) was cut short.
rounds=${ROUNDS:-3}
row_limit=$((20 + 10 * rounds))
# COMPILE=1: the end-to-end rows' model under torch.compile, as engine train runs it on a GPU (eager by default, whose
# host-bound steps show a loader's host cost most: mobilenet_v3_large read 0.936 eager on the thirty-second session's
# H200, its synthetic rate drifting 2945-3749 img/s). The compile adds up to ~2 minutes a backbone.
compile_flag=--no-compile
compile_s=0
[ "${COMPILE:-0}" = 1 ] && compile_flag=--compile && compile_s=120
# first, DALI's GPU correctness checks (~25 s): a batch handed over without a copy must stay intact while the
# training stream lags behind the host, and the images DALI's decoder misreads (tests/test_dali.py's gpu tests).
# DALI_GPU_TESTS=0 skips them where no DALI code changed since they last passed on a GPU
[ "${DALI_GPU_TESTS:-1}" = 1 ] && timeout 60 python3 -m pytest -q -m gpu tests/test_dali.py 2>&1 | tail -15 \
  | tee "$out/dali_gpu_tests.log"
python3 -m engine.bench.make_jpegs /tmp/jpgs || exit 1
# --workers 8: what engine train gives a loader on this 16-core machine (config.default_workers). The rows until the
# twenty-fourth session ran 15, which left the host's training thread one core beside DALI's threads (a host-bound
# step, mobilenet's, then drifted 1.9x in rate within a process; DALI alone ran faster with 8 threads than 15 there)
# --rounds: each end-to-end rate and the synthetic one in turn, ROUNDS times, the median round's ratio (a host-bound
# step's rate drifts within a process: mobilenet's single-round rows read 0.80-1.14 over five runs)
# --kernels: where each loader's own time per batch goes (the ninth session's resident path made 0.9-1.1k img/s
# alone on an H100, yet fed resnet50 at 2.8k img/s: its kernels and copies say whether it is the host or the GPU)
# --host-functions: where the host's time goes, alone and end to end (the thirty-second session's H200: DALI with the
# engine augmenting lost 7 % of resnet50's end to end with no more GPU work a step; this says who waits for what)
# LOADER_BACKBONES (comma-separated) narrows these rows: an experiment's call keeps resnet50's as its baseline
loader_backbones=${LOADER_BACKBONES:-resnet50,mobilenet_v3_large}
for backbone in ${loader_backbones//,/ }; do
  timeout $((20 + compile_s + row_limit * $(tr , '\n' <<< "$loaders" | wc -l))) python3 -m engine.bench.loaders \
    --data /tmp/jpgs --backbone "$backbone" --image-size 256 --batch-size 128 --workers 8 --steps 15 \
    --rounds "$rounds" --loaders "$loaders" --kernels 8 --host-functions 8 "$compile_flag" 2>&1 \
    | grep --line-buffered -v -i deprecat | tee -a "$out/loaders.jsonl"
done
# DALI alone at the anchor's batch (256), then the anchor's own script beside it when carried (.anchors/, a copy
# of ../shared/device/dali_anchor.py: same card, same call), on its own files
# HW_LOADS (comma-separated, e.g. 0.9,1.0): DALI alone at each share of JPEGs sent to the hardware decoder (the
# engine's 0.9 by default): on the twenty-first session's H100 the host ran the anchor 35 % slower than ANCHORS.md's
# H200 host did, and the CPU threads decode the share the hardware decoder does not take
hw_loads=${HW_LOADS:-0.9}
for thread_count in $threads; do
for hw_load in ${hw_loads//,/ }; do
  timeout 40 python3 -m engine.bench.loaders --data /tmp/jpgs --loaders dali --loader-only --image-size 256 \
    --batch-size 256 --workers "$thread_count" --steps 24 --dali-hw-decoder-load "$hw_load" 2>&1 \
    | grep --line-buffered -v -i deprecat | tee -a "$out/loaders.jsonl"
done
done
# from a file, not stdin: DALI's conditionals (its TrivialAugmentWide) read the pipeline function's source
[ -f .anchors/dali_anchor.py ] && sed 's#/tmp/jpgs#/tmp/anchor_jpgs#' .anchors/dali_anchor.py > /tmp/dali_anchor.py \
  && timeout 60 python3 /tmp/dali_anchor.py 2>&1 | grep --line-buffered -v -i deprecat | tee "$out/dali_anchor.log"
# mobilenet (the lightest step, where DALI's work shows most), five experiments, most telling first. The rows above
# ran their steps on a stream of their own, as engine train does, with each batch handed over on torch's stream
# (the engine's since the fourteenth session). First every JPEG to the hardware decoder (1.0 against the engine's
# 0.9): below DALI's hybrid_huffman_threshold (1 Mpixel, every image here) the share the hardware decoder does not
# take is Huffman-decoded on a CPU thread and then IDCT'd and colour-converted by nvJPEG's kernels on the SMs,
# where they slow a GPU-bound step down (resnet50 lost 6-7 % to DALI's ~2.4 ms of kernels a batch beside the
# step; the hardware decoder uses no SMs); DALI alone ran 1.0 within 2 % of 0.9 on the H200. Then the host
# waiting for each batch instead (DALI's iterator as it ships: 0.71 of synthetic there, against 0.92-1.14); then
# the step on a high-priority stream (meant to leave DALI's kernels the step's gaps; the twenty-fourth session's
# H200: resnet50 0.936 against 0.94, no gain); then the step on torch's default stream, CUDA's legacy one, as the
# ninth session ran it (any blocking stream or synchronous copy of DALI's or nvJPEG's waits for it and holds it
# up); DALI's own hardware-decoder share (0.65) against the engine's (0.9, from the ninth session's loader-alone
# rows). Each row's of_synthetic is against the synthetic rate measured just before and after it: that rate
# drifted by up to 1.8x between runs in the fourteenth session, and each row names its kernels beside the step
# (--kernels), to set against the first rows'.
# EXPERIMENTS (|-separated, e.g. '--dali-hw-decoder-load 1.0|--training-stream high') runs only those of them when
# device time is short (none: no experiment). EXPERIMENT_BACKBONES (comma-separated; default mobilenet_v3_large)
# runs them for other backbones too: resnet50, GPU-bound, lost 6-7 % to DALI with the stream handover (H100, H200).
experiment_backbones=${EXPERIMENT_BACKBONES:-mobilenet_v3_large}
for backbone in ${experiment_backbones//,/ }; do
for option in "--dali-hw-decoder-load 1.0" "--dali-handover host" "--training-stream high" "--training-stream legacy" \
    "--dali-hw-decoder-load 0.65"; do
  [ -n "${EXPERIMENTS:-}" ] && [[ "|$EXPERIMENTS|" != *"|$option|"* ]] && continue
  timeout $((20 + row_limit)) python3 -m engine.bench.loaders --data /tmp/jpgs --backbone "$backbone" --loaders dali \
    --image-size 256 --batch-size 128 --workers 8 --steps 15 --rounds "$rounds" --kernels 8 $option 2>&1 \
    | grep --line-buffered -v -i deprecat | tee -a "$out/loaders.jsonl"
done
done
# TrivialAugmentWide alone at DALI's batches (256 px, 128): the batched torch operations, with the normalisation,
# and the fused kernel (its first launch compiles it: the warm-up takes that)
timeout 60 python3 -m engine.bench.augment --device cuda --size 256 --batch 128 2>&1 | tee -a "$out/augment.jsonl"
[ "$all" = 1 ] || exit 0
timeout 25 python3 -m engine.bench.augment --device cuda --size 64 --batch 256 2>&1 | tee -a "$out/augment.jsonl"
