"""`engine grid`: backbones x datasets x seeds x fractions, each cell an `engine train` in its own process (one
crash or out-of-memory stays in its cell), resumable: a cell with result.json is done and skipped, a killed cell
continues from its last epoch, a failed cell is recorded with its reason and rerun by --retry-failed.

Launchers: local (one cell at a time on the CPU; with GPUs, one worker per GPU through CUDA_VISIBLE_DEVICES, or per
group of N GPUs for cells that train on N with `--gpus N`, times the concurrency the profile store's packing
measurement found worth it), and Slurm through submitit.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import parse_image_size, run_folder
from engine.distributed import die_with_parent
from engine.errors import UserInputError, how_it_ended
from engine.loaders import (CUSTOM_DEFAULT_AUGMENT, CUSTOM_DEFAULT_SIZE, registry, resolve_data_root,
                            resolve_dataset, scan_dataset, waits_for_user)
from engine.locks import holder
from engine.models import get_backbone_spec, hub_cache_path, list_backbones, load_pretrained_state
from engine.progress import readable_duration
from engine.results import RESULT, last_line, read_json, run_lock, write_json
from engine.run import file_differences, finished_run_differences
from engine.scheduler import packing_key, read_profiles, share_environment

log = logging.getLogger("engine")
GRID_FOLDER = ".grid"  # under --out: per-cell logs and failure records


@dataclass(frozen=True)
class Cell:
    backbone: str
    data: str  # as the user gave it (a registry name or a path)
    seed: int
    fraction: float

    @property
    def dataset(self) -> str:
        return dataset_name(self.data)

    @property
    def name(self) -> str:
        return f"{self.backbone}__{self.dataset}__f{self.fraction:g}__s{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return run_folder(out, self.backbone, self.dataset, self.fraction, self.seed)

    def image_size(self, train_flags: list[str]) -> tuple[int, int]:
        """The size the cell trains at: the grid's --image-size, else its dataset's default."""
        given = _flag_value(train_flags, "--image-size")
        if given is not None:
            return parse_image_size(given)
        return self._dataset_default("image_size", CUSTOM_DEFAULT_SIZE)

    def augment(self, asked: bool | None) -> bool:
        """Whether the cell augments: the grid's --augment/--no-augment, else its dataset's default."""
        return asked if asked is not None else self._dataset_default("augment", CUSTOM_DEFAULT_AUGMENT)

    def _dataset_default(self, setting: str, for_a_folder):
        """A built-in dataset's own value of `setting`; `for_a_folder` for a folder of the user's."""
        spec = registry().get(self.data)
        return getattr(spec, setting) if spec is not None else for_a_folder

    def command(self, out: Path, train_flags: list[str]) -> list[str]:
        return [sys.executable, "-m", "engine", "train", "--backbone", self.backbone, "--data", self.data,
                "--seed", str(self.seed), "--fraction", f"{self.fraction:g}", "--out", str(out), *train_flags]


def dataset_name(data: str) -> str:
    """The name a dataset's runs are filed under: a built-in one's, or a folder's own name."""
    return data if data in registry() else Path(data).expanduser().resolve().name


def pick_names(requested: str, known: list[str], what: str) -> list[str]:
    """'all', or comma-separated names and shell patterns ('regnet*'), each of which must match something."""
    if requested == "all":
        return list(known)
    chosen = []
    for item in requested.split(","):
        matches = [name for name in known if fnmatch.fnmatch(name, item)] if any(c in item for c in "*?[") else \
            ([item] if item in known or what == "dataset" else [])
        if not matches:
            raise UserInputError(f"no {what} matches {item!r}; known: {', '.join(known)}")
        chosen += [name for name in matches if name not in chosen]
    return chosen


