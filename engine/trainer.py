"""The paper's training protocol: DualOpt with early stopping, as flat functions.

    AdamW until `patience` epochs pass without a new best -> reload the best weights -> a fresh SGD until
    `patience` epochs pass without beating the best of both phases. The best accuracy is reported.

`record_epoch` is the protocol's whole control flow as a pure function of the accuracies seen; `fit` runs it
with real epochs and checkpoints so that a killed run continues from its last finished epoch.
"""
from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import distributed
from engine.config import ADAMW, SGD, RunConfig
from engine.distributed import sum_across_ranks
from engine.progress import readable_duration, readable_rate
from engine.results import BEST, LAST, METRICS, BackgroundWriter, load_checkpoint, write_metrics

log = logging.getLogger("engine")

# Each DualOpt phase and the optimizer it starts fresh with (paper §5).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda params, **implementation: torch.optim.AdamW(params, **ADAMW, **implementation),
    "sgd": lambda params, **implementation: torch.optim.SGD(params, **SGD, **implementation),
}
FIRST_PHASE, FINAL_PHASE = "adamw", "sgd"


def make_optimizer(phase: str, model: nn.Module) -> torch.optim.Optimizer:
    """A fresh optimizer of the phase over the model's parameters. On a GPU, torch's fused implementation (one
    kernel for every parameter instead of foreach kernels per group of tensors): the same update rule."""
    on_gpu = next(model.parameters()).is_cuda
    return OPTIMIZERS[phase](model.parameters(), fused=True if on_gpu else None)


