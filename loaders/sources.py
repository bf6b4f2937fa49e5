"""Converters from each source's own format to the engine's layout `<out>/{train,test}/<class>/<image>`.

Each converter takes the unpacked source (a folder) and the output folder, writes the images, and returns
how the split was made (for meta.json). JPEG and PNG files are copied byte for byte; arrays (CIFAR pickles)
and TIFF or BMP images become PNG. Where a source has no split of its own, a seeded stratified split with the
paper's ratio is drawn (`SPLIT_SEED`), so everyone who prepares the dataset gets the same one.
"""
from __future__ import annotations

import csv
import importlib
import pickle
import shutil
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import UserInputError
from engine.loaders.index import IMAGE_EXTENSIONS, SPLIT_SEED
from engine.loaders.splits import grouped_stratified_split, stratified_split
from engine.results import read_json

KEEP_AS_IS = (".jpg", ".jpeg", ".png")


def find_one(raw: Path, pattern: str, what: str) -> Path:
    """The single path under `raw` matching `pattern` (glob, searched recursively), or a clear error."""
    matches = sorted(raw.rglob(pattern))
    if not matches:
        raise UserInputError(f"{what} not found in {raw} (looked for {pattern!r}); is this the right archive or "
                             f"folder?")
    return matches[0]


def write_image(source, out: Path, split: str, class_name: str, stem: str) -> None:
    """Copy a JPEG/PNG file as it is; convert anything else to PNG: another image file, an HxW(xC) uint8 array,
    or a function returning one (so sources far larger than memory are read one image at a time)."""
    folder = out / split / class_name
    folder.mkdir(parents=True, exist_ok=True)
    if callable(source):
        source = source()
    if isinstance(source, np.ndarray):
        Image.fromarray(source).save(folder / f"{stem}.png")
        return
    try:
        with Image.open(source) as image:
            if source.suffix.lower() in KEEP_AS_IS:
                image.verify()  # header and structure only: cheap, and names a broken file now, not mid-training
                shutil.copyfile(source, folder / f"{stem}{source.suffix.lower()}")
            else:
                image.save(folder / f"{stem}.png")
    except (OSError, SyntaxError) as err:
        raise UserInputError(f"cannot read image {source}: {err}") from err


def _class_images(class_root: Path) -> list[tuple[Path, str, str]]:
    return [(path, folder.name, path.stem) for folder in sorted(p for p in class_root.iterdir() if p.is_dir())
            for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_EXTENSIONS]


