"""The dataset registry: built-in datasets by name, with the paper's per-dataset defaults.

`--data` is a registered name (looked up under the data root) or a path to a custom image folder. The
paper's 20 datasets join this registry with their download/prepare code; today it holds `demo`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import UserInputError
from engine.loaders.demo import ensure_demo, is_current

# The paper resizes every dataset to 256x256 (BreakHis 448x672) and uses TrivialAugment except on BreakHis
# and Galaxy10 (paper section 5); a custom folder gets the common case.
CUSTOM_DEFAULT_SIZE = (256, 256)
CUSTOM_DEFAULT_AUGMENT = True


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    image_size: tuple[int, int]  # (height, width) the run resizes to unless --image-size says otherwise
    augment: bool  # TrivialAugmentWide on by default
    locate: Callable[[Path], Path]  # data root -> the dataset's folder, made ready (generated, prepared)
    is_ready: Callable[[Path], bool]  # data root -> whether it is on disk already


DATASETS: dict[str, DatasetSpec] = {
    "demo": DatasetSpec(
        name="demo",
        description="6 classes of drawn textured shapes, 64x64 JPEG, 600 train / 180 test; generated on first use",
        image_size=(64, 64),
        augment=True,
        locate=ensure_demo,
        is_ready=lambda root: is_current(root / "demo"),
    ),
}


@dataclass(frozen=True)
class ResolvedDataset:
    name: str  # the registry name, or the custom folder's name
    path: Path
    image_size: tuple[int, int]
    augment: bool
    builtin: bool


def default_data_root() -> Path:
    return Path(os.environ.get("ENGINE_DATA") or Path.home() / ".cache" / "engine" / "data").expanduser()


def resolve_dataset(data: str, data_root: str | Path | None = None) -> ResolvedDataset:
    """A registered dataset (made ready under the data root) or a custom folder at the path `data`."""
    root = Path(data_root).expanduser() if data_root else default_data_root()
    spec = DATASETS.get(data)
    if spec is not None:
        return ResolvedDataset(spec.name, spec.locate(root), spec.image_size, spec.augment, builtin=True)
    path = Path(data).expanduser()
    if not path.exists():
        raise UserInputError(f"unknown dataset {data!r}: not a built-in dataset ({', '.join(DATASETS)}) and no "
                             f"folder at that path")
    if not path.is_dir():
        raise UserInputError(f"dataset {data!r} is a file; expected a folder of train/<class>/ and test/<class>/")
    return ResolvedDataset(path.resolve().name, path, CUSTOM_DEFAULT_SIZE, CUSTOM_DEFAULT_AUGMENT, builtin=False)
