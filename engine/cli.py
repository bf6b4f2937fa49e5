"""The `engine` command line (click). Every command's --help explains its flags; bad input ends with one
line naming the problem and exit code 2."""
from __future__ import annotations

import logging
import os
import signal
import sys

import click

from engine.config import COMPILE_MODES, DEFAULT_BATCH_SIZE, DEFAULT_OUT, PATIENCE, parse_image_size
from engine.errors import (INTERRUPTED, INTERRUPTED_MESSAGE, TERMINATED, TERMINATED_MESSAGE, USAGE_ERROR, Terminated,
                           UserInputError, is_path_problem, path_problem_message)

log = logging.getLogger("engine")



class BatchSizeType(click.ParamType):
    """A positive integer, or `auto`."""
    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is not a positive integer or auto", param, ctx)
        return number


BATCH_SIZE = BatchSizeType()
COMPILE_MODE = click.option(
    "--compile-mode", type=click.Choice(list(COMPILE_MODES)), default="auto", show_default=True,
    help="torch.compile's mode (with --compile). "
         + "; ".join(f"{mode}: {what}" for mode, what in COMPILE_MODES.items()) + ".")
# The flags that shape a training step, shared by `engine train` and `engine profile` (which measures that step)
PRECISION = click.option(
    "--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
    help="auto: bf16 autocast on GPUs that have it, else fp16 with a GradScaler; fp32 on the CPU.")
COMPILE = click.option("--compile/--no-compile", default=None,
                       help="torch.compile the model [default: on with a GPU, off on the CPU].")
CHANNELS_LAST = click.option("--channels-last/--no-channels-last", default=True, show_default=True,
                             help="Model and batches in channels_last memory format.")
LOADER = click.option(
    "--loader", type=click.Choice(["auto", "dali", "resident", "torch"]), default="auto", show_default=True,
    help="Input pipeline. dali: NVIDIA DALI, decoding and augmenting on the GPU; resident: every image decoded once "
         "(cached next to the dataset) and kept on the device; torch: PIL + torchvision transforms in DataLoader "
         "workers. auto, with a GPU: resident for images up to 64 px whose copy fits 5 % of the card per split, "
         "else dali when installed, else resident where its copy fits; torch otherwise.")
WORKERS = click.option(
    "--workers", type=click.IntRange(min=0), default=None,
    help="Loader processes (DALI: threads, at least 1; resident: unused, its one decode uses every core) "
         "[default: cores - 1, at most 8, with a GPU; 0 (main process) on the CPU].")
DEVICE = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                      help="auto: cuda when a GPU is visible, else cpu.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="engine")
def cli() -> None:
    """Fine-tune lightweight ImageNet backbones on small domain-specific datasets, fast, by the protocol of
    "Which backbone to use" (DualOpt, early stopping, best of 3 seeds).

    Start with:  engine train --backbone resnet50 --data demo --no-pretrained --max-epochs 12
    """


@cli.command()
def backbones() -> None:
    """List the backbones: name, parameters (millions, 1000 classes), ImageNet top-1, weights."""
    from engine.models import get_backbone_spec, list_backbones

    rows = []
    for name in list_backbones():
        spec = get_backbone_spec(name)
        rows.append((name, f"{_parameter_count(spec.build) / 1e6:.1f}", f"{spec.imagenet_top1:.2f}",
                     spec.weights_name))
    _print_table(("backbone", "params_M", "imagenet_top1", "weights"), rows)


def _parameter_count(build) -> int:
    """Parameters of the model `build()` makes: built on the meta device (shapes only: no memory, no random
    initialisation, most of the listing's time), or on the CPU for a model whose constructor computes with
    tensors (RegNet derives its widths so)."""
    import torch

    try:
        with torch.device("meta"):
            model = build()
    except NotImplementedError:
        model = build()
    return sum(parameter.numel() for parameter in model.parameters())


