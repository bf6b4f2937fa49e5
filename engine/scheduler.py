"""Batch-size autotune (`--batch-size auto`): the largest batch whose training step fits under a memory cap,
then the fastest of a few candidates at or below it, measured with the real step; cached in a profile store so
a grid pays for each (GPU, torch, backbone, size, precision, compile) once. Then the compile mode
(`--compile-mode auto`): CUDA graphs where the step at that batch will be launch-bound once compiled, judged by
the eager step's host share, measured and stored beside the batch. Last, packing: how many runs share one GPU best.

The search takes the step as a function, so its logic is tested on the CPU with an injected memory model.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from engine.errors import UserInputError
from engine.locks import held_in_turn
from engine.results import last_line, read_json, write_json

log = logging.getLogger("engine")

MEMORY_CAP = 0.9  # share of the card the search may fill: the rest is headroom for the loader and fragmentation
MIN_STEPS_PER_EPOCH = 8  # a batch never so large that an epoch has fewer steps
SEARCH_START = 16


@dataclass
class BatchChoice:
    batch_size: int
    reason: str
    largest_fitting: int
    images_per_s: dict[int, float] = field(default_factory=dict)  # candidate -> measured rate


class NothingFitsError(UserInputError):
    """The batch search found that not even one image per step fits: the image size is too large for the card."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or says_out_of_memory(str(error))


# How a full card shows besides torch's own "CUDA out of memory": cuDNN and cuBLAS allocate their handles outside
# torch's allocator, and fail so when runs packed on the card (CUDA contexts, DALI's buffers) left no room. On the
# CPU, torch's allocator says "can't allocate memory" where the system refuses (a memory limit, a container's, or
# overcommit off); where the kernel's out-of-memory killer ends the process instead, there is nothing to catch.
OUT_OF_MEMORY_SIGNS = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed",
                       "cublas_status_not_initialized", "can't allocate memory")


def says_out_of_memory(message: str) -> bool:
    """Whether an error's message (an exception's, or the last line a failed process logged) is out-of-memory."""
    return any(sign in message.lower() for sign in OUT_OF_MEMORY_SIGNS)


def largest_fitting_batch(fits: Callable[[int], bool], limit: int, start: int = SEARCH_START) -> int:
    """Double from `start` until a batch no longer fits or `limit` is reached, then bisect between the last
    batch that fitted and the first that did not. 0 when not even one image fits."""
    good, bad = 0, None
    size = min(start, limit)
    while size <= limit:
        if fits(size):
            good = size
            if size == limit:
                return good
            size = min(size * 2, limit)
        else:
            bad = size
            break
    if bad is None:
        return good
    low, high = good, bad  # low fits (or is 0), high does not
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def candidates_below(largest: int) -> list[int]:
    """The largest batch, and the multiples of 8 near 3/4 and 1/2 of it (smaller batches are sometimes faster)."""
    picks = {largest}
    for share in (0.75, 0.5):
        size = int(largest * share) // 8 * 8
        if size >= 8:
            picks.add(size)
    return sorted(picks, reverse=True)