def expand_cells(backbones: str, datasets: str, seeds: str, fractions: str) -> list[Cell]:
    backbone_names = pick_names(backbones, list_backbones(), "backbone")
    dataset_names = pick_names(datasets, [name for name in registry() if name != "demo"], "dataset")
    for data in dataset_names:  # a folder that is not there fails here, once, not in every cell of its row
        if data not in registry():
            resolve_dataset(data)
    _refuse_shared_names(dataset_names)
    try:  # each once: a value given twice (0,0; 0.1,0.10) would make two cells of one run folder
        seed_values = list(dict.fromkeys(int(seed) for seed in seeds.split(",")))
        fraction_values = list(dict.fromkeys(float(fraction) for fraction in fractions.split(",")))
    except ValueError as err:
        raise UserInputError(f"--seeds takes integers and --fractions numbers, comma-separated ({err})") from None
    if any(seed < 0 for seed in seed_values):  # as engine train's --seed, which every cell of it would fail on
        raise UserInputError(f"seeds must be 0 or more, got {seeds}")
    if any(not 0 < fraction <= 1 for fraction in fraction_values):
        raise UserInputError(f"fractions must be in (0, 1], got {fractions}")
    return [Cell(backbone, data, seed, fraction) for data in dataset_names for fraction in fraction_values
            for backbone in backbone_names for seed in seed_values]


def _refuse_shared_names(dataset_names: list[str]) -> None:
    """Two folders of one name (/a/images, /b/images) would train into the same run folders."""
    by_name: dict[str, list[str]] = {}
    for data in dataset_names:
        by_name.setdefault(dataset_name(data), []).append(data)
    for name, datas in by_name.items():
        if len(datas) > 1:
            raise UserInputError(f"datasets {', '.join(datas)} share the name {name!r}, so their runs would share "
                                 f"folders; rename one folder, or run them as two grids with two --out")


def grid_lock(out: Path) -> Path:
    """Held by the grid's launcher while it runs: a second launcher on the same folder would start every cell the
    first is running again (those would stop at their run folders' locks, recorded as failures)."""
    return out / GRID_FOLDER / "lock"


def _failure_path(out: Path, cell: Cell) -> Path:
    return out / GRID_FOLDER / "failed" / f"{cell.name}.json"


# What a cell can be, in the order the grid says them: finished; trained by a process now (this grid's, or another's
# that holds its run folder); begun and stopped (a killed cell continues); failed (rerun with --retry-failed); not begun
STATUSES = ("done", "running", "started", "failed", "pending")


def _is_done(out: Path, cell: Cell) -> bool:
    return (cell.run_dir(out) / RESULT).exists()


def _cells_left(cells: list[Cell], out: Path) -> list[Cell]:
    """The cells not done, for the work done once before any of them starts (no look at their locks)."""
    return [cell for cell in cells if not _is_done(Path(out), cell)]


def cell_status(out: Path, cell: Cell) -> str:
    if _is_done(out, cell):
        return "done"
    if holder(run_lock(cell.run_dir(out))):
        return "running"
    if _failure_path(out, cell).exists():
        return "failed"
    return "started" if cell.run_dir(out).exists() else "pending"


def asked_experiment(cell: Cell, train_flags: list[str], train_params: dict) -> dict:
    """What the grid asks of a cell: the RunConfig.EXPERIMENT settings that `engine train` with these flags
    resolves, as prepare_config does (num_classes and the protocol need the data scanned; the cell's own
    `engine train` compares those when it starts)."""
    weights = train_params["weights"] and str(Path(train_params["weights"]).resolve())
    return {"image_size": cell.image_size(train_flags), "augment": cell.augment(train_params["augment"]),
            "pretrained": train_params["pretrained"] and not weights, "weights": weights or None,
            "patience": train_params["patience"], "select_on": train_params["select_on"],
            "test_split": train_params["test_split"]}