DATA_ROOT_HELP = "Where built-in datasets live [default: $ENGINE_DATA or ~/.cache/engine/data]."


@cli.command()
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=DATA_ROOT_HELP)
def datasets(data_root: str | None) -> None:
    """List the built-in datasets: the paper's counts, how each is obtained, and whether it is prepared."""
    from engine.loaders import registry, resolve_data_root

    root = resolve_data_root(data_root)
    rows = [(spec.name, spec.domain, str(spec.classes), f"{spec.paper_counts['train']}/{spec.paper_counts['test']}",
             "x".join(map(str, spec.image_size)), "on" if spec.augment else "off", spec.obtain,
             _prepared_column(spec, root), spec.description) for spec in registry().values()]
    _print_table(("dataset", "domain", "classes", "paper train/test", "size", "augment", "obtain",
                  "prepared train/test", "description"), rows)
    click.echo(f"\nData root: {root}. obtain: auto = downloaded on first use or by `engine data prepare NAME`; "
               "manual = download it yourself, then `engine data prepare NAME --from PATH`; (differs): the prepared "
               "counts are not the paper's (meta.json says how).\nYour own data: --data PATH, where PATH holds "
               "train/<class>/<image> and test/<class>/<image> (optionally val/<class>/<image>),\nor just "
               "<class>/<image> folders, split into train and test by a seeded stratified --test-split (default 0.2).")


def _prepared_column(spec, root) -> str:
    """Whether the dataset is on disk under `root`: its prepared counts (and whether they differ from the paper's),
    "yes" for the generated demo, "being prepared" by whom, "meta.json unreadable" (the other rows still listed),
    or "no"."""
    from engine.loaders import is_ready, prepared_meta
    from engine.loaders.prepare import preparation_lock
    from engine.locks import holder

    try:
        meta = prepared_meta(spec, root) if spec.obtain != "generated" else None
    except UserInputError:
        return "meta.json unreadable (prepare it again with --force)"
    if meta:
        return f"{meta['counts']['train']}/{meta['counts']['test']}" + (" (differs)" if meta.get("count_warnings")
                                                                        else "")
    preparing = holder(preparation_lock(root, spec.name))
    if preparing:
        return f"being prepared ({preparing})"
    return "yes" if is_ready(spec, root) else "no"


@cli.group()
def data() -> None:
    """Prepare datasets: download (or take a local copy) and convert to the train/test layout."""


@data.command()
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=DATA_ROOT_HELP)
@click.option("--from", "source", type=click.Path(), default=None,
              help="A source archive or folder you already have (required for manual datasets).")
@click.option("--force", is_flag=True, help="Prepare again even if the dataset is already prepared.")
@click.option("--split-by", type=click.Choice(["patient", "image"]), default=None,
              help="BreakHis only: split by patient (default; no patient on both sides) or by image (as the paper's "
                   "counts suggest, which leaks patients across the split).")
def prepare(name: str, root: str | None, source: str | None, force: bool, split_by: str | None) -> None:
    """Prepare NAME (or `all` that can be downloaded) under the data root: download, resumably and checksummed,
    or take --from; convert; check counts against the paper; write meta.json. Idempotent."""
    from pathlib import Path

    from engine.loaders import get_dataset_spec, prepare_dataset, registry, resolve_data_root

    root_path = resolve_data_root(root)
    if name == "all":
        if source:
            raise click.UsageError("--from takes one dataset's source, not `all`")
        _prepare_every_downloadable(registry().values(), root_path, force)
        return
    spec = get_dataset_spec(name)
    if spec.obtain == "generated":
        raise click.UsageError(f"{name} is generated on first use; nothing to prepare")
    prepare_dataset(spec, root_path, Path(source) if source else None, force=force, split_by=split_by)


