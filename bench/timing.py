"""Honest timing: warm-up (and compilation) outside the measured region; CUDA events on a GPU."""
from __future__ import annotations

import argparse
import re
import time
from contextlib import contextmanager
from typing import Callable

import torch

from engine.loaders.batching import HIGH_PRIORITY
from engine.trainer import ordered_stream, training_stream


# --training-stream: where the step runs. engine: on a stream of its own, as `engine train` does
# (trainer.training_stream: non-blocking, normal priority); legacy: torch's default stream, CUDA's legacy one, which
# waits for and holds up every blocking stream and synchronous CUDA call of the process (the engine until the tenth
# session); high: a stream of its own at high priority (loaders.batching.HIGH_PRIORITY)
TRAINING_STREAMS = ("engine", "legacy", "high")


@contextmanager
def step_stream(choice: str, device: torch.device):
    """Run the block where `choice` says. Fetching the batches must happen inside it too: what the loaders enqueue
    to hand a batch over (the resident path's wait for its side stream, a bf16 run's cast of DALI's float16) goes
    on the current stream, and the step must be ordered after it."""
    if choice == "legacy" or device.type != "cuda":
        yield
    elif choice == "engine":
        with training_stream(device):
            yield
    else:  # after what the loader enqueued before (its first batch)
        with ordered_stream(torch.cuda.Stream(device, priority=HIGH_PRIORITY), device):
            yield


def time_per_call(fn: Callable[[], object], device: torch.device, warmup: int, iterations: int) -> float:
    """Seconds per call of `fn`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / iterations
    started = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - started) / iterations


def kernel_time_per_call(fn: Callable[[], object], device: torch.device, warmup: int, iterations: int
                         ) -> tuple[float, str]:
    """(seconds per call of `fn`'s device work alone, how it was timed). On a GPU, after warm-up (autotuning and
    compilation included), `iterations` calls are captured in one CUDA graph and the graph is replayed under CUDA
    events: the host's launch overhead (Python, a custom op's dispatch, Triton's launcher, autograd) is left out,
    and what remains is the kernels' time, which is what a bandwidth is about. A small, fast operator measured in a
    plain loop is timed by its host instead once each call's kernels take less than the host needs to launch them.
    Where capture fails (an operator that synchronises or copies from the host), the plain loop, said so."""
    if device.type != "cuda":
        return time_per_call(fn, device, warmup, iterations), "wall clock"
    # Warm-up off the default stream, on the stream the capture then uses: libraries that keep a handle or a
    # workspace per stream (cuBLAS, cuDNN) create it during the warm-up, not mid-capture, where that is illegal.
    side = torch.cuda.Stream(device)
    with ordered_stream(side, device):
        for _ in range(warmup):
            fn()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=side):
            for _ in range(iterations):
                fn()
    except RuntimeError as err:
        torch.cuda.synchronize(device)
        return time_per_call(fn, device, 1, iterations), f"plain loop (CUDA graph capture failed: {str(err)[:80]})"
    seconds = time_per_call(graph.replay, device, 1, 3) / iterations
    del graph
    return seconds, "CUDA graph replay"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


# Kernel names -> what they do, first match wins (case-insensitive). A heuristic for reading a profile, not an
# exact accounting: cuDNN, cuBLAS, CUTLASS and inductor name their kernels loosely.
KERNEL_KINDS = (
    ("dwt", r"haar"),
    ("optimizer", r"adam|sgd|multi_tensor|foreach"),
    ("normalisation", r"batch_norm|batchnorm|welford|bn_fw|bn_bw"),
    ("convolution/matmul", r"conv|gemm|xmma|cutlass|cudnn|wgrad|dgrad|implicit|mkldnn|addmm|matmul|^aten::mm$"),
    ("copy/cat", r"memcpy|memset|copy|contiguous|clone|cat"),
    ("inductor fused", r"^triton_"),
    ("eager elementwise/reduction", r"elementwise|reduce|gelu|dropout|add|mul|relu|threshold|sum"),
)


def kernel_kind(name: str) -> str:
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name, re.IGNORECASE)), "other")


def count_of(what: str, minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of `what`, at least `minimum`."""
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a count of {what} ({minimum} or more), got {text!r}")
        return int(text)
    return parse


def share_of(what: str) -> Callable[[str], float]:
    """An argparse type: a share of `what`, from 0 to 1."""
    def parse(text: str) -> float:
        try:
            share = float(text)
        except ValueError:
            share = -1.0
        if not 0 <= share <= 1:
            raise argparse.ArgumentTypeError(f"expected a share of {what} from 0 to 1, got {text!r}")
        return share
    return parse


