"""One run on several processes: DistributedDataParallel across GPUs (NCCL), or CPU processes (gloo) for tests.

A process belongs to a distributed run when torchrun started it (WORLD_SIZE > 1 in its environment);
`engine train --gpus N` starts torchrun itself. In such a run

    rank 0 alone prepares the run (dataset, batch autotune) and hands the configuration to the others,
    every rank trains on its own share of each epoch's order (`Shard`), gradients averaged by DDP,
    evaluation counts and training sums are added across ranks, so every rank takes the same protocol decisions,
    rank 0 alone writes the run folder; at the SGD switch it reloads best.pt and broadcasts the weights.

`--batch-size` is per process (as in torchvision's and timm's reference scripts): N processes step on N times
as many images. Outside a distributed run every function here is a no-op on one process.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from engine.errors import (INTERRUPTED, INTERRUPTED_MESSAGE, TERMINATED, TERMINATED_MESSAGE, USAGE_ERROR,
                           UserInputError, how_it_ended)

log = logging.getLogger("engine")
LOG_DIR_PREFIX = "engine-torchrun-"  # + the launcher's pid: torchrun's log folder for one launch, in $TMPDIR


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: rank `rank` of `world_size`."""
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, order, train: bool):
        """This rank's share of an epoch's `order` (a list, range or tensor of positions): every world_size-th
        one from its rank on. So the ranks' k-th batches together hold exactly the images (and augmentations)
        of one process's k-th batch at world_size times the batch size. Training first leaves out the last
        len % world_size positions, so that every rank takes the same number of steps, which DDP needs (the
        order changes every epoch, so no image sits out for good); evaluation covers every position once."""
        return (self.even(order) if train else order)[self.rank::self.world_size]

    def even(self, order):
        """`order` less its last len % world_size positions: a length every rank can have an equal share of."""
        return order[:len(order) - len(order) % self.world_size]

    def size(self, size: int, train: bool) -> int:
        return len(self.take(range(size), train))

    def stream_seed(self, seed: int) -> int:
        """The seed of a random stream this rank draws from alone (DALI's augmentation draws per rank, not per
        image as the torch and resident loaders do): the run's `seed` on rank 0, so that one process's stream is the
        same whatever the world size, and another one on every other rank, so that the ranks' k-th images do not
        all make the same draw. Below 2**31: DALI takes it as a signed integer."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0] >> 1)


SINGLE = Shard()


def launched() -> bool:
    """Whether torchrun started this process as part of a run of several."""
    return world_size() > 1


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank from torchrun's environment (0 outside a distributed run), readable before `join`."""
    return int(os.environ.get("RANK", "0"))


def current() -> Shard:
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return SINGLE


def local_processes() -> int:
    """Processes of this run on this machine (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def join(device: str) -> Shard:
    """Join the process group torchrun prepared: NCCL with each rank on its LOCAL_RANK's GPU, gloo on the CPU.
    The rank dies with its launcher and leaves at once on Ctrl-C. Ranks other than 0 log errors only: their
    infos and warnings repeat rank 0's, and the run's log reads as one process's."""
    if not launched():
        return SINGLE
    if not dist.is_initialized():
        die_with_parent()
        for stop in LEAVING:
            signal.signal(stop, _leave_when_stopped)
        if device == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        # Long enough for rank 0 to download a dataset or autotune the batch while the others wait in a
        # collective; a rank that crashes is caught sooner by torchrun, which then stops the others.
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(hours=3))
    shard = current()
    if not shard.is_main:
        log.setLevel(logging.ERROR)
    return shard


# what a rank says and exits with when stopped: Ctrl-C, or SIGTERM (torchrun stopping its ranks, kill, Slurm)
LEAVING = {signal.SIGINT: (INTERRUPTED_MESSAGE, INTERRUPTED), signal.SIGTERM: (TERMINATED_MESSAGE, TERMINATED)}


STOP_EXIT_CODES = {code for _, code in LEAVING.values()}


def _leave_when_stopped(signum, frame) -> None:
    """Ctrl-C (or SIGTERM) reaches every rank at once. A rank that unwound normally would leave the others failing
    inside a collective, with tracebacks; so each rank leaves at once, as after a kill (rank 0 says so), and the run
    resumes from its last finished epoch."""
    message, code = LEAVING[signum]
    if rank() == 0:
        print(message, file=sys.stderr, flush=True)
    os._exit(code)


