"""`engine grid` on the CPU: cells as processes, resumable after SIGKILL, failures recorded and retried."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import json_ready
from engine.errors import UserInputError
from engine.grid import cell_status, expand_cells
from engine.results import read_metrics
from tests.conftest import make_dataset, run_main, write_image

FLAGS = ["--no-pretrained", "--image-size", "32", "--batch-size", "8"]


def test_cells_expand_names_patterns_and_all(tmp_path):
    cells = expand_cells("mobilenet*,resnet50", f"demo,{tmp_path}", "0,1", "1,0.1")
    assert len(cells) == 2 * 2 * 2 * 2
    assert {cell.backbone for cell in cells} == {"mobilenet_v3_large", "resnet50"}
    assert len({cell.name for cell in cells}) == len(cells)
    assert len(expand_cells("all", "all", "0", "1")) == 11 * 20
    with pytest.raises(UserInputError, match="no backbone matches 'vgg\\*'"):
        expand_cells("vgg*", "demo", "0", "1")
    with pytest.raises(UserInputError, match="fractions must be in"):
        expand_cells("resnet50", "demo", "0", "0")
    # a value given twice is one cell: two would train into one run folder, one of them for nothing
    twice = expand_cells("resnet50,resnet*", "demo", "0,1,0", "0.1,0.10,1")
    assert [(cell.seed, cell.fraction) for cell in twice] == [(0, 0.1), (1, 0.1), (0, 1.0), (1, 1.0)]
    with pytest.raises(UserInputError, match="seeds must be 0 or more, got 0,-1"):  # engine train refuses them
        expand_cells("resnet50", "demo", "0,-1", "1")
    # a dataset neither built in nor a folder is refused before any cell runs
    with pytest.raises(UserInputError, match="unknown dataset 'nodata': not a built-in dataset"):
        expand_cells("resnet50", "demo,nodata", "0", "1")


def train_processes(out: Path) -> list[int]:
    """PIDs of `engine train` processes writing to `out`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"train" in command and str(out).encode() in command:
            pids.append(int(entry.name))
    return pids


