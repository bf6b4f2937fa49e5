"""Input pipelines side by side on the same files: loader-only images/s for each (torch, DALI, resident), and
end-to-end training images/s with each against the same model fed synthetic data already on the device.

    python -m engine.bench.loaders --data eurosat --backbone resnet50 --image-size 256   # on a GPU
    python -m engine.bench.loaders --data demo --quick --device cpu                     # smoke run
    python -m engine.bench.loaders --data /tmp/jpgs --loaders dali --loader-only --batch-size 256 --workers 8
    python -m engine.bench.loaders --data /tmp/jpgs --loaders dali,dali-engine --rounds 5   # DALI's two augmenters

A loader keeps up when its end-to-end rate is close to the synthetic one (`of_synthetic`: against the synthetic rate
measured just before and after it, as the host's speed drifts between runs; `--rounds N` measures the two in turn N
times and takes the median round, for a host-bound step whose rate drifts within a run). The steps, and the loaders
alone, run where `engine train` runs them, on a CUDA stream of their own; `--training-stream legacy|high` are
experiments: on torch's default stream (CUDA's legacy one, which any blocking stream or synchronous copy of DALI's
would wait for and hold up), or on a stream of high priority, meant to leave DALI's kernels (on its own stream,
default priority) the training's gaps (on an H200 it did not: resnet50 0.94 of synthetic either way,
bench/NOTES.md, as DALI's blocks, once on the SMs, run to their end whatever the step's priority).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics

import torch
import torch.nn.functional as F

from engine.bench.timing import (TRAINING_STREAMS, count_of, host_breakdown, kernel_breakdown, kernel_count,
                                 or_error, round_count, share_of, step_stream, stream_concurrency)
from engine.config import parse_image_size
from engine.loaders import PIPELINES, dali_available, resolve_dataset, scan_dataset
from engine.loaders.dali_pipeline import (AUGMENTERS, DEFAULT_AUGMENTER, DEFAULT_HANDOVER, HANDOVERS,
                                          HW_DECODER_LOAD)
from engine.models import build_backbone
from engine.profile import endless, images_per_s, synthetic_rate
from engine.trainer import compiled, tune_convolutions


# What --loaders measures: each of the engine's loaders, and DALI decoding and resizing while the engine's fused kernel
# augments and normalises (loaders/dali_pipeline.AUGMENTERS), so that one process can set the two DALI rows side
# by side against the same card's drift
LOADER_VARIANTS = {**{name: (name, {}) for name in PIPELINES}, "dali-engine": ("dali", {"augmenter": "engine"})}


def loader_rates(name, index, size, batch, device, workers, dtype, steps, warmup, train_step,
                 dali_options=None, stream_choice="engine", kernels=0, synthetic=None, rounds=1,
                 host_functions=0) -> dict:
    """Images/s of one pipeline alone and, unless `train_step` is None, feeding the training step; with
    `kernels`, where the loader's own time per batch goes (device kernels and the operators that copy).
    `dali_options`: DaliBatches' keyword arguments set apart from the engine's defaults (reported in the row).
    With `synthetic` (a batch on the device), the end-to-end rate's share of the synthetic rate measured just
    before and just after it, on the same stream: on the fourteenth session's H100 mobilenet_v3_large's synthetic
    rate moved from 2342 to 4274 img/s between runs of the same command (its eager step is bound by the host's
    launches, and the host's speed drifted), so a ratio against one rate measured minutes earlier says little.
    `rounds`: end to end and synthetic in turn that many times (end_to_end_rounds). `host_functions`: also where
    the host's time goes, per batch alone and per step end to end (its costliest Python functions and builtins)."""
    loader, variant = LOADER_VARIANTS[name]
    if loader == "dali" and not dali_available():
        raise RuntimeError("DALI is not installed")
    options = {**(dali_options or {}), **variant} if loader == "dali" else {}
    pipeline = PIPELINES[loader](index, index.train, image_size=size, augment=True, batch_size=batch, train=True,
                               device=device, seed=0, workers=workers, channels_last=True, dtype=dtype, **options)
    row = {"loader": name, "batch": batch, "workers": workers, **options}
    # Alone too, the loader runs on the stream the steps run on (engine train's): what it enqueues (the engine
    # augmenter's ~45 launches and copies a batch, a cast) would otherwise go on CUDA's legacy stream, which waits
    # for the work of every blocking stream of the process, and they for it. Until the thirty-second session the
    # loader-alone rows ran there. That was not why DALI with the engine augmenting ran slower alone than with its
    # own augmenter (9.7k against 15.1k img/s on an H100 then, 12.9k against 19.1k on an H200 on this stream since).
    with step_stream(stream_choice, device):
        row["loader_only_img_s"] = round(images_per_s(endless(pipeline), steps, warmup, lambda x, y: None, device), 1)
        if kernels:  # a loader slower alone than feeding a step (the resident path on an H100) spends its time here
            batches = endless(pipeline)
            row["kernels"] = or_error(lambda: kernel_breakdown(lambda: next(batches), device, steps=3, top=kernels))
        if host_functions:  # a loader whose kernels are short yet slow alone or end to end waits somewhere here
            batches = endless(pipeline)
            row["host"] = or_error(lambda: host_breakdown(lambda: next(batches), steps=10, top=host_functions))
            if train_step is not None:
                row["host_end_to_end"] = or_error(lambda: host_breakdown(lambda: train_step(*next(batches)),
                                                                         steps=10, top=host_functions))
        if train_step is not None:
            row.update(end_to_end_rounds(pipeline, train_step, synthetic, steps, warmup, device, rounds))
            if kernels and device.type == "cuda":  # whether the loader's kernels run beside the step's, or between
                batches = endless(pipeline)
                row["streams"] = or_error(lambda: stream_concurrency(lambda: train_step(*next(batches)), device,
                                                                     steps=5, top=kernels))
    if train_step is not None and stream_choice != "engine":
        row["training_stream"] = stream_choice
    return row


def end_to_end_rounds(pipeline, train_step, synthetic, steps: int, warmup: int, device: torch.device,
                      rounds: int = 1) -> dict:
    """The step fed by the pipeline, `rounds` times, each between two synthetic rates (the one after a round is
    the one before the next): each round's ratio is against the mean of the two around it, and the row's is their
    median. A host-bound step's rate drifts within a process (mobilenet_v3_large's synthetic rate went 4799, 3068,
    5867 img/s on one H200 in minutes; its single-round ratios read 0.80-1.14 over five runs), so one round says
    little where several in turn do. Without `synthetic`, the loader-fed rate alone (the median of the rounds)."""
    def synthetic_now() -> float:
        return round(synthetic_rate(train_step, synthetic, steps, warmup, device), 1)

    with_synthetic = synthetic is not None
    synthetic_rates = [synthetic_now()] if with_synthetic else []
    train_rates, ratios = [], []
    for _ in range(rounds):
        train_rates.append(round(images_per_s(endless(pipeline), steps, warmup, train_step, device,
                                              drain=pipeline.queued_batches), 1))
        if with_synthetic:
            synthetic_rates.append(synthetic_now())
            ratios.append(round(train_rates[-1] / statistics.mean(synthetic_rates[-2:]), 3))
    row = {"train_img_s": round(statistics.median(train_rates), 1)}
    if with_synthetic:
        row.update(synthetic_img_s=synthetic_rates, of_synthetic=round(statistics.median(ratios), 3))
    if rounds > 1:
        row.update(train_img_s_rounds=train_rates, of_synthetic_rounds=ratios)
    return row


def training_step(backbone: str, num_classes: int, device: torch.device, compile_model: bool = False):
    """One bf16-autocast AdamW step of `backbone` in channels_last: what the end-to-end rates feed; with
    `compile_model`, the model under torch.compile as engine train runs it on a GPU (the first steps, the warm-up's,
    compile it)."""
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    tune_convolutions(device)
    model = build_backbone(backbone, num_classes).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = compiled(model) if compile_model else model

    def train_step(images, labels):
        with amp:
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def dali_options(args) -> dict:
    """The DALI settings the command line moved from the engine's defaults."""
    given = {"hw_decoder_load": args.dali_hw_decoder_load, "handover": args.dali_handover,
             "augmenter": args.dali_augmenter}
    return {key: value for key, value in given.items() if value is not None}


def chosen_loaders(spec: str) -> list[str]:
    names = spec.split(",")
    unknown = sorted(set(names) - set(LOADER_VARIANTS))
    if unknown:
        raise SystemExit(f"unknown loader {unknown[0]!r}; choose from {', '.join(LOADER_VARIANTS)}")
    return names


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo", help="built-in dataset name or folder")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", default="256")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steps", type=count_of("steps", 1), default=30,
                        help="timed steps (batches) a rate, after 3 untimed (default: %(default)s)")
    parser.add_argument("--loaders", default="dali,resident,torch",
                        help="comma-separated pipelines, in the order to measure them (default: %(default)s), from "
                             + ", ".join(LOADER_VARIANTS) + " (dali-engine: DALI with --dali-augmenter engine)")
    parser.add_argument("--loader-only", action="store_true",
                        help="measure the loaders alone: no model, no end-to-end or synthetic rates")
    parser.add_argument("--dali-hw-decoder-load", type=share_of("the JPEGs"), default=None, metavar="SHARE",
                        help="share of JPEGs DALI sends to the GPU's hardware decoder (default: the engine's, "
                             f"{HW_DECODER_LOAD}; DALI's own is 0.65); the rest decode on CPU threads and SMs, "
                             "beside the training")
    parser.add_argument("--dali-handover", choices=HANDOVERS, default=None,
                        help="how DALI's GPU batches pass to torch (loaders/dali_pipeline.py; default: the engine's, "
                             f"{DEFAULT_HANDOVER}): the host waits for each, or torch's stream does")
    parser.add_argument("--dali-augmenter", choices=AUGMENTERS, default=None,
                        help="who runs TrivialAugmentWide and the normalisation of DALI's training batches "
                             f"(loaders/dali_pipeline.py; default: the engine's, {DEFAULT_AUGMENTER}): DALI, beside "
                             "the step, or the engine's fused kernel on the step's stream")
    parser.add_argument("--training-stream", choices=TRAINING_STREAMS, default="engine",
                        help="where the loader alone and the step run: on a stream of their own, as engine train "
                             "runs them (engine); on torch's default stream, CUDA's legacy one, which synchronises "
                             "with every blocking stream and synchronous CUDA call of the process (legacy); on a "
                             "stream of their own at high priority, meant to leave DALI's kernels the step's gaps "
                             "(high; no gain measured on an H200)")
    parser.add_argument("--kernels", type=kernel_count, default=0, metavar="N",
                        help="also profile each loader alone over 3 batches: its N costliest kernels (CPU: "
                             "operators) per batch, and the operators that copy; on a GPU, and end to end, how "
                             "long the loader's and the step's kernels ran at the same time, and the N costliest "
                             "kernels beside the step's stream (DALI's operators)")
    parser.add_argument("--host-functions", type=count_of("functions", 0), default=0, metavar="N",
                        help="also profile the host over 10 batches alone and 10 steps end to end: its N costliest "
                             "Python functions and builtins by their own time, ms per batch (a wait for DALI's "
                             "outputs or for the device shows as the call that waits)")
    parser.add_argument("--rounds", type=round_count, default=1, metavar="N",
                        help="end to end: each loader's rate and the synthetic one measured in turn N times; "
                             "of_synthetic is the median of the rounds' ratios (for a host-bound step, whose rate "
                             "drifts within a process)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="the model under torch.compile, as engine train runs it on a GPU (default: eager, "
                             "whose host-bound steps show a loader's host cost most)")
    parser.add_argument("--quick", action="store_true", help="32 px, batch 8, 2 steps (smoke test)")
    args = parser.parse_args(argv)
    loaders = chosen_loaders(args.loaders)
    device = torch.device(args.device)
    size = (32, 32) if args.quick else parse_image_size(args.image_size)
    batch, steps, warmup = (8, 2, 1) if args.quick else (args.batch_size, args.steps, 3)
    index = scan_dataset(resolve_dataset(args.data, args.data_root).path)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what the engine's loaders hand over
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "data": args.data, "images": len(index.train), "image_size": size, "batch": batch,
                      "backbone": None if args.loader_only else args.backbone, "compile": args.compile,
                      "torch": torch.__version__}),
          flush=True)
    rows, train_step, synthetic = [], None, None
    if not args.loader_only:
        train_step = training_step(args.backbone, index.num_classes, device, args.compile)
        synthetic = (torch.randn(batch, 3, *size, device=device, dtype=dtype)
                     .contiguous(memory_format=torch.channels_last),
                     torch.randint(0, index.num_classes, (batch,), device=device))
        with step_stream(args.training_stream, device):  # where the end-to-end rows run their steps
            rate = synthetic_rate(train_step, synthetic, steps, warmup, device)
        rows.append({"loader": "synthetic (on device)", "loader_only_img_s": None, "train_img_s": round(rate, 1)})
        print(json.dumps(rows[-1]), flush=True)
    for name in loaders:  # in the order asked: the default puts DALI first, so a time limit cuts the fallbacks
        try:
            rows.append(loader_rates(name, index, size, batch, device, args.workers, dtype, steps, warmup, train_step,
                                     dali_options(args), args.training_stream, args.kernels, synthetic,
                                     args.rounds, args.host_functions))
        except Exception as err:  # noqa: BLE001 - one failing loader must not hide the others' numbers
            rows.append({"loader": name, "error": repr(err)[:300]})
        print(json.dumps(rows[-1]), flush=True)
        # A loader left half-consumed (DALI's pipeline, its threads and memory pools) is torn down here, outside
        # the next loader's timed region, not whenever the garbage collector next runs.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