def check_done_cells(cells: list[Cell], out: Path, train_flags: list[str], train_params: dict) -> None:
    """Refuse a grid whose finished cells ran another experiment than it asks (another --image-size, --select-on,
    --max-epochs...): skipping them as done would report their numbers as this grid's."""
    out = Path(out)
    mismatched, indexes = [], {}
    for cell in (cell for cell in cells if _is_done(out, cell)):
        asked = asked_experiment(cell, train_flags, train_params)
        finished = read_json(cell.run_dir(out) / RESULT)
        found = finished_run_differences(cell.run_dir(out), finished, asked, train_params["max_epochs"])
        if cell.data not in indexes:  # each dataset scanned once, for all its done cells
            indexes[cell.data] = _index_if_there(cell, train_params)
        if indexes[cell.data] is not None:
            found += file_differences(cell.run_dir(out), indexes[cell.data], cell.fraction, cell.seed,
                                      train_params["select_on"])
        if found:
            mismatched.append((cell, found))
    if mismatched:
        cell, found = mismatched[0]
        raise UserInputError(f"{len(mismatched)} finished cell(s) under {out} ran another experiment than this grid "
                             f"asks (e.g. {cell.run_dir(out)}: {'; '.join(found)}); choose another --out, or remove "
                             f"those cells' folders to train them again")


def _index_if_there(cell: Cell, train_params: dict):
    """The cell's dataset scanned, or None where it is gone (removed once its cells were done): its done cells
    stand, as they did before their files were compared."""
    try:
        dataset = resolve_dataset(cell.data, train_params["data_root"], download=False)
        return scan_dataset(dataset.path, cell.dataset, train_params["test_split"])
    except UserInputError:
        return None


def fetch_pretrained_weights(cells: list[Cell], out: Path, train_params: dict) -> None:
    """The ImageNet weights of each backbone with cells to run, into the torch hub cache once, before any cell
    starts: an offline machine is told in one line, not once per cell; parallel cells do not download the same
    file at once; and Slurm cells on compute nodes without internet find what this node fetched (the hub cache
    on a shared $TORCH_HOME)."""
    if not train_params["pretrained"] or train_params["weights"]:
        return
    for backbone in dict.fromkeys(cell.backbone for cell in _cells_left(cells, out)):
        url = get_backbone_spec(backbone).weights_url
        if not hub_cache_path(url).exists():
            log.info("grid: fetching the ImageNet weights of %s into the torch hub cache", backbone)
            load_pretrained_state(url)


def _builtin_datasets_left(cells: list[Cell], out: Path) -> list[str]:
    return [data for data in dict.fromkeys(cell.data for cell in _cells_left(cells, out)) if data in registry()]


def _waiting_for_user(datasets: list[str], train_params: dict) -> tuple[Path, list[str]]:
    """The data root, and those of the built-in `datasets` that only the user can make ready there."""
    root = resolve_data_root(train_params["data_root"])
    return root, [data for data in datasets if waits_for_user(registry()[data], root, train_params["download"])]


def prepare_datasets(cells: list[Cell], out: Path, train_params: dict) -> None:
    """Each built-in dataset with cells to run, made ready once before any cell starts (downloaded and prepared,
    as `engine train` would on first use, unless --no-download): an offline machine or a dataset to fetch by hand is
    said in one line, not in every cell's log, and Slurm cells find it prepared on a shared data root. Datasets to
    fetch by hand are all named at once, before any download, so that one rerun finds them all."""
    datasets = _builtin_datasets_left(cells, out)
    root, waiting = _waiting_for_user(datasets, train_params)
    if len(waiting) > 1:
        raise UserInputError(f"{len(waiting)} datasets of this grid are not prepared in {root}: {', '.join(waiting)}; "
                             f"`engine data prepare NAME --root {root}` prepares each, or says where to get it")
    for data in waiting + datasets:  # one dataset waiting: its own message, first
        resolve_dataset(data, train_params["data_root"], train_params["download"])


