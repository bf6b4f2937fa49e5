"""Batch-size autotune (`--batch-size auto`): the largest batch whose training step fits under a memory cap,
then the fastest of a few candidates at or below it, measured with the real step; cached in a profile store so
a grid pays for each (GPU, torch, backbone, size, precision, compile) once.

The search takes the step as a function, so its logic is tested on the CPU with an injected memory model.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

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


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


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


def autotune(run_step: Callable[[int], float], limit: int) -> BatchChoice:
    """`run_step(batch)` runs the real training step a few times and returns images/s, raising an out-of-memory
    error when the batch does not fit. Returns the fastest fitting candidate."""
    def fits(batch: int) -> bool:
        try:
            run_step(batch)
            return True
        except Exception as error:  # noqa: BLE001 - only out-of-memory means "too large"; re-raise the rest
            if not is_out_of_memory(error):
                raise
            return False
        finally:
            free_memory()

    largest = largest_fitting_batch(fits, limit)
    if largest == 0:
        raise RuntimeError("not even one image per step fits in memory")
    rates = {}
    for batch in candidates_below(largest):
        try:
            rates[batch] = run_step(batch)
        except Exception as error:  # noqa: BLE001
            if not is_out_of_memory(error):
                raise
        finally:
            free_memory()
    best = max(rates, key=rates.get)
    capped = " (capped by the training set)" if largest == limit else ""
    return BatchChoice(best, f"fastest of {sorted(rates)} ({rates[best]:.0f} img/s); largest fitting {largest}"
                             f"{capped}", largest, rates)


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
                channels_last: bool) -> str:
    return "|".join([gpu, f"torch {torch.__version__}", backbone, f"{image_size[0]}x{image_size[1]}", precision,
                     "compile" if compile_model else "eager", "channels_last" if channels_last else "nchw"])


def read_profiles(path: Path | None = None) -> dict:
    path = path or profile_store_path()
    return json.loads(path.read_text()) if path.exists() else {}


def save_profile(key: str, entry: dict, path: Path | None = None) -> None:
    path = path or profile_store_path()
    profiles = read_profiles(path)
    profiles[key] = {**profiles.get(key, {}), **entry, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(profiles, indent=2) + "\n")
    os.replace(temporary, path)


def cached_or_tuned(key: str, run_step: Callable[[int], float], limit: int, path: Path | None = None) -> BatchChoice:
    """The stored choice for `key` (if it respects today's limit), else a fresh autotune, stored."""
    stored = read_profiles(path).get(key)
    if stored and stored["batch_size"] <= limit:
        return BatchChoice(stored["batch_size"], f"profile store ({stored['reason']})", stored["largest_fitting"],
                           {int(b): r for b, r in stored.get("images_per_s", {}).items()})
    choice = autotune(run_step, limit)
    save_profile(key, {k: v for k, v in asdict(choice).items()}, path)
    return choice


# --- The real step ---------------------------------------------------------------------------------------------
def training_step_rate(backbone: str, num_classes: int, image_size: tuple[int, int], precision: str,
                       channels_last: bool, device: torch.device, steps: int = 6, warmup: int = 3):
    """A function batch -> images/s of the real training step (forward, backward, AdamW step) on synthetic
    data. Eager: a compiled model would recompile for every candidate, and it needs no more memory than eager.
    Six timed steps: with three, an H100 ranked mobilenet_v3_large's batch 128 at half the rate of 192 (4.5k vs
    8.7k img/s at 128 px, bench/NOTES.md), which one step's jitter explains and the model does not."""
    from engine.models import build_backbone
    from engine.trainer import FIRST_PHASE, make_optimizer, make_precision

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_backbone(backbone, num_classes).to(device, memory_format=memory_format)
    optimizer = make_optimizer(FIRST_PHASE, model)
    step_precision = make_precision(precision, device.type)

    def run(batch: int) -> float:
        images = torch.randn(batch, 3, *image_size, device=device).contiguous(memory_format=memory_format)
        labels = torch.randint(0, num_classes, (batch,), device=device)

        def step():
            with step_precision.autocast():
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            step_precision.backward(loss)
            step_precision.step(optimizer)

        for _ in range(warmup):
            step()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return batch * steps / (time.perf_counter() - started)

    return run


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
    gpu = torch.cuda.get_device_name()
    key = profile_key(gpu, backbone, image_size, precision, compile_model, channels_last)
    torch.cuda.set_per_process_memory_fraction(MEMORY_CAP)
    try:
        log.info("autotuning the batch size for %s (once per GPU, model, size and precision)", backbone)
        choice = cached_or_tuned(key, training_step_rate(backbone, num_classes, image_size, precision, channels_last,
                                                          torch.device("cuda")), batch_limit(train_images))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        free_memory()
    log.info("batch size %d: %s", choice.batch_size, choice.reason)
    return choice.batch_size, f"autotuned: {choice.reason}"


# --- Packing: several runs on one GPU -----------------------------------------------------------------------
PACKING_OPTIONS = (1, 2, 3)
PACKING_MARGIN = 1.05  # more processes must bring at least 5 % more images/s to be worth their memory


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


def concurrent_profile_rate(count: int, backbone: str, image_size: tuple[int, int], batch_size: int,
                            steps: int, device: str) -> float:
    """Total model-only images/s of `count` `engine profile` processes run at once on the same device."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "engine", "profile", "--backbone", backbone, "--image-size",
               f"{image_size[0]}x{image_size[1]}", "--batch-size", str(batch_size), "--steps", str(steps),
               "--device", device, "--json"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(count)]
    total = 0.0
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"a packed profile failed: {err.strip().splitlines()[-1] if err.strip() else ''}")
        total += json.loads(out)["model_images_per_s"]
    return total


def measure_packing(backbone: str, image_size: tuple[int, int], batch_size: int, device: str, steps: int = 20,
                    path: Path | None = None) -> tuple[int, dict[int, float]]:
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    best, rates = best_concurrency(lambda count: concurrent_profile_rate(count, backbone, image_size, batch_size,
                                                                         steps, device))
    save_profile(packing_key(gpu, backbone, image_size), {"concurrency": best, "images_per_s": rates,
                                                          "batch_size": batch_size}, path)
    return best, rates
