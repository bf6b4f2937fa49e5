"""What the fused Haar kernels cost a GPU, read without one: each launch configuration compiled for sm_90a
(Triton's frontend and its bundled ptxas), with registers a thread, spills, programs an SM can hold, the
elements its loads keep in flight, and the global load/store instruction widths. `--augment`: the same for the
fused TrivialAugmentWide kernel (kernels/trivial_augment.py) at each block size, into bf16 and float32.

    python -m engine.bench.kernel_registers                 # every config, both layouts, bf16, WaveMix's shape
    python -m engine.bench.kernel_registers --configs 0,1 --layouts channels_last
    python -m engine.bench.kernel_registers --augment

A memory-bound kernel lives on loads in flight (Little's law: bandwidth x latency, ~3 MB on an H100); registers
decide how many programs share an SM. These numbers predict; `python -m engine.bench.dwt --configs` on a GPU
measures. Needs TRITON_INTERPRET unset (interpreted kernels are not compiled).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import torch

REGISTERS_PER_SM, THREADS_PER_SM, PROGRAMS_PER_SM = 65536, 2048, 32  # sm_90
POINTERS = ("x_ptr", "grad_x_ptr", "out1", "out2", "out3", "out4", "g1", "g2", "g3", "g4")


def _signature(kernel, constants: dict, dtype: str, channels_last: bool) -> tuple[dict, dict, dict]:
    """Argument types, constants and divisibility hints as the runtime would specialise them for WaveMix's block:
    unit strides (channels in channels_last, columns in NCHW) become constants, other integers but the level-L
    sides are multiples of 16, pointers 16-byte aligned."""
    names = kernel.arg_names
    unit = "_c" if channels_last else "_w"
    constants = {**constants, **{name: 1 for name in names if name.endswith(unit)}}
    signature = {name: "constexpr" if name in constants else "*" + dtype if name in POINTERS else "i32"
                 for name in names}
    hints = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(names)
             if signature[name] != "constexpr" and name not in ("HL", "WL")}
    return signature, {(names.index(name),): value for name, value in constants.items()}, hints


def _ptxas_report(ptx: str) -> tuple[int, int]:
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as source:
        source.write(ptx)
        source.flush()
        result = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", source.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True)
    text = result.stdout + result.stderr
    return (int(re.search(r"Used (\d+) registers", text).group(1)),
            int(re.search(r"(\d+) bytes spill stores", text).group(1)))


def _compiled_cost(kernel, signature: dict, constexprs: dict, hints: dict, num_warps: int) -> dict:
    """Compiled for sm_90a: registers a thread, spilled bytes, programs an SM holds, the global access widths."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=hints),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    ptx = compiled.asm["ptx"]
    registers, spilled = _ptxas_report(ptx)
    threads = 32 * num_warps
    allocated = -(-registers // 8) * 8  # registers are allocated in units of 8 a thread
    programs = min(REGISTERS_PER_SM // (allocated * threads), THREADS_PER_SM // threads, PROGRAMS_PER_SM)
    return {"registers": registers, "spill_bytes": spilled, "programs_per_sm": programs,
            "loads": dict(Counter(re.findall(r"ld\.global[\w.]*", ptx))),
            "stores": dict(Counter(re.findall(r"st\.global[\w.]*", ptx)))}


def kernel_cost(kernel, config: dict, levels: int, channels_last: bool, block_name: str, block: int,
                dtype: str = "bf16") -> dict:
    constants = {"LEVELS": levels, block_name: block, "WIDE": False,
                 **{key: value for key, value in config.items() if key != "num_warps"}}
    signature, constexprs, hints = _signature(kernel, constants, dtype, channels_last)
    cost = _compiled_cost(kernel, signature, constexprs, hints, config["num_warps"])
    # loads in flight: GROUP quads of 4 pixel tiles (tile tree) or GROUP pairs of row tiles (row pyramid)
    in_flight = 4 * min(config["GROUP"], 4 ** (levels - 1)) if channels_last else 2 * min(config["GROUP"],
                                                                                          2 ** (levels - 1))
    return {**cost, "elements_in_flight_per_sm": cost["programs_per_sm"] * config["TILE"] * in_flight}


def augment_kernel_cost(block: int, out_dtype: str) -> dict:
    """The fused TrivialAugmentWide kernel at `block` pixels a program (4 warps, as it launches), into `out_dtype`."""
    from engine.kernels.trivial_augment import _augment_normalise_kernel as kernel

    pointers = {"source_ptr": "*u8", "out_ptr": "*" + out_dtype, "modes_ptr": "*i32", "params_ptr": "*fp32",
                "luts_ptr": "*u8", "mean_ptr": "*fp32", "inverse_std_ptr": "*fp32"}
    constants = {"BLOCK": block, "BFLOAT16": out_dtype == "bf16"}
    names = kernel.arg_names
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in names}
    constexprs = {(names.index(name),): value for name, value in constants.items()}
    return _compiled_cost(kernel, signature, constexprs, {}, num_warps=4)


def augment_rows(blocks: list[int]) -> list[dict]:
    rows = []
    for out_dtype in ("bf16", "fp32"):
        for block in blocks:
            rows.append({"kernel": "trivial_augment", "out": out_dtype, "block": block,
                         **augment_kernel_cost(block, out_dtype)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="",
                        help="comma-separated indices into each layout's configurations (default: all)")
    parser.add_argument("--layouts", default="channels_last,nchw", help="channels_last and/or nchw")
    parser.add_argument("--channels", type=int, default=48, help="C of the DWT input (WaveMix: 48)")
    parser.add_argument("--width", type=int, default=64, help="input width, for the NCHW row tile (WaveMix: 64)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--augment", action="store_true",
                        help="the fused TrivialAugmentWide kernel instead, at each block size (256, 512, 1024)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_registers compiles the kernels: unset TRITON_INTERPRET")
    if args.augment:
        return augment_rows([256, 512, 1024])
    from engine.kernels import haar_triton

    rows = []
    for layout in args.layouts.split(","):
        channels_last = layout == "channels_last"
        family = haar_triton.FAMILIES[torch.channels_last if channels_last else torch.contiguous_format]
        block = (haar_triton._block_q(args.channels) if channels_last
                 else haar_triton._block_x(args.width, args.levels))
        configs = family.configs
        for index in ([int(i) for i in args.configs.split(",")] if args.configs else range(len(configs))):
            for direction, kernel in (("forward", family.forward), ("backward", family.backward)):
                rows.append({"layout": layout, "family": family.name, "direction": direction,
                             "config": configs[index], family.block_name: block,
                             **kernel_cost(kernel, configs[index], args.levels, channels_last, family.block_name,
                                           block)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
