"""One run, from a RunConfig to a finished run folder: data, model, protocol, result.json.

    prepare_config(...)  flags + dataset and device defaults -> RunConfig, with the dataset indexed
    prepare_run(...)     the same, once per run: in a distributed run rank 0 prepares, the other ranks receive it
    train_run(config)    -> result dict (skips a finished run, resumes a killed one)
    train_seeds(...)     seeds 0..K-1 and the best-of/mean summary
"""
from __future__ import annotations

import dataclasses
import logging
import platform
import random
import shutil
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision

import engine
from engine import distributed, results
from engine.config import (DEFAULT_BATCH_SIZE, RunConfig, default_workers, differences, resolve_compile_mode,
                           resolve_device, resolve_precision)
from engine.errors import UserInputError
from engine.locks import held_alone
from engine.loaders import (PIPELINES, DatasetIndex, check_files, count_per_class, dali_available, fits_budget,
                            has_small_images, leave_out, resolve_dataset, scan_dataset, select_samples)
from engine.loaders.batching import batch_taken
from engine.models import build_backbone, check_image_size, get_backbone_spec
from engine.scheduler import choose_batch_size, choose_compile_mode, is_out_of_memory, keep_to_memory_share
from engine.progress import readable_duration
from engine.trainer import evaluate, fit, input_dtype, load_best, make_precision, training_stream, tune_convolutions

log = logging.getLogger("engine")


def prepare_config(*, backbone: str, data: str, data_root: str | None = None, download: bool = True,
                   image_size: tuple[int, int] | None = None,
                   augment: bool | None = None, batch_size: int | str | None = None, device: str = "auto",
                   precision: str = "auto", compile: bool | None = None, compile_mode: str = "auto",
                   workers: int | None = None, loader: str = "auto", **flags) -> tuple[RunConfig, DatasetIndex]:
    """Check the user's choices and fill in every default, so config.json says exactly what ran."""
    get_backbone_spec(backbone)  # an unknown name fails before any data is touched
    dataset = resolve_dataset(data, data_root, download)
    image_size = image_size or dataset.image_size
    check_image_size(backbone, image_size)
    index = scan_dataset(dataset.path, dataset.name, flags.get("test_split", 0.2))
    device = resolve_device(device)
    if flags.get("weights"):
        weights = Path(flags["weights"]).resolve()  # absolute: a resumed run may start from another folder
        if not weights.is_file():
            raise UserInputError(f"weights file {weights} does not exist")
        flags["weights"], flags["pretrained"] = str(weights), False  # the file replaces the ImageNet weights
    world_size = distributed.current().world_size
    settings = step_settings(
        backbone, device, precision, compile, compile_mode, batch_size, index.num_classes, image_size,
        flags.get("channels_last", True), max(index.num_classes, round(flags.get("fraction", 1.0) * len(index.train))),
        world_size)
    config = RunConfig(
        backbone=backbone, data=data, dataset=dataset.name, data_path=str(Path(dataset.path).resolve()),
        image_size=image_size, augment=dataset.augment if augment is None else augment,
        num_classes=index.num_classes, **settings._asdict(),
        loader=resolve_loader(loader, device, index, image_size), device=device, world_size=world_size,
        workers=default_workers(device, distributed.local_processes()) if workers is None else workers, **flags)
    return config, index


def prepare_run(**flags) -> tuple[RunConfig, DatasetIndex]:
    """prepare_config for `engine train`. In a distributed run it runs once, on rank 0 (the dataset is
    downloaded and the batch autotuned once), and every rank trains with what rank 0 decided."""
    device = resolve_device(flags.get("device", "auto"))
    distributed.join(device)
    keep_to_memory_share(device)  # every rank, on its own GPU
    return distributed.from_main(lambda: prepare_config(**flags))


def prepare_profile_config(*, backbone: str, data: str | None, image_size: tuple[int, int] | None = None,
                           **flags) -> tuple[RunConfig, DatasetIndex | None]:
    """The configuration `engine profile` measures: a run's, or without --data one on 1000 classes at 256 px."""
    keep_to_memory_share(resolve_device(flags.get("device", "auto")))
    if data is not None:
        return prepare_config(backbone=backbone, data=data, image_size=image_size, pretrained=False, **flags)
    get_backbone_spec(backbone)
    image_size = image_size or (256, 256)
    check_image_size(backbone, image_size)
    device = resolve_device(flags.get("device", "auto"))
    channels_last = flags.get("channels_last", True)
    settings = step_settings(backbone, device, flags.get("precision", "auto"), flags.get("compile"),
                             flags.get("compile_mode", "auto"), flags.get("batch_size"), 1000, image_size,
                             channels_last, train_images=10**9, world_size=1)
    config = RunConfig(backbone=backbone, data="synthetic", dataset="synthetic", data_path="", image_size=image_size,
                       augment=False, num_classes=1000, pretrained=False, **settings._asdict(),
                       channels_last=channels_last, device=device)
    return config, None