def optional_module(name: str):
    """A dependency only some sources need (scipy, h5py, pydicom): imported on use, with the extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserInputError(f"this dataset's source needs the Python package {name.split('.')[0]}: "
                             f"pip install 'engine[datasets]'") from None


def split_and_write(images: list[tuple[Path | np.ndarray, str, str]], out: Path, test_ratio: float,
                    groups: list[str] | None = None) -> dict:
    """A seeded stratified split of (image, class, file stem) triples, written out; the rule for meta.json.
    With `groups` (one patient id per image), whole groups go to one side."""
    classes = sorted({name for _, name, _ in images})
    label = {name: index for index, name in enumerate(classes)}
    samples = [(str(position), label[name]) for position, (_, name, _) in enumerate(images)]
    if groups is None:
        train, test = stratified_split(samples, test_ratio, SPLIT_SEED, "test", classes)
    else:
        train, test = grouped_stratified_split(samples, groups, test_ratio, SPLIT_SEED)
    for split, chosen in (("train", train), ("test", test)):
        for position, class_index in chosen:
            image, _, stem = images[int(position)]
            write_image(image, out, split, classes[class_index], stem)
    rule = f"seeded stratified, {1 - test_ratio:.0%} train / {test_ratio:.0%} test per class"
    return {"split": rule + (", by patient (no patient on both sides)" if groups is not None else ""),
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
    images = [(path, path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.parent.name, path.stem)
              for path in files]
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
        for class_name, items in read_json(root / "meta" / f"{split}.json").items():
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


# --- .mat, HDF5 and DICOM sources ------------------------------------------------------------------------------
def flowers102(raw: Path, out: Path) -> dict:
    """jpg/image_NNNNN.jpg; imagelabels.mat `labels` (1-based); setid.mat: train = trnid + valid, test = tstid."""
    loadmat = optional_module("scipy.io").loadmat
    labels = loadmat(find_one(raw, "imagelabels.mat", "Flowers-102's imagelabels.mat"))["labels"].ravel()
    ids = loadmat(find_one(raw, "setid.mat", "Flowers-102's setid.mat"))
    images = find_one(raw, "image_00001.jpg", "Flowers-102's jpg/ folder").parent
    for split, keys in (("train", ("trnid", "valid")), ("test", ("tstid",))):
        for key in keys:
            for image_id in ids[key].ravel():
                write_image(images / f"image_{image_id:05d}.jpg", out, split, f"class_{labels[image_id - 1]:03d}",
                            f"image_{image_id:05d}")
    return {"split": "official: train = trnid + valid (2040), test = tstid (6149), setid.mat"}


def stanford_dogs(raw: Path, out: Path) -> dict:
    """Images/<wnid-breed>/<file>.jpg with lists train_list.mat / test_list.mat (`file_list`)."""
    loadmat = optional_module("scipy.io").loadmat
    images = find_one(raw, "Images", "Stanford Dogs' Images/ folder")
    for split in ("train", "test"):
        listing = loadmat(find_one(raw, f"{split}_list.mat", f"Stanford Dogs' {split}_list.mat"))
        for entry in listing["file_list"].ravel():
            relative = str(np.asarray(entry).ravel()[0])
            class_name, name = relative.split("/")
            write_image(images / class_name / name, out, split, class_name, Path(name).stem)
    return {"split": "official (train_list.mat / test_list.mat)"}


GALAXY10_CLASSES = ["disturbed", "merging", "round_smooth", "in_between_round_smooth", "cigar_shaped_smooth",
                    "barred_spiral", "unbarred_tight_spiral", "unbarred_loose_spiral", "edge_on_without_bulge",
                    "edge_on_with_bulge"]


def galaxy10(raw: Path, out: Path) -> dict:
    """Galaxy10_DECals.h5: `images` (N, 256, 256, 3) uint8 and `ans` (class index); class folders '<i>_<name>'."""
    h5py = optional_module("h5py")
    with h5py.File(find_one(raw, "*.h5", "Galaxy10's HDF5 file"), "r") as bundle:
        images, answers = bundle["images"], np.asarray(bundle["ans"]).astype(int)
        items = [(partial(_row, images, i), f"{answers[i]}_{GALAXY10_CLASSES[answers[i]]}", f"{i:05d}")
                 for i in range(len(answers))]
        return split_and_write(items, out, test_ratio=0.1)


def _row(array, index: int) -> np.ndarray:
    return np.asarray(array[index])


def breakhis(magnification: str):
    """BreaKHis_v1: .../{benign,malignant}/SOB/<type>/<patient folder>/<mag>X/SOB_B_A-14-22549AB-40-001.png.
    The patient is the file name's second and third fields (14-22549AB); ~70/30 by patient, or by image."""
    def convert(raw: Path, out: Path, split_by: str = "patient") -> dict:
        files = sorted(path for path in raw.rglob("*.png") if path.parent.name.upper() == f"{magnification}X")
        if not files:
            raise UserInputError(f"no {magnification}X PNG images found in {raw}; expected the BreaKHis_v1 tree")
        items = [(path, "malignant" if "malignant" in [p.lower() for p in path.parts] else "benign", path.stem)
                 for path in files]
        patients = ["-".join(path.stem.split("-")[1:3]) for path in files]
        rule = split_and_write(items, out, test_ratio=0.3, groups=patients if split_by == "patient" else None)
        return {**rule, "split_by": split_by}
    return convert


