"""`engine profile`: where a training step's time goes, for the whole pipeline (timm's benchmark.py, extended
to the loader): the model on synthetic data (forward / backward / optimizer split, peak memory, compile time),
the loader alone, and both together, with a one-line verdict naming the bottleneck."""
from __future__ import annotations

import time
from dataclasses import replace
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from engine.config import CUDA_GRAPH_MODES, RunConfig
from engine.loaders import DatasetIndex, fits_budget
from engine.models import build_backbone
from engine.scheduler import LAUNCH_BOUND, host_step_ms, synchronize, wait_for_copies
from engine.progress import readable_rate
from engine.run import make_batches, out_of_memory_advice
from engine.trainer import (FIRST_PHASE, begin_step, compiled, cuda_graph_skips, input_dtype, make_optimizer,
                            make_precision, training_stream, tune_convolutions)

INPUT_BOUND = 0.9  # end to end (or the loader alone) below this share of the model-only rate: the input side limits


def images_per_s(batches: Iterable, steps: int, warmup: int, work: Callable, device: torch.device,
                 drain: int = 0) -> float:
    """Images/s over `steps` batches after `warmup` ones, each batch handed to `work(images, labels)`.

    `drain` batches are then taken, without work, before the clock starts: a loader that works ahead (DALI's
    prefetch queue, DataLoader workers) made them while the warm-up's steps ran, and timed, they would hide that
    many batches' worth of a slow loader (over 15 steps with 3 made ahead, a loader 10 % too slow for the step
    reads as keeping up). Pass the pipeline's `queued_batches` when timing a loader feeding a step.

    The clock starts when the first timed batch has arrived: after the drain, a loader starts again from an empty
    queue, and the wait for that one batch (its decode and resize, with nothing made ahead) is what a run pays once,
    at its start, not per step. Timed, it read as a loader falling behind: in a CPU simulation, DALI four times
    faster than a 44-ms step read 0.94-0.96 of the step's rate over 15 steps (bench/NOTES.md, thirty-second
    session). A loader slower than the step still reads as slow: its later batches each arrive late."""
    if steps < 1:
        raise ValueError(f"the steps to time must be 1 or more, not {steps}")
    stream = iter(batches)
    for images, labels in islice(stream, warmup):
        work(images, labels)
    synchronize(device)
    for _ in islice(stream, drain):
        pass
    timed = iter(islice(stream, steps))
    first = next(timed, None)
    if first is None:
        raise ValueError("no batch to time: the batches ran out in the warm-up and the drain")
    seen, started = 0, time.perf_counter()
    for images, labels in chain([first], timed):
        work(images, labels)
        seen += labels.numel()
    synchronize(device)
    return seen / (time.perf_counter() - started)


def synthetic_rate(step: Callable, synthetic: tuple, steps: int, warmup: int, device: torch.device) -> float:
    """Images/s of the step fed one batch already on the device, over and over: what no loader can beat."""
    return images_per_s(iter(lambda: synthetic, None), steps, warmup, step, device)


def first_step_seconds(step: Callable, batch: tuple, device: torch.device) -> float:
    """Seconds of one step, synchronised: the first compiles (--compile) and runs cuDNN's algorithm search, so
    it is the cost a run pays once before its rate, reported beside the rate rather than averaged into it."""
    started = time.perf_counter()
    step(*batch)
    synchronize(device)
    return time.perf_counter() - started


def endless(pipeline) -> Iterable:
    """Batches epoch after epoch."""
    epoch = 1
    while True:
        yield from pipeline.epoch(epoch)
        epoch += 1