def _prepare_every_downloadable(specs, root, force: bool) -> None:
    """`engine data prepare all`: each downloadable dataset in turn; one that fails (a dead link, a server down)
    does not keep the others from being prepared, and the command ends naming every one that failed."""
    from engine.loaders import prepare_dataset

    specs, failed = list(specs), []
    for spec in (spec for spec in specs if spec.obtain == "auto"):
        try:
            prepare_dataset(spec, root, force=force)
        except UserInputError as err:
            log.warning("%s not prepared: %s", spec.name, err)
            failed.append(spec.name)
    manual = [spec.name for spec in specs if spec.obtain == "manual"]
    log.info("not downloadable (engine data prepare NAME says what to fetch, then --from PATH): %s",
             ", ".join(manual))
    if failed:
        raise UserInputError(f"{len(failed)} downloadable dataset(s) not prepared: {', '.join(failed)} (each one's "
                             f"reason is above); rerun to continue them")


@cli.command()
@click.option("--backbone", required=True, help="Backbone name (see `engine backbones`).")
@click.option("--data", required=True, help="Built-in dataset name (see `engine datasets`) or path to an image folder.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=DATA_ROOT_HELP)
@click.option("--download/--no-download", default=True, show_default=True,
              help="Download and prepare a built-in dataset that is not prepared yet.")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Share of the training images to use, drawn per class by the seed (at least one per class); "
                   "the test set is never subsampled.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of one run [default: 0].")
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="Train seeds 0..K-1 and write summary.json with the best (the paper's best of 3) and mean +- std.")
@click.option("--image-size", callback=lambda ctx, param, value: value and parse_image_size(value),
              help="Resize to SIZE or HxW (e.g. 256 or 448x672) [default: the dataset's; 256 for a folder].")
@click.option("--augment/--no-augment", default=None,
              help="TrivialAugmentWide [default: the dataset's; on for a folder].")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Start from the ImageNet weights (downloaded once into the torch hub cache).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Start from a local state dict: a full model, or a backbone whose classifier is re-initialised "
                   "when its classes differ. Replaces --pretrained.")
@click.option("--batch-size", type=BATCH_SIZE, default=None,
              help=f"Images per step, or auto [default: auto on a GPU: the fastest batch that fits, measured once "
                   f"per GPU, model, size and precision and kept in the profile store; {DEFAULT_BATCH_SIZE['cpu']} "
                   f"on the CPU]. Never more than the training set.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=None,
              help="Cap on the total epochs of both phases [default: none, early stopping alone ends the run].")
@click.option("--patience", type=click.IntRange(min=1), default=PATIENCE, show_default=True,
              help="Epochs without a new best before AdamW hands over to SGD, and before SGD stops.")
@PRECISION
@COMPILE
@COMPILE_MODE
@CHANNELS_LAST
@LOADER
@WORKERS
@click.option("--skip-bad-images", is_flag=True,
              help="Leave unreadable images out (and, under --loader dali, those DALI's decoder would misread), "
                   "counted and listed in config.json, instead of stopping.")
@DEVICE
@click.option("--select-on", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="What early stopping and model selection look at. test: as the paper; val: a seeded "
                   "stratified 10 % of the training images (or the dataset's val/), for an unbiased test number.")
@click.option("--test-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Test share for a folder without train/ and test/ (fixed split seed 0).")
@click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True,
              help="Runs go to OUT/<backbone>/<dataset>/f<fraction>/s<seed>/.")
@click.option("--force", is_flag=True, help="Train again even if the run folder holds a finished or different run.")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train the run on N GPUs of this machine with DistributedDataParallel: N processes started "
                   "through torchrun (`torchrun --nproc_per_node N -m engine train ...` does the same, and spans "
                   "machines). --batch-size is per GPU. With --device cpu: N CPU processes over gloo, for tests.")
