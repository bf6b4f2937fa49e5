"""The dataset registry: the paper's 20 datasets (paper Table 3, engine/paper/datasets.csv) and `demo`.

Each entry knows the paper's facts (domain, classes, counts, image size, TrivialAugment on or off), where its
source comes from (`auto`: direct download; `manual`: login or dead links, so the user fetches it and passes
it with --from) and how to convert it (loaders/sources.py). `--data` takes a registered name, looked up under
the data root, or a path to a custom image folder.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Callable

from engine.config import parse_image_size
from engine.errors import UserInputError
from engine.loaders import sources
from engine.loaders.demo import ensure_demo, is_current
from engine.loaders.prepare import is_prepared, prepare_dataset, read_meta

log = logging.getLogger("engine")

# The paper resizes every dataset to 256x256 (BreakHis 448x672) and uses TrivialAugment except on BreakHis
# and Galaxy10 (paper section 5); a custom folder gets the common case.
CUSTOM_DEFAULT_SIZE = (256, 256)
CUSTOM_DEFAULT_AUGMENT = True


@dataclass(frozen=True)
class SourceFile:
    url: str
    filename: str
    md5: str | None  # None where no published checksum exists; the computed one goes into meta.json


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    domain: str
    image_size: tuple[int, int]  # (height, width) the run resizes to unless --image-size says otherwise
    augment: bool  # TrivialAugmentWide on by default
    obtain: str  # generated | auto | manual
    classes: int | None = None
    paper_counts: dict = field(default_factory=dict)  # {"train": n, "test": n} of paper Table 3
    native_resolution: str = ""
    files: tuple[SourceFile, ...] = ()
    convert: Callable[[Path, Path], dict] | None = None
    instructions: str = ""  # for manual sources: what to download from where
    licence: str = ""
    grouped: bool = False  # split by patient by default; `--split-by image` reproduces a by-image split


# name -> (how it is obtained, source files, converter, instructions or format note, licence)
SOURCES = {
    "cifar10": ("auto", [SourceFile("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                    "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
                sources.cifar10, "", "research use (Krizhevsky 2009)"),
    "cifar100": ("auto", [SourceFile("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                     "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")],
                 sources.cifar100, "", "research use (Krizhevsky 2009)"),
    "tiny_imagenet": ("auto", [SourceFile("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
                                          "90528d7ca1a48142e341f4ef8d21d0de")],
                      sources.tiny_imagenet, "", "ImageNet terms of access"),
    "eurosat": ("auto", [SourceFile("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                                    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip", "EuroSAT.zip",
                                    "c8fa014336c82ac7804f0398fcb19387")],
                sources.class_folders("2750", test_ratio=0.3), "", "MIT"),
    "uc_merced": ("auto", [SourceFile("http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
                                      "UCMerced_LandUse.zip", "5b7ec56793786b6dc8a908e8854ac0e4")],
                  sources.class_folders("Images", test_ratio=0.2), "", "public domain (USGS imagery)"),
    "dtd": ("auto", [SourceFile("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                                "dtd-r1.0.1.tar.gz", "fff73e5086ae6bdbea199a49dfb8a4c1")],
            sources.dtd, "", "research use"),
    "food101": ("auto", [SourceFile("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz",
                                    "85eeb15f3717b99a5da872d97d918f87")],
                sources.food101, "", "research use (images from foodspotting.com)"),
    "cub200": ("auto", [SourceFile("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                                   "CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78")],
               sources.cub200, "", "research use"),
    "neu": ("manual", [], sources.neu,
            "download NEU-CLS (the NEU surface defect database of K. Song, Northeastern University: 1800 BMP images, "
            "6 classes, 200x200, files named <class>_<n>.bmp) from its authors' page or a mirror", "research use"),
    "stanford_dogs": ("auto", [SourceFile("http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar", "images.tar",
                                          None),
                               SourceFile("http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar", "lists.tar",
                                          None)],
                      sources.stanford_dogs, "", "research use (images from ImageNet)"),
    "flowers102": ("auto", [SourceFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                                       "102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"),
                            SourceFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                                       "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
                            SourceFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat", "setid.mat",
                                       "a5357ecc9cb78c4bef273ce3793fc85c")],
                   sources.flowers102, "", "research use"),
    "stanford_cars": ("manual", [], sources.stanford_cars,
                      "the original URL is dead and torchvision no longer downloads it: get cars_train.tgz, "
                      "cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat from a mirror (e.g. the "
                      "Kaggle copy of Stanford Cars) into one folder", "research use (images from the web)"),
    "plantvillage": ("manual", [], sources.class_folders("Plant_leave_diseases_dataset_without_augmentation",
                                                         test_ratio=0.2),
                     "download Plant_leave_diseases_dataset_without_augmentation.zip (39 classes with "
                     "Background_without_leaves, 55448 images) from the PlantVillage record of Mendeley Data "
                     "(Pandian and Gopal, 2019)", "CC BY 4.0"),
    "plantclef": ("manual", [], sources.plantclef,
                  "register with LifeCLEF and download the PlantCLEF 2016 training data (images with one XML file "
                  "each); the paper's 20-class subset is unpublished, so ours is APPROXIMATE: the 20 species with "
                  "the most images, 90/10", "CC BY-NC-SA (PlantCLEF / Pl@ntNet)"),
    "galaxy10": ("auto", [SourceFile("https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5",
                                     "Galaxy10_DECals.h5", None)],
                 sources.galaxy10, "", "CC BY 4.0 (Leung and Bovy; DECaLS, Galaxy Zoo)"),
    **{f"breakhis_{mag}x": ("manual", [], sources.breakhis(mag),
                            "request BreaKHis_v1.tar.gz through the form of the Laboratorio Visao Robotica e Imagem "
                            "(UFPR), https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-"
                            "breakhis/", "research use") for mag in ("40", "100", "200", "400")},
    "rsna_pneumonia": ("manual", [], sources.rsna_pneumonia,
                       "accept the rules of the Kaggle competition rsna-pneumonia-detection-challenge and download "
                       "its data (stage_2_train_images/ and stage_2_train_labels.csv)", "Kaggle competition rules"),
}


def _paper_rows() -> list[dict]:
    text = resources.files("engine").joinpath("paper/datasets.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


@cache
def registry() -> dict[str, DatasetSpec]:
    specs = {"demo": DatasetSpec(
        name="demo", description="6 classes of drawn textured shapes, 64x64 JPEG, 600 train / 180 test; generated "
                                 "on first use", domain="synthetic", image_size=(64, 64), augment=True,
        obtain="generated", classes=6, paper_counts={"train": 600, "test": 180}, native_resolution="64x64")}
    for row in _paper_rows():
        obtain, files, convert, instructions, licence = SOURCES[row["dataset"]]
        approximate = " (approximate: our 20-species rule)" if row["dataset"] == "plantclef" else ""
        specs[row["dataset"]] = DatasetSpec(
            name=row["dataset"], description=row["paper_name"] + approximate, domain=row["domain"],
            image_size=parse_image_size(row["image_size_hw"]), augment=row["trivial_augment"] == "yes",
            obtain=obtain, classes=int(row["classes"]),
            paper_counts={"train": int(row["train_images"]), "test": int(row["test_images"])},
            native_resolution=row["native_resolution"], files=tuple(files), convert=convert,
            instructions=instructions, licence=licence, grouped=row["dataset"].startswith("breakhis"))
    return specs


def get_dataset_spec(name: str) -> DatasetSpec:
    try:
        return registry()[name]
    except KeyError:
        raise UserInputError(f"unknown dataset {name!r}; known: {', '.join(registry())}") from None


@dataclass(frozen=True)
class ResolvedDataset:
    name: str  # the registry name, or the custom folder's name
    path: Path
    image_size: tuple[int, int]
    augment: bool
    builtin: bool


def resolve_data_root(given: str | Path | None = None) -> Path:
    """Where built-in datasets live: `given` (--data-root, --root), else $ENGINE_DATA, else ~/.cache/engine/data."""
    return Path(given or os.environ.get("ENGINE_DATA") or Path.home() / ".cache" / "engine" / "data").expanduser()


def is_ready(spec: DatasetSpec, root: Path) -> bool:
    return is_current(root / spec.name) if spec.obtain == "generated" else is_prepared(root / spec.name)


def waits_for_user(spec: DatasetSpec, root: Path, download: bool) -> bool:
    """Whether `spec` is not ready under `root` and the engine cannot make it so on its own: a manual dataset not
    yet prepared from its files, or one to download under --no-download (_make_ready's refusals)."""
    return not is_ready(spec, root) and (spec.obtain == "manual" or (spec.obtain == "auto" and not download))


def prepared_meta(spec: DatasetSpec, root: Path) -> dict | None:
    return read_meta(root / spec.name)


def _make_ready(spec: DatasetSpec, root: Path, download: bool) -> Path:
    if spec.obtain == "generated":
        return ensure_demo(root)
    if is_prepared(root / spec.name):
        return root / spec.name
    if not waits_for_user(spec, root, download):
        return prepare_dataset(spec, root)
    if spec.obtain == "auto":
        raise UserInputError(f"{spec.name} is not prepared in {root} and --no-download is set; run "
                             f"`engine data prepare {spec.name} --root {root}`")
    raise UserInputError(f"{spec.name} is not prepared in {root}: {spec.instructions}; then run "
                         f"`engine data prepare {spec.name} --root {root} --from PATH`")


@cache  # once a process, however often the dataset is resolved
def _say_folder_of_a_builtin_name(name: str) -> None:
    """A folder named as a built-in dataset, here: `--data NAME` means the built-in one (and may download it), which
    the user who made the folder may not expect."""
    log.warning("--data %s is the built-in dataset; for the folder %s here, give ./%s", name, name, name)


def resolve_dataset(data: str, data_root: str | Path | None = None, download: bool = True) -> ResolvedDataset:
    """A registered dataset (made ready under the data root) or a custom folder at the path `data`."""
    root = resolve_data_root(data_root)
    spec = registry().get(data)
    if spec is not None:
        if Path(data).is_dir():
            _say_folder_of_a_builtin_name(data)
        return ResolvedDataset(spec.name, _make_ready(spec, root, download), spec.image_size, spec.augment,
                               builtin=True)
    path = Path(data).expanduser()
    if not path.exists():
        raise UserInputError(f"unknown dataset {data!r}: not a built-in dataset (see `engine datasets`) and no "
                             f"folder at that path")
    if not path.is_dir():
        raise UserInputError(f"dataset {data!r} is a file; expected a folder of train/<class>/ and test/<class>/")
    return ResolvedDataset(path.resolve().name, path, CUSTOM_DEFAULT_SIZE, CUSTOM_DEFAULT_AUGMENT, builtin=False)
