"""Haar DWT micro-benchmark: forward and forward+backward of each implementation, in GB/s, beside a
device-to-device copy of the same input measured in the same run.

    python -m engine.bench.dwt                      # WaveMix-192/16's block at 256 px: (128, 48, 64, 64), 3 levels
    python -m engine.bench.dwt --quick --device cpu # a small smoke run

Bytes counted: forward reads the input once and writes the three levels (1/4 + 1/16 + 1/64 of 4C channels, i.e.
1.3125x the input); the backward reads those gradients and writes the input's. A copy reads and writes the
input once. "of copy" is the implementation's GB/s over the copy's GB/s: 1.0 means it moves bytes as fast as the
memory system allows.

Timing: on a GPU, every figure but the `*_host_ms` ones is the kernels' time, from a CUDA graph of the calls
replayed (`bench.timing.kernel_time_per_call`), the copy's too: at ~0.1 ms a call the host's launch overhead
(the custom op's dispatch, Triton's launcher, autograd) is of the same order, and a plain loop would time the host.
`forward_host_ms` and `fwd_bwd_host_ms` are that plain loop: what a caller waits when nothing else hides it.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from engine.bench.references import dwt_implementations
from engine.bench.timing import kernel_time_per_call, time_per_call
from engine.kernels import memory_format_of
from engine.models.wavemix import LEVELS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure(name, dwt, x, device, warmup, iterations, compile_it, copy_gb_s: float) -> dict:
    fn = torch.compile(dwt, fullgraph=True) if compile_it else dwt
    element = x.element_size()
    moved = (x.numel() + sum(o.numel() for o in fn(x))) * element  # input read, levels written
    leaf = x.detach().requires_grad_(True)
    grads = [torch.randn_like(o) for o in fn(leaf)]

    def forward():
        fn(x)

    def forward_backward():
        torch.autograd.backward(fn(leaf), grads)
        leaf.grad = None

    forward_s, forward_timing = kernel_time_per_call(forward, device, warmup, iterations)
    both_s, both_timing = kernel_time_per_call(forward_backward, device, warmup, iterations)
    timing = forward_timing if forward_timing == both_timing else f"forward: {forward_timing}; fwd_bwd: {both_timing}"
    forward_gb_s, both_gb_s = moved / forward_s / 1e9, 2 * moved / both_s / 1e9
    return {"implementation": name + (" compiled" if compile_it else ""),
            "forward_ms": round(forward_s * 1e3, 3), "forward_gb_s": round(forward_gb_s, 1),
            "forward_of_copy": round(forward_gb_s / copy_gb_s, 3),
            "fwd_bwd_ms": round(both_s * 1e3, 3), "fwd_bwd_gb_s": round(both_gb_s, 1),
            "fwd_bwd_of_copy": round(both_gb_s / copy_gb_s, 3), "timing": timing,
            "forward_host_ms": round(time_per_call(forward, device, warmup, iterations) * 1e3, 3),
            "fwd_bwd_host_ms": round(time_per_call(forward_backward, device, warmup, iterations) * 1e3, 3)}


def measure_configs(x, device, warmup, iterations, copy_gb_s: float) -> list[dict]:
    """The fused kernels under each launch configuration the autotuner chooses from, forward and backward apart."""
    from engine.kernels.haar_triton import configs_for, haar_dwt_backward_triton, haar_dwt_triton

    channels_last = memory_format_of(x) == torch.channels_last
    outputs = haar_dwt_triton(x, LEVELS)
    grads = [torch.randn_like(o) for o in outputs]
    moved = (x.numel() + sum(o.numel() for o in outputs)) * x.element_size()
    rows = []
    for config in configs_for(channels_last):
        forward_s, _ = kernel_time_per_call(lambda: haar_dwt_triton(x, LEVELS, config), device, warmup, iterations)
        backward_s, _ = kernel_time_per_call(lambda: haar_dwt_backward_triton(grads, channels_last, config), device,
                                             warmup, iterations)
        rows.append({"implementation": "fused, config " + ",".join(f"{k}={v}" for k, v in config.items()),
                     "forward_ms": round(forward_s * 1e3, 3),
                     "forward_of_copy": round(moved / forward_s / 1e9 / copy_gb_s, 3),
                     "backward_ms": round(backward_s * 1e3, 3),
                     "backward_of_copy": round(moved / backward_s / 1e9 / copy_gb_s, 3),
                     "fwd_bwd_of_copy": round(2 * moved / (forward_s + backward_s) / 1e9 / copy_gb_s, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="128,48,64,64", help="N,C,H,W of the DWT input")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd versions")
    parser.add_argument("--configs", action="store_true",
                        help="also time the fused kernels under each launch configuration their autotuners pick from")
    parser.add_argument("--quick", action="store_true", help="a tiny shape and 2 iterations (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.configs and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--configs times the Triton kernels: it needs a CUDA device (or TRITON_INTERPRET=1)")
    shape = (2, 8, 16, 16) if args.quick else tuple(int(s) for s in args.shape.split(","))
    iterations, warmup = (2, 1) if args.quick else (args.iterations, 5)
    x = torch.randn(shape, device=device, dtype=DTYPES[args.dtype])
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    copy_target = torch.empty_like(x)
    copy_s, _ = kernel_time_per_call(lambda: copy_target.copy_(x), device, warmup, iterations)
    copy_gb_s = 2 * x.numel() * x.element_size() / copy_s / 1e9
    # the header first and each row as it is measured: a run cut short by its time limit keeps what it measured
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "shape": shape, "levels": LEVELS, "dtype": args.dtype, "channels_last": args.channels_last,
                      "copy_gb_s": round(copy_gb_s, 1), "torch": torch.__version__}), flush=True)
    rows = []
    for name, dwt in dwt_implementations(device).items():
        if name == "reference" and x.dtype != torch.float32:
            continue  # pytorch_wavelets keeps fp32 filters: it cannot take half inputs (ANCHORS.md)
        for compile_it in ([False, True] if args.compile and name != "reference" else [False]):
            rows.append(measure(name, dwt, x, device, warmup, iterations, compile_it, copy_gb_s))
            print(json.dumps(rows[-1]), flush=True)
    if args.configs:
        rows += measure_configs(x, device, warmup, iterations, copy_gb_s)
    if device.type == "cuda":
        from engine.kernels.haar_triton import chosen_configs
        print(json.dumps({"autotuner_choices": chosen_configs()}))
    return rows


if __name__ == "__main__":
    main()
