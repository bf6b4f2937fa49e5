#!/usr/bin/env bash
# One device call for the throughput work (issue 6), on the same card in the same run: the engine (its defaults:
# autotuned batch, bf16, channels_last, compile in the mode auto chooses (CUDA graphs where the eager step is
# launch-bound; the row's engine_setup names it), DALI) against the authors' loop per backbone, with the engine's
# end to end over its own step on synthetic data (bench/compare.py); then `engine train` with every GPU default
# (the autotuned batch now cached in ENGINE_PROFILES, the inductor cache warm) to see a whole run finish; then
# `engine profile --packing` for the small backbone, where running several at once may pay. Logs in $OUT, about
# 10 minutes on an H100 (packing ~4). Stage DALI first (bench/stage_gpu_site.sh, then its calls) so that /tmp/site
# holds it; without it the engine uses the resident or torch loader (the log says which).
source bench/gpu_setup.sh
export ENGINE_PROFILES=$out/profiles.json
python3 -m engine.bench.make_jpegs /tmp/jpgs || exit 1
# BACKBONES: the comparison's backbones, comma-separated (WaveMix needs the wavelet wheels, as
# gpu_wavemix.sh); each takes about 2 minutes (autotune, compile, an epoch of each loop), so 3 at most a call
# unless COMPARE_BUDGET (below) bounds it;
# BACKBONES=none skips the comparison (the train run and the packing alone: ~7 minutes)
# (default: the two not yet compared on a GPU, as many as COMPARE_BUDGET allows; resnet50 and mobilenet_v3_large
# were compared on the ninth session's H100, convnext_tiny and regnet_y_3_2gf on the twenty-first's, resnet50,
# shufflenet_v2_x2_0 and swin_t on the twenty-fourth's H200, efficientnet_v2_s on the twenty-seventh's H100,
# shufflenet_v2_x2_0, efficientnet_v2_s, resnext50_32x4d and densenet161 on the thirtieth's H200: 97-205 s each)
# (efficientnet_v2_s: 243 s on the twenty-seventh session's H100, its autotune and first compiled step 206 s of it)
# COMPARE_BUDGET: seconds for the comparison (default 300: two or three backbones); it starts no backbone that
# would likely end past it and prints those left as not_run, so a long list (BACKBONES=all) measures what the
# call's time allows and keeps every finished row. The hard limit gives the last backbone 120 s past its estimate.
# COMPARE_STREAMS: where the engine's step runs (bench.compare --training-streams; default engine): engine,high
# times each row's compiled step and loader again with the step's stream at high priority (seconds a row), to see
# whether DALI's kernels then cost the step less (end to end 0.92-0.95 of synthetic on the 21st session's H100;
# on the 24th's H200 it moved three rows by -0.04 to +0.06, no consistent gain)
# COMPARE_LOADERS: other loaders to feed each row's compiled step after DALI (bench.compare --other-loaders), e.g.
# dali-engine: DALI with the engine's fused kernel augmenting (seconds a row; DALI's own augmentation kept a GPU-bound
# compiled step at 0.92-0.94 of synthetic and shufflenet_v2_x2_0's graphed one at 0.76, the thirtieth session's H200);
# resident: whether the copy decoded once keeps GPU-bound steps at 0.95 of synthetic, where DALI's kernels cost
# them 5-8 % (the twenty-fourth session's H200); seconds a row, the decode once for all rows
backbones=${BACKBONES:-swin_v2_t,wavemix}
budget=${COMPARE_BUDGET:-300}
streams=${COMPARE_STREAMS:-engine}
other_loaders=${COMPARE_LOADERS:-none}
# grep --line-buffered: each row reaches the log as it is printed, so a call cut short by the device's time limit
# keeps the rows that finished (grep buffers a pipe's output; the twenty-ninth session lost a finished row so)
[ "$backbones" != none ] && timeout $((budget + 120)) python3 -m engine.bench.compare --data /tmp/jpgs \
  --backbones "$backbones" --time-budget "$budget" --training-streams "$streams" \
  --other-loaders "$other_loaders" 2>&1 \
  | grep --line-buffered -v -i deprecat | tee "$out/compare.jsonl"
# GRAPHS=1: CUDA graphs (--compile-mode reduce-overhead) against the default mode where the host's launches show
# most, per backbone of GRAPHS_BACKBONES (default shufflenet_v2_x2_0: on the twenty-fourth session's H200 its host
# took 33.2 ms to enqueue a compiled step the GPU ran in 29.6, and it reached 0.849 of synthetic end to end;
# mobilenet_v3_large reached 0.711 on an H100): `engine profile` with DALI at the autotuned batch (the profile
# store is this script's, so a backbone compared above is not tuned again): the host's time a step, the model's
# and the end-to-end rates, the graphs skipped. About 100 s a mode (its compile, the autotune once). Measured on the
# twenty-seventh session's H100: graphs 1.51x model only and 1.53x end to end; `--compile-mode auto`, the engine's
# default since, chooses them where the eager step is launch-bound
if [ "${GRAPHS:-0}" = 1 ]; then
  graphs_backbones=${GRAPHS_BACKBONES:-shufflenet_v2_x2_0}
  for backbone in ${graphs_backbones//,/ }; do
  for mode in default reduce-overhead; do
    timeout 170 python3 -m engine profile --backbone "$backbone" --data /tmp/jpgs --image-size 256 --loader dali \
      --compile-mode "$mode" --steps 30 --json 2>>"$out/profile.log" | tee -a "$out/profile_modes.jsonl"
  done
  done
fi
# COMPARE_ONLY=1: stop here (~4-5 minutes in all), when the session has little device time left
[ "${COMPARE_ONLY:-0}" = 1 ] && exit 0
timeout 100 python3 -m engine train --backbone mobilenet_v3_large --data /tmp/jpgs --no-pretrained --image-size 256 \
  --max-epochs 2 --out /tmp/runs 2>&1 | tee "$out/train.log"
cp /tmp/runs/*/*/*/*/config.json "$out/train_config.json" 2>/dev/null
# packing: 1, 2 and 3 copies, each compiling, then 10 s together; at a batch given, which every copy keeps (with
# auto each copy would first tune its batch in its share of the card: a minute more per count)
timeout 360 python3 -m engine profile --backbone mobilenet_v3_large --data /tmp/jpgs --image-size 256 --steps 20 \
  --batch-size 256 --packing --json 2>>"$out/profile.log" | tee -a "$out/profile.jsonl"