def _cells_to_run(cells: list[Cell], out: Path, retry_failed: bool) -> list[Cell]:
    """Cells not done (failed ones only when retried: their failure record is cleared), less those that another
    process is training (a Slurm array of an earlier launch still running, a cell started by hand): started again,
    they would only stop at the run folder's lock and be recorded as failed."""
    runnable = ("started", "pending", "failed") if retry_failed else ("started", "pending")
    statuses = [cell_status(out, cell) for cell in cells]
    for cell in (cell for cell, status in zip(cells, statuses) if status == "running"):
        log.info("grid: %s is being trained by %s; left to it", cell.name, holder(run_lock(cell.run_dir(out))))
    todo = [cell for cell, status in zip(cells, statuses) if status in runnable]
    for cell in todo:
        _failure_path(out, cell).unlink(missing_ok=True)
    return todo


def _by_status(cells: list[Cell], out: Path) -> dict[str, list[Cell]]:
    by_status: dict[str, list[Cell]] = {status: [] for status in STATUSES}
    for cell in cells:
        by_status[cell_status(out, cell)].append(cell)
    return by_status


def failure_reason(exit_code: int, log_file: Path) -> str:
    """Why a cell failed: its error (its log's last line) or, for a cell killed by a signal, which one. Such a cell
    wrote no error, and its log's last line is whatever it was doing (an epoch's progress) when it died."""
    last = last_line(log_file)
    if exit_code >= 0:
        return last or how_it_ended(exit_code)
    return how_it_ended(exit_code) + (f"; its log's last line: {last}" if last else "")


def _record_failure(out: Path, cell: Cell, exit_code: int, log_file: Path) -> str:
    reason = failure_reason(exit_code, log_file)
    write_json(_failure_path(out, cell), {"cell": cell.name, "exit_code": exit_code, "reason": reason})
    return reason


# `engine train` flags the grid sets for each cell itself. Passed to every cell they would override the cell's own
# (every cell training one seed, or into a folder the grid never looks in), so each is refused with what to do.
GRID_SET_FLAGS = {
    "--backbone": "each cell's backbone comes from --backbones",
    "--data": "each cell's dataset comes from --datasets",
    "--seed": "each cell's seed comes from --seeds",
    "--runs": "each cell's seed comes from --seeds (--seeds 0,1,2 for --runs 3)",
    "--fraction": "each cell's fraction comes from --fractions",
    "--force": "the grid skips finished cells and resumes killed ones; to train cells again, remove their run "
               "folders or give another --out",
}


def check_cell_flags(train_flags: list[str]) -> None:
    """Refuse, in one line, an `engine train` flag that the grid sets for each cell."""
    for flag in train_flags:
        name = flag.split("=", 1)[0]
        if name in GRID_SET_FLAGS:
            raise UserInputError(f"engine grid takes no {name}: {GRID_SET_FLAGS[name]}")


def _flag_value(flags: list[str], name: str) -> str | None:
    """The value of `name` among command-line flags (`--name value` or `--name=value`), or None."""
    for position, flag in enumerate(flags):
        if flag == name and position + 1 < len(flags):
            return flags[position + 1]
        if flag.startswith(f"{name}="):
            return flag.split("=", 1)[1]
    return None


def packed_concurrency(cells: list[Cell], train_flags: list[str]) -> int:
    """Cells per GPU: the concurrency `engine profile --packing` stored for this GPU, each cell's backbone and
    image size, the smallest over the cells (a big backbone must not be packed because a small one could be,
    nor a run at 448 px because one at 256 px could be); 1 where nothing is stored."""
    gpu, profiles = torch.cuda.get_device_name(), read_profiles()
    sizes = {(cell.backbone, cell.image_size(train_flags)) for cell in cells}
    return min((profiles.get(packing_key(gpu, backbone, size), {}).get("concurrency", 1) for backbone, size in sizes),
               default=1)