class StepSettings(NamedTuple):
    """What shapes a training step, each as RunConfig names it."""
    precision: str
    compile: bool
    compile_mode: str
    compile_mode_reason: str
    batch_size: int
    batch_size_reason: str


def step_settings(backbone: str, device: str, precision: str, compile_model: bool | None, compile_mode: str,
                  batch_size: int | str | None, num_classes: int, image_size: tuple[int, int], channels_last: bool,
                  train_images: int, world_size: int) -> StepSettings:
    """Precision, compile and its mode, and the batch, for a resolved device. The batch comes first: whether the
    step is launch-bound (`--compile-mode auto`) depends on it."""
    precision = resolve_precision(precision, device)
    compile_model = (device == "cuda") if compile_model is None else compile_model
    resolve_compile_mode(compile_mode, compile_model, device, world_size)  # a named mode's conflicts, before the search
    shape = dict(backbone=backbone, num_classes=num_classes, image_size=image_size, precision=precision,
                 channels_last=channels_last)
    batch_size, batch_reason = choose_batch_size(batch_size, device=device, default=DEFAULT_BATCH_SIZE[device],
                                                 compile_model=compile_model, train_images=train_images, **shape)
    compile_mode, mode_reason = choose_compile_mode(compile_mode, device=device, compile_model=compile_model,
                                                    world_size=world_size, batch_size=batch_size, **shape)
    return StepSettings(precision, compile_model, compile_mode, mode_reason, batch_size, batch_reason)


def resolve_loader(requested: str, device: str, index: DatasetIndex, image_size: tuple[int, int]) -> str:
    """auto, with a GPU: small images (<= 64 px) stay decoded on the GPU (resident) where their copy fits its
    budget; others go through DALI when it imports, else resident where they fit (the torch loader's images and
    augmentation draws, but decoded once rather than every epoch on the CPU). Without a GPU, the torch loader."""
    if requested == "dali" and not dali_available():
        raise UserInputError("--loader dali needs NVIDIA DALI: pip install 'engine[dali]'")
    if requested != "auto":
        return requested
    if device != "cuda":
        log.info("loader: torch (auto: no GPU: the portable default; --loader dali runs DALI's CPU operators)")
        return "torch"
    # whether the decoded copy fits decides twice (small images first, then any images without DALI): read once
    small, fits = has_small_images(index), fits_budget(index, image_size, torch.device("cuda"))
    if small and fits:
        log.info("loader: resident (auto: small images, decoded once and kept on the GPU)")
        return "resident"
    if small:
        log.info("loader: not resident (auto: small images, but too many for the resident budget on the GPU)")
    if dali_available():
        log.info("loader: dali (auto: DALI is installed and a GPU is present)")
        return "dali"
    if fits:
        log.info("loader: resident (auto: DALI is not installed; the decoded images fit the GPU budget, so they are "
                 "decoded once instead of every epoch on the CPU: pip install 'engine[dali]' for DALI)")
        return "resident"
    log.info("loader: torch (auto: DALI is not installed (pip install 'engine[dali]'); decoding on the CPU may "
             "starve the GPU)")
    return "torch"


def environment() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"engine": engine.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda, "gpu": gpu, "host": platform.node()}


