"""One run on several processes (DDP over gloo on the CPU): sharding, equivalence with one process, the run folder."""
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from engine import distributed
from engine.distributed import Shard
from engine.loaders import PIPELINES, dali_available, scan_dataset
from engine.results import read_metrics
from engine.trainer import load_best, make_precision, train_one_epoch
from tests.conftest import REPO, make_shaded_dataset, write_image


@pytest.fixture
def shaded_dataset(tmp_path):
    """Every image recognisable from its pixels, so a batch tells which files it holds."""
    return make_shaded_dataset(tmp_path / "d", {"train": 11, "test": 5}, side=16, darkest=0.4)


def pipeline(kind, index, samples, train, shard, batch_size=4, seed=0, augment=False, **options):
    """The loader `kind` on the CPU as rank `shard`; `options`: its own settings (DALI's augmenter, say)."""
    return PIPELINES[kind](index, samples, image_size=(16, 16), augment=augment, batch_size=batch_size, train=train,
                           device=torch.device("cpu"), seed=seed, workers=1, channels_last=True, shard=shard,
                           **options)


def signatures(batches, epoch):
    """Per batch, the (rounded mean colour, label) of each image: which files the batch holds."""
    return [[(*torch.round(image.mean(dim=(1, 2)) * 50).int().tolist(), int(label))
             for image, label in zip(images, labels)] for images, labels in batches.epoch(epoch)]


@pytest.mark.parametrize("size, world", [(10, 2), (11, 2), (11, 3), (2, 3), (600, 4)])
def test_shares_are_equal_for_training_and_exact_for_evaluation(size, world):
    training = [Shard(rank, world).take(list(range(size)), train=True) for rank in range(world)]
    assert len({len(share) for share in training}) == 1  # the same number of steps on every rank
    flat = sorted(p for share in training for p in share)
    assert flat == sorted(set(flat)) and len(flat) == size - size % world
    evaluation = [Shard(rank, world).take(range(size), train=False) for rank in range(world)]
    assert sorted(p for share in evaluation for p in share) == list(range(size))
    assert [Shard(rank, world).size(size, False) for rank in range(world)] == [len(s) for s in evaluation]


LOADERS = ["torch", "resident", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(),
                                                                            reason="DALI is not installed"))]


@pytest.mark.parametrize("kind", LOADERS)
def test_every_loader_shares_an_epoch_out_across_ranks(shaded_dataset, kind):
    index = scan_dataset(shaded_dataset)
    shards = [Shard(0, 2), Shard(1, 2)]
    everything = sorted(s for batch in signatures(pipeline(kind, index, index.test, False, Shard()), 0)
                        for s in batch)
    assert len(set(everything)) == len(index.test) == 15  # every test image is recognisable
    evaluation = [pipeline(kind, index, index.test, False, shard) for shard in shards]
    seen = [s for batches in evaluation for batch in signatures(batches, 0) for s in batch]
    assert sorted(seen) == everything  # every test image exactly once, over both ranks
    assert [batches.num_images for batches in evaluation] == [8, 7]
    training = [pipeline(kind, index, index.train, True, shard) for shard in shards]
    shares = []
    for epoch in (1, 2):  # DALI reshuffles after the first epoch: across both shards
        epochs = [signatures(batches, epoch) for batches in training]
        assert [len(e) for e in epochs] == [len(batches) for batches in training] == [4, 4]  # 33 // 2 // 4
        assert all(len(batch) == 4 for e in epochs for batch in e)
        first, second = ({s for batch in e for s in batch} for e in epochs)
        assert not first & second  # no image on both ranks within an epoch
        shares.append(first)
    assert shares[0] != shares[1]  # and the ranks' shares change from epoch to epoch


@pytest.mark.parametrize("kind", ["torch", "resident"])
def test_the_ranks_batches_together_are_one_process_batches_at_twice_the_size(shaded_dataset, kind):
    index = scan_dataset(shaded_dataset)
    single = signatures(pipeline(kind, index, index.train, True, Shard(), batch_size=8), 3)
    ranks = [signatures(pipeline(kind, index, index.train, True, Shard(r, 2), batch_size=4), 3) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(batch) for batch in single]