def visible_gpus() -> list[str]:
    """This process's GPUs as a child's CUDA_VISIBLE_DEVICES must name them: under CUDA_VISIBLE_DEVICES=2,3 the
    grid's GPU 0 is the machine's 2, and a cell told "0" would train on a GPU the user kept out."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [name.strip() for name in listed.split(",")] if listed is not None else [str(i) for i in range(count)]
    return names[:count]


def gpus_per_cell(train_flags: list[str]) -> int:
    """The GPUs each cell trains on: its `--gpus N` (DDP), 1 without."""
    return int(_flag_value(train_flags, "--gpus") or 1)


def with_cell_gpus(train_flags: list[str], gpus_per_task: int) -> list[str]:
    """The cells' flags with the GPUs each trains on named once: `--gpus-per-task N` and a `--gpus N` passed to
    every cell are one setting, and two different counts are refused rather than one silently winning."""
    asked = _flag_value(train_flags, "--gpus")
    if asked is None:
        return [*train_flags, "--gpus", str(gpus_per_task)] if gpus_per_task > 1 else list(train_flags)
    if gpus_per_task > 1 and int(asked) != gpus_per_task:
        raise UserInputError(f"--gpus-per-task {gpus_per_task} and --gpus {asked} disagree on the GPUs a cell "
                             f"trains on; give one of them")
    return list(train_flags)


def _gpu_groups(gpus: list[str], per_cell: int) -> list[str]:
    """The machine's GPUs cut into one CUDA_VISIBLE_DEVICES value per cell slot, `per_cell` GPUs each."""
    if per_cell > len(gpus):
        raise UserInputError(f"each cell trains on {per_cell} GPUs (--gpus), but this machine shows {len(gpus)}")
    slots = len(gpus) // per_cell
    if slots * per_cell < len(gpus):
        log.warning("grid: GPU %s left idle: %d GPUs make %d cells of %d", ",".join(gpus[slots * per_cell:]),
                    len(gpus), slots, per_cell)
    return [",".join(gpus[slot * per_cell:(slot + 1) * per_cell]) for slot in range(slots)]


def _worker_slots(cells: list[Cell], train_flags: list[str]) -> list[dict]:
    """Environment overrides for each concurrent cell: per GPU (per group of a cell's `--gpus N`), as many as
    packing pays for; the CPU: one."""
    gpus = visible_gpus()
    if not gpus or _flag_value(train_flags, "--device") == "cpu":  # CPU cells side by side would share the cores
        return [{}]
    per_cell = gpus_per_cell(train_flags)
    per_gpu = packed_concurrency(cells, train_flags) if per_cell == 1 else 1  # packing was measured on one GPU
    if per_gpu > 1:
        log.info("grid: %d cells per GPU (the profile store's packing measurement)", per_gpu)
    return [{"CUDA_VISIBLE_DEVICES": group, **share_environment(per_gpu)}  # each in its share of the memory
            for group in _gpu_groups(gpus, per_cell) for _ in range(per_gpu)]