kernel_count = count_of("kernels", 0)  # the benchmarks' --kernels N: how many kernels to list, 0 for no profile
round_count = count_of("rounds", 1)  # bench.loaders --rounds N


def kernel_breakdown(fn: Callable[[], object], device: torch.device, steps: int, top: int) -> dict:
    """Where the device time of `steps` calls of `fn` goes: the `top` kernels and the time per kind, per call.
    On a GPU, device kernels (CUDA events); on the CPU, each operator's own (self) CPU time."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        for _ in range(steps):
            fn()
        if on_gpu:
            torch.cuda.synchronize(device)
    rows = [(name, kernel_kind(name), microseconds / steps / 1e3)
            for name, microseconds in timed_events(profiler.key_averages(), on_gpu) if microseconds > 0]
    if not rows:
        raise RuntimeError("the profiler recorded no kernel time")
    total = sum(ms for _, _, ms in rows)
    by_kind: dict[str, float] = {}
    for _, kind, ms in rows:
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
    ranked = sorted(rows, key=lambda row: -row[2])[:top]
    return {"profiled_ms_per_step": round(total, 3),
            "by_kind_ms": {kind: round(ms, 3) for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1])},
            "top_kernels": [{"name": name[:120], "kind": kind, "ms": round(ms, 3), "share": round(ms / total, 3)}
                            for name, kind, ms in ranked],
            "copies": or_error(lambda: copy_sources(profiler.events(), on_gpu, steps, top))}


def host_breakdown(fn: Callable[[], object], steps: int, top: int) -> dict:
    """Where the host's time of `steps` calls of `fn` goes: the `top` Python functions and builtins by their own
    time (cProfile's tottime), ms per call. A wait inside a C++ call shows as that call's own time: DALI's
    iterator waiting for its pipeline's outputs, a copy waiting for the device."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(lambda: [fn() for _ in range(steps)])
    elapsed_ms = (time.perf_counter() - started) * 1e3 / steps
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
    ranked = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    return {"ms_per_call": round(elapsed_ms, 3),
            "top_functions": [{"function": _where(key), "calls_per_call": round(row[0] / steps, 1),
                               "ms": round(row[2] * 1e3 / steps, 3)} for key, row in ranked]}


def _where(key: tuple[str, int, str]) -> str:
    """cProfile's (file, line, name) as `file:line(name)`, the file from its package on (or a builtin's name)."""
    path, line, name = key
    if path == "~":
        return name
    parts = path.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{line}({name})"


def timed_events(averages, on_gpu: bool) -> list[tuple[str, float]]:
    """(name, microseconds) of what ran: on a GPU each kernel's device time, less the ranges annotated on the
    device (a compiled graph's "## Call CompiledFxGraph ##", a record_function), which span the kernels inside them
    and would count them twice (torch's own table leaves them out too): on the twenty-first session's H100 they made
    a 94 ms WaveMix step read as 219.5 ms of kernels. On the CPU each operator's own (self) time."""
    from torch.autograd import DeviceType

    if not on_gpu:
        return [(e.key, e.self_cpu_time_total) for e in averages]
    return [(e.key, e.self_device_time_total) for e in averages
            if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)]


def or_error(diagnostic: Callable[[], object]) -> object:
    """A diagnostic's result, or its error as text: a profiler field another torch names differently must not
    cost the row the measurement it belongs to (the GPU machine runs an older torch than this one)."""
    try:
        return diagnostic()
    except Exception as err:  # noqa: BLE001 - reported in the row instead
        return {"error": repr(err)[:200]}


COPY_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat")


def copy_sources(events, on_gpu: bool, steps: int, top: int) -> list[dict]:
    """Where the copies come from: the costliest copying operators (ms per call of the profiled function), each
    with the shapes it copied and the operators that called it (outermost first). A strided copy kernel in the
    top kernels says that a layout conversion happens, not which operator asks for it; this does."""
    totals: dict[tuple, float] = {}
    for event in events:
        if event.name not in COPY_OPS or (event.cpu_parent is not None and event.cpu_parent.name in COPY_OPS):
            continue  # a copy inside a copying operator (clone -> copy_) is counted once, at the outer one
        microseconds = event.device_time_total if on_gpu else event.cpu_time_total
        if microseconds <= 0:
            continue
        callers, parent = [], event.cpu_parent
        while parent is not None and len(callers) < 3:
            callers.insert(0, parent.name)
            parent = parent.cpu_parent
        key = (event.name, str(event.input_shapes)[:160], " > ".join(callers))
        totals[key] = totals.get(key, 0.0) + microseconds
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return [{"op": op, "shapes": shapes, "called_from": callers, "ms": round(microseconds / steps / 1e3, 3)}
            for (op, shapes, callers), microseconds in ranked]


