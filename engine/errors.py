"""Errors a user can fix. The command line prints their message as one line and exits with code 2."""
import errno
import signal

USAGE_ERROR = 2  # the exit code of bad input, as click and argparse use it
INTERRUPTED = 130  # the exit code of Ctrl-C, as shells report it (128 + SIGINT)
INTERRUPTED_MESSAGE = "engine: interrupted; rerun the same command to continue"
# SIGTERM: `kill`, `scancel`, a Slurm job's time limit (before its SIGKILL), torchrun stopping its ranks
TERMINATED = 143  # 128 + SIGTERM, as shells report it
TERMINATED_MESSAGE = "engine: stopped (SIGTERM); rerun the same command to continue"


def first_sentence(error: BaseException) -> str:
    """An error's message cut to its first sentence (torch's reasons for an unreadable file run to a paragraph of
    advice), or its type's name where it has none."""
    return str(error).strip().split(". ")[0] or type(error).__name__


def how_it_ended(exit_code: int) -> str:
    """A child process's end in words: its exit code, or the signal that killed it (a negative code, as subprocess
    and torchrun give it). Such a process wrote no error of its own, so the signal is all there is to say."""
    if exit_code >= 0:
        return f"exit code {exit_code}"
    name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else f"signal {-exit_code}"
    why = " (the kernel's out-of-memory killer sends it: was the host's memory full?)" if name == "SIGKILL" else ""
    return f"killed by {name}{why}"


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that it unwinds as after Ctrl-C (a BaseException, as
    KeyboardInterrupt is: no `except Exception` catches it) instead of vanishing without a word."""


class UserInputError(Exception):
    """Bad input: an unknown name, a missing or empty folder, an out-of-range value."""


class UnreadableImageError(UserInputError):
    """An image file that cannot be decoded. The message names the file."""

    def __init__(self, message: str):
        # A DataLoader worker re-raises this type with the worker's whole traceback as the message; keep
        # only our own last line so the user sees the file name, not a traceback.
        lines = [line for line in str(message).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else str(message)
        prefix = f"{type(self).__module__}.{type(self).__name__}: "
        super().__init__(last[len(prefix):] if last.startswith(prefix) else last)


class WeightsUnavailableError(UserInputError):
    """Pretrained weights that are neither in the cache nor downloadable."""


# Failures of a path the user gave or a disk they manage (--out, --data-root, --plots, a full disk mid-run), and what
# to do about each: the command line says them in one line, not a traceback, and no retry is made of them. A run
# stopped by one keeps its finished epochs, so a rerun continues it.
_CHOOSE_ANOTHER = "choose a folder this user can write (--out, --data-root, --plots, ENGINE_DATA)"
PATH_PROBLEMS = {
    errno.EACCES: _CHOOSE_ANOTHER, errno.EPERM: _CHOOSE_ANOTHER, errno.EROFS: _CHOOSE_ANOTHER,
    errno.ENOENT: "it, or a folder on its way, is not there", errno.ENOTDIR: "a file stands where a folder must",
    errno.EISDIR: "a folder stands where a file must",
    errno.ENOSPC: "free some space, then rerun the same command to continue",
    errno.EDQUOT: "free some of your quota, then rerun the same command to continue",
}
# the disk's own failures, said even where the OSError names no file (a write() to an open file names none)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_path_problem(error: OSError) -> bool:
    return error.errno in PATH_PROBLEMS and (error.filename is not None or error.errno in DISK_FULL)


def path_problem_message(error: OSError) -> str:
    path = "" if error.filename is None else f": {error.filename}"
    path += f" -> {error.filename2}" if error.filename2 else ""
    return f"{error.strerror}{path}; {PATH_PROBLEMS[error.errno]}"