@contextmanager
def run_log(run_dir: Path):
    """Copy the engine's log into the run folder while the run lasts."""
    handler = logging.FileHandler(run_dir / results.LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators. Each rank of a distributed run adds its rank, so dropout draws differ
    across ranks; the model's initial weights come from rank 0 whatever the others drew (DDP broadcasts them)."""
    seed += 1_000_003 * distributed.current().rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_resumable(config: RunConfig, index: DatasetIndex, run_dir: Path) -> None:
    """A killed run continues only with the settings and files it started with. A folder with nothing to resume
    (no last.pt: the attempt stopped before its first epoch's checkpoint, say on a mistyped --weights path) starts
    over with the command as it is now."""
    saved = results.read_json(run_dir / results.CONFIG)
    if saved is None or not (run_dir / results.LAST).exists():
        return
    changed = config.differences(saved) + _file_differences(run_dir, config, index)
    if changed:
        raise UserInputError(f"{run_dir} holds an unfinished run with other settings ({'; '.join(changed)}); "
                             f"rerun with --force to start it over, or choose another --out")


def file_differences(run_dir: Path, index: DatasetIndex, fraction: float, seed: int, select_on: str) -> list[str]:
    """How the files the run in run_dir trained on (its files.json, less the unreadable images it left out) differ
    from those this command would: two folders of one name (/a/images and /b/images) share a run folder, and a
    dataset's images may have changed since. The data's path alone may change (a dataset moved)."""
    saved = results.read_json(run_dir / results.FILES)
    if saved is None:
        return []
    left_out = set((results.read_json(run_dir / results.CONFIG) or {}).get("skipped_images", []))
    samples = select_samples(index, fraction, seed, select_on)
    found = []
    if saved.get("classes", index.classes) != index.classes:
        found.append(f"classes {_examples(saved['classes'])} -> {_examples(index.classes)}")
    for split in ("train", "selection", "test"):
        if split not in saved:
            continue
        had, now = set(saved[split]), {path for path, _ in getattr(samples, split)} - left_out
        if had != now:
            found.append(f"{split} files: {len(had - now)} of the run's are not among those this command takes from "
                         f"{index.root}, {len(now - had)} are new (e.g. {sorted(had ^ now)[0]})")
    return found


def _file_differences(run_dir: Path, config: RunConfig, index: DatasetIndex) -> list[str]:
    return file_differences(run_dir, index, config.fraction, config.seed, config.select_on)


def _examples(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)})" if len(names) > shown else "")


def finished_run_differences(run_dir: Path, finished: dict, experiment: dict,
                             max_epochs: int | None) -> list[str]:
    """How the finished run in run_dir (`finished`: its result.json, which the caller has read) differs from the
    experiment a command asks (RunConfig.EXPERIMENT settings, or those of them the asker knows, and max_epochs
    judged by where the run stopped): a finished run is taken as the answer only when this is empty. A run at
    another image size, or selected on another split, would otherwise put a wrong number in the report."""
    saved = results.read_json(run_dir / results.CONFIG) or {}
    # a setting an older engine did not write into config.json is not held against its runs
    found = differences(saved, {key: value for key, value in experiment.items() if key in saved})
    if not _stops_where_it_stopped(max_epochs, finished):
        found.append(f"max_epochs {saved.get('max_epochs')!r} -> {max_epochs!r}, and it stopped after "
                     f"{finished['epochs']} epochs ({finished['stop_reason']})")
    return found


def _stops_where_it_stopped(max_epochs: int | None, finished: dict) -> bool:
    """Whether a run capped at max_epochs would end after the finished run's epochs, as it did."""
    if finished.get("stop_reason") == "max_epochs":
        return max_epochs == finished["epochs"]
    return max_epochs is None or max_epochs >= finished["epochs"]


def train_run(config: RunConfig, index: DatasetIndex, force: bool = False) -> dict:
    """Train (or resume, or skip as finished) the run `config` names, as the one process in its folder."""
    run_dir = config.run_dir()
    with ExitStack() as held:  # rank 0 holds the folder for the whole run; a refusal reaches every rank
        distributed.main_first(lambda: held.enter_context(held_alone(results.run_lock(run_dir),
                                                                     f"the run folder {run_dir}")))
        return _train_alone(config, index, run_dir, force)


def _train_alone(config: RunConfig, index: DatasetIndex, run_dir: Path, force: bool) -> dict:
    finished = results.read_json(run_dir / results.RESULT)
    if finished and not force:
        found = finished_run_differences(run_dir, finished, config.experiment(), config.max_epochs)
        found += _file_differences(run_dir, config, index)
        if found:
            raise UserInputError(f"{run_dir} holds a finished run of another experiment ({'; '.join(found)}); "
                                 f"rerun with --force to train it again, or choose another --out")
        log.info("%s is finished (test accuracy %.2f %%); skipping it. Use --force to train it again.",
                 run_dir, finished["test_acc"])
        return finished
    if not force:
        _check_resumable(config, index, run_dir)  # on every rank: a refusal stops them all alike
    main = distributed.current().is_main
    if main:
        if force and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        results.remove_unfinished_writes(run_dir)
        if not (run_dir / results.LAST).exists():  # starting over: a best.pt left by an attempt is not this run's
            (run_dir / results.BEST).unlink(missing_ok=True)
    distributed.barrier()  # the folder is ready before any rank looks for last.pt in it
    with run_log(run_dir) if main else nullcontext():
        return _train(config, index, run_dir)