def training_device(device: str) -> torch.device:
    """The device this process trains on: its own GPU (set by `join`; index explicit, since DALI needs it)."""
    if device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the model in a distributed run (no SyncBatchNorm: batches per GPU are large enough, and timm
    and torchvision's references leave it off too); the model itself otherwise."""
    if current().world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place), for counts and sums of an epoch: one collective per epoch."""
    if current().world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def from_main(make):
    """`make()` on rank 0, its result handed to every rank (pickled)."""
    return _on_main(make, share=True)


def main_first(make):
    """`make()` on rank 0 alone (None on the others), e.g. reading the starting weights that DDP then hands out.

    In both, an error a user can fix on rank 0 reaches every rank as the same UserInputError (marked as a
    replica, so only rank 0 prints it), and all stop alike instead of waiting for a rank that left."""
    return _on_main(make, share=False)


def _on_main(make, share: bool):
    shard = current()
    if shard.world_size == 1:
        return make()
    payload, result = [None], None
    if shard.is_main:
        try:
            result = make()
            payload[0] = ("ok", result if share else None)
        except UserInputError as err:
            payload[0] = ("error", err)
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        if not shard.is_main:
            value.replica = True
        raise value
    return value if share else result


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank, in place (after rank 0 alone loaded a checkpoint)."""
    if current().world_size > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier() -> None:
    if current().world_size > 1:
        dist.barrier()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _remove_log_dirs_of_dead_launchers() -> None:
    """The log folders of launchers that were killed before they could remove their own."""
    for folder in Path(tempfile.gettempdir()).glob(f"{LOG_DIR_PREFIX}*-*"):
        pid = folder.name[len(LOG_DIR_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and its folder not ours to remove
        pass
    return True


def launch(processes: int, device: str, argv: list[str]) -> int:
    """Run `engine ARGV` as `processes` ranks under torchrun on this machine; the exit code of the run.

    A failing rank has printed its own one-line error; torchrun's report of the failure (a traceback of its
    own) is kept out of the user's way."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if device == "cuda" and torch.cuda.device_count() < processes:
        raise UserInputError(f"--gpus {processes} asks for more GPUs than the {torch.cuda.device_count()} "
                             f"this process sees (CUDA_VISIBLE_DEVICES)")
    # Each rank's CPU-side threads get their share of the cores, rather than torchrun's blanket 1.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    for name in list(logging.root.manager.loggerDict):  # torchrun's own failure report: replaced by ours below
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    log.info("training on %d processes (%s) through torchrun", processes, "GPUs, NCCL" if device == "cuda"
             else "CPU, gloo")
    # torchrun makes a log folder per launch in $TMPDIR and never removes it (empty: the ranks' output is not
    # redirected); handing it a folder of our own, removed after, keeps each run from leaving one behind. A
    # launcher killed by SIGKILL cannot remove its own: the next launch does, its name holding the dead pid.
    _remove_log_dirs_of_dead_launchers()
    log_dir = tempfile.TemporaryDirectory(prefix=f"{LOG_DIR_PREFIX}{os.getpid()}-")
    args = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(processes), "--log-dir",
                                         log_dir.name, "--module", "engine", *argv])
    try:
        with stop_signals_outside_finalizers(SignalException):
            run(args)
    except SignalException as err:  # Ctrl-C or SIGTERM: torchrun stopped the ranks; rank 0 said so
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        exit_codes = {failure.exitcode for failure in err.failures.values()}
        if USAGE_ERROR in exit_codes:
            return USAGE_ERROR  # bad input, named in one line by the rank that met it
        rank, failure = err.get_first_failure()  # the cause; the others were stopped because of it
        if exit_codes <= STOP_EXIT_CODES:  # every rank left on Ctrl-C or SIGTERM (_leave_when_stopped), rank 0
            return failure.exitcode  # said so, and torchrun missed it (stop_signals_outside_finalizers)
        log.error("rank %d of %d ended, %s. Its messages, if any, are above; rerun the same command to continue "
                  "from the last finished epoch", rank, processes, how_it_ended(failure.exitcode))
        return failure.exitcode if failure.exitcode > 0 else 1
    finally:
        log_dir.cleanup()
    return 0


SIGNAL_RESEND_DELAY_S = 0.05  # the finalizer returns in microseconds; torchrun's loop looks every 0.1 s


@contextmanager
def stop_signals_outside_finalizers(signal_exception: type[BaseException]):
    """torchrun turns Ctrl-C and SIGTERM into an exception in the launcher (its SignalException). One that lands
    while a finalizer runs (a weakref callback: torchrun's rendezvous keeps a timer whose finalizer joins a thread)
    cannot leave it: Python prints "Exception ignored in: <finalize object ...>" with its traceback and drops it,
    so torchrun never hears of the stop. Seen once in the tests. Such an exception is sent again as its signal, a
    moment later, from a thread: sent at once, its handler would run inside this hook, and raise there. One not
    sent yet when the block ends is not sent: the launch is over, and the ranks' exit codes tell how it ended."""
    previous, resends = sys.unraisablehook, []

    def send_again(unraisable) -> None:
        if isinstance(unraisable.exc_value, signal_exception):
            resends.append(threading.Timer(SIGNAL_RESEND_DELAY_S, os.kill,
                                           (os.getpid(), unraisable.exc_value.sigval)))
            resends[-1].start()
        else:
            previous(unraisable)

    sys.unraisablehook = send_again
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for resend in resends:
            resend.cancel()


def die_with_parent() -> None:
    """Be killed when the parent process dies, even by SIGKILL: a grid's cell when the grid dies, a rank when its
    torchrun dies, so that a rerun never trains the same run twice at the same time. Linux only."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
