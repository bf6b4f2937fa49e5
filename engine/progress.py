"""Progress of long work, as a person reads it: a tqdm bar on a terminal; where stderr goes to a file (a grid
cell's log, Slurm, nohup), a log line a minute, so that a long download or decode is not silent for its whole
length. Durations and rates in the units a person reads them in."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("engine")


def readable_duration(seconds: float) -> str:
    """0.3 s, 45 s, 12 min, 3.5 h: the unit a person reads an estimate in."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def readable_rate(images_per_s: float) -> str:
    """Images/s as a person reads them: whole above 10, two significant digits below (a tiny training set on a
    CPU runs at under one image a second, which "0 img/s" would hide)."""
    return f"{images_per_s:.0f}" if images_per_s >= 10 else f"{images_per_s:.2g}"


def readable_bytes(count: float) -> str:
    """512 B, 3.4 MB, 4.7 GB (powers of 1000, as servers and tqdm state sizes)."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def readable_images(count: float) -> str:
    return f"{count:.0f} images"


# What a count counts: how it reads in a log line, and tqdm's options for the bar
UNITS = {"images": (readable_images, {"unit": "img"}),
         "bytes": (readable_bytes, {"unit": "B", "unit_scale": True, "unit_divisor": 1000})}


class Progress:
    """`update(n)` as work is done: a bar on a terminal, else a line every LINE_EVERY_S seconds naming what is done
    of the total, the rate and the time left. Used as a context manager."""

    LINE_EVERY_S = 60.0

    def __init__(self, description: str, total: int | None, done: int = 0, unit: str = "images"):
        self.description, self.total, self.done = description, total, done
        self.readable, bar_options = UNITS[unit]
        self.started_from, self.started = done, time.perf_counter()
        self.last_line = self.started
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=description, leave=False, **bar_options)

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.LINE_EVERY_S:
            self.last_line = now
            log.info("%s", self.line(now - self.started))

    def line(self, elapsed_s: float) -> str:
        """What is done, of what, how fast and how long is left."""
        rate = (self.done - self.started_from) / max(elapsed_s, 1e-9)
        said = f"{self.description}: {self.readable(self.done)}"
        if self.total:
            said += f" of {self.readable(self.total)} ({100 * self.done / self.total:.0f} %)"
        said += f", {self.readable(rate)}/s"
        if self.total and rate > 0:
            said += f", about {readable_duration((self.total - self.done) / rate)} left"
        return said

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