@click.pass_context
def train(ctx: click.Context, seed: int | None, runs: int | None, force: bool, gpus: int, **flags) -> None:
    """Fine-tune a backbone on a dataset by the paper's protocol.

    AdamW until --patience epochs bring no new best, then the best weights are reloaded and a fresh SGD runs
    until --patience epochs bring nothing better; the best accuracy is reported. A killed run, rerun with the
    same command, continues from its last finished epoch; a finished one is skipped.
    """
    from engine import distributed
    from engine.config import resolve_device
    from engine.loaders import resolve_dataset
    from engine.models import get_backbone_spec
    from engine.run import prepare_run, train_seeds

    if seed is not None and runs is not None:
        raise click.UsageError("--seed and --runs exclude each other: --runs K trains seeds 0..K-1")
    if gpus > 1 and not distributed.launched():
        # Checked, downloaded or generated here, once, before N processes start and wait for it.
        get_backbone_spec(flags["backbone"])
        resolve_dataset(flags["data"], flags["data_root"], flags["download"])
        ctx.exit(distributed.launch(gpus, resolve_device(flags["device"]), ctx.obj["argv"]))
    if distributed.launched() and gpus not in (1, distributed.world_size()):
        raise click.UsageError(f"--gpus {gpus}, but torchrun started {distributed.world_size()} processes")
    try:
        config, index = prepare_run(**flags)
        seeds = list(range(runs)) if runs else [seed or 0]
        train_seeds(config, index, seeds, force=force)
    finally:
        distributed.leave()


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--backbones", required=True, help="Comma-separated names or patterns (regnet*), or all.")
@click.option("--datasets", required=True, help="Comma-separated built-in names or folders, or all (the paper's 20).")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--fractions", default="1", show_default=True, help="e.g. 1,0.1,0.01 (Tables 7 and 8).")
@click.option("--out", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True)
@click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
              show_default=True, help="local: one cell per GPU (per N GPUs with --gpus N; CPU: one at a time); "
                                      "slurm: one job array through submitit (requeued on preemption); "
                                      "submitit-local: that path on this machine.")
@click.option("--partition", default=None, help="Slurm partition.")
@click.option("--time-limit", "time_min", type=click.IntRange(min=1), default=24 * 60, show_default=True,
              help="Slurm time limit per cell, minutes (a cell that runs out is requeued and resumes).")
@click.option("--gpus-per-task", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs per cell, as --gpus N passed to every cell: above 1, each cell trains on all of "
                   "them with DDP (engine train --gpus N); the local launcher gives each cell its own N.")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=64, show_default=True,
              help="Slurm: cells running at once.")
@click.option("--dry-run", is_flag=True, help="Print the plan and an estimate of GPU-hours; run nothing.")
@click.option("--retry-failed", is_flag=True, help="Run cells that failed before again.")
@click.pass_context
def grid(ctx: click.Context, backbones: str, datasets: str, seeds: str, fractions: str, out: str, launcher: str,
         partition: str | None, time_min: int, gpus_per_task: int, array_parallelism: int, dry_run: bool,
         retry_failed: bool) -> None:
    """Run the grid backbones x datasets x seeds x fractions, each cell an `engine train` in its own process.

    Any other `engine train` flag (e.g. --max-epochs 30 --no-pretrained --image-size 128) is passed to every
    cell. Finished cells are skipped (a finished cell that ran another experiment, or on other files, stops the
    grid before any cell starts), killed ones resume, failed ones are listed with their reason.
    """
    from pathlib import Path

    from engine import grid as grid_module
    from engine.locks import held_alone

    grid_module.check_cell_flags(ctx.args)
    train_params = _cell_settings(ctx.args)  # a bad flag (--gpus 0 among them) fails here, before its value is read
    train_flags = grid_module.with_cell_gpus(ctx.args, gpus_per_task)
    cells = grid_module.expand_cells(backbones, datasets, seeds, fractions)
    grid_module.check_done_cells(cells, Path(out), train_flags, train_params)
    if dry_run:
        for line in grid_module.dry_run(cells, Path(out), train_flags, train_params):
            click.echo(line)
        return
    grid_module.prepare_datasets(cells, Path(out), train_params)
    grid_module.fetch_pretrained_weights(cells, Path(out), train_params)
    with held_alone(grid_module.grid_lock(Path(out)), f"the grid folder {out}"):  # one launcher a grid
        if launcher == "local":
            result = grid_module.run_grid(cells, Path(out), train_flags, retry_failed=retry_failed)
        else:
            result = grid_module.submit_grid(cells, Path(out), train_flags, launcher, retry_failed, partition,
                                             time_min, array_parallelism)
    if result["failed"]:
        sys.exit(1)


