"""The backbone registry: one `BackboneSpec` per name, added with `register_backbone`.

A spec knows how to build the network for 1000 ImageNet classes, which submodule is the final classifier
(the only layer the paper replaces), and where its ImageNet weights come from.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from engine.errors import UserInputError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    paper_name: str
    build: Callable[[], nn.Module]  # the ImageNet architecture, 1000 classes, random init
    head_attr: str  # dotted path of the final nn.Linear, e.g. "classifier.2"
    weights_name: str  # human-readable source of the ImageNet weights (for `engine backbones`)
    weights_url: str  # where the ImageNet state dict is downloaded from, into the torch hub cache
    imagenet_top1: float
    size_multiple: int = 1  # input sides must be multiples of this (WaveMix: 32)
    min_side: int = 1  # the smallest input side whose downsampling leaves its last stages something to work on


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _BACKBONES[spec.name] = spec
    return spec


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern ('regnet*'), in registration order (the paper's)."""
    return [name for name in _BACKBONES if fnmatch.fnmatch(name, pattern)]


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise UserInputError(f"unknown backbone {name!r}; valid backbones: {', '.join(_BACKBONES)}") from None


def check_image_size(name: str, image_size: tuple[int, int]) -> None:
    spec = get_backbone_spec(name)
    multiple, smallest = spec.size_multiple, spec.min_side
    if any(side % multiple for side in image_size):
        raise UserInputError(f"{name} needs image sides divisible by {multiple}, got "
                             f"{image_size[0]}x{image_size[1]}; pass e.g. --image-size "
                             f"{max(multiple, round(image_size[0] / multiple) * multiple)}")
    if min(image_size) < smallest:
        raise UserInputError(f"{name} needs image sides of at least {smallest} px (its downsampling leaves nothing "
                             f"of a smaller image), got {image_size[0]}x{image_size[1]}; pass e.g. --image-size "
                             f"{max(smallest, image_size[0])}x{max(smallest, image_size[1])}")


def replace_head(model: nn.Module, head_attr: str, num_classes: int) -> nn.Linear:
    """Swap the final classifier for a freshly initialised one with `num_classes` outputs; nothing else changes."""
    old = model.get_submodule(head_attr)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"head {head_attr!r} is {type(old).__name__}, expected nn.Linear")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent_path, _, child = head_attr.rpartition(".")
    # setattr keeps the child's place in an nn.Sequential ("classifier.2"), so forward order is unchanged.
    setattr(model.get_submodule(parent_path), child, new)
    return new
