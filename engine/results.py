"""Run folders: what a run writes, written so that a killed process never leaves a file half-written.

<out>/<backbone>/<dataset>/f<fraction>/s<seed>/
  config.json   settings, versions and data counts: enough to rerun (written before training)
  files.json    the exact train / selection / test files of this run
  metrics.csv   one row per finished epoch (rewritten whole each epoch)
  train.log     the run's log
  best.pt       model weights of the best epoch so far
  last.pt       everything needed to resume after the last finished epoch (removed once the run finishes)
  result.json   written last: a folder without it is not finished
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import statistics
from pathlib import Path

import torch

from engine.errors import UserInputError, first_sentence

METRICS_COLUMNS = ["epoch", "phase", "lr", "train_loss", "train_acc", "eval_acc", "images_per_s", "epoch_s", "eval_s"]
CONFIG, FILES, METRICS, LOG, BEST, LAST, RESULT = (
    "config.json", "files.json", "metrics.csv", "train.log", "best.pt", "last.pt", "result.json")
SUMMARY = "summary.json"


def run_lock(run_dir: Path) -> Path:
    """The lock of a run folder (locks.held_alone): beside it, not in it, since --force deletes the folder while
    holding the lock."""
    return run_dir.parent / f".{run_dir.name}.lock"


def replace_atomically(path: Path, write) -> None:
    """`write(handle)` to a temporary file beside `path`, flush it to disk, then rename it over `path`: a reader
    sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def remove_unfinished_writes(folder: Path, name: str = "*") -> None:
    """The temporary files of `replace_atomically`s of `name` in `folder` that a kill interrupted: never renamed,
    never to be read. Only where no other process is writing (its caller holds the folder's or the file's lock)."""
    for stale in Path(folder).glob(f".{name}.tmp-*"):
        stale.unlink()


def write_json(path: Path, obj) -> None:
    replace_atomically(path, lambda handle: handle.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_json(path: Path) -> dict | None:
    """The JSON in `path`, or None where there is no such file. A file that is not JSON (cut short by a full disk,
    edited by hand) is one line naming it, not a traceback."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} is not valid JSON ({err}); fix it, or remove it") from None


def last_line(path: Path) -> str:
    """The last non-blank line of a log (a failed process's error), or "" when there is none."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] \
        if path.exists() else []
    return lines[-1] if lines else ""


def save_checkpoint(path: Path, obj) -> None:
    replace_atomically(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint this engine wrote (last.pt, best.pt). A damaged one (a disk fault, a copy cut short) is one line
    naming it, with torch's reason cut to its first sentence."""
    try:
        # Our own files: they hold numpy and Python RNG states besides tensors, so the full unpickler is needed.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise UserInputError(f"{path} is not a readable checkpoint ({first_sentence(err)}); rerun with --force to "
                             f"train the run from the start") from None


def write_metrics(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    replace_atomically(path, lambda handle: handle.write(text.getvalue().encode()))


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def summarize_seeds(results: dict[int, dict]) -> dict:
    """The paper's "best of 3" (max over seeds) beside the mean and standard deviation."""
    accuracies = [result["test_acc"] for result in results.values()]
    return {
        "seeds": sorted(results),
        "test_acc": {str(seed): result["test_acc"] for seed, result in sorted(results.items())},
        "best_acc": max(accuracies),
        "best_seed": max(results, key=lambda seed: results[seed]["test_acc"]),
        "mean_acc": statistics.fmean(accuracies),
        "std_acc": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
    }


def _snapshot(obj):
    """A copy of every tensor in `obj` on the CPU, so training can go on changing the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _snapshot(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(value) for value in obj)
    return obj


class BackgroundWriter:
    """Checkpoint writes off the training loop's critical path: the tensors are copied to host memory at once
    (fast), the file is written by one background thread (slow), in submission order. `wait()` before reading a
    file back and before the run ends."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending = []

    def save(self, path: Path, obj) -> None:
        self._pending.append(self._executor.submit(save_checkpoint, path, _snapshot(obj)))

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # re-raises a failed write here, in the training thread

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