def union_of(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(start, end) intervals merged where they overlap or touch, in order."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def stream_overlap(kernels: dict[object, list[tuple[float, float]]]) -> dict:
    """From each stream's kernel intervals: how long each stream was busy, how long two or more were busy at
    once, and the span from the first kernel to the last. Two pipelines sharing a GPU either overlap (the
    concurrent time is most of the smaller one's busy time) or take turns (it is near zero)."""
    unions = {stream: union_of(spans) for stream, spans in kernels.items() if spans}
    edges = sorted((point, delta) for spans in unions.values() for start, end in spans
                   for point, delta in ((start, 1), (end, -1)))
    concurrent, active, since = 0.0, 0, 0.0
    for point, delta in edges:
        if active >= 2:
            concurrent += point - since
        active, since = active + delta, point
    return {"busy": {stream: sum(end - start for start, end in spans) for stream, spans in unions.items()},
            "concurrent": concurrent, "span": edges[-1][0] - edges[0][0] if edges else 0.0}


def stream_of(event: dict) -> object:
    """A chrome-trace kernel event's CUDA stream (torch.profiler's export puts it in the event's args)."""
    return event.get("args", {}).get("stream", event.get("tid"))


def kernel_intervals(trace_events: list[dict]) -> dict[object, list[tuple[float, float]]]:
    """Each CUDA stream's kernel (start, end) times, in microseconds, from a chrome trace's events (torch.profiler's
    export: a kernel's category is "kernel", its stream in its args)."""
    kernels: dict[object, list[tuple[float, float]]] = {}
    for event in trace_events:
        if event.get("cat") == "kernel" and "dur" in event:
            kernels.setdefault(stream_of(event), []).append((event["ts"], event["ts"] + event["dur"]))
    return kernels


KERNEL_NAME_CHARS = 160  # DALI's and cuDNN's kernel names are C++ templates a few hundred characters long


def kernels_beside(trace_events: list[dict], main_stream: object, top: int) -> list[dict]:
    """The kernels of every stream but `main_stream` (the training step's), most device time first: what a loader
    on its own streams (DALI's resize, TrivialAugmentWide, normalisation) runs beside the step. Summed by name per
    stream, in microseconds. The twenty-fourth session measured DALI's streams at ~3 ms a batch of 128 beside
    resnet50's step, and the step slower by about that much, without knowing which of DALI's operators took it."""
    totals: dict[tuple[object, str], float] = {}
    for event in trace_events:
        if event.get("cat") == "kernel" and "dur" in event and stream_of(event) != main_stream:
            key = (stream_of(event), event.get("name", "?"))
            totals[key] = totals.get(key, 0.0) + event["dur"]
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return [{"stream": str(stream), "name": name[:KERNEL_NAME_CHARS], "us": round(us, 1)}
            for (stream, name), us in ranked]


def stream_concurrency(fn: Callable[[], object], device: torch.device, steps: int, top: int = 10) -> dict:
    """Run `fn` `steps` times under the profiler and say, per call, how long each CUDA stream's kernels kept it
    busy and how long two or more streams ran kernels at the same time (ms). A loader on its own stream (DALI's)
    beside the training: concurrent ~ the loader's busy time means it hides behind the step; ~0, that the two
    take turns, and the end-to-end step costs their sum. `beside_top_kernels`: the `top` kernels of the other
    streams, ms per call, so that a loader's share says which of its operators it is."""
    import json
    import tempfile
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return {}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize(device)
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
    overlap = stream_overlap(kernel_intervals(events))
    per_call = 1e3 * steps  # microseconds over all calls -> ms per call
    main_stream = max(overlap["busy"], key=overlap["busy"].get, default=None)  # the busiest: the training's
    beside = [{"stream": kernel["stream"], "name": kernel["name"], "ms": round(kernel["us"] / per_call, 3)}
              for kernel in kernels_beside(events, main_stream, top)]
    return {"busy_ms_by_stream": {str(stream): round(us / per_call, 3) for stream, us in overlap["busy"].items()},
            "concurrent_ms": round(overlap["concurrent"] / per_call, 3),
            "span_ms": round(overlap["span"] / per_call, 3), "beside_top_kernels": beside}