def test_rank_zero_keeps_the_runs_seed_and_every_other_rank_draws_from_its_own():
    seeds = [Shard(rank, 4).stream_seed(7) for rank in range(4)]
    assert seeds[0] == Shard().stream_seed(7) == 7  # one process's augmentation whatever the world size
    assert len(set(seeds)) == 4 and all(0 <= seed < 2**31 for seed in seeds)
    assert [Shard(rank, 4).stream_seed(8) for rank in range(4)] != seeds


@pytest.mark.parametrize("kind, augmenter", [("torch", None), ("resident", None),
                                             *[pytest.param("dali", augmenter, marks=pytest.mark.skipif(
                                                 not dali_available(), reason="DALI is not installed"))
                                               for augmenter in ("dali", "engine")]])
def test_the_ranks_augment_their_images_each_by_its_own_draw(tmp_path, kind, augmenter):
    """Every training image is the same picture, so two ranks' k-th batches differ only by their augmentation:
    with one stream shared by the ranks (DALI's, seeded alike on each) they came out equal, every draw made twice
    in each global batch."""
    for split, name, n in itertools.product(("train", "test"), ("a", "b"), range(8)):
        write_image(tmp_path / "d" / split / name / f"{n}.png", (150, 90, 40), side=16)
    index = scan_dataset(tmp_path / "d")
    options = {} if augmenter is None else {"augmenter": augmenter}
    epochs = [torch.cat([images for images, _ in pipeline(kind, index, index.train, True, Shard(rank, 2), augment=True,
                                                           **options).epoch(1)]) for rank in (0, 1)]
    alike = [torch.equal(a, b) for a, b in zip(*epochs)]
    assert len(alike) == 8 and sum(alike) <= 2  # two draws may still leave a picture alike (identity, say)


# --- DDP with gloo: two ranks step exactly as one process with the whole batch --------------------------------------
def tiny_model() -> nn.Module:
    """No BatchNorm: its statistics are per rank by design, everything else must match one process exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def one_epoch(dataset, batch_size: int, shard: Shard):
    model = tiny_model()
    device = torch.device("cpu")
    trained = distributed.wrap(model, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    index = scan_dataset(dataset)
    row = train_one_epoch(trained, pipeline("torch", index, index.train, True, shard, batch_size=batch_size),
                          optimizer, make_precision("fp32", "cpu"), 1, device, progress="off")
    return model.state_dict(), row


def _as_rank(rank: int, port: int, work, *args) -> None:
    """In a spawned process: join a 2-rank gloo group as torchrun would have set it up, then `work(shard, *args)`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    shard = distributed.join("cpu")
    try:
        work(shard, *args)
    finally:
        distributed.leave()


def run_two_ranks(work, *args) -> None:
    with socket.socket() as sock:  # a free port for the group's store
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_as_rank, args=(port, work, *args), nprocs=2, start_method="spawn")


def _train_an_epoch(shard: Shard, dataset, out) -> None:
    state, row = one_epoch(dataset, 4, shard)
    if shard.is_main:
        torch.save({"state": state, "row": row}, out)


def test_two_ranks_take_the_same_steps_as_one_process_with_twice_the_batch(shaded_dataset, tmp_path):
    out = tmp_path / "rank0.pt"
    run_two_ranks(_train_an_epoch, shaded_dataset, out)
    ranked = torch.load(out)
    state, row = one_epoch(shaded_dataset, 8, Shard())
    for name, tensor in state.items():
        assert torch.allclose(ranked["state"][name], tensor, atol=1e-5), name
    assert ranked["row"]["train_loss"] == pytest.approx(row["train_loss"], rel=1e-5)
    assert ranked["row"]["train_acc"] == pytest.approx(row["train_acc"])  # counted over both ranks