def _cell_settings(train_flags: list[str]) -> dict:
    """The settings of a grid cell's `engine train`, its flags parsed as that command will parse them, so that a bad
    flag fails before any cell starts, its message naming `engine train --help`."""
    return train.make_context("engine train", ["--backbone", "resnet50", "--data", "demo", *train_flags]).params


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex"]), default="md", show_default=True)
@click.option("--plots", type=click.Path(file_okay=False), default=None,
              help="Also write PNG plots here: accuracy against training fraction per dataset, and a heat map.")
def report(folder: str, fmt: str, plots: str | None) -> None:
    """The paper's tables from the run folders under FOLDER, each number beside the paper's."""
    from engine import report as report_module

    entries = report_module.collect(folder)
    click.echo(report_module.render(entries, fmt))
    if plots:
        for path in report_module.write_plots(entries, plots):
            log.info("wrote %s", path)


@cli.command("profile")
@click.option("--backbone", required=True, help="Backbone name (see `engine backbones`).")
@click.option("--data", default=None, help="Dataset name or folder: also measure the loader and the whole pipeline.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=DATA_ROOT_HELP)
@click.option("--batch-size", type=BATCH_SIZE, default=None, help="Images per step, or auto (as engine train).")
@click.option("--image-size", callback=lambda ctx, param, value: value and parse_image_size(value),
              help="SIZE or HxW [default: the dataset's; 256 without --data].")
@PRECISION
@COMPILE
@COMPILE_MODE
@CHANNELS_LAST
@LOADER
@WORKERS
@DEVICE
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Measured steps per part.")
@click.option("--packing", is_flag=True,
              help="Also measure 1, 2 and 3 such runs at once on the device, each in its share of the memory, "
                   "timed together for 10 s once all have compiled; store the best count for the grid.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
def profile_command(steps: int, packing: bool, as_json: bool, **flags) -> None:
    """Measure a training step: the model on synthetic data (forward/backward/optimizer, peak memory, first-step
    compile time), the loader alone and the whole pipeline, with a verdict naming the bottleneck."""
    import json as json_module

    from engine.profile import profile
    from engine.run import prepare_profile_config
    from engine.scheduler import PACKING_SECONDS, measure_packing

    config, index = prepare_profile_config(**flags)
    report = profile(config, index, steps=steps, warmup=3)
    if packing:
        log.info("packing: 1, 2 and 3 copies of the step at once, %.0f s each once all are compiled",
                 PACKING_SECONDS)
        best, rates, batches = measure_packing(config)
        report["packing"] = {"best_concurrency": best, "total_images_per_s": rates, "batch_sizes": batches}
    if as_json:
        click.echo(json_module.dumps(report, indent=2))
        return
    _print_table(("measure", "value"), [(key, _readable(value)) for key, value in report.items() if key != "verdict"])
    click.echo(f"\nverdict: {report['verdict']}")


def _readable(value, nested: bool = False) -> str:
    """A profile value for people (--json keeps the values themselves): '-' for what was not measured, a size as
    HxW, a breakdown as 'name value, ...', one by count (runs packed at once) as '1: value, ...', and a breakdown
    within a breakdown in parentheses."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        parts = ", ".join(f"{key}{':' if str(key).isdigit() else ''} {_readable(part, nested=True)}"
                          for key, part in value.items())
        return f"({parts})" if nested else parts
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value)


@cli.command("packed-copy", hidden=True)
@click.option("--backbone", required=True)
@click.option("--image-size", required=True, callback=lambda ctx, param, value: parse_image_size(value))
@click.option("--batch-size", type=BATCH_SIZE, required=True)
@PRECISION
@COMPILE
@COMPILE_MODE
@CHANNELS_LAST
@DEVICE
@click.option("--copies", type=click.IntRange(min=1), required=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option("--barrier", type=click.Path(exists=True, file_okay=False), required=True)
def packed_copy_command(copies: int, seconds: float, barrier: str, **flags) -> None:
    """One copy of `engine profile --packing`'s measurement, which starts them (with ENGINE_MEMORY_SHARE):
    prints its images/s and timed window as JSON."""
    import json as json_module
    from pathlib import Path

    from engine.profile import packed_copy
    from engine.run import prepare_profile_config

    config, _ = prepare_profile_config(data=None, **flags)
    click.echo(json_module.dumps(packed_copy(config, copies, Path(barrier), seconds)))


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the command and turns errors a user can fix into one line and exit code 2."""
    _configure_logging()
    previous = signal.signal(signal.SIGTERM, _raise_terminated(os.getpid()))
    try:
        _run(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)  # run in-process (the tests), the caller's handler again


def _raise_terminated(owner: int):
    """SIGTERM as Terminated in this process. A process forked from it (a DataLoader worker) inherits the handler
    but not the reason for it: there SIGTERM ends the process as it always did, without a traceback."""
    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()
    return handler


def _run(argv: list[str] | None) -> None:
    try:
        # argv travels along for `train --gpus N`, which starts N copies of this same command.
        code = cli.main(args=argv, prog_name="engine", standalone_mode=False,
                        obj={"argv": sys.argv[1:] if argv is None else list(argv)})
    except click.UsageError as err:
        command = err.ctx.command_path if err.ctx else "engine"  # e.g. `engine data prepare`, whole
        _fail(f"{err.format_message()} ({_taken_elsewhere(err)}see `{command} --help`)")
    except click.ClickException as err:
        _fail(err.format_message())
    except UserInputError as err:
        _fail(str(err), echo=not getattr(err, "replica", False))  # rank 0 says what all ranks of a run met
    except (KeyboardInterrupt, click.Abort) as stopped:
        if isinstance(stopped.__cause__, EOFError):  # click makes every EOFError an Abort: a file cut short, no Ctrl-C
            raise stopped.__cause__ from None
        click.echo(INTERRUPTED_MESSAGE, err=True)
        sys.exit(INTERRUPTED)
    except Terminated:
        click.echo(TERMINATED_MESSAGE, err=True)
        sys.exit(TERMINATED)
    except OSError as err:
        if not is_path_problem(err):
            raise  # not about a path or disk the user can mend: the traceback is the report
        _fail(path_problem_message(err))
    sys.exit(code if isinstance(code, int) else 0)


def _taken_elsewhere(err: click.UsageError) -> str:
    """For a flag this command does not take, the commands that do: a flag copied from one command's line to
    another's (`--no-pretrained` from `engine train` to `engine profile`, which measures from random weights)."""
    if not isinstance(err, click.NoSuchOption) or err.ctx is None:
        return ""
    takers = [f"`engine {name}`" for name, command in cli.commands.items()
              if command is not err.ctx.command and any(err.option_name in param.opts + param.secondary_opts
                                                        for param in command.params)]
    return f"{' and '.join(takers)} take{'s' if len(takers) == 1 else ''} it; " if takers else ""


def _fail(message: str, echo: bool = True) -> None:
    if echo:
        click.echo(f"engine: error: {message}", err=True)
    sys.exit(USAGE_ERROR)
