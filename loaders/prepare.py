"""`engine data prepare`: fetch a dataset's source (or take the one given with --from), convert it to the
engine's layout, check its counts against the paper's, and write meta.json.

Work happens in a private temporary folder beside the target and is renamed into place at the end, so an
interrupted prepare never leaves a dataset that looks complete; downloads are kept in `<root>/.downloads` so a
second prepare (or --force) does not fetch them again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import engine
from engine.errors import UserInputError
from engine.locks import held_in_turn
from engine.results import read_json
from engine.loaders.download import DownloadError, download, extract, md5_of
from engine.loaders.index import scan_dataset

log = logging.getLogger("engine")
META = "meta.json"


def is_prepared(target: Path) -> bool:
    return (Path(target) / META).exists()


def _fetch(spec, root: Path) -> tuple[list[Path], dict[str, str]]:
    downloads = root / ".downloads" / spec.name
    paths, checksums = [], {}
    for source in spec.files:
        try:
            path = download(source.url, downloads / source.filename, source.md5)
        except DownloadError as err:  # say which command takes the file the user fetches instead
            raise DownloadError(f"{err}; with a copy fetched another way: engine data prepare {spec.name} "
                                f"--from PATH") from err
        paths.append(path)
        checksums[source.filename] = source.md5 or md5_of(path)
    return paths, checksums


def _say_other_copies(spec, checksums: dict[str, str]) -> None:
    """A --from file named as a published source but with another checksum is another version or a copy cut short:
    said (its preparation may still succeed, from a mirror's repackaging), and its MD5 goes into meta.json."""
    published = {source.filename: source.md5 for source in spec.files if source.md5}
    for name, md5 in checksums.items():
        if name in published and md5 != published[name]:
            log.warning("%s is not the published file (MD5 %s, published %s): another version, or a copy cut "
                        "short; preparing it all the same", name, md5, published[name])


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz")


def _source_files(source: Path) -> list[Path] | None:
    """The downloaded files inside a --from folder (archives and the like at its top level), or None when the
    folder is an already unpacked source."""
    top = sorted(p for p in source.iterdir() if p.is_file())
    return top if any(p.suffix.lower() in ARCHIVE_SUFFIXES for p in top) else None


def _unpack(paths: list[Path], work: Path) -> Path:
    """One folder holding every source file: archives extracted, other files (.mat, .h5) linked, not copied
    (Galaxy10's HDF5 file alone is 2.7 GB)."""
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.suffix.lower() in ARCHIVE_SUFFIXES:
            extract(path, raw)
        else:
            (raw / path.name).symlink_to(path.resolve())
    return raw


def _convert(spec, raw: Path, out: Path, files: list[Path] | None, split_by: str | None) -> dict:
    """spec.convert, whose errors name the archives the user has rather than the temporary folder that held
    them unpacked (and is gone when the message is read)."""
    try:
        return spec.convert(raw, out, **({"split_by": split_by} if split_by else {}))
    except UserInputError as err:
        if files is None:  # an unpacked folder of the user's: its own path is the right one
            raise
        unpacked = "the unpacked " + ", ".join(path.name for path in files)
        raise UserInputError(str(err).replace(str(raw), unpacked)) from None


def _count_warnings(spec, counts: dict[str, int], classes: int) -> list[str]:
    warnings = []
    for split in ("train", "test"):
        expected = spec.paper_counts.get(split)
        if expected is not None and counts[split] != expected:
            warnings.append(f"{split}: {counts[split]} images, the paper has {expected}")
    if spec.classes and classes != spec.classes:
        warnings.append(f"{classes} classes, the paper has {spec.classes}")
    return warnings


def preparation_lock(root: Path, name: str) -> Path:
    """Held while a process prepares the dataset `name` under `root` (locks.held_in_turn)."""
    return root / f".{name}.lock"


def prepare_dataset(spec, root: Path, source: Path | None = None, force: bool = False,
                    split_by: str | None = None) -> Path:
    """The prepared folder `<root>/<name>`: made now unless it is there already (then left alone, unless force).
    `split_by` ("patient" or "image") chooses the split rule of datasets whose images come from patients."""
    root = Path(root).expanduser()
    if split_by is not None and not spec.grouped:
        raise UserInputError(f"--split-by applies to datasets split by patient (BreakHis), not to {spec.name}")
    target = root / spec.name
    if is_prepared(target) and not force:  # before the lock: a prepared dataset may live on a read-only root
        log.info("%s is already prepared in %s (use --force to prepare it again)", spec.name, target)
        return target
    if source is None and not spec.files:
        raise UserInputError(f"{spec.name} cannot be downloaded automatically: {spec.instructions}; then run "
                             f"`engine data prepare {spec.name} --from PATH`")
    # Two processes preparing one dataset (a grid's cells on several GPUs, two terminals) would append to the same
    # download: one at a time, and the second finds it prepared.
    with held_in_turn(preparation_lock(root, spec.name), f"preparing {spec.name} in {root}"):
        if is_prepared(target) and not force:
            log.info("%s was prepared in %s meanwhile", spec.name, target)
            return target
        return _prepare(spec, root, target, source, split_by)


def _prepare(spec, root: Path, target: Path, source: Path | None, split_by: str | None) -> Path:
    for stale in root.glob(f".{spec.name}.tmp-*"):  # a killed prepare's; none is in use, as we hold the lock
        log.info("removing %s, left by a prepare that was killed", stale)
        shutil.rmtree(stale, ignore_errors=True)
    work = root / f".{spec.name}.tmp-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        if source is not None:
            source = Path(source).expanduser()
            if not source.exists():
                raise UserInputError(f"--from {source} does not exist")
            files = [source] if source.is_file() else _source_files(source)
            checksums = {path.name: md5_of(path) for path in files or []}
            _say_other_copies(spec, checksums)
        else:
            files, checksums = _fetch(spec, root)
        raw = _unpack(files, work) if files is not None else source
        out = work / "out"
        log.info("converting %s into the train/test layout", spec.name)
        split_rule = _convert(spec, raw, out, files, split_by)
        index = scan_dataset(out, spec.name)
        counts = {"train": len(index.train), "test": len(index.test)}
        warnings = _count_warnings(spec, counts, index.num_classes)
        for warning in warnings:
            log.warning("%s differs from the paper: %s", spec.name, warning)
        meta = {"name": spec.name, "classes": index.classes, "counts": counts, "paper_counts": spec.paper_counts,
                "count_warnings": warnings, "source": str(source) if source else [f.url for f in spec.files],
                "checksums_md5": checksums, **split_rule, "prepared_by": f"engine {engine.__version__}",
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (out / META).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("prepared %s: %d train / %d test images, %d classes -> %s", spec.name, counts["train"], counts["test"],
             index.num_classes, target)
    return target


def read_meta(target: Path) -> dict | None:
    return read_json(Path(target) / META)