def _train(config: RunConfig, index: DatasetIndex, run_dir: Path) -> dict:
    started = time.perf_counter()
    samples = select_samples(index, config.fraction, config.seed, config.select_on)
    skipped = []
    # DALI's pipeline is dead after an undecodable file (nothing can skip past it), and the ranks of a distributed
    # run cannot stop together on an error one of them meets mid-epoch: such runs check every file's header first
    # (rank 0, the others take its answer), a DALI run for the images its decoder misreads too (dali_misread); so
    # does --skip-bad-images, which needs the list. A file whose header passes but whose data does not decode (a
    # truncated download) is named when a loader meets it.
    if config.loader == "dali" or config.skip_bad_images or config.world_size > 1:
        skipped = distributed.from_main(lambda: check_files(samples, index, config.skip_bad_images, config.loader))
        leave_out(samples, skipped)
        if skipped:
            log.warning("left out %d unreadable images (--skip-bad-images): %s", len(skipped), ", ".join(skipped[:5]))
    counts = {split: len(files) for split, files in
              (("train", samples.train), ("selection", samples.selection), ("test", samples.test))}
    if distributed.current().is_main:
        _write_run_description(config, index, samples, counts, skipped, run_dir)
    processes = f" x {config.world_size} processes" if config.world_size > 1 else ""
    # with selection on the test set (the paper's), the selection files are the test files: say so once
    selection = "" if config.select_on == "test" else f"{counts['selection']} {config.select_on} / "
    log.info("%s on %s: %d classes, %d train / %s%d test images (epochs selected on %s), %dx%d, augment %s, "
             "batch %s%s, %s, %s%s, loader %s (%s) -> %s", config.backbone, config.dataset,
             index.num_classes, counts["train"], selection, counts["test"], config.select_on, *config.image_size,
             "on" if config.augment else "off", _batch_note(config, counts["train"]), processes, config.device,
             config.precision, compile_note(config), config.loader,
             PIPELINES[config.loader].parallelism(config.workers), run_dir)

    seed_everything(config.seed)
    device = distributed.training_device(config.device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    # Only rank 0 reads the starting weights (a failed download stops every rank alike); DDP hands them to the
    # other ranks when it wraps the model.
    model = distributed.main_first(lambda: build_backbone(config.backbone, index.num_classes,
                                                          pretrained=config.pretrained, weights=config.weights))
    if model is None:
        model = build_backbone(config.backbone, index.num_classes, pretrained=False)
    model = model.to(device, memory_format=memory_format)
    tune_convolutions(device)

    with training_stream(device), out_of_memory_advice(config):
        outcome = fit(model, make_batches(config, index, samples.train, train=True, device=device),
                      make_batches(config, index, samples.selection, train=False, device=device), config, run_dir)
        state = outcome.state
        test_acc = state.best_acc
        if config.select_on == "val":
            load_best(model, run_dir)
            test_acc = evaluate(model, make_batches(config, index, samples.test, train=False, device=device),
                                make_precision(config.precision, device.type), device)
            log.info("test accuracy of the epoch selected on validation (%d): %.2f %%", state.best_epoch, test_acc)
    result = {
        "status": "finished", "backbone": config.backbone, "dataset": config.dataset, "fraction": config.fraction,
        "seed": config.seed, "select_on": config.select_on, "test_acc": test_acc, "best_acc": state.best_acc,
        "best_epoch": state.best_epoch, "best_phase": state.best_phase, "switch_epoch": state.switch_epoch,
        "epochs": state.epoch, "stop_reason": state.stop_reason, "wall_s": round(outcome.wall_s, 3),
        "images_per_s": typical_rate(outcome.history),
        "this_process_s": round(time.perf_counter() - started, 3),
    }
    if distributed.current().is_main:
        results.write_json(run_dir / results.RESULT, result)
        (run_dir / results.LAST).unlink(missing_ok=True)  # finished: nothing to resume, and the largest file
    log.info("finished: test accuracy %.2f %% (epoch %d, %s phase) after %d epoch%s in %s -> %s", test_acc,
             state.best_epoch, state.best_phase, state.epoch, "" if state.epoch == 1 else "s",
             readable_duration(outcome.wall_s), run_dir / results.RESULT)
    return result


def typical_rate(history: list[dict]) -> float:
    """The run's training images/s: its median epoch's. A mean would carry the first epoch's compile and warm-up
    (a compiled CPU run's first epoch: 0.56 img/s, against 130 after), and again each resume's."""
    return round(float(np.median([row["images_per_s"] for row in history])), 3)


@contextmanager
def out_of_memory_advice(config: RunConfig):
    """An out-of-memory error while training (a --batch-size or --image-size too large for the card, or on the CPU
    for the machine) as one line that says what to change, not a traceback; any other error passes as it is."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - cuDNN and cuBLAS report a full card as RuntimeErrors of their own
        if not is_out_of_memory(error):
            raise
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # the batch autotune searches on a GPU only: on the CPU, auto is the fixed default
        search = ", or let --batch-size auto find the largest batch that fits" if config.device == "cuda" else ""
        # the batch search measures eagerly: CUDA graphs' memory pool comes on top of the batch it found
        graphs = (f", or --compile-mode default (CUDA graphs, {config.compile_mode}, keep a memory pool of their "
                  f"own)" if config.uses_cuda_graphs and config.device == "cuda" else "")
        raise UserInputError(f"out of memory training {config.backbone} at batch {config.batch_size} and "
                             f"{config.image_size[0]}x{config.image_size[1]} on {config.device} ({said[:240]}); "
                             f"lower --batch-size or --image-size{search}{graphs}") from None


def _batch_note(config: RunConfig, train_images: int) -> str:
    """The batch a step takes: the one asked, or the whole training set where that is smaller (a 1 % fraction)."""
    taken = batch_taken(config.batch_size, train_images // config.world_size)
    if taken == config.batch_size:
        return str(taken)
    return f"{taken} (the whole training set; {config.batch_size} asked)"


def compile_note(config: RunConfig) -> str:
    if not config.compile:
        return ""
    return " + compile" + ("" if config.compile_mode == "default" else f" ({config.compile_mode})")


def make_batches(config: RunConfig, index: DatasetIndex, samples: list, *, train: bool, device: torch.device,
                 batch_size: int | None = None, **loader_options):
    """The run's input pipeline over `samples`: its loader, size, augmentation, seed, memory format and input
    dtype, this rank's share. Evaluation holds no activations for backward, so it affords twice the batch.
    `loader_options`: the loader's own settings a benchmark moves from their defaults (engine train passes none)."""
    return PIPELINES[config.loader](
        index, samples, image_size=config.image_size, augment=config.augment, train=train,
        batch_size=batch_size or config.batch_size * (1 if train else 2), device=device, seed=config.seed,
        workers=config.workers, channels_last=config.channels_last, dtype=input_dtype(config.precision),
        shard=distributed.current(), **loader_options)


def _write_run_description(config: RunConfig, index: DatasetIndex, samples, counts: dict, skipped: list[str],
                           run_dir: Path) -> None:
    """files.json (the run's exact files) and config.json (every setting, the data's counts, the environment)."""
    results.write_json(run_dir / results.FILES, {
        "root": str(index.root), "classes": index.classes, "select_on": config.select_on,
        **{split: [path for path, _ in getattr(samples, split)] for split in ("train", "selection", "test")}})
    results.write_json(run_dir / results.CONFIG, {
        **config.to_json(), "counts": counts, "skipped_images": skipped,
        "train_per_class": count_per_class(samples.train, index.num_classes),
        "classes": index.classes, "environment": environment(), "command": sys.argv})


def train_seeds(config: RunConfig, index: DatasetIndex, seeds: list[int], force: bool = False) -> dict:
    """Each seed in turn; then, with more than one, summary.json beside the seed folders."""
    per_seed = {seed: train_run(dataclasses.replace(config, seed=seed), index, force) for seed in seeds}
    if len(seeds) == 1:
        return per_seed[seeds[0]]
    summary = {"backbone": config.backbone, "dataset": config.dataset, "fraction": config.fraction,
               **results.summarize_seeds(per_seed)}
    path = config.run_dir().parent / results.SUMMARY
    if distributed.current().is_main:
        results.write_json(path, summary)
    log.info("best of %d seeds: %.2f %% (seed %d); mean %.2f +- %.2f %% -> %s", len(seeds), summary["best_acc"],
             summary["best_seed"], summary["mean_acc"], summary["std_acc"], path)
    return summary
