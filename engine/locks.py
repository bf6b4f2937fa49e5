"""Locks between engine processes, on one machine or a shared filesystem. They are flock's: the kernel releases a
lock whenever its holder ends, SIGKILL included, so none is ever left stale, and a lock file left behind is free.
Each holder writes who it is into the file, for the others' messages."""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from engine.errors import UserInputError

log = logging.getLogger("engine")


class InUseError(UserInputError):
    """Another engine process holds what this one was asked to work on (a run folder, a grid)."""


@contextmanager
def held_alone(lock_file: Path, what: str):
    """Hold `lock_file` as the only process working on `what`, or stop at once in one line naming the process that
    holds it. Two processes training one run folder would each rewrite its metrics and checkpoints (and delete the
    other's half-written files as stale)."""
    with _locked(lock_file, what, wait=False):
        yield


@contextmanager
def held_in_turn(lock_file: Path, what: str):
    """Hold `lock_file` while working on `what`, waiting (and saying for whom) while another process holds it:
    for work that each process needs done once, such as preparing a dataset, which the second finds done."""
    with _locked(lock_file, what, wait=True):
        yield


@contextmanager
def _locked(lock_file: Path, what: str, wait: bool):
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            _acquire(handle, what, wait)
        except OSError as error:  # a filesystem without locks (Lustre mounted without flock): say so, go on
            log.warning("cannot lock %s (%s): nothing stops a second process from working on %s at the same time",
                        lock_file, error.strerror or error, what)
        else:
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            handle.flush()
        yield


# `holder` looks at a lock by taking it shared for a moment: a process asking for it then is refused for that
# moment alone, so a refusal is tried again for this long before it is said (a real holder keeps it for a run)
PROBE_GRACE_S = 0.2


def _acquire(handle, what: str, wait: bool) -> None:
    deadline = time.monotonic() + PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
    handle.seek(0)
    said = handle.read().strip()
    who = f"another engine process{f' ({said})' if said else ''}"
    if not wait:
        raise InUseError(f"{what} is in use by {who}; wait for it to end, or stop it, then rerun") from None
    log.info("waiting for %s to finish %s", who, what)
    fcntl.flock(handle, fcntl.LOCK_EX)


def holder(lock_file: Path) -> str | None:
    """Who holds `lock_file` now ("pid 123 on node7", or "another engine process" where it has not said), or None
    where nobody does: for a grid, to leave a cell that another process is training to it."""
    if not lock_file.exists():
        return None
    with open(lock_file) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
        except BlockingIOError:
            return handle.read().strip() or "another engine process"
        except OSError:  # a filesystem without locks: nobody can be seen holding one
            return None
    return None
