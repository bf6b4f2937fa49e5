"""The backbones: `list_backbones()`, `build_backbone(name, num_classes, pretrained=False)`.

Adding a backbone is one `register_backbone(BackboneSpec(...))` call in a module imported below.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from engine.models import torchvision_backbones, wavemix  # noqa: F401  (each registers its backbones)
from engine.models.registry import (BackboneSpec, check_image_size, get_backbone_spec, list_backbones,
                                    register_backbone, replace_head)
from engine.models.weights import hub_cache_path, load_pretrained_state, load_weights_file

log = logging.getLogger("engine")

__all__ = ["BackboneSpec", "build_backbone", "check_image_size", "get_backbone_spec", "list_backbones",
           "register_backbone", "hub_cache_path", "load_pretrained_state"]


def build_backbone(name: str, num_classes: int, pretrained: bool = False,
                   weights: str | Path | None = None) -> nn.Module:
    """The named backbone with a fresh `num_classes`-way classifier.

    pretrained: start from the ImageNet weights (torch hub cache), then replace only the classifier.
    weights: a local state dict to load after that (a full model, or a backbone with another head).
    """
    spec = get_backbone_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = spec.build()
    if pretrained:
        model.load_state_dict(load_pretrained_state(spec.weights_url))
        log.info("%s: loaded ImageNet weights %s", name, spec.weights_name)
    replace_head(model, spec.head_attr, num_classes)
    if weights is not None:
        load_weights_file(model, weights, spec.head_attr, name)
    return model
