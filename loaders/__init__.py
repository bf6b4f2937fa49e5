"""Datasets and input pipelines.

`resolve_dataset` finds a dataset (built-in or a custom folder), `scan_dataset` indexes its files,
`select_samples` applies the run's fraction and selection split, and `PIPELINES[name]` builds the batches
the trainer iterates.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UnreadableImageError
from engine.loaders.datasets import (CUSTOM_DEFAULT_AUGMENT, CUSTOM_DEFAULT_SIZE, DatasetSpec, ResolvedDataset,
                                     get_dataset_spec, is_ready, prepared_meta, registry, resolve_data_root,
                                     resolve_dataset, waits_for_user)
from engine.loaders.prepare import prepare_dataset
from engine.loaders.index import IMAGE_EXTENSIONS, SPLIT_SEED, DatasetIndex, scan_dataset
from engine.loaders.splits import Sample, count_per_class, stratified_fraction, stratified_split
from engine.loaders.dali_pipeline import DaliBatches, dali_available
from engine.loaders.resident import ResidentBatches, fits_budget, has_small_images
from engine.loaders.torch_pipeline import TorchBatches, unreadable_files

# Input pipelines by --loader name; each takes (index, samples, **options) and yields device batches.
PIPELINES = {"torch": TorchBatches, "dali": DaliBatches, "resident": ResidentBatches}

# Share of the (fraction-selected) training images carved out as validation set under --select-on val when the
# dataset has no val/ folder of its own. 10 %, stratified, at least one image per class.
VAL_RATIO = 0.1


@dataclass
class RunSamples:
    train: list[Sample]
    selection: list[Sample]  # what early stopping and model selection look at (test or val)
    test: list[Sample]
    select_on: str  # "test" or "val"


def check_files(run: RunSamples, index: DatasetIndex, skip: bool, loader: str) -> list[str]:
    """Check every file of the run: broken, or one that `loader` would misread. Such files are an error naming the
    first, or with `skip` are returned, for `leave_out` (the run's config.json lists them)."""
    files = sorted(set(run.train) | set(run.selection) | set(run.test))
    bad = unreadable_files(index, files, PIPELINES[loader].misread)
    if bad and not skip:
        first, why = next(iter(bad.items()))
        raise UnreadableImageError(f"cannot read image {index.root / first}" + (f": {why}" if why else "") + (
            f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") + "; --skip-bad-images leaves them out")
    return list(bad)


def leave_out(run: RunSamples, bad: list[str]) -> None:
    """Remove the files `bad` from every split of the run."""
    broken = set(bad)
    for split in ("train", "selection", "test"):
        setattr(run, split, [sample for sample in getattr(run, split) if sample[0] not in broken])


def select_samples(index: DatasetIndex, fraction: float, seed: int, select_on: str) -> RunSamples:
    """The run's training, selection and test files.

    The fraction is drawn from the training set only (the test set is never subsampled); a validation split
    is carved from the images the fraction leaves, so a 1 % run uses 1 % of the labels in all.
    """
    train = stratified_fraction(index.train, fraction, seed)
    if select_on == "test":
        return RunSamples(train, index.test, index.test, select_on)
    if index.val is not None:
        return RunSamples(train, index.val, index.test, select_on)
    train, val = stratified_split(train, VAL_RATIO, seed, "validation", index.classes)
    return RunSamples(train, val, index.test, select_on)


__all__ = ["check_files", "count_per_class", "CUSTOM_DEFAULT_AUGMENT", "CUSTOM_DEFAULT_SIZE", "dali_available",
           "DaliBatches", "DatasetIndex", "DatasetSpec", "fits_budget", "get_dataset_spec", "has_small_images",
           "IMAGE_EXTENSIONS", "is_ready", "leave_out", "PIPELINES", "prepare_dataset", "prepared_meta", "registry",
           "ResidentBatches", "resolve_data_root", "resolve_dataset", "ResolvedDataset", "RunSamples", "Sample",
           "scan_dataset", "select_samples", "SPLIT_SEED", "stratified_fraction", "stratified_split",
           "unreadable_files", "VAL_RATIO"]