def rsna_pneumonia(raw: Path, out: Path) -> dict:
    """stage_2_train_images/<patientId>.dcm and stage_2_train_labels.csv (one row per box: a patient's Target
    repeats). One image per patient, so splitting by patient and by image agree; the paper's 30227 images match
    the CSV's rows, i.e. repeated patients, which we do not copy (they would leak across the split)."""
    pydicom = optional_module("pydicom")
    labels_file = find_one(raw, "stage_2_train_labels.csv", "RSNA's stage_2_train_labels.csv")
    with open(labels_file, newline="") as handle:
        target = {row["patientId"]: row["Target"] for row in csv.DictReader(handle)}
    folder = find_one(raw, "stage_2_train_images", "RSNA's stage_2_train_images/ folder")
    items = [(partial(_dicom_pixels, pydicom, folder / f"{patient}.dcm"), "pneumonia" if value == "1" else "normal",
              patient) for patient, value in sorted(target.items())]
    return {**split_and_write(items, out, test_ratio=0.2), "split_by": "patient (one image per patient)"}


def _dicom_pixels(pydicom, path: Path) -> np.ndarray:
    return _to_uint8(pydicom.dcmread(path).pixel_array)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    low, high = float(pixels.min()), float(pixels.max())
    return ((pixels - low) / max(high - low, 1e-9) * 255).round().astype(np.uint8)


def _folder_name(name: str) -> str:
    """A class name usable as a folder name ('Ram C/V Cargo Van Minivan 2012' has a slash)."""
    return name.replace("/", "-").strip()


def stanford_cars(raw: Path, out: Path) -> dict:
    """The devkit: devkit/cars_meta.mat (`class_names`), devkit/cars_train_annos.mat and
    cars_test_annos_withlabels.mat (`annotations`: fname, class 1-based), images in cars_train/ and cars_test/."""
    loadmat = optional_module("scipy.io").loadmat
    meta = loadmat(find_one(raw, "cars_meta.mat", "Stanford Cars' devkit/cars_meta.mat"), squeeze_me=True)
    names = [_folder_name(str(n)) for n in meta["class_names"]]
    for split, annotations, folder in (("train", "cars_train_annos.mat", "cars_train"),
                                       ("test", "cars_test_annos_withlabels.mat", "cars_test")):
        images = find_one(raw, folder, f"Stanford Cars' {folder}/ folder")
        rows = loadmat(find_one(raw, annotations, f"Stanford Cars' {annotations}"), squeeze_me=True)["annotations"]
        for row in np.atleast_1d(rows):
            name = str(row["fname"])
            write_image(images / name, out, split, names[int(row["class"]) - 1], Path(name).stem)
    return {"split": "official (cars_train_annos.mat / cars_test_annos_withlabels.mat)"}


PLANTCLEF_SPECIES = 20


def plantclef(raw: Path, out: Path) -> dict:
    """Our rule for the paper's unpublished 20-class subset: in a PlantCLEF training release whose images come
    with one XML file each (<ClassId>, <Species>; PlantCLEF 2015-2016), the 20 ClassIds with the most images
    (ties: the smaller ClassId), split 90/10 by a seeded stratified draw. Approximate: not the paper's subset."""
    import xml.etree.ElementTree as ElementTree

    entries = []
    for xml_file in sorted(raw.rglob("*.xml")):
        fields = {child.tag: (child.text or "").strip() for child in ElementTree.parse(xml_file).getroot()}
        image = xml_file.with_suffix(".jpg")
        if "ClassId" in fields and image.exists():
            entries.append((image, fields["ClassId"], fields.get("Species", "")))
    if not entries:
        raise UserInputError(f"no PlantCLEF images with XML metadata (<ClassId>) in {raw}")
    counts: dict[str, int] = {}
    for _, class_id, _ in entries:
        counts[class_id] = counts.get(class_id, 0) + 1
    chosen = sorted(counts, key=lambda class_id: (-counts[class_id], int(class_id) if class_id.isdigit() else 0,
                                                  class_id))[:PLANTCLEF_SPECIES]
    items = [(image, _folder_name(f"{class_id}_{species}".replace(" ", "_")), image.stem)
             for image, class_id, species in entries if class_id in chosen]
    return {**split_and_write(items, out, test_ratio=0.1), "approximate": True,
            "subset_rule": f"the {PLANTCLEF_SPECIES} ClassIds with the most images in the given release"}
