"""Seeded, stratified selection of samples: training fractions and carved-out validation or test splits.

Every function keeps the input order in its outputs and draws from its own generator, so the same samples and
seed give the same files on any machine, whatever ran before.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np

from engine.errors import UserInputError

Sample = tuple[str, int]  # (path relative to the dataset root, class index)


def _by_class(samples: list[Sample]) -> dict[int, list[int]]:
    positions: dict[int, list[int]] = defaultdict(list)
    for position, (_, label) in enumerate(samples):
        positions[label].append(position)
    return dict(sorted(positions.items()))


def _pick_per_class(samples: list[Sample], count_for: Callable[[int], int], seed: int) -> set[int]:
    """Positions of `count_for(n)` samples drawn at random from each class of n samples."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for positions in _by_class(samples).values():
        count = count_for(len(positions))
        chosen.update(positions[i] for i in rng.permutation(len(positions))[:count])
    return chosen


def stratified_fraction(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """round(fraction * n) samples of each class of n, and never fewer than one."""
    if not 0.0 < fraction <= 1.0:
        raise UserInputError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(samples)
    chosen = _pick_per_class(samples, lambda n: max(1, round(fraction * n)), seed)
    return [sample for position, sample in enumerate(samples) if position in chosen]


def stratified_split(samples: list[Sample], ratio: float, seed: int, purpose: str,
                     class_names: list[str]) -> tuple[list[Sample], list[Sample]]:
    """Split off round(ratio * n) samples per class (at least one, leaving at least one): (kept, split_off)."""
    if not 0.0 < ratio < 1.0:
        raise UserInputError(f"{purpose} ratio must be in (0, 1), got {ratio}")
    for label, positions in _by_class(samples).items():
        if len(positions) < 2:
            raise UserInputError(f"class '{class_names[label]}' has {len(positions)} image; a {purpose} split "
                                 f"needs at least 2 per class")
    chosen = _pick_per_class(samples, lambda n: min(n - 1, max(1, round(ratio * n))), seed)
    kept = [sample for position, sample in enumerate(samples) if position not in chosen]
    split_off = [sample for position, sample in enumerate(samples) if position in chosen]
    return kept, split_off


def count_per_class(samples: list[Sample], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for _, label in samples:
        counts[label] += 1
    return counts


def grouped_stratified_split(samples: list[Sample], groups: list[str], ratio: float,
                             seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off about `ratio` of each class's samples, moving whole groups (patients): no group on both sides.

    Groups are taken in a seeded random order, each one kept on the split-off side when that brings the side's
    count closer to round(ratio * n); a class with two or more groups keeps at least one on each side.
    """
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for positions in _by_class(samples).values():
        members: dict[str, list[int]] = defaultdict(list)
        for position in positions:
            members[groups[position]].append(position)
        names = sorted(members)
        target = ratio * len(positions)
        taken: list[str] = []
        count = 0
        for index in rng.permutation(len(names)):
            size = len(members[names[index]])
            if abs(count + size - target) < abs(count - target) and len(taken) < len(names) - 1:
                taken.append(names[index])
                count += size
        if not taken and len(names) > 1:
            taken.append(names[int(rng.integers(len(names)))])
        chosen.update(position for name in taken for position in members[name])
    kept = [sample for position, sample in enumerate(samples) if position not in chosen]
    split_off = [sample for position, sample in enumerate(samples) if position in chosen]
    return kept, split_off