# --- Compilation ---------------------------------------------------------------------------------------------
def compiled(model: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile with its caches on disk in ~/.cache/engine/inductor, shared by every run of this user, so a
    second run of the same backbone and shapes skips most of the compile (ANCHORS.md: 30-60 s the first time).
    The variables are read when inductor is first imported, which is here. `mode`: one of config.COMPILE_MODES."""
    cache = Path(os.environ.get("ENGINE_CACHE") or Path.home() / ".cache" / "engine") / "inductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    # said, since the first training and evaluation steps wait for it, silent on a bar or in a log file
    log.info("compiling the model (torch.compile, mode %s): the first steps wait for it, a minute or so the first "
             "time; its cache, %s, makes the next run of these shapes start faster", mode,
             os.environ["TORCHINDUCTOR_CACHE_DIR"])
    # Static shapes: training drops its partial batch and evaluation pads its own, so the model sees two shapes
    # (the training and the evaluation batch); dynamo would otherwise turn the batch dimension dynamic when the
    # second appears, and compile the evaluation graph less specialised.
    return torch.compile(model, dynamic=False, mode=None if mode == "default" else mode)


def begin_step() -> None:
    """Tell CUDA graphs (--compile-mode reduce-overhead) a new step begins: the last step's outputs, which the next
    replay overwrites, are no longer read. Without it, outputs still referenced (the last step's logits, until
    reassigned) would make each replay record a fresh graph. Free otherwise: it bumps a counter."""
    torch.compiler.cudagraph_mark_step_begin()


def cuda_graph_skips() -> int:
    """How many compiled graphs inductor ran without CUDA graphs in this process (it logs why under
    TORCH_LOGS=cudagraphs): under a CUDA-graph mode those fell back to launching every kernel."""
    from torch._dynamo.utils import counters
    return counters["inductor"]["cudagraph_skips"]


# --- Convolution algorithms ------------------------------------------------------------------------------------
def tune_convolutions(device: torch.device) -> None:
    """On a GPU, cuDNN times its algorithms for each convolution shape the first time it sees it and keeps the
    fastest (its heuristic pick otherwise): the shapes are fixed (full training batches, a padded evaluation
    batch), so the timing is paid once. Every path that runs or measures the engine's step calls this (training,
    the batch autotuner, `engine profile`, the benchmarks' engine side), so what they measure is what trains."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@contextmanager
def cudnn_benchmark(enabled: bool):
    """cuDNN's algorithm search on or off inside the block (a process-wide switch), as it was after: the
    benchmarks run published code (the authors' loop, the reference WaveMix) as published, without it."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


# --- CUDA streams ----------------------------------------------------------------------------------------------------
@contextmanager
def ordered_stream(stream: torch.cuda.Stream, device: torch.device):
    """Run the block on `stream`, ordered after what the current stream has enqueued before it, and with the
    current stream ordered after the block's work on every exit."""
    stream.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        torch.cuda.current_stream(device).wait_stream(stream)


@contextmanager
def training_stream(device: torch.device):
    """On a GPU, the block (the epochs, or a measured step) on a CUDA stream of its own, which torch creates
    non-blocking. torch's default stream is CUDA's legacy stream: every synchronous CUDA call of the process (a
    copy without Async, as a JPEG decoder may make per batch) waits for all the training queued on it, and so does
    every blocking stream's work, after which the training waits for the loader in turn (bench/NOTES.md, tenth
    session). Everything a step reads arrives on the current stream or is waited for there (the loaders' handover,
    the resident path's side stream), so it follows the step onto this one. On the CPU, nothing changes."""
    if device.type != "cuda":
        yield
        return
    with ordered_stream(torch.cuda.Stream(device), device):
        yield


# --- Precision, decided once -----------------------------------------------------------------------------------------
@dataclass
class Precision:
    name: str  # bf16 | fp16 | fp32
    autocast: Callable[[], object]  # a fresh context manager per call
    scaler: torch.amp.GradScaler | None  # fp16 only: bf16 and fp32 have fp32's exponent range

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def input_dtype(precision: str) -> torch.dtype:
    """What the loaders hand the model: the autocast dtype (its first layer would cast to it anyway), else fp32."""
    return AUTOCAST_DTYPES[precision] or torch.float32


def make_precision(name: str, device_type: str) -> Precision:
    dtype = AUTOCAST_DTYPES[name]
    autocast = nullcontext if dtype is None else partial(torch.autocast, device_type, dtype=dtype)
    scaler = torch.amp.GradScaler(device_type) if name == "fp16" else None
    return Precision(name, autocast, scaler)


# --- The protocol's control flow ----------------------------------------------------------------------------------
@dataclass
class ProtocolState:
    phase: str = FIRST_PHASE
    epoch: int = 0  # epochs finished
    best_acc: float = float("-inf")
    best_epoch: int = 0
    best_phase: str = ""
    switch_epoch: int | None = None  # last AdamW epoch; SGD starts after it
    epochs_without_improvement: int = 0
    stop_reason: str | None = None  # "patience" | "max_epochs" | "diverged" once training is over


def record_epoch(state: ProtocolState, eval_acc: float, patience: int, max_epochs: int | None,
                 diverged: bool = False) -> tuple[bool, str]:
    """Account for one finished epoch. Returns (new best?, action) with action one of continue, switch, stop.

    A new best must beat the best of every epoch so far, in either phase. The switch comes after exactly
    `patience` epochs without one (the authors' code switched after patience - 1: an off-by-one we do not copy).

    An epoch whose weights `diverged` (no longer finite) is no new best, and it ends its phase at once: non-finite
    weights stay non-finite, so the authors' loop would spend `patience` more epochs at the same chance accuracy
    and then end the phase with the same best. Before any best exists there is nothing to go back to, and such an
    epoch counts as any other.
    """
    state.epoch += 1
    has_best = state.best_epoch > 0
    improved = eval_acc > state.best_acc and not (diverged and has_best)
    if improved:
        state.best_acc, state.best_epoch, state.best_phase = eval_acc, state.epoch, state.phase
        state.epochs_without_improvement = 0
    else:
        state.epochs_without_improvement = patience if diverged else state.epochs_without_improvement + 1
    action = "continue"
    if max_epochs is not None and state.epoch >= max_epochs:
        state.stop_reason, action = "max_epochs", "stop"
    elif state.epochs_without_improvement >= patience and state.phase == FIRST_PHASE:
        state.phase, state.switch_epoch, state.epochs_without_improvement = FINAL_PHASE, state.epoch, 0
        action = "switch"
    elif state.epochs_without_improvement >= patience:
        state.stop_reason, action = "diverged" if diverged else "patience", "stop"
    return improved, action


def has_diverged(model: nn.Module, train_loss: float) -> bool:
    """Whether training left the weights non-finite. Asked only after an epoch whose loss was not finite, which
    can also be a few overflowing fp16 steps that the GradScaler skipped, leaving the weights as they were."""
    if math.isfinite(train_loss):
        return False
    finite = torch.stack([torch.isfinite(parameter).all() for parameter in model.parameters()]).all()
    return not bool(finite)  # one device sync


# --- One epoch -------------------------------------------------------------------------------------------------------
# How an epoch shows its progress (one line per epoch is logged in every mode): "bar" on a terminal; "lines" where
# the log goes to a file (a grid cell, Slurm, nohup), so that a long epoch is not silent for an hour; "off" on
# the ranks of a distributed run other than the first.
PROGRESS_MODES = ("bar", "lines", "off")


def progress_mode(is_main: bool) -> str:
    if not is_main:
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


class EpochProgress:
    """Steps done, images/s and the running loss, within an epoch. Reading the running loss syncs with the
    device, so it happens at most twice a second on a bar, once a minute in lines."""

    REFRESH_S = {"bar": 0.5, "lines": 60.0}

    def __init__(self, total_steps: int, description: str, mode: str):
        if mode not in PROGRESS_MODES:
            raise ValueError(f"unknown progress mode {mode!r}; choose from {', '.join(PROGRESS_MODES)}")
        self.mode, self.total_steps, self.description = mode, total_steps, description
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, desc=description, unit="step", leave=False, dynamic_ncols=True)
        self.steps = 0
        self.last_refresh = time.perf_counter()

    def update(self, images: int, seconds: float, running_loss: Callable[[], float]) -> None:
        if self.mode == "off":
            return
        self.steps += 1
        if self.bar is not None:
            self.bar.update(1)
        now = time.perf_counter()
        if now - self.last_refresh < self.REFRESH_S[self.mode]:
            return
        self.last_refresh = now
        rate = images / max(seconds, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{running_loss():.4f}", img_s=readable_rate(rate))
            return
        left_s = seconds / self.steps * (self.total_steps - self.steps)
        log.info("%s: step %d/%d, %s img/s, loss %.4f so far, about %s left", self.description, self.steps,
                 self.total_steps, readable_rate(rate), running_loss(), readable_duration(left_s))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, precision: Precision,
                    epoch: int, device: torch.device, progress: str) -> dict:
    """One pass over the training batches. Loss and accuracy accumulate on the device: no host sync per step."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    meter = EpochProgress(len(batches), f"epoch {epoch}", progress)
    start = time.perf_counter()
    for images, labels in batches.epoch(epoch):
        begin_step()
        with precision.autocast():
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(optimizer)
        loss_sum += loss.detach().float() * labels.size(0)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += labels.size(0)
        meter.update(seen, time.perf_counter() - start, lambda: loss_sum.item() / seen)
    synchronize(device)
    seconds = time.perf_counter() - start
    meter.close()
    # Over every rank of a distributed run (one collective per epoch); the rate is then the whole run's.
    totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, dtype=torch.float64, device=device)])
    loss_total, correct_total, seen = sum_across_ranks(totals).tolist()
    return {"train_loss": loss_total / max(seen, 1), "train_acc": 100.0 * correct_total / max(seen, 1),
            "images_per_s": seen / seconds, "epoch_s": seconds}


@torch.inference_mode()
def evaluate(model: nn.Module, batches, precision: Precision, device: torch.device) -> float:
    """Top-1 accuracy in percent over every image of the batches, each counted once (in a distributed run, over
    every rank's shard: the same number on every rank).

    A partial last batch is padded to the full batch and its padding's predictions dropped: one input shape, so
    a compiled model does not recompile for the tail and cuDNN does not benchmark it again. In eval mode every
    image's output depends on that image alone (BatchNorm uses its running statistics), so padding changes
    nothing else."""
    model.eval()
    counts = torch.zeros(2, device=device, dtype=torch.long)  # correct, seen
    for images, labels in batches.epoch(0):
        begin_step()
        with precision.autocast():
            logits = model(_padded(images, batches.batch_size))[:labels.size(0)]
        counts[0] += (logits.argmax(1) == labels).sum()
        counts[1] += labels.size(0)
    correct, total = sum_across_ranks(counts).tolist()
    return 100.0 * correct / max(total, 1)


def _padded(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`images` with zero images appended up to `batch_size` (F.pad keeps channels_last)."""
    missing = batch_size - images.size(0)
    return F.pad(images, (0, 0) * (images.dim() - 1) + (0, missing)) if missing > 0 else images


# --- Resumable state ---------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Fit:
    """What `fit` hands back: the protocol's final state, the per-epoch rows and the training wall time."""
    state: ProtocolState
    history: list[dict]
    wall_s: float


def _save_resume_point(writer, run_dir: Path, model, optimizer, precision, state, history, wall_s) -> None:
    writer.save(run_dir / LAST, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": precision.scaler.state_dict() if precision.scaler else None,
        "protocol": asdict(state), "history": history, "wall_s": wall_s, "rng": _rng_state()})


