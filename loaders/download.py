"""Fetching and unpacking dataset sources: resumable, retried downloads with checksums; safe extraction.

A download goes to `<file>.part` and continues from its length (HTTP Range) after a cut connection or a
killed process; it is renamed to `<file>` only once complete and, where a checksum is known, verified.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from engine.errors import UserInputError, is_path_problem
from engine.progress import Progress

log = logging.getLogger("engine")

CHUNK = 1 << 20
RETRIES = 5
TIMEOUT_S = 60


class DownloadError(UserInputError):
    """A source that could not be fetched, or arrived different from what its checksum says."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_rest(url: str, partial: Path) -> None:
    """Append to `partial` what the server has beyond its current length."""
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if start and response.status != 206:  # the server ignores ranges: start over
            start = 0
        total = start + int(response.headers.get("Content-Length") or 0) or None
        with open(partial, "ab" if start else "wb") as handle, \
                Progress(f"downloading {partial.name.removesuffix('.part')}", total, start, "bytes") as progress:
            for block in iter(lambda: response.read(CHUNK), b""):
                handle.write(block)
                progress.update(len(block))
    received = partial.stat().st_size
    if total is not None and received < total:  # read() in chunks reports a dropped connection as a short file
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


def download(url: str, destination: Path, md5: str | None = None, retries: int = RETRIES) -> Path:
    """`destination`, downloaded from `url` unless it is already there (and matches `md5`)."""
    destination = Path(destination)
    if destination.exists() and (md5 is None or md5_of(destination) == md5):
        log.info("using %s (already downloaded)", destination)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    log.info("downloading %s -> %s", url, destination)
    for attempt in range(1, retries + 1):
        try:
            _fetch_rest(url, partial)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code == 416:  # asked past the end: it is complete
                break
            if is_path_problem(err):  # this machine's disk, not the network: no retry mends it
                raise
            lasting = _lasting(err)
            if lasting is not None:
                raise DownloadError(f"cannot download {url}: {lasting}") from err
            if attempt == retries:
                raise DownloadError(f"cannot download {url} after {retries} attempts ({err}); rerun to "
                                    f"resume") from err
            log.warning("download of %s interrupted (%s); resuming (attempt %d of %d)", url, err, attempt + 1,
                        retries)
            time.sleep(min(2 ** attempt, 30) * _backoff_scale)
    if md5 is not None:
        actual = md5_of(partial)
        if actual != md5:
            partial.unlink()
            raise DownloadError(f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; the file was removed, "
                                f"rerun to download it again")
    partial.rename(destination)
    return destination


_backoff_scale = 1.0  # tests shrink the waits between retries

# HTTP answers that a retry may change: a timeout, "too early", "too many requests", and every server error
RETRIED_HTTP_CODES = {408, 425, 429}


def _lasting(err: Exception) -> str | None:
    """Why retrying cannot help, or None for a failure worth retrying (a dropped connection, a timeout, a busy
    server): an offline machine would otherwise wait through every retry's backoff to be told the same thing."""
    if isinstance(err, urllib.error.HTTPError):
        if err.code < 500 and err.code not in RETRIED_HTTP_CODES:
            return f"the server answered {err.code} {err.reason}"
        return None
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, socket.gaierror):
        return f"its host name does not resolve (offline, or no DNS?): {err.reason}"
    return None


# What a zip or tar cut short or damaged raises while it is read: gzip's end of stream (EOFError), its format
# (gzip.BadGzipFile), zlib's and lzma's data errors, tarfile's and zipfile's own (a member's CRC among them).
DAMAGED_ARCHIVE = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError, tarfile.TarError, zipfile.BadZipFile)


def extract(archive: Path, into: Path) -> Path:
    """Unpack a zip or tar (.tar, .tar.gz, .tgz) into `into`, refusing members that would land outside it. An
    archive cut short or damaged is one line naming it."""
    into.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s", archive)
    try:
        _extract(archive, into)
    except DAMAGED_ARCHIVE as err:
        raise UserInputError(f"{archive} is cut short or damaged ({type(err).__name__}: {err}); fetch it "
                             f"again") from None
    return into


def _extract(archive: Path, into: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                if not (into / member).resolve().is_relative_to(into.resolve()):
                    raise UserInputError(f"{archive} holds a file outside its folder: {member}")
            bundle.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            bundle.extractall(into, filter="data")
    elif _starts_as_zip(archive):  # a zip's directory is at its end: cut short, it is no zip to is_zipfile
        raise zipfile.BadZipFile("its directory, at the end of a zip, is missing")
    else:
        raise UserInputError(f"{archive} is neither a zip nor a tar archive")


def _starts_as_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"