def autotune(run_step: Callable[..., float | None], limit: int) -> BatchChoice:
    """`run_step(batch)` runs the real training step a few times and returns images/s, raising an out-of-memory
    error when the batch does not fit; `run_step(batch, timed=False)` only runs it to its peak memory (no timing,
    no rate). Returns the fastest fitting candidate."""
    def fits(batch: int) -> bool:
        try:
            run_step(batch, timed=False)
            log.info("  batch %d fits", batch)  # progress: the search takes a minute on a GPU
            return True
        except Exception as error:  # noqa: BLE001 - only out-of-memory means "too large"; re-raise the rest
            if not is_out_of_memory(error):
                raise
            log.info("  batch %d does not fit", batch)
            return False
        finally:
            free_memory()

    from engine.trainer import cudnn_benchmark

    # The search asks only what fits: with cuDNN's heuristic algorithms, not a timed search of every convolution
    # at each of its ~10 batch sizes (seconds each); the candidates are then timed as training runs them.
    with cudnn_benchmark(False):
        largest = largest_fitting_batch(fits, limit)
    if largest == 0:
        raise NothingFitsError("not even one image per step fits in memory")
    rates = {}
    for batch in candidates_below(largest):
        try:
            rates[batch] = run_step(batch)
            log.info("  batch %d: %.0f img/s", batch, rates[batch])
        except Exception as error:  # noqa: BLE001
            if not is_out_of_memory(error):
                raise
        finally:
            free_memory()
    if not rates:  # each fitted with cuDNN's heuristic algorithms; none with the workspaces its timed search tries
        raise UserInputError(f"batches up to {largest} fit in memory, but none of {candidates_below(largest)} did "
                             f"when timed with cuDNN's algorithm search; give a smaller --batch-size")
    best = max(rates, key=rates.get)
    capped = " (capped by the training set)" if largest == limit else ""
    # "eager": the rates are the eager step's (training_step_rate), which a compiled run passes (resnet50 on an
    # H200: 3689 img/s here, 5191 compiled), so a reader of config.json does not take them for the run's own rate
    return BatchChoice(best, f"fastest eager step of {sorted(rates)} ({rates[best]:.0f} img/s); "
                             f"largest fitting {largest}{capped}", largest, rates)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batch_limit(train_images: int) -> int:
    return max(1, train_images // MIN_STEPS_PER_EPOCH)


# --- The profile store -------------------------------------------------------------------------------------------
def profile_store_path() -> Path:
    return Path(os.environ.get("ENGINE_PROFILES") or Path.home() / ".cache" / "engine" / "profiles.json")


def profile_key(gpu: str, backbone: str, image_size: tuple[int, int], precision: str, compile_model: bool,
                channels_last: bool, share: float = 1.0) -> str:
    """A run packed with others on its GPU (share < 1) fits its batch in its share: a choice of its own."""
    parts = [gpu, f"torch {torch.__version__}", backbone, f"{image_size[0]}x{image_size[1]}", precision,
             "compile" if compile_model else "eager", "channels_last" if channels_last else "nchw"]
    return "|".join(parts + ([f"share {share:.3g}"] if share < 1 else []))


def read_profiles(path: Path | None = None) -> dict:
    path = path or profile_store_path()
    return read_json(path) or {}


def save_profile(key: str, entry: dict, path: Path | None = None) -> None:
    """Add or update one entry. Packed runs and grid cells write the store at the same time: the read, update
    and replace happen under an exclusive lock, or one writer's entry would be lost to another's older copy."""
    path = path or profile_store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with held_in_turn(path.with_name(f".{path.name}.lock"), f"writing the profile store {path}"):
        profiles = read_profiles(path)
        profiles[key] = {**profiles.get(key, {}), **entry, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(path, profiles)


def cached_or_tuned(key: str, run_step: Callable[..., float | None], limit: int, path: Path | None = None
                    ) -> BatchChoice:
    """The stored choice for `key` (if it respects today's limit), else a fresh autotune, stored."""
    stored = read_profiles(path).get(key) or {}
    # a store written before the eager host share had entries of its own may hold an entry with the share alone
    if stored.get("batch_size") and stored["batch_size"] <= limit:
        return BatchChoice(stored["batch_size"], f"profile store ({stored['reason']})", stored["largest_fitting"],
                           {int(b): r for b, r in stored.get("images_per_s", {}).items()})
    choice = autotune(run_step, limit)
    save_profile(key, {k: v for k, v in asdict(choice).items()}, path)
    return choice


# --- The real step ---------------------------------------------------------------------------------------------
# Steps that reach a training step's peak memory: the first allocates the optimizer's state after the backward, the
# second runs forward and backward beside it.
STEPS_TO_PEAK = 2


def synthetic_steps(backbone: str, num_classes: int, image_size: tuple[int, int], precision: str,
                    channels_last: bool, device: torch.device) -> Callable[[int], Callable[[], None]]:
    """A function batch -> the real eager training step (forward, backward, AdamW step) on a synthetic batch of
    that size, one model and optimizer for every batch. Eager: a compiled model would recompile for every
    candidate, and it needs no more memory than eager."""
    from engine.models import build_backbone
    from engine.trainer import FIRST_PHASE, make_optimizer, make_precision, tune_convolutions

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    tune_convolutions(device)  # each candidate timed with the algorithms training will use
    model = build_backbone(backbone, num_classes).to(device, memory_format=memory_format)
    optimizer = make_optimizer(FIRST_PHASE, model)
    step_precision = make_precision(precision, device.type)

    def make_step(batch: int) -> Callable[[], None]:
        images = torch.randn(batch, 3, *image_size, device=device).contiguous(memory_format=memory_format)
        labels = torch.randint(0, num_classes, (batch,), device=device)

        def step():
            with step_precision.autocast():
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            step_precision.backward(loss)
            step_precision.step(optimizer)

        return step

    return make_step


def training_step_rate(backbone: str, num_classes: int, image_size: tuple[int, int], precision: str,
                       channels_last: bool, device: torch.device, steps: int = 6, warmup: int = 3):
    """A function batch -> images/s of the real eager training step on synthetic data (synthetic_steps).
    Six timed steps: with three, an H100 ranked mobilenet_v3_large's batch 128 at half the rate of 192 (4.5k vs
    8.7k img/s at 128 px, bench/NOTES.md), which one step's jitter explains and the model does not.
    With `timed=False` (the memory search's question, whether a batch fits) only STEPS_TO_PEAK steps run and
    nothing is timed: the search tries ~10 sizes, up to thousands of images a step on a large dataset, where nine
    steps each would take minutes."""
    make_step = synthetic_steps(backbone, num_classes, image_size, precision, channels_last, device)

    def run(batch: int, *, timed: bool = True) -> float | None:
        step = make_step(batch)
        for _ in range(warmup if timed else STEPS_TO_PEAK):
            step()
        synchronize(device)
        if not timed:
            return None
        return batch / seconds_per_step(step, device, steps)

    return run


def seconds_per_step(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """Wall seconds a step takes in a run of `steps` back to back: the GPU's pace, or the host's where the host
    is the slower (launch-bound)."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_batch_size(requested: int | str | None, *, device: str, default: int, backbone: str, num_classes: int,
                      image_size: tuple[int, int], precision: str, compile_model: bool, channels_last: bool,
                      train_images: int) -> tuple[int, str]:
    """(batch size, why). A number is taken as it is; `auto` (the default on a GPU) autotunes there; on the CPU
    auto means the fixed CPU default, since the CPU has no memory wall worth searching for."""
    if isinstance(requested, int):
        return requested, "--batch-size"
    if device != "cuda":
        return default, "CPU default (autotuning is for GPUs)"
    gpu, share = torch.cuda.get_device_name(), memory_share()
    key = profile_key(gpu, backbone, image_size, precision, compile_model, channels_last, share)
    torch.cuda.set_per_process_memory_fraction(MEMORY_CAP * share)
    try:
        log.info("autotuning the batch size for %s (once per GPU, model, size and precision)", backbone)
        choice = cached_or_tuned(key, training_step_rate(backbone, num_classes, image_size, precision, channels_last,
                                                          torch.device("cuda")), batch_limit(train_images))
    except NothingFitsError:
        raise NothingFitsError(f"not even one {backbone} training image at {image_size[0]}x{image_size[1]} fits in "
                               f"{MEMORY_CAP * share:.0%} of the {gpu}'s memory; lower --image-size") from None
    finally:
        torch.cuda.set_per_process_memory_fraction(share)
        free_memory()
    packed = f" in {share:.3g} of the GPU ({MEMORY_SHARE_ENV})" if share < 1 else ""
    log.info("batch size %d%s: %s", choice.batch_size, packed, choice.reason)
    return choice.batch_size, f"autotuned{packed}: {choice.reason}"


# --- The compile mode: CUDA graphs where the host sets the pace (`--compile-mode auto`) ------------------------------
# The host's time to enqueue a step at this share of the step's time or more: the host, not the GPU, sets the pace
# (and whatever else takes host time, a loader's threads included, slows the step down). `engine profile`'s verdict
# says launch-bound from the same share.
LAUNCH_BOUND = 0.8
# `--compile-mode auto` judges the compiled step by the eager one (the compiled step does not exist before training
# starts), and compiling raises the host's share: inductor launches fewer kernels for less GPU time, each costing the
# host more. On an H100 at batch 256, shufflenet_v2_x2_0's eager host share was 0.765 while its compiled step took
# the host 35.7 ms for 30.5 ms on the GPU (1.17); efficientnet_v2_s's eager share was 0.758 and its compiled host
# 90.0 ms for 89.0 (bench/NOTES.md, twenty-ninth session): about 1.3-1.5x. So an eager share of 0.6 or more means
# a compiled step at LAUNCH_BOUND or beyond. Graphs given to a GPU-bound step cost little (its launches were not the
# pace); graphs withheld from a launch-bound one cost shufflenet 1.53x end to end.
EAGER_LAUNCH_BOUND = 0.6


def host_step_ms(step: Callable, batch: tuple, device: torch.device, repeats: int = 5) -> float | None:
    """Milliseconds the host takes to enqueue one step onto an idle GPU (the median of `repeats`, a
    synchronisation before each, none inside). Training enqueues ahead of the GPU as long as this is under the
    step's device time; at or above it, the GPU waits for the host. None on the CPU, where the work is done as it
    is enqueued."""
    if device.type != "cuda":
        return None
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        step(*batch)
        times.append(time.perf_counter() - started)
    synchronize(device)
    return round(statistics.median(times) * 1e3, 2)


def eager_host_share(make_step: Callable[[int], Callable[[], None]], batch: int, device: torch.device,
                     steps: int = 6, warmup: int = 3) -> float:
    """The host's time to enqueue one eager step onto an idle GPU over the step's time in a run of steps: about 1
    where the host sets the pace (launch-bound), well under it where the GPU does."""
    step = make_step(batch)
    for _ in range(warmup):
        step()
    host_ms = host_step_ms(step, (), device)
    return host_ms / (seconds_per_step(step, device, steps) * 1e3)


def graphs_where_launch_bound(share: float, batch: int) -> tuple[str, str]:
    """(compile mode, why) for an eager step whose host takes `share` of its time to enqueue it: CUDA graphs from
    EAGER_LAUNCH_BOUND up, where the compiled step, which is not built until training starts, will be launch-bound
    (shufflenet_v2_x2_0 on an H100: graphs ran it 1.51x faster model only, bench/NOTES.md)."""
    bound = share >= EAGER_LAUNCH_BOUND
    why = (f"auto: the host takes {share:.0%} of the eager step's time at batch {batch} to enqueue it, so the "
           f"compiled step is {'launch' if bound else 'GPU'}-bound (graphs from {EAGER_LAUNCH_BOUND:.0%})")
    if bound:
        return "reduce-overhead", why + ": CUDA graphs replay it in one launch"
    return "default", why


def host_share_key(key: str, batch: int) -> str:
    """The profile store's key for the eager host share at `batch`: an entry of its own beside the batch choice
    under `key`, so that each is written whole under the store's lock and neither is mistaken for the other."""
    return f"{key}|eager host share at batch {batch}"


def cached_or_measured_share(key: str, batch: int, measure: Callable[[int], float], path: Path | None = None
                             ) -> float:
    """The stored eager host share at `batch` under the profile store's `key`, else measured and stored."""
    share_key = host_share_key(key, batch)
    stored = read_profiles(path).get(share_key)
    if stored:
        return stored["eager_host_share"]
    share = round(measure(batch), 3)
    save_profile(share_key, {"eager_host_share": share}, path)
    return share


def choose_compile_mode(requested: str, *, device: str, compile_model: bool, world_size: int, backbone: str,
                        num_classes: int, image_size: tuple[int, int], precision: str, channels_last: bool,
                        batch_size: int) -> tuple[str, str]:
    """(compile mode, why). A named mode is taken as it is; `auto` (the default) gives CUDA graphs to a compiled
    run on one GPU whose step at its batch will be launch-bound once compiled (the eager step's host share,
    measured in seconds, once per profile key and batch), and torch.compile's default mode to every other run."""
    if requested != "auto":
        return requested, "--compile-mode"
    if not compile_model:
        return "default", "auto: not compiled"
    if device != "cuda":
        return "default", "auto: CUDA graphs need a GPU"
    if world_size > 1:
        return "default", "auto: CUDA graphs run on one GPU only in this engine"
    key = profile_key(torch.cuda.get_device_name(), backbone, image_size, precision, compile_model, channels_last,
                      memory_share())
    cuda = torch.device("cuda")
    try:
        share = cached_or_measured_share(key, batch_size, lambda batch: eager_host_share(
            synthetic_steps(backbone, num_classes, image_size, precision, channels_last, cuda), batch, cuda))
    except Exception as error:  # noqa: BLE001 - a --batch-size too large for the eager step; re-raise the rest
        if not is_out_of_memory(error):
            raise
        # the compiled step may still fit (inductor keeps fewer activations): training says so, or runs out in its
        # own one line
        why = f"auto: the eager step at batch {batch_size} does not fit in memory to be measured"
        log.warning("compile mode default: %s", why)
        return "default", why
    finally:
        free_memory()
    mode, why = graphs_where_launch_bound(share, batch_size)
    log.info("compile mode %s: %s", mode, why)
    return mode, why


# --- Packing: several runs on one GPU -----------------------------------------------------------------------
PACKING_OPTIONS = (1, 2, 3)
PACKING_MARGIN = 1.05  # more processes must bring at least 5 % more images/s to be worth their memory
PACKING_SECONDS = 10.0  # each copy's timed window: long beside the milliseconds between the copies' starts
MEMORY_SHARE_ENV = "ENGINE_MEMORY_SHARE"


def memory_share() -> float:
    """The share of its GPU this process may fill: 1, or 1/k for one of k runs packed on it (the grid's packed
    cells and the packing measurement's copies are given ENGINE_MEMORY_SHARE)."""
    raw = os.environ.get(MEMORY_SHARE_ENV)
    if raw is None:
        return 1.0
    try:
        share = float(raw)
    except ValueError:
        share = 0.0
    if not 0 < share <= 1:
        raise UserInputError(f"{MEMORY_SHARE_ENV} must be a number in (0, 1], got {raw!r}")
    return share


def share_environment(copies: int) -> dict[str, str]:
    """The environment of one of `copies` runs packed on one GPU."""
    return {MEMORY_SHARE_ENV: repr(1 / copies)}


def keep_to_memory_share(device: str) -> None:
    """A packed run never lets torch's allocator grow past its share of the card, so that no run's growth (a
    larger evaluation batch, the compiler's workspaces) takes the memory the runs beside it were sized with.
    What torch does not allocate (each process's CUDA context, DALI's buffers) comes out of the 1 - MEMORY_CAP
    the batch search leaves free."""
    share = memory_share()
    if device == "cuda" and share < 1:
        torch.cuda.set_per_process_memory_fraction(share)


def best_concurrency(total_rate: Callable[[int], float], options=PACKING_OPTIONS) -> tuple[int, dict[int, float]]:
    """The number of concurrent runs with the most images/s in total (fewer unless more pays by the margin)."""
    rates = {count: total_rate(count) for count in options}
    best = options[0]
    for count in options[1:]:
        if rates[count] >= rates[best] * PACKING_MARGIN:
            best = count
    return best, rates


def packing_key(gpu: str, backbone: str, image_size: tuple[int, int]) -> str:
    return "|".join(["packing", gpu, f"torch {torch.__version__}", backbone, f"{image_size[0]}x{image_size[1]}"])


def wait_for_copies(barrier: Path, copies: int, timeout_s: float = 3600.0) -> None:
    """Say this copy is ready (compiled and warm) in the folder `barrier`, and return when all `copies` are."""
    (barrier / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(barrier.glob("ready-*"))) < copies:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the other packed copies were not ready after {timeout_s:.0f} s")
        time.sleep(0.002)


def copy_command(config, copies: int, seconds: float, barrier: Path) -> list[str]:
    """`engine packed-copy` for one of `copies` copies of the run `config` describes. A batch the user chose is
    kept; an autotuned one is tuned again by each copy, within its share of the GPU."""
    import sys

    batch = str(config.batch_size) if config.batch_size_reason == "--batch-size" else "auto"
    return [sys.executable, "-m", "engine", "packed-copy", "--backbone", config.backbone,
            "--image-size", f"{config.image_size[0]}x{config.image_size[1]}", "--batch-size", batch,
            "--precision", config.precision, "--compile" if config.compile else "--no-compile",
            "--compile-mode", config.compile_mode,
            "--channels-last" if config.channels_last else "--no-channels-last", "--device", config.device,
            "--copies", str(copies), "--seconds", str(seconds), "--barrier", str(barrier)]


def run_packed_copies(config, copies: int, seconds: float) -> list[dict] | None:
    """Each copy's report (`profile.packed_copy`) after `copies` of them trained at once, their timed windows
    together; None when they do not fit in memory together. Any other failure of a copy is raised."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="engine-packing-") as folder:
        barrier = Path(folder)
        env = {**os.environ, **share_environment(copies)}
        processes = []
        for number in range(copies):
            with open(barrier / f"copy-{number}.json", "w") as out, open(barrier / f"copy-{number}.log", "w") as err:
                processes.append(subprocess.Popen(copy_command(config, copies, seconds, barrier), stdout=out,
                                                  stderr=err, env=env))
        failed = _first_failure(processes)
        if failed is not None:
            reason = last_line(barrier / f"copy-{failed}.log") or f"exit code {processes[failed].returncode}"
            if says_out_of_memory(reason):
                log.info("packing: %d copies of %s do not fit on the GPU together (%s)", copies, config.backbone,
                         reason)
                return None
            raise RuntimeError(f"a packed copy failed: {reason}")
        return [json.loads((barrier / f"copy-{number}.json").read_text()) for number in range(copies)]


def _first_failure(processes: list) -> int | None:
    """Wait for every process; at the first that fails, stop the rest (they would wait for it at the barrier
    forever) and return its position. None when all succeed."""
    while any(process.poll() is None for process in processes):
        for number, process in enumerate(processes):
            if process.poll() not in (None, 0):
                for other in processes:
                    other.kill()
                    other.wait()
                return number
        time.sleep(0.1)
    return next((number for number, process in enumerate(processes) if process.returncode != 0), None)


def measure_packing(config, seconds: float = PACKING_SECONDS, options=PACKING_OPTIONS,
                    path: Path | None = None) -> tuple[int, dict[int, float], dict[int, int]]:
    """(best concurrency, total images/s per concurrency, each copy's batch per concurrency) of the training step
    `config` describes, 1, 2 and 3 copies at once on its device, each in its share of the memory; the best is
    stored for the grid. The copies are timed over the same stretch of time: a copy that timed its steps while
    another was still compiling would have the device alone, and their sum would count it twice."""
    gpu = torch.cuda.get_device_name() if config.device == "cuda" else "cpu"
    free_memory()  # what this process cached (a profile's model and batches) would be missing from the copies
    batches: dict[int, int] = {}

    def total_rate(copies: int) -> float:
        reports = run_packed_copies(config, copies, seconds)
        if reports is None:
            return 0.0
        batches[copies] = reports[0]["batch_size"]
        total = round(sum(report["images_per_s"] for report in reports), 1)
        log.info("packing: %d at once, batch %d each: %.1f img/s in total", copies, batches[copies], total)
        return total

    best, rates = best_concurrency(total_rate, options)
    if rates[options[0]] == 0:
        raise RuntimeError(f"packing: not even {options[0]} copy of {config.backbone} fits on the device")
    save_profile(packing_key(gpu, config.backbone, config.image_size),
                 {"concurrency": best, "images_per_s": rates, "batch_size": batches[best], "batch_sizes": batches},
                 path)
    return best, rates, batches