def _resume(run_dir: Path, model, precision) -> tuple[ProtocolState, torch.optim.Optimizer, list[dict], float]:
    checkpoint_path = run_dir / LAST
    if not checkpoint_path.exists():
        return ProtocolState(), make_optimizer(FIRST_PHASE, model), [], 0.0
    checkpoint = load_checkpoint(checkpoint_path)  # every rank reads it: all start from the same weights
    state = ProtocolState(**checkpoint["protocol"])
    model.load_state_dict(checkpoint["model"])
    optimizer = make_optimizer(state.phase, model)
    optimizer.load_state_dict(checkpoint["optimizer"])
    if precision.scaler is not None and checkpoint["scaler"] is not None:
        precision.scaler.load_state_dict(checkpoint["scaler"])
    if distributed.current().is_main:  # the saved RNG streams are rank 0's; other ranks keep their own seeding
        _restore_rng(checkpoint["rng"])
    log.info("resuming after epoch %d (%s phase, best %.2f %% at epoch %d)",
             state.epoch, state.phase, state.best_acc, state.best_epoch)
    return state, optimizer, checkpoint["history"], checkpoint["wall_s"]


def load_best(model: nn.Module, run_dir: Path) -> None:
    """The best epoch's weights into `model` on every rank: rank 0 reads best.pt (its own file), the others
    receive them from it."""
    if distributed.current().is_main:
        model.load_state_dict(load_checkpoint(run_dir / BEST)["model"])
    distributed.broadcast_module(model)