def _reload_best(shard: Shard, run_dir, out) -> None:
    model = tiny_model()  # the same start on both ranks; rank 0 alone can read best.pt
    if shard.is_main:
        best = tiny_model()
        for tensor in best.parameters():
            tensor.data.add_(1.0)
        torch.save({"model": best.state_dict()}, run_dir / "best.pt")
    load_best(model, run_dir if shard.is_main else run_dir / "not-mine")
    torch.save(model.state_dict(), out / f"rank{shard.rank}.pt")


def test_the_best_weights_reach_every_rank_at_the_switch(tmp_path):
    """Only rank 0 reads best.pt (the folder is its own); the others must hold the same weights after."""
    run_two_ranks(_reload_best, tmp_path, tmp_path)
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    expected = {name: tensor + 1.0 for name, tensor in tiny_model().state_dict().items()}
    for name in expected:
        assert torch.equal(states[0][name], expected[name]) and torch.equal(states[1][name], expected[name]), name


# --- `engine train --gpus 2 --device cpu`, as a user runs it ---------------------------------------------------------
DEMO = ["train", "--backbone", "shufflenet_v2_x2_0", "--data", "demo", "--no-pretrained", "--image-size", "32",
        "--max-epochs", "10"]


def engine(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            **popen)


def own_tmpdir(tmp_path):
    """An environment whose $TMPDIR is a fresh folder, to see what a run leaves there."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    return folder, {**os.environ, "TMPDIR": str(folder)}


def torchrun_leftovers(folder):
    """What torchrun's launches left in $TMPDIR: a log folder per launch, unless the engine cleans up."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("torchelastic_", "engine-torchrun-")))


def test_two_processes_train_the_demo_survive_a_kill_and_learn(tmp_path):
    """The whole command, killed mid-run and started again. That two ranks take the same steps as one process
    with twice the batch is shown exactly by test_two_ranks_take_the_same_steps_as_one_process_with_twice_the_batch."""
    out = tmp_path / "ddp"
    folder = out / "shufflenet_v2_x2_0" / "demo" / "f1" / "s0"
    tmpdir, env = own_tmpdir(tmp_path)
    first = engine(*DEMO, "--gpus", "2", "--device", "cpu", "--batch-size", "16", "--out", str(out), env=env)
    deadline = time.time() + 300
    while not ((folder / "metrics.csv").exists() and len(read_metrics(folder / "metrics.csv")) >= 3):
        if first.poll() is not None or time.time() > deadline:
            first.kill()
            pytest.fail(f"no third epoch: {first.communicate()[1]}")
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # the launcher; its ranks die with it
    first.wait()
    time.sleep(1)
    assert not (folder / "result.json").exists()
    assert len(torchrun_leftovers(tmpdir)) == 1  # SIGKILL: the launcher could not remove its log folder...

    resumed = engine(*DEMO, "--gpus", "2", "--device", "cpu", "--batch-size", "16", "--out", str(out), env=env)
    resumed_log = resumed.communicate(timeout=600)[1]
    assert resumed.returncode == 0, resumed_log
    assert torchrun_leftovers(tmpdir) == []  # ...the next launch did, and its own
    assert "resuming after epoch" in resumed_log and resumed_log.count("epoch  10") == 1  # rank 0 speaks alone

    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "config.json", "files.json", "metrics.csv",
                                                        "result.json", "train.log"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["world_size"], config["batch_size"], config["counts"]["train"]) == (2, 16, 600)
    assert [int(row["epoch"]) for row in read_metrics(folder / "metrics.csv")] == list(range(1, 11))
    # Chance is 16.7 %; two ranks of 16 (one process of 32 alike) reach about 40-50 % in 10 epochs
    # (bench/NOTES.md, second session: 41.1 % and 47.2 %).
    assert json.loads((folder / "result.json").read_text())["test_acc"] > 30


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_rank_killed_by_a_signal_is_named_with_it(tmp_path):
    """A rank the out-of-memory killer ends writes nothing; the launcher names the signal, not 'exit code -9'."""
    out, data = tmp_path / "ddp", make_shaded_dataset(tmp_path / "d", {"train": 8, "test": 2}, side=16, darkest=0.4)
    launcher = engine("train", "--backbone", "shufflenet_v2_x2_0", "--data", str(data), "--no-pretrained",
                      "--image-size", "32", "--gpus", "2", "--device", "cpu", "--out", str(out))
    deadline = time.time() + 120
    while not list(out.rglob("config.json")) or len(children(launcher.pid)) < 2:  # both ranks at work
        if launcher.poll() is not None or time.time() > deadline:
            launcher.kill()
            pytest.fail(f"no training ranks: {launcher.communicate()[1]}")
        time.sleep(0.2)
    os.kill(max(children(launcher.pid)), signal.SIGKILL)
    log = launcher.communicate(timeout=120)[1]
    assert launcher.returncode == 1
    assert ("ended, killed by SIGKILL (the kernel's out-of-memory killer sends it: was the host's memory full?). "
            "Its messages, if any, are above; rerun the same command to continue from the last finished epoch") in log


