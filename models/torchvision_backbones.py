"""The paper's 11 torchvision backbones (paper Table 2; names, heads and weights as in paper/backbones.csv)."""
from __future__ import annotations

import torch
import torchvision
from torchvision.models import get_weight
from torchvision.models.shufflenetv2 import InvertedResidual, channel_shuffle

from engine.models.registry import BackboneSpec, register_backbone

# name, paper name, torchvision weights enum (the one the paper's top-1 column quotes), final classifier layer
TORCHVISION_BACKBONES = [
    ("resnet50", "ResNet-50", "ResNet50_Weights.IMAGENET1K_V2", "fc"),
    ("convnext_tiny", "ConvNeXt-Tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", "classifier.2"),
    ("swin_t", "Swin-Tiny", "Swin_T_Weights.IMAGENET1K_V1", "head"),
    ("swin_v2_t", "SwinV2-Tiny", "Swin_V2_T_Weights.IMAGENET1K_V1", "head"),
    ("efficientnet_v2_s", "EfficientNetV2-S", "EfficientNet_V2_S_Weights.IMAGENET1K_V1", "classifier.1"),
    ("densenet161", "DenseNet-161", "DenseNet161_Weights.IMAGENET1K_V1", "classifier"),
    ("mobilenet_v3_large", "MobileNetV3-Large", "MobileNet_V3_Large_Weights.IMAGENET1K_V2", "classifier.3"),
    ("regnet_y_3_2gf", "RegNetY-3.2GF", "RegNet_Y_3_2GF_Weights.IMAGENET1K_V2", "fc"),
    ("resnext50_32x4d", "ResNeXt-50 32x4d", "ResNeXt50_32X4D_Weights.IMAGENET1K_V2", "fc"),
    ("shufflenet_v2_x2_0", "ShuffleNetV2 2.0x", "ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1", "fc"),
]


def channels_last_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's channel shuffle (channel a * groups + b takes channel b * (C / groups) + a), in the layout of
    its input. torchvision's makes the shuffled tensor contiguous, i.e. NCHW, after every block: a channels_last
    model then converted each block's output back inside the next convolutions (eagerly in both directions;
    compiled, 18 of the backward's 56 convolutions saved an NCHW input, AOT autograd's strides)."""
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return channel_shuffle(x, groups)
    n, c, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous: the same memory
    shuffled = pixels.reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
    return shuffled.permute(0, 3, 1, 2)


class ShuffleBlock(InvertedResidual):
    """torchvision's ShuffleNetV2 block (same modules, same state_dict), shuffling in its input's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channels_last_shuffle(out, 2)


# The smallest input side each network takes: below it, its downsampling leaves a last stage less than its kernel
# (ConvNeXt's 2x2 stride-2 downsampling, DenseNet's 2x2 transition pooling, Swin's 4x4 patches); found by a forward
# pass at every side from 1 to 64 (tests/test_models.py checks both sides of each bound). The others take any side.
MIN_SIDES = {"convnext_tiny": 32, "densenet161": 29, "swin_t": 4, "swin_v2_t": 4}
# what a backbone's torchvision builder is also given: the same architecture and parameters, laid out better
BUILD_OPTIONS = {"shufflenet_v2_x2_0": {"inverted_residual": ShuffleBlock}}


def _register(name: str, paper_name: str, weights_name: str, head_attr: str) -> None:
    weights = get_weight(weights_name)
    builder = getattr(torchvision.models, name)
    options = BUILD_OPTIONS.get(name, {})
    register_backbone(
        BackboneSpec(
            name=name,
            paper_name=paper_name,
            build=lambda: builder(weights=None, num_classes=1000, **options),
            head_attr=head_attr,
            weights_name=weights_name,
            weights_url=weights.url,
            imagenet_top1=weights.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            min_side=MIN_SIDES.get(name, 1),
        )
    )


for _row in TORCHVISION_BACKBONES:
    _register(*_row)
