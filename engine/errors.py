"""Errors a user can fix. The command line prints their message as one line and exits with code 2."""

USAGE_ERROR = 2  # the exit code of bad input, as click and argparse use it
INTERRUPTED = 130  # the exit code of Ctrl-C, as shells report it (128 + SIGINT)
INTERRUPTED_MESSAGE = "engine: interrupted; rerun the same command to continue"
# SIGTERM: `kill`, `scancel`, a Slurm job's time limit (before its SIGKILL), torchrun stopping its ranks
TERMINATED = 143  # 128 + SIGTERM, as shells report it
TERMINATED_MESSAGE = "engine: stopped (SIGTERM); rerun the same command to continue"


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
