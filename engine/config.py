"""The protocol's constants, with their sources, and `RunConfig`: everything one run needs, saved as config.json."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import UserInputError

log = logging.getLogger("engine")

# --- The paper's protocol (paper section 5; DualOpt, Jeevan & Sethi 2022; the authors' public code) ---------------
PATIENCE = 10  # epochs without a new best before AdamW hands over to SGD, and before SGD stops (paper §5)
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)  # first DualOpt phase (paper §5)
SGD = dict(lr=1e-3, momentum=0.9)  # second DualOpt phase, no weight decay (paper §5, authors' code)
SEEDS_FOR_BEST_OF = 3  # "best of three runs" (paper §5)

# --- Engine defaults ------------------------------------------------------------------------------------------------
# Fixed batch sizes until the autotuner measures one: 128 is what ANCHORS.md measured every backbone with on the
# GPU; 32 keeps a 2-core CPU responsive.
DEFAULT_BATCH_SIZE = {"cuda": 128, "cpu": 32}
DEFAULT_OUT = "runs"

# torch.compile's modes (`--compile-mode`), each with what it buys and what it costs
COMPILE_MODES = {
    "auto": "reduce-overhead on one GPU where the compiled step will be launch-bound: the host takes 0.6 of the "
            "eager step's time at the run's batch or more to enqueue it (compiling raises that share; measured in "
            "seconds, kept in the profile store), else default; the choice and why are logged and kept in "
            "config.json",
    "default": "inductor's fused kernels; the host launches each of them every step",
    "reduce-overhead": "the same kernels replayed as CUDA graphs, so the host's launch time goes: for small models "
                       "and batches, where the GPU waits for the host (`engine profile` says launch-bound); each "
                       "batch is copied into the graphs' input, and they keep a memory pool of their own",
    "max-autotune": "also times Triton and cuBLAS alternatives for every matmul and convolution shape (minutes "
                    "of compile), with CUDA graphs",
    "max-autotune-no-cudagraphs": "max-autotune without the CUDA graphs",
}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class RunConfig:
    backbone: str
    data: str  # as the user gave it: a registered name or a path
    dataset: str  # the registered name, or the custom folder's name (used in the run folder's path)
    data_path: str
    image_size: tuple[int, int]  # (height, width)
    augment: bool
    num_classes: int = 0
    fraction: float = 1.0
    seed: int = 0
    pretrained: bool = True
    weights: str | None = None
    batch_size: int = 32
    batch_size_reason: str = ""  # "--batch-size", "CPU default ...", or how the autotuner chose it
    max_epochs: int | None = None
    patience: int = PATIENCE
    precision: str = "fp32"  # bf16 | fp16 | fp32, resolved from "auto" before the run
    compile: bool = False
    compile_mode: str = "default"  # one of COMPILE_MODES, resolved from "auto" before the run
    compile_mode_reason: str = ""  # "--compile-mode", or what auto measured
    channels_last: bool = True
    loader: str = "torch"
    device: str = "cpu"
    world_size: int = 1  # processes of a distributed run (DDP); batch_size is per process
    select_on: str = "test"
    test_split: float = 0.2  # share of a one-folder dataset that becomes its test set
    workers: int = 0
    skip_bad_images: bool = False  # leave unreadable images out (listed in config.json) instead of stopping
    out: str = DEFAULT_OUT
    protocol: dict = field(default_factory=lambda: {"adamw": ADAMW, "sgd": SGD})

    # Fields that may change between a killed run and its resumption without changing what is computed.
    RESUMABLE_CHANGES = ("workers", "out", "data", "data_path", "max_epochs", "batch_size_reason", "compile_mode",
                         "compile_mode_reason")
    # Fields that say which experiment a run is: a finished run answers a command only while they are the same.
    # How it was computed (batch, precision, loader, device, compile) may differ: a rerun on another machine, where
    # the autotuner picks another batch, still finds its finished runs. max_epochs is judged by where the run
    # stopped (run.py).
    EXPERIMENT = ("num_classes", "image_size", "augment", "pretrained", "weights", "patience", "select_on",
                  "test_split", "protocol")

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.compile and self.compile_mode in CUDA_GRAPH_MODES

    def run_dir(self) -> Path:
        return run_folder(self.out, self.backbone, self.dataset, self.fraction, self.seed)

    def to_json(self) -> dict:
        return json_ready(dataclasses.asdict(self))

    def differences(self, saved: dict) -> list[str]:
        """Settings in which a saved config.json differs from this one (ignoring what does not matter)."""
        return differences(saved, {key: value for key, value in self.to_json().items()
                                   if key not in self.RESUMABLE_CHANGES})

    def experiment(self) -> dict:
        """The EXPERIMENT settings, as config.json holds them."""
        mine = self.to_json()
        return {key: mine[key] for key in self.EXPERIMENT}


def differences(saved: dict, wanted: dict) -> list[str]:
    """'key saved -> wanted' for each setting of `wanted` that a saved config.json holds otherwise."""
    return [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in json_ready(wanted).items()
            if saved.get(key) != value]


def run_folder(out: str | Path, backbone: str, dataset: str, fraction: float, seed: int) -> Path:
    """Where a run lives: <out>/<backbone>/<dataset>/f<fraction>/s<seed> (the grid finds runs the same way)."""
    return Path(out) / backbone / dataset / f"f{fraction:g}" / f"s{seed}"


def json_ready(value):
    """Tuples as lists, recursively, so a config compares equal to its own JSON round trip."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def parse_image_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '448x672' -> (448, 672) as height x width."""
    parts = text.lower().split("x")
    try:
        sizes = tuple(int(part) for part in parts)
    except ValueError:
        sizes = ()
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise UserInputError(f"image size {text!r} is not a positive integer or HxW (e.g. 256 or 448x672)")
    return (sizes[0], sizes[-1])


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for, but torch sees no CUDA GPU")
    return requested


def resolve_precision(requested: str, device: str) -> str:
    """auto: bf16 on a GPU that has it, else fp16 (with a GradScaler) on a GPU, fp32 on the CPU."""
    if requested == "auto":
        if device != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and device != "cuda":
        raise UserInputError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return requested


def resolve_compile_mode(mode: str, compile_model: bool, device: str, world_size: int) -> str:
    """The torch.compile mode, checked against the rest of the step's settings (auto, the default, chooses among
    them: scheduler.choose_compile_mode)."""
    if mode == "auto":
        return mode
    if mode != "default" and not compile_model:
        raise UserInputError(f"--compile-mode {mode} needs --compile")
    if mode in CUDA_GRAPH_MODES and world_size > 1:
        raise UserInputError(f"--compile-mode {mode} replays CUDA graphs, which this engine runs on one GPU only: "
                             f"use default or max-autotune-no-cudagraphs with --gpus")
    if mode in CUDA_GRAPH_MODES and device != "cuda":  # torch compiles as usual then: say so, not silently
        log.warning("--compile-mode %s: CUDA graphs need a GPU; on the %s the model compiles without them",
                    mode, device)
    return mode


def default_workers(device: str, processes: int = 1) -> int:
    """Loader processes per training process: on a GPU, all cores but one (up to 8), shared among the `processes`
    training processes of this machine; on the CPU they would steal cores from the training step itself, and
    the demo's small JPEGs decode in the main process faster than workers start."""
    cores = (os.cpu_count() or 1) // max(1, processes)
    return max(1, min(8, cores - 1)) if device == "cuda" else 0
