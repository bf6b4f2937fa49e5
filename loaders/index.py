"""The file index of a dataset on disk: class names and (file, label) lists for train, test and val.

Layouts (DESIGN.md, Command line):
  <root>/train/<class>/<image>, <root>/test/<class>/<image>, optionally <root>/val/<class>/<image>
  <root>/<class>/<image>: one folder, split into train and test by a seeded stratified `test_split`
Labels are the class folders' positions in sorted order of the training classes.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.errors import UserInputError
from engine.loaders.splits import Sample, stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "val", "test")  # the folders of a dataset laid out as train/<class>/ and test/<class>/

log = logging.getLogger("engine")

# The seed of a split the dataset itself lacks (a one-folder dataset's test set). It is fixed, not the run's
# seed, so the seeds of a "best of 3" are compared on one and the same test set.
SPLIT_SEED = 0


@dataclass
class DatasetIndex:
    name: str
    root: Path
    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    val: list[Sample] | None = None
    layout: str = "train/test"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, sample: Sample) -> Path:
        return self.root / sample[0]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_in(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """The images under a class folder, sorted, and its other files (hidden ones aside)."""
    files = [p for p in class_dir.rglob("*") if not p.name.startswith(".") and p.is_file()]
    return (sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS),
            [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS])


def _scan_split(root: Path, split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[Sample]]:
    """Samples of one split folder. With `classes` given, the folder's classes must be among them."""
    class_dirs = _class_dirs(split_dir)
    if not class_dirs:
        raise UserInputError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image>)")
    names = classes if classes is not None else [d.name for d in class_dirs]
    if len(names) < 2:  # one class: every prediction is right, and the run would report 100 %
        raise UserInputError(f"{split_dir} has one class folder ({names[0]}); a classifier needs two or more")
    label_of = {name: label for label, name in enumerate(names)}
    samples: list[Sample] = []
    others: list[Path] = []
    for class_dir in class_dirs:
        if class_dir.name not in label_of:
            raise UserInputError(f"class folder {class_dir} has no counterpart in {root / 'train'}")
        images, not_images = _files_in(class_dir)
        others += not_images
        if not images:
            raise UserInputError(f"class folder {class_dir} has no images "
                                 f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        samples += [(p.relative_to(root).as_posix(), label_of[class_dir.name]) for p in images]
    _say_other_files(str(split_dir), tuple(sorted(Counter(p.suffix.lower() or p.name for p in others).items())))
    if classes is not None:
        _say_missing_classes(str(split_dir), tuple(sorted(set(classes) - {d.name for d in class_dirs})), len(classes))
    return names, samples


@lru_cache(maxsize=None)  # once a process: a grid checks each finished cell's dataset again
def _say_missing_classes(split_dir: str, missing: tuple[str, ...], total: int) -> None:
    """A test or val folder without some training classes is legal (its accuracy is over the classes it has), but
    rarely meant: a copy cut short, a class folder renamed."""
    if missing:
        log.warning("%s has no folder for %d of the %d training classes (%s): its accuracy leaves them out",
                    split_dir, len(missing), total, ", ".join(missing))


@lru_cache(maxsize=None)
def _say_other_files(split_dir: str, kinds: tuple[tuple[str, int], ...]) -> None:
    """Files in class folders that are not images of a kind the loaders read (.gif, .jfif, .avif; notes) are left
    out; said, since an image of another kind would otherwise vanish from the run without a word."""
    if kinds:
        log.warning("%s: %d files left out (%s), not of the image kinds the engine reads (%s)", split_dir,
                    sum(count for _, count in kinds), ", ".join(f"{count} {kind}" for kind, count in kinds),
                    ", ".join(IMAGE_EXTENSIONS))


@lru_cache(maxsize=None)
def _say_left_out(root: str, folders: tuple[str, ...]) -> None:
    """Beside train/ and test/, other folders are not read: a class folder put at the top by mistake would
    otherwise be missing from the run without a word."""
    if folders:
        log.warning("%s: %s left out (a dataset with train/ reads only train/, val/ and test/)", root,
                    ", ".join(f"{name}/" for name in folders))


def scan_dataset(root: str | Path, name: str | None = None, test_split: float = 0.2) -> DatasetIndex:
    root = Path(root).expanduser()
    name = name or root.resolve().name
    if not root.is_dir():
        raise UserInputError(f"dataset folder {root} does not exist")
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise UserInputError(f"{root} has train/ but no test/ folder")
        classes, train = _scan_split(root, root / "train", None)
        _, test = _scan_split(root, root / "test", classes)
        val = _scan_split(root, root / "val", classes)[1] if (root / "val").is_dir() else None
        _say_left_out(str(root), tuple(d.name for d in _class_dirs(root) if d.name not in SPLIT_FOLDERS))
        return DatasetIndex(name, root, classes, train, test, val, layout="train/test")
    if not _class_dirs(root):
        raise UserInputError(f"dataset folder {root} is empty: expected train/<class>/ and test/<class>/ "
                             f"folders, or one folder per class")
    classes, samples = _scan_split(root, root, None)
    train, test = stratified_split(samples, test_split, SPLIT_SEED, "test", classes)
    return DatasetIndex(name, root, classes, train, test, None, layout=f"one folder, test split {test_split:g}")
