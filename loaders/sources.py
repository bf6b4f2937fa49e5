"""Converters from each source's own format to the engine's layout `<out>/{train,test}/<class>/<image>`.

Each converter takes the unpacked source (a folder) and the output folder, writes the images, and returns
how the split was made (for meta.json). JPEG and PNG files are copied byte for byte; arrays (CIFAR pickles)
and TIFF or BMP images become PNG. Where a source has no split of its own, a seeded stratified split with the
paper's ratio is drawn (`SPLIT_SEED`), so everyone who prepares the dataset gets the same one.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import UserInputError
from engine.loaders.index import IMAGE_EXTENSIONS, SPLIT_SEED
from engine.loaders.splits import stratified_split

KEEP_AS_IS = (".jpg", ".jpeg", ".png")


def find_one(raw: Path, pattern: str, what: str) -> Path:
    """The single path under `raw` matching `pattern` (glob, searched recursively), or a clear error."""
    matches = sorted(raw.rglob(pattern))
    if not matches:
        raise UserInputError(f"{what} not found in {raw} (looked for {pattern}); is this the right archive or folder?")
    return matches[0]


def write_image(source: Path | np.ndarray, out: Path, split: str, class_name: str, stem: str) -> None:
    """Copy a JPEG/PNG file as it is; convert anything else (a file or an HxWxC uint8 array) to PNG."""
    folder = out / split / class_name
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, np.ndarray):
        Image.fromarray(source).save(folder / f"{stem}.png")
    elif source.suffix.lower() in KEEP_AS_IS:
        shutil.copyfile(source, folder / f"{stem}{source.suffix.lower()}")
    else:
        try:
            with Image.open(source) as image:
                image.save(folder / f"{stem}.png")
        except OSError as err:
            raise UserInputError(f"cannot read image {source}: {err}") from err


def _class_images(class_root: Path) -> list[tuple[Path, str]]:
    return [(path, folder.name) for folder in sorted(p for p in class_root.iterdir() if p.is_dir())
            for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_EXTENSIONS]


def split_and_write(images: list[tuple[Path, str]], out: Path, test_ratio: float) -> dict:
    """A seeded stratified split of (file, class) pairs, written out; the split rule for meta.json."""
    classes = sorted({name for _, name in images})
    label = {name: index for index, name in enumerate(classes)}
    samples = [(str(path), label[name]) for path, name in images]
    train, test = stratified_split(samples, test_ratio, SPLIT_SEED, "test", classes)
    for split, chosen in (("train", train), ("test", test)):
        for path, class_index in chosen:
            write_image(Path(path), out, split, classes[class_index], Path(path).stem)
    return {"split": f"seeded stratified, {1 - test_ratio:.0%} train / {test_ratio:.0%} test per class",
            "split_seed": SPLIT_SEED}


# --- Class-folder sources without a split (EuroSAT, UC Merced) and NEU's flat folder ---------------------------
def class_folders(folder_pattern: str, test_ratio: float):
    def convert(raw: Path, out: Path) -> dict:
        class_root = find_one(raw, folder_pattern, "the folder of class folders")
        return split_and_write(_class_images(class_root), out, test_ratio)
    return convert


def neu(raw: Path, out: Path) -> dict:
    """NEU-CLS: 1800 BMP files in one folder, the class in the name prefix (Cr_1.bmp, PS_12.bmp, ...), or the same
    files sorted into class folders."""
    files = sorted(p for p in raw.rglob("*") if p.suffix.lower() == ".bmp")
    if not files:
        raise UserInputError(f"no .bmp images in {raw}; NEU-CLS ships 1800 BMP files named <class>_<n>.bmp")
    images = [(path, path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.parent.name) for path in files]
    return split_and_write(images, out, test_ratio=0.2)


# --- CIFAR pickles ------------------------------------------------------------------------------------------
def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="bytes")


def cifar(batches: dict[str, list[str]], meta_file: str, names_key: bytes, labels_key: bytes):
    def convert(raw: Path, out: Path) -> dict:
        folder = find_one(raw, meta_file, f"CIFAR metadata ({meta_file})").parent
        names = [name.decode() for name in _unpickle(folder / meta_file)[names_key]]
        for split, files in batches.items():
            index = 0
            for file in files:
                batch = _unpickle(folder / file)
                pixels = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                for image, label in zip(pixels, batch[labels_key]):
                    write_image(image, out, split, names[label], f"{index:05d}")
                    index += 1
        return {"split": "official (training batches / test batch)"}
    return convert


cifar10 = cifar({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "batches.meta",
                b"label_names", b"labels")
cifar100 = cifar({"train": ["train"], "test": ["test"]}, "meta", b"fine_label_names", b"fine_labels")


# --- Sources with list files ------------------------------------------------------------------------------
def tiny_imagenet(raw: Path, out: Path) -> dict:
    """train/<wnid>/images/*.JPEG; the labelled val/ set (val_annotations.txt) is the test set."""
    root = find_one(raw, "wnids.txt", "Tiny ImageNet's wnids.txt").parent
    for class_dir in sorted((root / "train").iterdir()):
        for path in sorted((class_dir / "images").glob("*.JPEG")):
            write_image(path, out, "train", class_dir.name, path.stem)
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        file, wnid = line.split("\t")[:2]
        write_image(root / "val" / "images" / file, out, "test", wnid, Path(file).stem)
    return {"split": "official (train/ for training; the labelled val/ set as test)"}


def dtd(raw: Path, out: Path) -> dict:
    root = find_one(raw, "labels", "DTD's labels folder").parent
    for split, file in (("train", "train1.txt"), ("test", "test1.txt")):
        for line in (root / "labels" / file).read_text().split():
            class_name, name = line.split("/")
            write_image(root / "images" / class_name / name, out, split, class_name, Path(name).stem)
    return {"split": "official partition 1 (labels/train1.txt, labels/test1.txt)"}


def food101(raw: Path, out: Path) -> dict:
    root = find_one(raw, "train.json", "Food-101's meta/train.json").parent.parent
    for split in ("train", "test"):
        for class_name, items in json.loads((root / "meta" / f"{split}.json").read_text()).items():
            for item in items:
                write_image(root / "images" / f"{item}.jpg", out, split, class_name, Path(item).name)
    return {"split": "official (meta/train.json, meta/test.json)"}


def cub200(raw: Path, out: Path) -> dict:
    root = find_one(raw, "train_test_split.txt", "CUB-200-2011's train_test_split.txt").parent

    def table(name: str) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in (root / name).read_text().splitlines() if line.strip())

    paths, is_train = table("images.txt"), table("train_test_split.txt")
    for image_id, relative in paths.items():
        class_name, name = relative.split("/")
        split = "train" if is_train[image_id].strip() == "1" else "test"
        write_image(root / "images" / relative, out, split, class_name, Path(name).stem)
    return {"split": "official (train_test_split.txt)"}