def test_grid_survives_sigkill_and_finishes_every_cell_once(tmp_path, capsys):
    data = make_dataset(tmp_path / "tiny", {"train": 12, "test": 4})
    out = tmp_path / "runs"
    args = ["grid", "--backbones", "mobilenet_v3_large,shufflenet_v2_x2_0", "--datasets", str(data), "--seeds", "0,1",
            "--out", str(out), "--max-epochs", "2", *FLAGS]
    grid = subprocess.Popen([sys.executable, "-m", "engine", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.rglob("result.json")):
        assert grid.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)  # into the next cell
    os.kill(grid.pid, signal.SIGKILL)
    grid.wait()
    time.sleep(1.0)
    assert train_processes(out) == []  # the running cell died with the grid: no cell trains twice at once
    first = next(out.rglob("result.json"))
    stamp = first.stat().st_mtime_ns

    rerun = run_main(capsys, *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stderr
    results = sorted(out.rglob("result.json"))
    assert len(results) == 4 and first.stat().st_mtime_ns == stamp  # finished work kept, not retrained
    for result in results:
        assert [int(row["epoch"]) for row in read_metrics(result.parent / "metrics.csv")] == [1, 2]

    # the same grid at another size: its finished cells answer another experiment, and none is taken as done
    other_size = run_main(capsys, *["48" if arg == "32" else arg for arg in args])
    assert other_size.returncode == 2 and first.stat().st_mtime_ns == stamp
    assert "4 finished cell(s)" in other_size.stderr and "image_size [32, 32] -> [48, 48]" in other_size.stderr
    # the same grid once the dataset has gained an image: its finished cells trained on other files
    write_image(data / "train" / "red" / "red_new.png", (220, 30, 30))
    grown = run_main(capsys, *args)
    assert grown.returncode == 2 and first.stat().st_mtime_ns == stamp
    assert "4 finished cell(s)" in grown.stderr
    assert "train files: 0 of the run's are not among those this command takes from " in grown.stderr


@pytest.mark.parametrize("flags", [[], ["--no-augment", "--patience", "3"], ["--image-size", "48x64"],
                                   ["--select-on", "val", "--test-split", "0.3", "--augment"],
                                   ["--weights", "w.pt", "--pretrained"]])
def test_the_grid_asks_of_a_cell_what_engine_train_resolves_from_the_same_flags(tmp_path, monkeypatch, flags):
    """The grid judges a finished cell without starting its `engine train`: what it asks must be what that
    process would resolve (prepare_config), or a rerun of the same grid would refuse its own cells."""
    from engine.cli import train
    from engine.grid import asked_experiment
    from engine.run import prepare_config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    data = make_dataset(tmp_path / "tiny", {"train": 4, "test": 2})
    argv = ["--backbone", "resnet50", "--data", str(data), "--device", "cpu", *flags]
    params = train.make_context("train", argv).params
    config, _ = prepare_config(**{key: value for key, value in params.items()
                                  if key not in ("seed", "runs", "force", "gpus")})
    cell = expand_cells("resnet50", str(data), "0", "1")[0]
    asked = asked_experiment(cell, flags, params)
    assert set(asked) <= set(config.EXPERIMENT)
    assert json_ready(asked) == {key: config.experiment()[key] for key in asked}


def test_two_folders_of_one_name_are_refused_in_one_grid(tmp_path):
    first = make_dataset(tmp_path / "a" / "images", {"train": 2, "test": 1})
    second = make_dataset(tmp_path / "b" / "images", {"train": 2, "test": 1})
    with pytest.raises(UserInputError, match=r"share the name 'images', so their runs would share folders"):
        expand_cells("resnet50", f"{first},{second}", "0", "1")


def test_a_second_launcher_on_a_running_grid_is_refused_in_one_line(tmp_path, capsys):
    """It would start again every cell the first launcher is running."""
    from engine.grid import grid_lock
    from engine.locks import held_alone
    out = tmp_path / "grid"
    argv = ["grid", "--backbones", "mobilenet_v3_large", "--datasets", str(make_dataset(tmp_path / "d", {"train": 4,
            "test": 2})), "--seeds", "0", "--fractions", "1", "--out", str(out), "--no-pretrained",
            "--image-size", "32", "--max-epochs", "1"]
    with held_alone(grid_lock(out), "the grid"):
        refused = run_main(capsys, *argv)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().splitlines()[-1].startswith(
            f"engine: error: the grid folder {out} is in use by another engine process (pid {os.getpid()} on ")
        assert not (out / "mobilenet_v3_large").exists()
        assert run_main(capsys, *argv, "--dry-run").returncode == 0  # reading the plan takes no lock
    assert run_main(capsys, *argv).returncode == 0


def test_a_cell_another_process_is_training_is_left_to_it(tmp_path, capsys):
    """A Slurm array of an earlier launch still running, or a cell started by hand: started again, it would stop
    at its run folder's lock and be recorded as failed. The grid leaves it, names who trains it, and lists it as
    running."""
    from engine.locks import held_alone
    from engine.results import run_lock
    data, out = make_dataset(tmp_path / "d", {"train": 4, "test": 2}), tmp_path / "grid"
    argv = ["grid", "--backbones", "mobilenet_v3_large", "--datasets", str(data), "--seeds", "0,1", "--fractions",
            "1", "--out", str(out), "--no-pretrained", "--image-size", "32", "--max-epochs", "1"]
    busy = expand_cells("mobilenet_v3_large", str(data), "1", "1")[0]
    with held_alone(run_lock(busy.run_dir(out)), "the run folder"):
        plan = run_main(capsys, *argv, "--dry-run")
        assert f"running  {busy.name}" in plan.stdout and "2 cells: 1 running, 1 pending" in plan.stdout
        done = run_main(capsys, *argv)
        assert done.returncode == 0, done.stderr
        assert f"grid: {busy.name} is being trained by pid {os.getpid()} on " in done.stderr
        assert "1 done, 0 failed, 1 being trained by other processes" in done.stderr
        assert cell_status(out, busy) == "running" and not busy.run_dir(out).exists()
    assert cell_status(out, busy) == "pending"  # its holder gone, the next launch trains it


def test_a_cell_killed_by_a_signal_is_reported_as_killed_not_by_its_last_progress_line(tmp_path):
    from engine.grid import failure_reason
    log_file = tmp_path / "cell.log"
    log_file.write_text("12:00:01 epoch   3 adamw loss 0.9 train 61.0 % eval 58.2 % * | 900 img/s\n\n")
    assert failure_reason(-9, log_file) == (
        "killed by SIGKILL (the kernel's out-of-memory killer sends it: was the host's memory full?); its log's last "
        "line: 12:00:01 epoch   3 adamw loss 0.9 train 61.0 % eval 58.2 % * | 900 img/s")
    assert failure_reason(-11, tmp_path / "no.log") == "killed by SIGSEGV"
    log_file.write_text("engine: error: cannot read image x.png\n")
    assert failure_reason(2, log_file) == "engine: error: cannot read image x.png"
    assert failure_reason(1, tmp_path / "no.log") == "exit code 1"


def test_failed_cells_are_reported_and_retried(tmp_path, capsys):
    good = make_dataset(tmp_path / "good", {"train": 6, "test": 2})
    bad = make_dataset(tmp_path / "bad", {"train": 6, "test": 2})
    broken = bad / "train" / "blue" / "blue_001.png"
    broken.write_bytes(b"broken")
    out = tmp_path / "runs"
    args = ["grid", "--backbones", "mobilenet_v3_large", "--datasets", f"{good},{bad}", "--seeds", "0",
            "--out", str(out), "--max-epochs", "1", *FLAGS]
    failed = run_main(capsys, *args)
    assert failed.returncode == 1
    assert f"failed mobilenet_v3_large__bad__f1__s0: engine: error: cannot read image {broken}" in failed.stderr
    # each cell's start names its log, where its epochs are; the grid's own lines only count cells
    assert f"grid: started mobilenet_v3_large__good__f1__s0 (its log: {out / '.grid' / 'logs'}" in failed.stderr
    assert "1 done, 0 running, 0 failed, 1 left; ETA " in failed.stderr
    assert "1 done, 0 running, 1 failed, 0 left\n" in failed.stderr  # nothing left: no ETA
    cells = expand_cells("mobilenet_v3_large", f"{good},{bad}", "0", "1")
    assert [cell_status(out, cell) for cell in cells] == ["done", "failed"]
    record = json.loads((out / ".grid" / "failed" / "mobilenet_v3_large__bad__f1__s0.json").read_text())
    assert record["exit_code"] == 2

    again = run_main(capsys, *args)  # without --retry-failed the failure stands
    assert again.returncode == 1 and [cell_status(out, cell) for cell in cells] == ["done", "failed"]
    make_dataset(tmp_path / "fixed", {"train": 6, "test": 2})
    broken.write_bytes((tmp_path / "fixed" / "train" / "blue" / "blue_001.png").read_bytes())
    retried = run_main(capsys, *args, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert [cell_status(out, cell) for cell in cells] == ["done", "done"]


def test_dry_run_lists_the_plan_and_estimates_it_from_the_profile_store(tmp_path, tiny_dataset, capsys):
    from engine.scheduler import profile_key, save_profile
    store = tmp_path / "profiles.json"
    args = ("grid", "--backbones", "resnet50", "--datasets", f"eurosat,cifar10,{tiny_dataset}", "--seeds", "0,1",
            "--fractions", "1,0.1", "--out", str(tmp_path / "runs"), "--dry-run")
    done = run_main(capsys, *args, env_extra={"ENGINE_PROFILES": str(store)})
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert sum(line.startswith("pending") for line in lines) == 12
    assert not any(line.startswith("estimate") for line in lines)
    assert "no estimate for the cells of resnet50: the profile store has no rate" in done.stdout

    save_profile(profile_key("NVIDIA H100", "resnet50", (256, 256), "bf16", True, True),
                 {"batch_size": 256, "images_per_s": {"128": 900.0, "256": 1000.0}}, store)
    done = run_main(capsys, *args, env_extra={"ENGINE_PROFILES": str(store)})
    # 2 seeds x (EuroSAT's 18900 + CIFAR-10's 50000 training images) x (1 + 0.1) x 40 epochs at 1000 img/s
    assert "estimate: 1.7 GPU-hours for the cells left" in done.stdout
    assert f"no estimate for the cells of {tiny_dataset}: not a built-in dataset" in done.stdout
    assert "resnet50: the profile store" not in done.stdout
    assert "12 cells: 12 pending" in done.stdout

    # BreakHis trains at 448x672: with no rate measured at that size, the 256x256 rate is scaled by the pixels
    breakhis = run_main(capsys, "grid", "--backbones", "resnet50", "--datasets", "breakhis_40x", "--out",
                        str(tmp_path / "runs"), "--dry-run", env_extra={"ENGINE_PROFILES": str(store)})
    # 3 seeds x 1398 images x 40 epochs / (1000 img/s x 256*256 / (448*672)): 0.21 h (unscaled it would be 0.05)
    assert "estimate: 0.2 GPU-hours" in breakhis.stdout


def test_the_grid_prepares_each_builtin_dataset_once_before_any_cell_starts(tmp_path, monkeypatch, capsys):
    """Offline (or a dataset to fetch by hand), one line and exit 2 before any cell starts, not one failure in every
    cell's log; otherwise each built-in dataset is made ready once, with the grid's --data-root and --no-download.
    No test reaches the network: the preparation is replaced."""
    from engine import grid as grid_module
    from engine.errors import UserInputError
    asked, real = [], grid_module.resolve_dataset

    def offline(data, data_root=None, download=True):
        asked.append((data, data_root, download))
        raise UserInputError(f"cannot download {data}: its host name does not resolve")

    monkeypatch.setattr(grid_module, "resolve_dataset", offline)
    out, folder = tmp_path / "runs", make_dataset(tmp_path / "tiny", {"train": 4, "test": 2})
    refused = run_main(capsys, "grid", "--backbones", "mobilenet_v3_large,shufflenet_v2_x2_0", "--datasets",
                       "eurosat,dtd", "--seeds", "0,1", "--out", str(out), "--no-pretrained")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "engine: error: cannot download eurosat: its host name does not resolve")
    assert asked == [("eurosat", None, True)] and not out.exists()

    monkeypatch.setattr(grid_module, "resolve_dataset", real)
    cells = expand_cells("mobilenet_v3_large,shufflenet_v2_x2_0", f"eurosat,dtd,{folder}", "0,1", "1")
    monkeypatch.setattr(grid_module, "resolve_dataset", lambda *args: asked.append(args))
    grid_module.prepare_datasets(cells, out, {"data_root": str(tmp_path / "data"), "download": True})
    assert asked[1:] == [("eurosat", str(tmp_path / "data"), True), ("dtd", str(tmp_path / "data"), True)]


def test_the_grid_names_every_dataset_the_user_must_prepare_before_any_download(tmp_path, capsys):
    """Datasets only the user can make ready (fetched by hand, or to download under --no-download) are named
    together, before anything is downloaded, so that one round of preparing finds them all; --dry-run names them."""
    data_root = tmp_path / "data"
    args = ["grid", "--backbones", "mobilenet_v3_large", "--seeds", "0", "--out", str(tmp_path / "runs"),
            "--no-pretrained", "--data-root", str(data_root)]
    both = run_main(capsys, *args, "--datasets", "neu,eurosat,demo", "--no-download")
    assert both.returncode == 2 and both.stderr.strip() == (
        f"engine: error: 2 datasets of this grid are not prepared in {data_root}: neu, eurosat; `engine data "
        f"prepare NAME --root {data_root}` prepares each, or says where to get it")
    planned = run_main(capsys, *args, "--datasets", "neu,eurosat,demo", "--no-download", "--dry-run")
    assert planned.returncode == 0 and planned.stdout.strip().splitlines()[-1] == (
        f"not prepared in {data_root}, and the grid cannot fetch them: neu, eurosat (`engine data prepare NAME "
        f"--root {data_root}` prepares each, or says where to get it)")
    one = run_main(capsys, *args, "--datasets", "eurosat,neu")  # eurosat could be downloaded; neu is said first
    assert one.returncode == 2 and one.stderr.strip().startswith(f"engine: error: neu is not prepared in {data_root}: "
                                                                 f"download NEU-CLS")
    assert not (data_root / "eurosat").exists() and not (data_root / "demo").exists()


def test_the_grid_fetches_each_backbones_weights_once_before_any_cell_starts(tmp_path, monkeypatch, capsys):
    """Offline, one line and exit 2 before any cell starts (not one failure per cell); cached weights are not
    fetched again; --no-pretrained and --weights fetch nothing. No test reaches the network: the download is
    replaced, and each test has an empty torch hub cache of its own."""
    from engine import grid as grid_module
    from engine.cli import main
    from engine.errors import WeightsUnavailableError
    from engine.models import get_backbone_spec, hub_cache_path
    fetched = []

    def offline(url):
        fetched.append(url)
        raise WeightsUnavailableError(f"pretrained weights not in the cache and not downloadable; download {url}")

    monkeypatch.setattr(grid_module, "load_pretrained_state", offline)
    data, out = make_dataset(tmp_path / "tiny", {"train": 4, "test": 2}), tmp_path / "runs"
    args = ["grid", "--backbones", "mobilenet_v3_large,shufflenet_v2_x2_0", "--datasets", str(data), "--seeds",
            "0,1", "--out", str(out), "--max-epochs", "1", "--image-size", "32"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("engine: error")]
    assert exited.value.code == 2 and len(errors) == 1 and "not downloadable" in errors[0]
    assert fetched == [get_backbone_spec("mobilenet_v3_large").weights_url] and not out.exists()

    cells = expand_cells("mobilenet_v3_large,shufflenet_v2_x2_0", str(data), "0,1", "1")
    params = {"pretrained": True, "weights": None}
    cached = hub_cache_path(get_backbone_spec("mobilenet_v3_large").weights_url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.setattr(grid_module, "load_pretrained_state", fetched.append)
    grid_module.fetch_pretrained_weights(cells, out, params)
    assert fetched[1:] == [get_backbone_spec("shufflenet_v2_x2_0").weights_url]  # once, the one not cached
    for asked in ({"pretrained": False, "weights": None}, {"pretrained": True, "weights": "w.pt"}):
        grid_module.fetch_pretrained_weights(cells, out, asked)
    assert len(fetched) == 2


def test_the_submitit_path_runs_a_job_array_locally(tmp_path, capsys):
    pytest.importorskip("submitit")
    good = make_dataset(tmp_path / "good", {"train": 6, "test": 2})
    bad = make_dataset(tmp_path / "bad", {"train": 6, "test": 2})
    (bad / "train" / "red" / "red_000.png").write_bytes(b"broken")
    out = tmp_path / "runs"
    args = ["grid", "--backbones", "mobilenet_v3_large", "--datasets", f"{good},{bad}", "--seeds", "0",
            "--out", str(out), "--launcher", "submitit-local", "--max-epochs", "1", *FLAGS]
    done = run_main(capsys, *args)
    assert done.returncode == 1  # the broken dataset's cell failed; the other finished
    cells = expand_cells("mobilenet_v3_large", f"{good},{bad}", "0", "1")
    assert [cell_status(out, cell) for cell in cells] == ["done", "failed"]
    assert list((out / ".grid" / "submitit").iterdir())  # submitit's own job folders
    stamp = next(out.rglob("result.json")).stat().st_mtime_ns
    again = run_main(capsys, *args)
    assert "0 to submit" in again.stderr and next(out.rglob("result.json")).stat().st_mtime_ns == stamp


def test_local_launcher_packs_cells_per_gpu_as_the_profile_store_says(tmp_path, monkeypatch):
    from engine import grid, scheduler
    monkeypatch.setenv("ENGINE_PROFILES", str(tmp_path / "profiles.json"))
    monkeypatch.setattr(grid.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(grid.torch.cuda, "get_device_name", lambda *args: "FakeGPU")
    for backbone, concurrency in (("mobilenet_v3_large", 3), ("shufflenet_v2_x2_0", 2)):
        scheduler.save_profile(scheduler.packing_key("FakeGPU", backbone, (64, 64)),  # the demo's size
                               {"concurrency": concurrency, "batch_size": 128})
    small = expand_cells("mobilenet*,shufflenet*", "demo", "0", "1")
    slots = grid._worker_slots(small, ["--no-pretrained"])
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0", "0", "1", "1"]  # the smaller count wins
    assert {float(slot["ENGINE_MEMORY_SHARE"]) for slot in slots} == {0.5}  # each cell sized for half a card
    solo = grid._worker_slots(expand_cells("resnet50,mobilenet*", "demo", "0", "1"), ["--no-pretrained"])
    assert len(solo) == 2 and {float(slot["ENGINE_MEMORY_SHARE"]) for slot in solo} == {1.0}  # nothing stored
    # measured at the demo's 64 px: cells trained at another size are not packed on its word
    for flags in (["--image-size", "256"], ["--image-size=256x256"], FLAGS):
        assert len(grid._worker_slots(small, flags)) == 2
    scheduler.save_profile(scheduler.packing_key("FakeGPU", "mobilenet_v3_large", (256, 256)), {"concurrency": 2})
    assert len(grid._worker_slots(expand_cells("mobilenet*", "demo", "0", "1"), ["--image-size", "256"])) == 4


def test_local_cells_train_on_the_gpus_the_user_left_visible(tmp_path, monkeypatch):
    from engine import grid
    monkeypatch.setenv("ENGINE_PROFILES", str(tmp_path / "profiles.json"))  # nothing packed
    monkeypatch.setattr(grid.torch.cuda, "get_device_name", lambda *args: "FakeGPU")
    monkeypatch.setattr(grid.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5, 7")
    cells = expand_cells("mobilenet*", "demo", "0", "1")
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in grid._worker_slots(cells, [])] == ["5", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(grid.torch.cuda, "device_count", lambda: 5)
    # cells of `--gpus 2` each get two GPUs of their own, the odd one is left idle (and said so)
    slots = grid._worker_slots(cells, grid.with_cell_gpus(["--gpus", "2"], gpus_per_task=1))
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0,1", "2,3"]
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in grid._worker_slots(cells, ["--gpus=5"])] == ["0,1,2,3,4"]
    with pytest.raises(UserInputError, match="each cell trains on 6 GPUs .* shows 5"):
        grid._worker_slots(cells, grid.with_cell_gpus([], gpus_per_task=6))
    assert grid._worker_slots(cells, ["--device", "cpu", "--gpus", "6"]) == [{}]  # CPU processes: one cell at a time


@pytest.mark.parametrize("flags, says", [
    (["--runs", "3"], "engine grid takes no --runs: each cell's seed comes from --seeds (--seeds 0,1,2 for --runs 3)"),
    (["--seed=3"], "engine grid takes no --seed: each cell's seed comes from --seeds"),
    (["--no-pretrained", "--backbone", "resnet50"], "engine grid takes no --backbone: each cell's backbone comes "
                                                    "from --backbones"),
    (["--force"], "engine grid takes no --force: the grid skips finished cells and resumes killed ones; to train "
                  "cells again, remove their run folders or give another --out"),
])
def test_grid_refuses_the_train_flags_it_sets_for_each_cell(tmp_path, capsys, flags, says):
    result = run_main(capsys, "grid", "--backbones", "mobilenet_v3_large", "--datasets", "demo", "--seeds", "0",
                      "--out", str(tmp_path), "--dry-run", *flags)
    assert (result.returncode, result.stderr.strip()) == (2, f"engine: error: {says}")


def test_grid_gpus_per_cell_is_one_setting(tmp_path, capsys):
    from engine import grid
    assert grid.with_cell_gpus(["--max-epochs", "5"], gpus_per_task=1) == ["--max-epochs", "5"]
    assert grid.with_cell_gpus(["--gpus", "3"], gpus_per_task=3) == ["--gpus", "3"]  # named once
    assert grid.gpus_per_cell(grid.with_cell_gpus([], gpus_per_task=4)) == 4
    result = run_main(capsys, "grid", "--backbones", "mobilenet_v3_large", "--datasets", "demo", "--seeds", "0",
                      "--out", str(tmp_path), "--gpus-per-task", "4", "--gpus", "2", "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == ("engine: error: --gpus-per-task 4 and --gpus 2 disagree on the GPUs a cell "
                                     "trains on; give one of them")
    zero = run_main(capsys, "grid", "--backbones", "mobilenet_v3_large", "--datasets", "demo", "--seeds", "0",
                    "--out", str(tmp_path), "--gpus-per-task", "4", "--gpus", "0", "--dry-run")
    assert zero.returncode == 2 and zero.stderr.strip() == (
        "engine: error: Invalid value for '--gpus': 0 is not in the range x>=1. (see `engine train --help`)")


def test_slurm_cells_with_several_gpus_train_on_all_of_them(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from engine import grid

    submitted = {}

    class RecordingExecutor:  # no Slurm here: record what would be submitted
        def __init__(self, folder, cluster):
            submitted["cluster"] = cluster

        def update_parameters(self, **parameters):
            submitted["parameters"] = parameters

        def submit_array(self, tasks):
            submitted["tasks"] = tasks
            return []

    monkeypatch.setattr(submitit, "AutoExecutor", RecordingExecutor)
    cells = expand_cells("mobilenet_v3_large,resnet50", "demo", "0", "1")
    flags = grid.with_cell_gpus(["--max-epochs", "5"], gpus_per_task=4)
    grid.submit_grid(cells, tmp_path, flags, "slurm", partition="gpu")
    assert submitted["cluster"] == "slurm"
    assert submitted["parameters"]["gpus_per_node"] == 4 and submitted["parameters"]["slurm_partition"] == "gpu"
    commands = [task.cell.command(task.out, task.train_flags) for task in submitted["tasks"]]
    assert len(commands) == 2 and all(command[-4:] == ["--max-epochs", "5", "--gpus", "4"] for command in commands)