def run_grid(cells: list[Cell], out: Path, train_flags: list[str], retry_failed: bool = False,
             slots: list[dict] | None = None) -> dict[str, list[Cell]]:
    """Run every cell that is not done (failed ones only with retry_failed); returns cells by final status."""
    out = Path(out)
    todo = _cells_to_run(cells, out, retry_failed)
    done_before = len(cells) - len(_cells_left(cells, out))
    log.info("grid: %d cells, %d already done, %d to run -> %s", len(cells), done_before, len(todo), out)
    logs = out / GRID_FOLDER / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    free = list(slots if slots is not None else _worker_slots(todo, train_flags))
    running: dict[subprocess.Popen, tuple[Cell, dict, float]] = {}
    queue, started_at, finished_s = list(todo), time.time(), []
    while queue or running:
        while queue and free:
            cell, slot = queue.pop(0), free.pop(0)
            with open(logs / f"{cell.name}.log", "a") as handle:
                process = subprocess.Popen(cell.command(out, train_flags), stdout=handle, stderr=subprocess.STDOUT,
                                           env={**os.environ, **slot}, preexec_fn=die_with_parent)
            running[process] = (cell, slot, time.time())
            log.info("grid: started %s (its log: %s)", cell.name, logs / f"{cell.name}.log")
        time.sleep(0.2)
        for process in [p for p in running if p.poll() is not None]:
            cell, slot, began = running.pop(process)
            free.append(slot)
            finished_s.append(time.time() - began)
            if process.returncode != 0 or not (cell.run_dir(out) / RESULT).exists():
                reason = _record_failure(out, cell, process.returncode, logs / f"{cell.name}.log")
                log.warning("grid: %s failed: %s", cell.name, reason)
            _log_progress(cells, out, len(running), queue, finished_s, len(free) + len(running))
    by_status = _by_status(cells, out)
    for cell in by_status["failed"]:
        log.warning("grid: failed %s: %s (rerun with --retry-failed)", cell.name,
                    read_json(_failure_path(out, cell))["reason"])
    elsewhere = f", {len(by_status['running'])} being trained by other processes" if by_status["running"] else ""
    log.info("grid finished in %s: %d done, %d failed%s", readable_duration(time.time() - started_at),
             len(by_status["done"]), len(by_status["failed"]), elsewhere)
    return by_status


def _log_progress(cells, out, running: int, queue: list, finished_s: list[float], slots: int) -> None:
    statuses = [cell_status(out, cell) for cell in cells]
    average = sum(finished_s) / len(finished_s)
    outstanding = len(queue) + running
    eta = f"; ETA {readable_duration(average * outstanding / max(slots, 1))}" if outstanding else ""
    log.info("grid: %d done, %d running, %d failed, %d left%s", statuses.count("done"), running,
             statuses.count("failed"), len(queue), eta)


ASSUMED_EPOCHS = 40  # a typical DualOpt run: the best epoch, two patience windows, and the SGD phase's gains


def _measured_rates() -> dict[str, dict[tuple[int, int], float]]:
    """backbone -> image size -> the fastest images/s the profile store measured for it (any GPU, precision)."""
    rates: dict[str, dict[tuple[int, int], float]] = {}
    for key, entry in read_profiles().items():
        parts = key.split("|")
        if parts[0] != "packing" and entry.get("images_per_s"):
            size = parse_image_size(parts[3])
            by_size = rates.setdefault(parts[2], {})
            by_size[size] = max(by_size.get(size, 0.0), max(float(v) for v in entry["images_per_s"].values()))
    return rates


def _rate_at(by_size: dict[tuple[int, int], float], size: tuple[int, int]) -> float:
    """The measured rate at `size`, else the best measured rate in pixels per second scaled to it: a step's
    work grows with the pixels, so a 448x672 cell (BreakHis) costs 4.6x a 256x256 one."""
    if size in by_size:
        return by_size[size]
    return max(rate * height * width for (height, width), rate in by_size.items()) / (size[0] * size[1])


