"""WaveMix-192/16 training step, side by side in one process: the reference formulation (the published stem and
DWT), and the engine's model with the plain-torch Haar or the fused kernel, eager, compiled and as CUDA graphs, AMP
(bf16 + channels_last) and fp32. Images/s, the host's time to enqueue a step, and peak memory.

    python -m engine.bench.wavemix_step                       # batch 128 at 256x256, on the GPU
    python -m engine.bench.wavemix_step --quick --device cpu  # smoke run

Synthetic data already on the device, an AdamW step (the engine's, fused on a GPU, for the engine's variants),
random init, 10 classes, as ANCHORS.md measured. Warm-up (and compilation) steps are outside the timed region.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import time

import torch
import torch.nn.functional as F

from engine.bench.references import dwt_implementations, reference_wavemix, use_dwt
from engine.bench.timing import (kernel_breakdown, kernel_count, or_error, peak_memory_gib, reset_peak_memory,
                                 time_per_call)
from engine.models.wavemix import wavemix_192_16
from engine.scheduler import host_step_ms
from engine.trainer import FIRST_PHASE, begin_step, cudnn_benchmark, make_optimizer

# How the model runs: eager; compiled by inductor (its default mode: the host launches each kernel every step);
# graphs: the same kernels replayed as CUDA graphs (mode reduce-overhead), which takes the host's launches away. On
# the twenty-first session's H100 the fused compiled step's kernels added up to 68 of its 94 ms: whether the rest
# is the host's launching is what graphs (and host_step_ms) tell.
COMPILE_MODES = {"eager": None, "compiled": "default", "graphs": "reduce-overhead"}
# (DWT, precision, how it runs): the reference only in fp32, the one way it runs (it crashes under autocast)
VARIANTS = [("reference", "fp32", "eager"),
            ("plain", "fp32", "eager"), ("plain", "amp", "eager"), ("plain", "amp", "compiled"),
            ("fused", "fp32", "eager"), ("fused", "amp", "eager"), ("fused", "fp32", "compiled"),
            ("fused", "amp", "compiled"), ("fused", "amp", "graphs")]


def step_rate(dwt_name, dwt, precision, runs_as, batch, size, device, warmup, iterations, kernels=0) -> dict:
    """One variant's row. The reference runs as published (cuDNN's heuristic algorithms, torch's default AdamW, as
    ANCHORS.md measured it); the engine's model as the engine trains it (cuDNN's algorithm search on, the
    engine's optimizer)."""
    with cudnn_benchmark(dwt_name != "reference"):
        return _step_rate(dwt_name, dwt, precision, runs_as, batch, size, device, warmup, iterations, kernels)


def _step_rate(dwt_name, dwt, precision, runs_as, batch, size, device, warmup, iterations, kernels) -> dict:
    torch.manual_seed(0)
    amp = precision == "amp"
    memory_format = torch.channels_last if amp else torch.contiguous_format
    # the reference formulation is the published model whole (its stem too); ours differ only in their DWT
    model = reference_wavemix(10) if dwt_name == "reference" else use_dwt(wavemix_192_16(10), dwt)
    model = model.to(device, memory_format=memory_format)
    # the reference steps AdamW as ANCHORS.md measured it; ours with the engine's (fused on a GPU: one kernel for
    # every parameter, 7.5 of the 93 ms a step that plain AdamW took on the ninth session's H100)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01) if dwt_name == "reference"
                 else make_optimizer(FIRST_PHASE, model))
    mode = COMPILE_MODES[runs_as]
    forward = model if mode is None else torch.compile(model, mode=mode)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        begin_step()  # as the trainer does: under CUDA graphs, the last step's outputs are not read again
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    started = time.perf_counter()
    step()  # the first step compiles; kept apart to report its cost
    warmup_s = time.perf_counter() - started
    seconds = time_per_call(step, device, warmup, iterations)
    row = {"dwt": dwt_name, "precision": "bf16 AMP + channels_last" if amp else "fp32", "compile": runs_as,
           "images_per_s": round(batch / seconds, 1), "step_ms": round(seconds * 1e3, 2),
           # the host's time to enqueue a step: near step_ms, the GPU waits for the host's launches
           "host_step_ms": host_step_ms(step, (), device),
           "peak_gib": peak_memory_gib(device), "first_step_s": round(warmup_s, 1)}
    if kernels:  # after the timed steps: the profiler's own overhead stays out of images/s
        row["kernels"] = or_error(lambda: kernel_breakdown(step, device, steps=min(iterations, 3), top=kernels))
    return row


