"""The engine against the authors' loop, on the same image files and backbone, in one process: epoch images/s
of each and their ratio, per backbone.

    python -m engine.bench.compare --data /tmp/jpgs --backbones resnet50,convnext_tiny,regnet_y_3_2gf   # GPU
    python -m engine.bench.compare --data /tmp/jpgs --backbones all          # every backbone, WaveMix too
    python -m engine.bench.compare --data demo --quick --device cpu                                   # smoke
    python -m engine.bench.compare --data /tmp/jpgs --backbones all --time-budget 540   # as many as fit 9 minutes

The engine side is `engine train`'s own step and loader as configured by default for the machine (on a GPU: bf16,
channels_last, torch.compile, DALI or resident loader, autotuned batch), timed over one epoch's batches (30 at
least) after warm-up, and then the same step on synthetic data already on the device (engine_over_synthetic: 1.0
means the loader never held the step back); the reference side is bench/reference_loop.py at the same batch size the
authors' loop would need to fit (128, as ANCHORS.md measured). Each row also says where its wall time went
(engine_setup_s: the batch autotune; engine_first_step_s: compilation; reference_s: the authors' loop, its start
included; wall_s: the whole row), so the next comparison's device time can be planned. The last line is the
geometric mean of the ratios over the backbones run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Callable

import torch

from engine.bench.loaders import LOADER_VARIANTS
from engine.bench.reference_loop import reference_epoch_rate
from engine.bench.timing import TRAINING_STREAMS, step_stream
from engine.errors import UserInputError
from engine.grid import pick_names
from engine.models import list_backbones
from engine.profile import TrainStep, endless, first_step_seconds, images_per_s, synthetic_batch, synthetic_rate
from engine.run import make_batches, prepare_config
from engine.scheduler import free_memory, host_step_ms

# at least this many steps timed, epoch after epoch: 2048 files at an autotuned batch of 256 are 8 steps, half
# a second of a compiled resnet50, where one late batch would move the ratio by several percent
MIN_TIMED_STEPS = 30


def engine_rates(data: str, backbone: str, image_size: tuple[int, int], device: str, batch_size, steps: int | None,
                 streams: tuple[str, ...] = ("engine",), other_loaders: tuple[str, ...] = ()):
    """The engine's epoch images/s over the files, its same (already compiled) step's rate on synthetic data on
    the device (their ratio says whether its loader keeps up), and the host's milliseconds to enqueue that step
    (near the step's own time, the host sets the pace, and the loader's host threads slow the step); and the
    seconds spent before the first timed step: the batch search and the first step (compilation), which say what
    a comparison of more backbones will cost. The step runs on `streams[0]` (bench.timing.TRAINING_STREAMS; the
    engine's own by default); each further choice times the same step and loader again on that stream, which
    costs seconds where another row would cost a compile. Each of `other_loaders` feeds the same step in turn
    (as <loader>_loader): whether another of the engine's loaders would keep this step fed where the default
    does not."""
    started = time.perf_counter()
    config, index = prepare_config(backbone=backbone, data=data, image_size=image_size, device=device,
                                   batch_size=batch_size, pretrained=False)
    setup_s = time.perf_counter() - started  # on a GPU, mostly the batch autotune
    device = torch.device(config.device)
    step = TrainStep(config, index.num_classes)
    with step_stream(streams[0], device):  # by default the stream `engine train` runs its steps on
        pipeline = make_batches(config, index, index.train, train=True, device=device)
        steps = steps or max(len(pipeline), MIN_TIMED_STEPS)
        batches = endless(pipeline)
        first_step_s = first_step_seconds(step, next(batches), device)
        synthetic = synthetic_batch(config, index.num_classes, step.memory_format)
        epoch_rate, synthetic_img_s = end_to_end(step, pipeline, batches, synthetic, steps, device)
        host_ms = host_step_ms(step, synthetic, device)
    rates = {"engine_img_s": round(epoch_rate, 1), "engine_synthetic_img_s": round(synthetic_img_s, 1),
             "engine_over_synthetic": round(epoch_rate / synthetic_img_s, 3),
             "engine_step_ms": round(config.batch_size / synthetic_img_s * 1e3, 2), "engine_host_step_ms": host_ms,
             "engine_setup_s": round(setup_s, 1), "engine_first_step_s": round(first_step_s, 1)}
    if streams[0] != "engine":
        rates["training_stream"] = streams[0]
    for choice in streams[1:]:
        with step_stream(choice, device):
            rates[f"{choice}_stream"] = rerun_row(*end_to_end(step, pipeline, batches, synthetic, steps, device))
    for name in other_loaders:
        loader, options = LOADER_VARIANTS[name]
        with step_stream(streams[0], device):  # its batches made where the step's stream orders them
            other = make_batches(dataclasses.replace(config, loader=loader), index, index.train, train=True,
                                 device=device, **options)
            rates[f"{name}_loader"] = rerun_row(*end_to_end(step, other, endless(other), synthetic, steps, device))
    return rates, config, index


def rerun_row(epoch_rate: float, synthetic_img_s: float) -> dict:
    """The same step timed again another way (a stream, a loader): its rate end to end and on synthetic data."""
    return {"img_s": round(epoch_rate, 1), "synthetic_img_s": round(synthetic_img_s, 1),
            "over_synthetic": round(epoch_rate / synthetic_img_s, 3)}


def end_to_end(step, pipeline, batches, synthetic: tuple, steps: int, device: torch.device) -> tuple[float, float]:
    """The step's images/s fed by the loader (`batches`, epoch after epoch), then fed `synthetic` on the device."""
    epoch_rate = images_per_s(batches, steps, 3, step, device, drain=pipeline.queued_batches)
    return epoch_rate, synthetic_rate(step, synthetic, steps, 3, device)


def compare_backbone(backbone: str, args, size: tuple[int, int], batch: int, steps: int | None) -> dict:
    """One row: the engine and the authors' loop on the same files, and where the row's wall time went."""
    started = time.perf_counter()
    engine, config, index = engine_rates(args.data, backbone, size, args.device, batch if args.quick else None,
                                         steps, args.training_streams, args.other_loaders)
    reference_started = time.perf_counter()
    reference_rate = reference_epoch_rate(str(index.root / "train"), backbone, size, batch,
                                          torch.device(config.device), max_steps=steps)
    now = time.perf_counter()
    return {"backbone": backbone, **engine,
            "engine_setup": f"{config.precision}, batch {config.batch_size}, {config.loader}"
                            f"{', compile ' + config.compile_mode if config.compile else ''}",
            "reference_img_s": round(reference_rate, 1), "reference_s": round(now - reference_started, 1),
            "ratio": round(engine["engine_img_s"] / reference_rate, 2), "wall_s": round(now - started, 1)}


def time_for_another(rows: list[dict], started: float, budget_s: float | None) -> bool:
    """Whether the next backbone should start: within the budget if it takes as long as the longest row so far
    (compile and autotune times differ by model). Stopping between backbones keeps every finished row, where a
    device's time limit would kill the comparison half-way through one."""
    if budget_s is None or not rows:
        return True
    return time.perf_counter() - started + max(row["wall_s"] for row in rows) <= budget_s


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def comma_choices(allowed, none: bool = False) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: comma-separated names from `allowed`, each at most once (or `none`, where allowed: no
    name, for a script that always passes the flag)."""
    def parse(text: str) -> tuple[str, ...]:
        if none and text == "none":
            return ()
        choices = tuple(text.split(","))
        unknown = [choice for choice in choices if choice not in allowed]
        if unknown or len(set(choices)) < len(choices):
            raise argparse.ArgumentTypeError(f"{text!r}: each of {', '.join(allowed)} at most once")
        return choices
    return parse


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset name or a folder with train/<class>/<image>")
    parser.add_argument("--backbones", default="resnet50,convnext_tiny,regnet_y_3_2gf,mobilenet_v3_large",
                        help="comma-separated names or shell patterns ('regnet*'), or all")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128, help="the reference loop's batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="32 px, batch 8, 2 steps each (smoke test)")
    parser.add_argument("--time-budget", type=positive_seconds, metavar="SECONDS",
                        help="start no backbone that would likely end past this many seconds from the start (the "
                             "longest row so far is the estimate); the backbones left are printed as not_run")
    parser.add_argument("--training-streams", type=comma_choices(TRAINING_STREAMS), default=("engine",),
                        metavar="CHOICES",
                        help="where the engine's step runs, comma-separated from " + ", ".join(TRAINING_STREAMS)
                             + " (bench.timing): the first gives the row, each further one times the same step "
                               "and loader again (as <choice>_stream), e.g. engine,high: whether DALI's kernels "
                               "cost the step less when the step's stream has the higher priority")
    parser.add_argument("--other-loaders", type=comma_choices(tuple(LOADER_VARIANTS), none=True), default=(),
                        metavar="LOADERS",
                        help="none (the default), or comma-separated from " + ", ".join(LOADER_VARIANTS) + ": each "
                             "feeds the same compiled step again after the row's own loader (as <loader>_loader), "
                             "e.g. resident: whether the copy decoded once keeps a GPU-bound step fed where DALI's "
                             "kernels cost it 5-8 %%; dali-engine: DALI decoding and resizing, the engine's fused "
                             "kernel augmenting and normalising on the step's stream")
    args = parser.parse_args(argv)
    try:
        backbones = pick_names(args.backbones, list_backbones(), "backbone")
    except UserInputError as error:
        parser.error(str(error))
    size = (32, 32) if args.quick else (args.image_size, args.image_size)
    batch, steps = (8, 2) if args.quick else (args.batch_size, None)
    rows, started = [], time.perf_counter()
    for position, backbone in enumerate(backbones):
        if not time_for_another(rows, started, args.time_budget):
            print(json.dumps({"not_run": backbones[position:], "reason": f"--time-budget {args.time_budget:g} s"}),
                  flush=True)
            break
        rows.append(compare_backbone(backbone, args, size, batch, steps))
        print(json.dumps(rows[-1]), flush=True)
        # what this backbone's two sides cached on the device would otherwise shrink the next one's batch search
        free_memory()
    geometric_mean = math.exp(sum(math.log(row["ratio"]) for row in rows) / len(rows))
    print(json.dumps({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      "backbones": len(rows), "geometric_mean_ratio": round(geometric_mean, 2)}))
    return rows


if __name__ == "__main__":
    main()