def dry_run(cells: list[Cell], out: Path, train_flags: list[str], train_params: dict) -> list[str]:
    """The plan, one line per cell with its status, a count per status, an estimate of GPU-hours from the
    profile store's measured images/s at each cell's image size, where it has them, and the datasets the user
    must prepare before the grid can run."""
    rates = _measured_rates()
    lines, seconds, unrated, unsized = [], 0.0, set(), set()
    statuses = [cell_status(out, cell) for cell in cells]
    for cell, status in zip(cells, statuses):
        lines.append(f"{status:8s} {cell.name}")
        spec = registry().get(cell.data)
        if status == "done":
            continue
        if cell.backbone not in rates:
            unrated.add(cell.backbone)
        if spec is None:
            unsized.add(cell.data)
        if cell.backbone in rates and spec is not None:
            rate = _rate_at(rates[cell.backbone], cell.image_size(train_flags))
            seconds += spec.paper_counts["train"] * cell.fraction * ASSUMED_EPOCHS / rate
    lines.append(f"{len(cells)} cells: " + ", ".join(f"{statuses.count(status)} {status}" for status in STATUSES
                                                    if status in statuses))
    if seconds:
        lines.append(f"estimate: {seconds / 3600:.1f} GPU-hours for the cells left (profile store rates, "
                     f"{ASSUMED_EPOCHS} epochs a cell)")
    if unrated:
        lines.append(f"no estimate for the cells of {', '.join(sorted(unrated))}: the profile store has no rate "
                     f"for them (`engine profile --backbone NAME` on the GPU measures one)")
    if unsized:
        lines.append(f"no estimate for the cells of {', '.join(sorted(unsized))}: not a built-in dataset, whose "
                     f"size is known ahead")
    root, waiting = _waiting_for_user(_builtin_datasets_left(cells, out), train_params)
    if waiting:
        lines.append(f"not prepared in {root}, and the grid cannot fetch them: {', '.join(waiting)} "
                     f"(`engine data prepare NAME --root {root}` prepares each, or says where to get it)")
    return lines


# --- Slurm, through submitit -----------------------------------------------------------------------------------
class CellTask:
    """One cell as a submitit task. Preempted or timed out, submitit calls `checkpoint` and requeues the same
    task, which resumes from the cell's last.pt; a cell already done is not trained again."""

    def __init__(self, cell: Cell, out: Path, train_flags: list[str]):
        self.cell, self.out, self.train_flags = cell, Path(out), list(train_flags)

    def __call__(self) -> str:
        if _is_done(self.out, self.cell):
            return "done"
        logs = self.out / GRID_FOLDER / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{self.cell.name}.log", "a") as handle:
            code = subprocess.call(self.cell.command(self.out, self.train_flags), stdout=handle,
                                   stderr=subprocess.STDOUT)
        if code != 0:
            reason = _record_failure(self.out, self.cell, code, logs / f"{self.cell.name}.log")
            raise RuntimeError(f"{self.cell.name} failed: {reason}")
        return "done"

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(self)


SLURM_CLUSTERS = {"slurm": "slurm", "submitit-local": "local"}


def submit_grid(cells: list[Cell], out: Path, train_flags: list[str], launcher: str, retry_failed: bool = False,
                partition: str | None = None, time_min: int = 24 * 60,
                parallelism: int = 64) -> dict[str, list[Cell]]:
    """One job array for the cells left, each task with the GPUs its cell's `--gpus` asks for (all of them
    trained on, with DDP); waits for it and returns cells by status (as run_grid)."""
    try:
        import submitit
    except ImportError:
        raise UserInputError("the Slurm launcher needs submitit: pip install 'engine[slurm]'") from None
    out = Path(out)
    todo = _cells_to_run(cells, out, retry_failed)
    executor = submitit.AutoExecutor(folder=out / GRID_FOLDER / "submitit", cluster=SLURM_CLUSTERS[launcher])
    parameters = {"timeout_min": time_min, "name": "engine-grid"}
    if launcher == "slurm":
        parameters |= {"slurm_array_parallelism": parallelism, "gpus_per_node": gpus_per_cell(train_flags),
                       **({"slurm_partition": partition} if partition else {})}
    executor.update_parameters(**parameters)
    log.info("grid: %d cells, %d to submit as one job array (%s)", len(cells), len(todo), launcher)
    jobs = executor.submit_array([CellTask(cell, out, train_flags) for cell in todo]) if todo else []
    for job, cell in zip(jobs, todo):
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - a failed cell is reported, the others go on
            log.warning("grid: %s failed (%s)", cell.name, str(error).strip().splitlines()[-1][:300])
    by_status = _by_status(cells, out)
    log.info("grid: %d done, %d failed", len(by_status["done"]), len(by_status["failed"]))
    return by_status