class TrainStep:
    """The run's training step (precision, memory format, compile as configured), run as the trainer runs it: no
    synchronisation inside. Marks between its phases are CUDA events on a GPU (recorded on the stream, read
    once at the end) and wall-clock times on the CPU (where the work is synchronous)."""

    PHASES = ("forward", "backward", "optimizer")

    def __init__(self, config: RunConfig, num_classes: int):
        self.device = torch.device(config.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        tune_convolutions(self.device)
        model = build_backbone(config.backbone, num_classes).to(self.device, memory_format=self.memory_format)
        self.model = compiled(model, config.compile_mode) if config.compile else model
        self.optimizer = make_optimizer(FIRST_PHASE, model)
        self.precision = make_precision(config.precision, self.device.type)
        self.marks: list[list] = []  # per step: a mark before the forward and after each phase

    def _mark(self):
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        begin_step()
        marks = [self._mark()]
        with self.precision.autocast():
            loss = F.cross_entropy(self.model(images), labels)
        marks.append(self._mark())
        self.precision.backward(loss)
        marks.append(self._mark())
        self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        marks.append(self._mark())
        self.marks.append(marks)

    def phase_ms(self, last_steps: int) -> dict[str, float]:
        """Each phase's mean milliseconds over the last `last_steps` steps."""
        synchronize(self.device)
        elapsed = (lambda start, end: start.elapsed_time(end)) if self.device.type == "cuda" else \
            (lambda start, end: (end - start) * 1e3)
        steps = self.marks[-last_steps:]
        return {phase: round(sum(elapsed(marks[k], marks[k + 1]) for marks in steps) / len(steps), 2)
                for k, phase in enumerate(self.PHASES)}


def synthetic_batch(config: RunConfig, num_classes: int, memory_format: torch.memory_format) -> tuple:
    """One batch of random images and labels already on the device, in the dtype and layout the loaders hand
    over: what the training step would run at with an infinitely fast loader."""
    device = torch.device(config.device)
    images = torch.randn(config.batch_size, 3, *config.image_size, device=device, dtype=input_dtype(config.precision))
    return (images.contiguous(memory_format=memory_format),
            torch.randint(0, num_classes, (config.batch_size,), device=device))


def profile(config: RunConfig, index: DatasetIndex | None, steps: int, warmup: int) -> dict:
    # the stream `engine train` runs its steps on; a batch too large for the card as the one line training gives
    with training_stream(torch.device(config.device)), out_of_memory_advice(config):
        report = _measure(config, index, steps, warmup)
    report["verdict"] = verdict(report)
    report["verdict"] += _launch_hint(report) + _resident_hint(report, config, index)
    return report


def _measure(config: RunConfig, index: DatasetIndex | None, steps: int, warmup: int) -> dict:
    device = torch.device(config.device)
    pipeline = None
    if index is not None:
        pipeline = make_batches(config, index, index.train, train=True, device=device)
        config = _at_the_batch_taken(config, pipeline.batch_size)
    step = TrainStep(config, index.num_classes if index else 1000)
    batch = config.batch_size
    synthetic = synthetic_batch(config, index.num_classes if index else 1000, step.memory_format)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_step_s = first_step_seconds(step, synthetic, device)  # reported, not averaged in
    model_rate = synthetic_rate(step, synthetic, steps, warmup, device)
    per_step_ms = step.phase_ms(last_steps=steps)
    host_ms = host_step_ms(step, synthetic, device)
    report = {
        "backbone": config.backbone, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "image_size": list(config.image_size), "precision": config.precision, "compile": config.compile,
        "compile_mode": config.compile_mode, "compile_mode_reason": config.compile_mode_reason,
        "cuda_graph_skips": _graph_skips(config, device),
        "channels_last": config.channels_last, "batch_size": batch, "batch_size_reason": config.batch_size_reason,
        "first_step_s": round(first_step_s, 2), "model_images_per_s": round(model_rate, 1),
        "step_ms": round(batch / model_rate * 1e3, 2), "phase_ms": per_step_ms,
        "host_step_ms": host_ms,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "loader": None, "loader_images_per_s": None, "end_to_end_images_per_s": None,
    }
    if pipeline is not None:
        report["loader"] = config.loader
        report["loader_images_per_s"] = round(images_per_s(endless(pipeline), steps, warmup,
                                                           lambda x, y: None, device), 1)
        report["end_to_end_images_per_s"] = round(images_per_s(endless(pipeline), steps, warmup, step, device,
                                                               drain=pipeline.queued_batches), 1)
    return report


def _at_the_batch_taken(config: RunConfig, batch: int) -> RunConfig:
    """A training set smaller than the batch asked makes each step take the whole set, as in training (a 1 %
    fraction): the model alone is then measured at that batch too, so that its rate and the loader's compare."""
    if batch == config.batch_size:
        return config
    return replace(config, batch_size=batch,
                   batch_size_reason=f"the whole training set ({config.batch_size} asked: {config.batch_size_reason})")


def _graph_skips(config: RunConfig, device: torch.device) -> int | None:
    """Under a CUDA-graph mode on a GPU, how many compiled graphs run without them (0: all replayed)."""
    return cuda_graph_skips() if config.uses_cuda_graphs and device.type == "cuda" else None


def _launch_hint(report: dict) -> str:
    host, step = report["host_step_ms"], report["step_ms"]
    if host is None or host < LAUNCH_BOUND * step:
        return ""
    return (f"; launch-bound: the host takes {host:.1f} ms to enqueue a step the GPU runs in {step:.1f} ms, so host "
            f"work beside it (a loader's threads) slows the step{_launch_remedy(report)}")


def _launch_remedy(report: dict) -> str:
    """What takes launches off the host, from where the step stands: fused kernels, then CUDA graphs (one launch
    a step). Under CUDA graphs already, what is left is the host's own work (a larger batch amortises it)."""
    if not report["compile"]:
        return "; try --compile (fused kernels: fewer launches)"
    if report["compile_mode"] not in CUDA_GRAPH_MODES:
        return "; try --compile-mode reduce-overhead (CUDA graphs: the step replayed in one launch)"
    return "; a larger --batch-size spreads the host's time over more images"


def _resident_hint(report: dict, config: RunConfig, index: DatasetIndex | None) -> str:
    """Where the input side limits and the dataset's decoded copy fits the resident budget, the loader that
    takes decoding and per-epoch file reading out of the loop altogether is worth a try."""
    if index is None or report["verdict"].startswith("compute-bound") or config.loader == "resident" or \
            not fits_budget(index, config.image_size, torch.device(config.device)):
        return ""
    return "; its decoded images fit the resident budget: try --loader resident (decoded once, kept on the device)"


def packed_copy(config: RunConfig, copies: int, barrier: Path, seconds: float, warmup: int = 3) -> dict:
    """One of `copies` processes measuring the training step together (`engine profile --packing` starts them).
    Each compiles and warms up on its own schedule, waits at `barrier` until all are ready, then runs the step
    on synthetic data for `seconds`, so that every copy's timed window is the same stretch of time and the rates
    add up to what the device does with `copies` runs at once. The window is in wall-clock time (comparable
    across processes): the report gives it, so that the overlap can be checked."""
    device = torch.device(config.device)
    step = TrainStep(config, 1000)
    synthetic = synthetic_batch(config, 1000, step.memory_format)
    with training_stream(device):  # as engine train runs its steps
        for _ in range(warmup):
            step(*synthetic)
        synchronize(device)
        wait_for_copies(barrier, copies)
        steps, started = 0, time.time()
        while time.time() - started < seconds:  # no synchronisation inside, as in training
            step(*synthetic)
            steps += 1
        synchronize(device)
        ended = time.time()
    return {"batch_size": config.batch_size, "batch_size_reason": config.batch_size_reason,
            "images_per_s": round(steps * config.batch_size / (ended - started), 1), "window": [started, ended]}


def verdict(report: dict) -> str:
    """The bottleneck in one line. End to end well below the model alone has two causes that call for different
    fixes: a loader slower than the step (more workers, DALI, the resident path) or a loader fast enough alone
    that slows down beside the step (they share CPU cores, or GPU SMs for DALI's GPU stages and the resident
    path's augmentation, or the handover waits)."""
    model = report["model_images_per_s"]
    end_to_end = report["end_to_end_images_per_s"]
    rate = readable_rate
    if end_to_end is None:
        slowest = max(report["phase_ms"], key=report["phase_ms"].get)
        return (f"model only: {rate(model)} img/s; the {slowest} pass takes the most time (no --data: loader not "
                f"measured)")
    share, loader = end_to_end / model, report["loader_images_per_s"]
    if share >= INPUT_BOUND:
        return (f"compute-bound: end to end {rate(end_to_end)} img/s is {share:.0%} of the model-only {rate(model)} "
                f"img/s")
    if loader < model * INPUT_BOUND:
        return (f"input-bound: the {report['loader']} loader delivers {rate(loader)} img/s alone, end to end "
                f"{rate(end_to_end)} img/s is {share:.0%} of the model's {rate(model)}")
    shared = "CPU cores" if report["device"] == "cpu" else "GPU or host threads"
    return (f"contention: the {report['loader']} loader alone delivers {rate(loader)} img/s, {loader / model:.1f}x "
            f"the model's {rate(model)}, yet end to end reaches {rate(end_to_end)} ({share:.0%}): loader and step "
            f"compete for the same {shared}, or the handover waits")
