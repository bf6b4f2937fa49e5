"""`engine` as a user runs it: subprocesses, real run folders, bad input, kills and resumption."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine.cli import main
from engine.errors import UserInputError
from engine.results import read_metrics
from tests.conftest import make_dataset, run_engine, run_main

FAST = ["--backbone", "mobilenet_v3_large", "--no-pretrained", "--image-size", "32", "--batch-size", "8"]


def run_folder(out, dataset="tiny", fraction="1", seed=0, backbone="mobilenet_v3_large"):
    return out / backbone / dataset / f"f{fraction}" / f"s{seed}"


def test_train_writes_a_complete_run_folder_and_skips_a_finished_run(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    done = run_engine("train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    folder = run_folder(out)
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "config.json", "files.json", "metrics.csv",
                                                        "result.json", "train.log"]
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "finished" and result["epochs"] == 2 and result["stop_reason"] == "max_epochs"
    assert 0 <= result["test_acc"] <= 100 and result["test_acc"] == result["best_acc"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["backbone"], config["num_classes"], config["image_size"]) == ("mobilenet_v3_large", 3, [32, 32])
    assert (config["batch_size"], config["precision"], config["device"]) == (8, "fp32", "cpu")
    assert (config["compile_mode"], config["compile_mode_reason"]) == ("default", "auto: not compiled")
    assert config["counts"] == {"train": 36, "selection": 12, "test": 12}
    rows = read_metrics(folder / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert set(rows[0]) >= {"phase", "lr", "train_loss", "train_acc", "eval_acc", "images_per_s", "epoch_s"}
    rates = [float(row["images_per_s"]) for row in rows]
    assert result["images_per_s"] == pytest.approx(sum(rates) / 2, abs=1e-2)  # the median of two epochs

    again = run_main(capsys, "train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "2", "--out", str(out))
    assert again.returncode == 0 and "is finished" in again.stderr and "epoch   1" not in again.stderr
    # how it is computed may change (a batch the autotuner picks on another machine): still the same run;
    # what it answers may not: another size, or a cap that would have let it train on (in this process: quicker)
    for changed, code, said in ((["--batch-size", "4"], 0, ""),
                                (["--image-size", "48"], 2, "image_size [32, 32] -> [48, 48]"),
                                (["--max-epochs", "3"], 2, "max_epochs 2 -> 3, and it stopped after 2 epochs")):
        with pytest.raises(SystemExit) as exited:
            main(["train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "2", "--out", str(out), *changed])
        refusal = capsys.readouterr().err
        assert exited.value.code == code and said in refusal
        assert ("holds a finished run of another experiment" in refusal and "--force" in refusal) == (code == 2)
    forced = run_main(capsys, "train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--out", str(out),
                      "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((folder / "result.json").read_text())["epochs"] == 1


def test_a_finished_run_answers_only_for_the_files_it_trained_on(tmp_path, capsys):
    """/a/tiny and /b/tiny share run folders (the folder's name names the dataset): the second is refused, not
    skipped with the first's number. The same files moved elsewhere are the same run."""
    out = tmp_path / "runs"
    first = make_dataset(tmp_path / "a" / "tiny", {"train": 4, "test": 2})
    args = ["train", *FAST, "--max-epochs", "1", "--out", str(out), "--data"]
    assert run_main(capsys, *args, str(first)).returncode == 0
    other = make_dataset(tmp_path / "b" / "tiny", {"train": 5, "test": 2})
    refused = run_main(capsys, *args, str(other))
    assert refused.returncode == 2 and "holds a finished run of another experiment (train files: 0 of the run's " \
        f"are not among those this command takes from {other}, 3 are new (e.g. train/blue/blue_004.png))" \
        in refused.stderr
    moved = tmp_path / "c" / "tiny"
    moved.parent.mkdir()
    first.rename(moved)
    skipped = run_main(capsys, *args, str(moved))
    assert skipped.returncode == 0 and "is finished (test accuracy" in skipped.stderr


def test_bf16_autocast_trains_on_the_cpu(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    done = run_main(capsys, "train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--precision", "bf16",
                    "--no-channels-last", "--out", str(out))
    assert done.returncode == 0, done.stderr
    config = json.loads((run_folder(out) / "config.json").read_text())
    assert config["precision"] == "bf16" and config["channels_last"] is False
    assert json.loads((run_folder(out) / "result.json").read_text())["status"] == "finished"


def test_runs_trains_each_seed_and_summarises(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    done = run_main(capsys, "train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--runs", "2",
                    "--fraction", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "mobilenet_v3_large" / "tiny" / "f0.5" / "summary.json").read_text())
    accuracies = [json.loads((run_folder(out, fraction="0.5", seed=s) / "result.json").read_text())["test_acc"]
                  for s in (0, 1)]
    assert summary["seeds"] == [0, 1] and summary["best_acc"] == max(accuracies)
    assert summary["mean_acc"] == pytest.approx(sum(accuracies) / 2)
    files = [json.loads((run_folder(out, fraction="0.5", seed=s) / "files.json").read_text()) for s in (0, 1)]
    assert files[0]["train"] != files[1]["train"]  # each seed draws its own half
    assert files[0]["test"] == files[1]["test"]


def test_fraction_run_uses_the_same_files_for_the_same_seed(tiny_dataset, tmp_path, capsys):
    chosen = []
    for attempt in range(2):
        out = tmp_path / f"runs{attempt}"
        done = run_main(capsys, "train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--fraction",
                        "0.1", "--seed", "3", "--out", str(out))
        assert done.returncode == 0, done.stderr
        chosen.append(json.loads((run_folder(out, fraction="0.1", seed=3) / "files.json").read_text())["train"])
    assert chosen[0] == chosen[1]
    assert sorted(path.split("/")[1] for path in chosen[0]) == ["blue", "green", "red"]  # one per class
    assert "batch 3 (the whole training set; 8 asked)" in done.stderr  # what a step takes, not what was asked


def test_select_on_val_reports_the_test_accuracy_of_the_selected_epoch(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    done = run_main(capsys, "train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "2", "--select-on", "val",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr
    folder = run_folder(out)
    result = json.loads((folder / "result.json").read_text())
    files = json.loads((folder / "files.json").read_text())
    assert result["select_on"] == "val" and "test accuracy of the epoch selected on validation" in done.stderr
    assert not set(files["train"]) & set(files["selection"]) and len(files["selection"]) == 3
    assert all(path.startswith("test/") for path in files["test"])


def wait_for(condition, timeout, process):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_process_forked_from_the_engine_dies_of_sigterm_as_before():
    """A DataLoader worker inherits the engine's SIGTERM handler when it is forked: there SIGTERM must end the
    process as it always did (killed by the signal), not raise the engine's Terminated with a traceback."""
    from engine.cli import _raise_terminated
    from engine.errors import Terminated
    previous = signal.signal(signal.SIGTERM, _raise_terminated(os.getpid()))
    try:
        child = os.fork()
        if child == 0:  # the forked process: SIGTERM to itself; if the handler raised, it would exit with 1
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        with pytest.raises(Terminated):  # in the engine's own process it unwinds
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("stop, exit_code, says", [
    (signal.SIGKILL, -signal.SIGKILL, ""),
    # kill, scancel, a Slurm time limit: unwound as after Ctrl-C, in one line, not a silent death
    (signal.SIGTERM, 143, "engine: stopped (SIGTERM); rerun the same command to continue"),
])
def test_killed_run_resumes_from_its_last_finished_epoch(tmp_path, capsys, stop, exit_code, says):
    data = make_dataset(tmp_path / "bigger", {"train": 60, "test": 10})
    out = tmp_path / "runs"
    args = ["train", *FAST, "--data", str(data), "--max-epochs", "4", "--out", str(out)]
    folder = run_folder(out, dataset="bigger")
    process = subprocess.Popen([sys.executable, "-m", "engine", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    # Kill in the middle of epoch 2: after epoch 1's checkpoint exists, before epoch 2's does.
    wait_for(lambda: (folder / "metrics.csv").exists() and len(read_metrics(folder / "metrics.csv")) == 1,
             300, process)
    time.sleep(0.5)
    os.kill(process.pid, stop)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == exit_code and stderr.strip().splitlines()[-1].endswith(says), stderr
    assert "Traceback" not in stderr
    rows_before = read_metrics(folder / "metrics.csv")
    assert len(rows_before) == 1, "the kill came too late to fall inside epoch 2"
    assert not (folder / "result.json").exists()

    resumed = run_main(capsys, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1 " in resumed.stderr and "epoch   1 " not in resumed.stderr
    rows = read_metrics(folder / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert rows[0] == rows_before[0]
    assert json.loads((folder / "result.json").read_text())["epochs"] == 4
    assert not (folder / "last.pt").exists()


def test_a_run_folder_another_process_trains_in_is_refused_until_that_process_ends(tiny_dataset, tmp_path, capsys):
    """Two processes in one run folder would rewrite each other's metrics and checkpoints: the second stops in one
    line naming the first. The lock dies with its holder, even by SIGKILL: the rerun trains."""
    argv = ["train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--out", str(tmp_path / "runs")]
    lock = run_folder(tmp_path / "runs").parent / ".s0.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from engine.locks import held_alone\n"
                               "with held_alone(Path(sys.argv[1]), 'the folder'): print('held', flush=True); "
                               "time.sleep(600)", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        refusal = one_line_error(capsys, *argv)
        assert refusal.startswith(f"engine: error: the run folder {run_folder(tmp_path / 'runs')} is in use by "
                                  f"another engine process (pid {holder.pid} on ")
        assert refusal.endswith("; wait for it to end, or stop it, then rerun")
    finally:
        holder.kill()
        holder.wait()
    assert run_main(capsys, *argv).returncode == 0
    assert (run_folder(tmp_path / "runs") / "result.json").exists()


def test_a_damaged_run_file_is_one_line_naming_it(tiny_dataset, tmp_path, capsys):
    """A result.json cut short (a full disk, an edit by hand), a damaged checkpoint and a profile store that is not
    JSON: one line each, naming the file."""
    argv = ["train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--out", str(tmp_path / "runs")]
    assert run_main(capsys, *argv).returncode == 0
    result = run_folder(tmp_path / "runs") / "result.json"
    result.write_text('{"status": "fini')
    assert one_line_error(capsys, *argv).startswith(f"engine: error: {result} is not valid JSON (")
    result.unlink()
    (result.parent / "last.pt").write_bytes(b"PK\x03\x04 cut short")  # a checkpoint a disk fault damaged
    damaged = one_line_error(capsys, *argv)
    assert damaged.startswith(f"engine: error: {result.parent / 'last.pt'} is not a readable checkpoint (")
    assert damaged.endswith("); rerun with --force to train the run from the start")
    assert run_main(capsys, *argv, "--force").returncode == 0
    store = tmp_path / "profiles.json"
    store.write_text("{not json")
    grid = run_main(capsys, "grid", "--backbones", "resnet50", "--datasets", "dtd", "--out", str(tmp_path / "g"),
                    "--dry-run", env_extra={"ENGINE_PROFILES": str(store)})
    assert grid.returncode == 2 and grid.stderr.strip().splitlines()[-1] == (
        f"engine: error: {store} is not valid JSON (Expecting property name enclosed in double quotes: line 1 "
        f"column 2 (char 1)); fix it, or remove it")


def test_a_filesystem_without_locks_trains_and_says_it_cannot_lock(tiny_dataset, tmp_path, capsys, monkeypatch):
    """Lustre mounted without flock answers ENOSYS: the run goes on, and says what is not prevented."""
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    done = run_main(capsys, "train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--out",
                    str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    assert "(Function not implemented): nothing stops a second process from working on the run folder" in done.stderr


def test_a_path_the_engine_cannot_write_is_one_line_naming_it(tiny_dataset, tmp_path, capsys, monkeypatch):
    """--out under a file, and a disk that fills up mid-run: one line naming the path and what to do, not a
    traceback; after the full disk, the rerun continues the run."""
    (tmp_path / "a_file").write_text("")
    argv = ["train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "3"]
    refusal = one_line_error(capsys, *argv, "--out", str(tmp_path / "a_file" / "runs"))
    assert refusal.startswith("engine: error: Not a directory: ") and str(tmp_path / "a_file") in refusal
    assert refusal.endswith("; a file stands where a folder must")

    import errno

    from engine import trainer
    write_metrics = trainer.write_metrics

    def full_disk_at_epoch_2(path, rows):
        if len(rows) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_metrics(path, rows)

    monkeypatch.setattr(trainer, "write_metrics", full_disk_at_epoch_2)
    full = one_line_error(capsys, *argv, "--out", str(tmp_path / "runs"))
    assert full == (f"engine: error: No space left on device: {run_folder(tmp_path / 'runs') / 'metrics.csv'}; free "
                    f"some space, then rerun the same command to continue")
    monkeypatch.setattr(trainer, "write_metrics", write_metrics)
    resumed = run_main(capsys, *argv, "--out", str(tmp_path / "runs"))  # epoch 2's checkpoint came before the csv
    assert resumed.returncode == 0 and "resuming after epoch 2 " in resumed.stderr
    assert [int(row["epoch"]) for row in read_metrics(run_folder(tmp_path / "runs") / "metrics.csv")] == [1, 2, 3]


@pytest.mark.parametrize("stopped, epochs, cap, same", [
    ("patience", 25, None, True), ("patience", 25, 25, True), ("patience", 25, 40, True), ("patience", 25, 24, False),
    ("max_epochs", 10, 10, True), ("max_epochs", 10, 11, False), ("max_epochs", 10, None, False),
    ("max_epochs", 10, 9, False)])
def test_a_finished_run_answers_a_cap_that_would_have_stopped_it_where_it_stopped(tmp_path, stopped, epochs, cap,
                                                                                   same):
    from engine.results import write_json
    from engine.run import finished_run_differences
    write_json(tmp_path / "config.json", {"max_epochs": epochs if stopped == "max_epochs" else None, "patience": 10})
    finished = {"status": "finished", "epochs": epochs, "stop_reason": stopped}
    assert (finished_run_differences(tmp_path, finished, {"patience": 10}, cap) == []) is same
    assert finished_run_differences(tmp_path, finished, {"patience": 5}, epochs) == ["patience 10 -> 5"]


def test_a_run_that_stopped_before_its_first_checkpoint_starts_over_with_the_corrected_command(
        tiny_dataset, tmp_path, capsys):
    """A mistyped --weights path stops the run after its folder and config.json are written: rerun without the
    typo, it trains rather than refusing "other settings" that have nothing to resume."""
    out = tmp_path / "runs"
    (tmp_path / "typo.pt").write_text("not weights")
    argv = ["train", *FAST, "--data", str(tiny_dataset), "--max-epochs", "1", "--out", str(out)]
    assert "is not a readable torch state dict" in one_line_error(capsys, *argv, "--weights", str(tmp_path / "typo.pt"))
    assert (run_folder(out) / "config.json").exists() and not (run_folder(out) / "last.pt").exists()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0, capsys.readouterr().err
    assert json.loads((run_folder(out) / "result.json").read_text())["status"] == "finished"


def test_resuming_with_other_settings_is_refused(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    folder = run_folder(out)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"batch_size": 16}))
    (folder / "last.pt").write_bytes(b"")  # an epoch's checkpoint: there is something to resume
    refusal = one_line_error(capsys, "train", *FAST, "--data", str(tiny_dataset), "--out", str(out))
    assert "holds an unfinished run with other settings (" in refusal and "batch_size 16 -> 8" in refusal
    assert "--force" in refusal


def test_a_run_from_before_compile_modes_resumes_and_a_new_mode_does_not_change_what_is_computed(caplog):
    """--compile-mode changes how fast the step runs, not what it computes: a run killed under one mode resumes
    under another, and a config.json written before the option existed still matches."""
    from engine.config import RunConfig, resolve_compile_mode
    config = RunConfig(backbone="resnet50", data="demo", dataset="demo", data_path="/d", image_size=(64, 64),
                       augment=True, compile=True, compile_mode="reduce-overhead")
    saved = {key: value for key, value in config.to_json().items()
             if key not in ("compile_mode", "compile_mode_reason")}
    assert config.differences(saved) == []
    with pytest.raises(UserInputError, match="one GPU only"):
        resolve_compile_mode("reduce-overhead", True, "cuda", world_size=2)
    no_graphs = "max-autotune-no-cudagraphs"
    assert resolve_compile_mode(no_graphs, True, "cuda", world_size=2) == no_graphs
    with caplog.at_level("WARNING", logger="engine"):
        assert resolve_compile_mode("reduce-overhead", True, "cpu", world_size=1) == "reduce-overhead"
    assert "CUDA graphs need a GPU" in caplog.text  # said, not silently compiled another way


def one_line_error(capsys, *argv):
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("engine: error")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("flags, expected", [
    (["--backbone", "resnet51"], "unknown backbone 'resnet51'; valid backbones: resnet50"),
    (["--fraction", "0"], "Invalid value for '--fraction'"),
    (["--fraction", "1.5"], "Invalid value for '--fraction'"),
    (["--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["--image-size", "abc"], "image size 'abc' is not a positive integer or HxW"),
    (["--image-size", "0x64"], "image size '0x64' is not a positive integer or HxW"),
    (["--backbone", "convnext_tiny", "--image-size", "16"], "convnext_tiny needs image sides of at least 32 px"),
    (["--seed", "1", "--runs", "3"], "--seed and --runs exclude each other"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
    (["--weights", "no_such_file.pt"], "no_such_file.pt does not exist"),
    (["--compile-mode", "reduce-overhead", "--no-compile"], "--compile-mode reduce-overhead needs --compile"),
])
def test_bad_flags_fail_with_one_line(capsys, tiny_dataset, tmp_path, flags, expected):
    argv = ["train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"),
            "--no-pretrained", *flags]
    assert expected in one_line_error(capsys, *argv)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, command", [
    (["data", "prepare", "neu", "--no-such-flag"], "engine data prepare"),
    (["train", "--backbone", "resnet50"], "engine train"),
    (["--no-such-flag"], "engine"),
])
def test_a_usage_error_points_to_its_own_commands_help(capsys, argv, command):
    assert one_line_error(capsys, *argv).endswith(f"(see `{command} --help`)")


def test_a_flag_of_another_command_is_named_as_theirs(capsys):
    line = one_line_error(capsys, "profile", "--backbone", "resnet50", "--no-pretrained")
    assert line == ("engine: error: No such option '--no-pretrained'. (`engine train` takes it; see "
                    "`engine profile --help`)")
    line = one_line_error(capsys, "train", "--backbone", "resnet50", "--data", "demo", "--packing")
    assert line.endswith("(`engine profile` takes it; see `engine train --help`)")
    assert "takes it" not in one_line_error(capsys, "train", "--backbone", "resnet50", "--no-such-flag")


def test_bad_dataset_folders_fail_with_one_line(capsys, tmp_path):
    argv = ["train", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--out", str(tmp_path / "r"), "--data"]
    assert "no folder at that path" in one_line_error(capsys, *argv, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "is empty" in one_line_error(capsys, *argv, str(tmp_path / "empty"))
    make_dataset(tmp_path / "hollow", {"train": 2, "test": 2})
    (tmp_path / "hollow" / "train" / "yellow").mkdir()
    assert "train/yellow has no images" in one_line_error(capsys, *argv, str(tmp_path / "hollow"))
    assert not (tmp_path / "r").exists()


def test_a_runs_rate_is_its_median_epochs_so_a_compile_does_not_pull_it_down():
    from engine.run import typical_rate
    first_compiled = [{"images_per_s": 0.56}, {"images_per_s": 130.0}, {"images_per_s": 128.0}]
    assert typical_rate(first_compiled) == 128.0  # the mean would read 86.2


def test_unreadable_image_fails_naming_the_file_and_leaves_no_result(tiny_dataset, tmp_path):
    bad = tiny_dataset / "train" / "green" / "green_005.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "runs"
    failed = run_engine("train", *FAST, "--data", str(tiny_dataset), "--out", str(out), "--workers", "1")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == f"engine: error: cannot read image {bad}: " \
        f"cannot identify image file '{bad}'"
    assert not list(out.rglob("result.json"))


def test_offline_pretrained_says_where_to_put_the_weights(tiny_dataset, tmp_path):
    # A proxy on a closed loopback port makes the download fail at once without leaving this machine.
    closed = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    failed = run_engine("train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--out",
                        str(tmp_path / "r"), env_extra=closed)
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("engine: error: pretrained weights not in the cache")
    assert "mobilenet_v3_large-" in last and "hub/checkpoints" in last and "--no-pretrained" in last


def test_listing_commands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["backbones"])
    assert exited.value.code == 0
    table = capsys.readouterr().out
    # counted from the models (on the meta device, or the CPU for RegNet): the paper's Table 2 counts
    import csv
    from pathlib import Path

    import engine
    paper = {row["backbone"]: row["params_m"] for row in
             csv.DictReader(open(Path(engine.__file__).parent / "paper" / "backbones.csv"))}
    listed = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    assert listed == paper and listed["regnet_y_3_2gf"] == "19.4"
    with pytest.raises(SystemExit):
        main(["datasets"])
    assert "demo" in capsys.readouterr().out


def test_datasets_says_which_dataset_another_process_is_preparing(tmp_path, capsys):
    from engine.loaders.prepare import preparation_lock
    from engine.locks import held_in_turn
    with held_in_turn(preparation_lock(tmp_path, "eurosat"), "preparing eurosat"):
        listed = run_main(capsys, "datasets", "--data-root", str(tmp_path))
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert f"being prepared (pid {os.getpid()} on " in rows["eurosat"]
    assert "being prepared" not in rows["dtd"] and " no " in rows["dtd"]


def test_a_run_trains_and_selects_on_the_training_stream(tiny_dataset, tmp_path, monkeypatch):
    """`engine train` runs its epochs (and a val-selected run its test pass) inside trainer.training_stream, the
    stream of its own that a GPU run trains on (on the CPU that context changes nothing, so it is recorded here)."""
    from contextlib import contextmanager

    from engine import run
    from engine.trainer import Fit, ProtocolState

    inside = []

    @contextmanager
    def recording_stream(device):
        inside.append(True)
        yield
        inside.append(False)

    seen = []
    monkeypatch.setattr(run, "training_stream", recording_stream)
    monkeypatch.setattr(run, "fit", lambda *args, **kwargs: seen.append(("fit", inside[-1])) or Fit(
        ProtocolState(best_acc=50.0, best_epoch=1, epoch=1, stop_reason="max_epochs"), [{"images_per_s": 1.0}], 1.0))
    monkeypatch.setattr(run, "load_best", lambda model, run_dir: None)
    monkeypatch.setattr(run, "evaluate", lambda *args: seen.append(("test", inside[-1])) or 40.0)
    config, index = run.prepare_run(backbone="mobilenet_v3_large", data=str(tiny_dataset), image_size=(32, 32),
                                    device="cpu", pretrained=False, select_on="val", out=str(tmp_path))
    assert run.train_run(config, index)["test_acc"] == 40.0
    assert seen == [("fit", True), ("test", True)] and inside[-1] is False