def stem_rates(batch, size, device, warmup, iterations) -> list[dict]:
    """The patchify stem alone, forward and backward under bf16 autocast and channels_last: the published three
    convolutions against their composition (models/wavemix.py: PatchifyStem)."""
    stem = wavemix_192_16(10).conv.to(device, memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    rows = []
    for composed in (False, True):
        stem.composed = composed

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                stem(images).float().square().mean().backward()

        reset_peak_memory(device)
        seconds = time_per_call(step, device, warmup, iterations)
        rows.append({"stem": "composed" if composed else "published", "fwd_bwd_ms": round(seconds * 1e3, 3),
                     "images_per_s": round(batch / seconds, 1), "peak_gib": peak_memory_gib(device)})
    return rows


def variant_name(dwt_name: str, precision: str, runs_as: str) -> str:
    return f"{dwt_name}:{precision}:{runs_as}"


def chosen_variants(spec: str) -> list[tuple[str, str, str]]:
    """The variants matching --variants, a comma-separated list of names or shell patterns (`fused:*:eager`,
    `*:amp:*`), in the order named; all of them when none is named. A pattern matching nothing is an error."""
    if not spec:
        return VARIANTS
    names = {variant_name(*variant): variant for variant in VARIANTS}
    chosen = []
    for pattern in spec.split(","):
        matches = fnmatch.filter(names, pattern)
        if not matches:
            raise SystemExit(f"unknown variant {pattern!r}; choose from {', '.join(names)} (or a pattern)")
        chosen += [names[name] for name in matches if names[name] not in chosen]
    return chosen


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--variants", default="",
                        help="comma-separated DWT:PRECISION:MODE to run, in that order, e.g. "
                             "reference:fp32:eager,fused:amp:compiled; shell patterns work: '*:*:eager' skips the "
                             "compiled ones, 'fused:*:*' runs the fused kernel only (default: all)")
    parser.add_argument("--kernels", type=kernel_count, default=0, metavar="N",
                        help="also profile each variant: its N costliest kernels and the device time per kind "
                             "(convolution, DWT, inductor-fused, normalisation, optimizer...)")
    parser.add_argument("--stem", action="store_true",
                        help="also time the patchify stem alone, published against composed (bf16, channels_last)")
    parser.add_argument("--quick", action="store_true", help="batch 2 at 32 px, 1 iteration (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch, size = (2, 32) if args.quick else (args.batch_size, args.image_size)
    iterations, warmup = (1, 0) if args.quick else (args.iterations, 3)
    dwts = dwt_implementations(device)
    variants = chosen_variants(args.variants)
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "batch": batch, "image_size": size, "torch": torch.__version__}))
    rows = []
    if args.stem:
        for row in stem_rates(batch, size, device, warmup, iterations):
            print(json.dumps(row), flush=True)
    for dwt_name, precision, runs_as in variants:
        try:
            row = step_rate(dwt_name, dwts[dwt_name], precision, runs_as, batch, size, device, warmup, iterations,
                            args.kernels)
        except Exception as err:  # noqa: BLE001 - one failing variant must not hide the others' numbers
            row = {"dwt": dwt_name, "precision": precision, "compile": runs_as, "error": repr(err)[:300]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