def test_a_rank_count_that_contradicts_torchrun_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "engine", *DEMO, "--gpus", "3", "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "WORLD_SIZE": "2", "RANK": "0"})
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("engine: error: --gpus 3")


def test_bad_input_stops_every_rank_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "engine", *DEMO[:3], "--data", str(tmp_path / "missing"),
                           "--gpus", "2", "--device", "cpu"], cwd=REPO, capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2 and len(errors) == 1 and errors[0].startswith("engine: error: unknown dataset")
    assert "Traceback" not in done.stderr


def test_a_run_folder_another_process_holds_stops_every_rank_with_one_line(tmp_path):
    """Rank 0 holds the run folder for the whole run; its refusal reaches the other ranks, which stop alike."""
    from engine.config import run_folder
    from engine.locks import held_alone
    from engine.results import run_lock
    out = tmp_path / "runs"
    with held_alone(run_lock(run_folder(out, "shufflenet_v2_x2_0", "demo", 1.0, 0)), "the run folder"):
        done = subprocess.run([sys.executable, "-m", "engine", *DEMO, "--gpus", "2", "--device", "cpu", "--out",
                               str(out)], cwd=REPO, capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"is in use by another engine process (pid {os.getpid()} on " in errors[0]


def test_both_phases_and_validation_selection_on_two_processes(tiny_dataset, tmp_path):
    """Patience 1 on a 3-image validation split (4 possible accuracies) forces the SGD switch within 5 epochs:
    rank 0 reloads the best weights and hands them over; the test set is then scored from best.pt on both ranks."""
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--backbone", "mobilenet_v3_large", "--data",
                           str(tiny_dataset), "--no-pretrained", "--image-size", "32", "--batch-size", "4",
                           "--patience", "1", "--max-epochs", "10", "--select-on", "val", "--gpus", "2",
                           "--device", "cpu", "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder = out / "mobilenet_v3_large" / "tiny" / "f1" / "s0"
    result = json.loads((folder / "result.json").read_text())
    assert result["switch_epoch"] is not None and result["stop_reason"] in ("patience", "max_epochs")
    assert {row["phase"] for row in read_metrics(folder / "metrics.csv")} == {"adamw", "sgd"}
    assert "switching to SGD" in done.stderr and "test accuracy of the epoch selected on validation" in done.stderr


def test_a_corrupt_image_stops_every_rank_with_one_line_or_is_skipped(tiny_dataset, tmp_path):
    """Whichever rank would have read it: the files are checked before training, once, by rank 0."""
    (tiny_dataset / "train" / "red" / "red_011.png").write_bytes(b"broken")
    tmpdir, env = own_tmpdir(tmp_path)
    args = [sys.executable, "-m", "engine", "train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset),
            "--no-pretrained", "--image-size", "32", "--batch-size", "4", "--max-epochs", "1", "--gpus", "2",
            "--device", "cpu", "--out", str(tmp_path / "runs")]
    stopped = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    errors = [line for line in stopped.stderr.splitlines() if "error" in line.lower()]
    assert stopped.returncode == 2 and len(errors) == 1 and "red_011.png" in errors[0], stopped.stderr
    assert "Traceback" not in stopped.stderr
    skipped = subprocess.run([*args, "--skip-bad-images"], cwd=REPO, capture_output=True, text=True, env=env)
    assert skipped.returncode == 0, skipped.stderr
    assert torchrun_leftovers(tmpdir) == []  # neither the failed launch nor the finished one left its logs folder
    config = json.loads((tmp_path / "runs" / "mobilenet_v3_large" / "tiny" / "f1" / "s0" / "config.json").read_text())
    assert config["skipped_images"] == ["train/red/red_011.png"] and config["counts"]["train"] == 35


@pytest.mark.parametrize("stop, exit_code, says", [
    (signal.SIGINT, 130, "engine: interrupted"),  # what Ctrl-C in the terminal does
    (signal.SIGTERM, 143, "engine: stopped (SIGTERM)"),  # scancel, or a Slurm job's time limit, to every process
])
def test_ctrl_c_stops_every_rank_with_one_message(tiny_dataset, tmp_path, stop, exit_code, says):
    out = tmp_path / "runs"
    metrics = out / "mobilenet_v3_large" / "tiny" / "f1" / "s0" / "metrics.csv"
    tmpdir, env = own_tmpdir(tmp_path)
    run = engine("train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--no-pretrained",
                 "--image-size", "32", "--batch-size", "4", "--max-epochs", "500", "--patience", "500", "--gpus", "2",
                 "--device", "cpu", "--out", str(out), start_new_session=True, env=env)
    deadline = time.time() + 120
    while not (metrics.exists() and read_metrics(metrics)):
        if run.poll() is not None or time.time() > deadline:
            run.kill()
            pytest.fail(f"no first epoch: {run.communicate()[1]}")
        time.sleep(0.2)
    os.killpg(run.pid, stop)  # the launcher and both ranks get it
    stderr = run.communicate(timeout=60)[1]
    assert run.returncode == exit_code and stderr.count(says) == 1 and "Traceback" not in stderr, stderr
    assert torchrun_leftovers(tmpdir) == []


def test_a_stop_signal_that_lands_in_a_finalizer_reaches_the_launcher_after_it(capsys):
    """torchrun's launcher learns of Ctrl-C by an exception its signal handler raises. Raised inside a finalizer,
    Python would print it ("Exception ignored in: <finalize object ...>", a traceback) and drop it."""
    import weakref

    from torch.distributed.elastic.multiprocessing.api import SignalException, _terminate_process_handler

    class Timer:  # torchrun's rendezvous keep-alive timer: its finalizer joins a thread
        pass

    def finalizer():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs here, in the finalizer

    previous = signal.signal(signal.SIGINT, _terminate_process_handler)
    try:
        with distributed.stop_signals_outside_finalizers(SignalException), pytest.raises(SignalException) as stop:
            timer = Timer()
            weakref.finalize(timer, finalizer)
            del timer  # the finalizer runs, the signal lands in it
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.value.sigval == signal.SIGINT and "Exception ignored" not in capsys.readouterr().err


@pytest.mark.parametrize("exit_codes, returned, error", [
    ((130, 130), 130, False),  # Ctrl-C reached every rank, and torchrun missed it: rank 0 has said so
    ((143, 130), 143, False),  # SIGTERM reached one rank first, torchrun stopped the other with SIGINT
    ((1, 143), 1, True),  # one rank failed on its own, torchrun stopped the other: named
])
def test_ranks_that_all_left_on_a_stop_signal_end_the_launch_without_an_error(monkeypatch, caplog, exit_codes,
                                                                              returned, error):
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def ranks_ended(args):
        failures = {rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="")
                    for rank, code in enumerate(exit_codes)}
        for rank, failure in failures.items():
            failure.timestamp = rank  # the first rank's is the first failure
        raise ChildFailedError("engine", failures)

    monkeypatch.setattr(torch.distributed.run, "run", ranks_ended)
    assert distributed.launch(2, "cpu", ["train"]) == returned
    assert ("rank 0 of 2 ended" in caplog.text) == error