def fit(model: nn.Module, train_batches, eval_batches, config: RunConfig, run_dir: Path, *,
        evaluate_fn: Callable = evaluate, train_fn: Callable = train_one_epoch,
        progress: str | None = None) -> Fit:
    """Train `model` (already on the device, in its memory format) by the protocol, writing the run folder.

    Continues from `run_dir/last.pt` when it is there. Each finished epoch leaves best.pt (when it is a new
    best), last.pt and metrics.csv, each replaced atomically; the checkpoints are written by a background
    thread while the next epoch trains. In a distributed run rank 0 alone writes; every rank trains and takes
    the same decisions from the same summed accuracies. `progress` is one of PROGRESS_MODES, by default a bar on
    a terminal and a line a minute in a log file.
    """
    device = distributed.training_device(config.device)
    main = distributed.current().is_main
    if progress is None:
        progress = progress_mode(main)
    precision = make_precision(config.precision, device.type)
    state, optimizer, history, wall_s = _resume(run_dir, model, precision)
    trained = distributed.wrap(model, device)
    step_model = compiled(trained, config.compile_mode) if config.compile else trained
    writer = BackgroundWriter() if main else None
    first_epoch_here = True  # of this process: a resumed run compiles again
    if main:
        write_metrics(run_dir / METRICS, history)  # a kill between last.pt and metrics.csv leaves one row behind
    try:
        while state.stop_reason is None:
            started = time.perf_counter()
            row = {"epoch": state.epoch + 1, "phase": state.phase, "lr": optimizer.param_groups[0]["lr"]}
            row |= train_fn(step_model, train_batches, optimizer, precision, state.epoch + 1, device, progress)
            eval_started = time.perf_counter()
            row["eval_acc"] = evaluate_fn(step_model, eval_batches, precision, device)
            row["eval_s"] = time.perf_counter() - eval_started
            if first_epoch_here:
                _say_if_cuda_graphs_were_skipped(config)
                first_epoch_here = False
            diverged = has_diverged(model, row["train_loss"])
            if diverged:
                log.warning("epoch %d: the weights are no longer finite (training loss %s)", state.epoch + 1,
                            row["train_loss"])
            improved, action = record_epoch(state, row["eval_acc"], config.patience, config.max_epochs, diverged)
            history.append(_rounded(row))
            if improved and main:
                writer.save(run_dir / BEST, {"model": model.state_dict(), "epoch": state.epoch,
                                             "eval_acc": state.best_acc, "phase": state.best_phase})
            if action == "switch":
                if main:
                    writer.wait()  # best.pt must be on disk before it is read back
                load_best(model, run_dir)
                optimizer = make_optimizer(FINAL_PHASE, model)
            wall_s += time.perf_counter() - started
            if main:
                _save_resume_point(writer, run_dir, model, optimizer, precision, state, history, wall_s)
                write_metrics(run_dir / METRICS, history)
            _log_epoch(row, improved, action, state, diverged)
    finally:
        if writer is not None:
            writer.close()
    return Fit(state, history, wall_s)


def _say_if_cuda_graphs_were_skipped(config: RunConfig) -> None:
    """After the first epoch (training and evaluation graphs compiled): a CUDA-graph mode that inductor could not
    apply is said, not left to look like it ran."""
    skipped = cuda_graph_skips() if config.uses_cuda_graphs else 0
    if skipped:
        log.warning("--compile-mode %s: %d compiled graph(s) run without CUDA graphs (TORCH_LOGS=cudagraphs says "
                    "why)", config.compile_mode, skipped)


def _rounded(row: dict) -> dict:
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in row.items()}


def _log_epoch(row: dict, improved: bool, action: str, state: ProtocolState, diverged: bool) -> None:
    why = "the weights diverged" if diverged else f"no new best for {state.epoch - state.best_epoch} epochs"
    note = {"switch": f"; {why}: reloaded epoch {state.best_epoch}, switching to SGD",
            "stop": f"; stopping ({state.stop_reason})"}.get(action, "")
    log.info("epoch %3d %-5s loss %.4f train %.2f %% eval %.2f %%%s | %s img/s, %.1f s + eval %.1f s%s",
             row["epoch"], row["phase"], row["train_loss"], row["train_acc"], row["eval_acc"],
             " *" if improved else "", readable_rate(row["images_per_s"]), row["epoch_s"], row["eval_s"], note)
