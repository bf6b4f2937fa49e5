"""WaveMix-192/16, level 3 (Jeevan et al., 2024), written natively on the fused Haar DWT (kernels/).

Same architecture and the same state_dict keys and shapes as the reference implementation (PyPI `wavemix`
0.2.4, `WaveMix(num_classes, depth=16, mult=2, ff_channel=192, final_dim=192, dropout=0.5, level=3,
patch_size=4)`), so its official ImageNet checkpoint loads with strict=True:

    conv      patchify stem: 3x3 conv 3->48, 3x3 conv 48->96, 4x4/4 conv 96->192, GELU, BatchNorm
    layers.N  16 residual wave blocks (below)
    pool      AdaptiveAvgPool2d(1), flatten, Linear(192, classes)   (`pool.2` is the classifier; the pooling is
              computed so that its gradient keeps the activations' layout: GlobalAveragePool)

A wave block reduces 192 channels to 48 with a 1x1 conv, takes 3 DWT levels of that, each level as
[LL (48), high bands (144)] = 192 channels at 1/2, 1/4, 1/8 of the side, and runs three feed-forward stacks
(1x1 conv, GELU, dropout, 1x1 conv, 4x4/2 transposed conv, BatchNorm) from the coarsest level up, each one's
upsampled output concatenated to the next finer level. The reference computes the three levels as six
single-level DWTs (J=1, 2 and 3 separately); we compute them once, fused.
No work at import time and no device assumption: the model is built where and when it is asked for.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.kernels import haar_dwt
from engine.models.registry import BackboneSpec, register_backbone

LEVELS = 3
SIZE_MULTIPLE = 4 * 2 ** LEVELS  # patch 4, then three halvings: input sides must be multiples of 32


def _feedforward(in_channels: int, hidden: int, ff_channel: int, out_channels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Conv2d(hidden, ff_channel, 1),
        nn.ConvTranspose2d(ff_channel, out_channels, 4, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
    )


class Level3WaveBlock(nn.Module):
    def __init__(self, mult: int = 2, ff_channel: int = 192, final_dim: int = 192, dropout: float = 0.5):
        super().__init__()
        half, hidden = final_dim // 2, final_dim * mult
        self.feedforward1 = _feedforward(final_dim + half, hidden, ff_channel, final_dim, dropout)
        self.feedforward2 = _feedforward(final_dim + half, hidden, ff_channel, half, dropout)
        self.feedforward3 = _feedforward(final_dim, hidden, ff_channel, half, dropout)
        self.reduction = nn.Conv2d(final_dim, final_dim // 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level1, level2, level3 = haar_dwt(self.reduction(x), LEVELS)
        x3 = self.feedforward3(level3)
        x2 = self.feedforward2(torch.cat((level2, x3), dim=1))
        return self.feedforward1(torch.cat((level1, x2), dim=1))


def _then(inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """The kernel of convolution `inner` followed by convolution `outer` (any stride): the full convolution of
    their taps, summed over the channels between (conv2d is cross-correlation, hence the flip)."""
    return F.conv2d(inner.transpose(0, 1), outer.flip(2, 3), padding=outer.shape[-1] - 1).transpose(0, 1)


class PatchifyStem(nn.Sequential):
    """The published stem, module for module (`conv.0` ... `conv.4`: conv 3->48 3x3, conv 48->96 3x3, conv 96->192
    4x4/4, GELU, BatchNorm), computed in one convolution when `composed` (the default).

    Its three convolutions have nothing between them: one linear map, which is one 8x8/4 convolution of the image
    whose kernel and bias are built from the three every step (in fp32; gradients reach all three through that).
    So the two full-resolution intermediate maps (48 and 96 channels at 256x256: 2.4 GB in bf16 at batch 128,
    written, and read again by the backward) are never made, and the convolution costs 2 x 192 x 192 FLOPs an
    output pixel instead of ~8 GFLOP an image (25x fewer).

    The one difference is at the border: the published code zero-pads the first convolution's output before the
    second, where the composition sees that convolution continued one pixel outside the image (its bias, and the
    image's border line through the kernel's edge taps). That ring of values is computed from the image's four
    border lines, carried through the last two kernels to the outermost patches, and subtracted: the published
    function exactly (to rounding; the tests compare with the published model), at a few line convolutions' cost.
    """

    def __init__(self, final_dim: int, patch_size: int):
        super().__init__(
            nn.Conv2d(3, final_dim // 4, 3, 1, 1),
            nn.Conv2d(final_dim // 4, final_dim // 2, 3, 1, 1),
            nn.Conv2d(final_dim // 2, final_dim, patch_size, patch_size),
            nn.GELU(),
            nn.BatchNorm2d(final_dim),
        )
        self.composed = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        first, second, patchify, activation, norm = self
        patches = self.composed_patches(images) if self.composed else patchify(second(first(images)))
        return norm(activation(patches))

    def composed_kernels(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kernel of all three, its bias, kernel of the last two), in fp32 whatever the autocast: a bf16
        composition would round every partial product."""
        first, second, patchify = self[0], self[1], self[2]
        with torch.autocast(first.weight.device.type, enabled=False):
            last_two = _then(second.weight.float(), patchify.weight.float())
            kernel = _then(first.weight.float(), last_two)
            bias = second.bias.float() + second.weight.float().sum(dim=(2, 3)) @ first.bias.float()
            bias = patchify.bias.float() + patchify.weight.float().sum(dim=(2, 3)) @ bias
        return kernel, bias, last_two

    def composed_patches(self, images: torch.Tensor) -> torch.Tensor:
        first = self[0]
        patch = self[2].stride[0]
        halo = first.padding[0] + self[1].padding[0]  # image pixels beyond a patch that reach it: 2
        # in the images' dtype, as the modules would be (autocast, if on, casts both to its own anyway)
        kernel, bias, last_two = (tensor.to(images.dtype) for tensor in self.composed_kernels())
        patches = F.conv2d(images, kernel, bias, stride=patch, padding=halo)
        # The first convolution one pixel outside the image (rows -1 and H, columns -1 and W), which the published
        # code replaces by zeros: only the image's border line reaches there, through the kernel's far tap row.
        weight, first_bias = first.weight, first.bias
        top = F.conv2d(images[..., :1, :], weight[:, :, -1:, :], first_bias, padding=(0, halo))  # (N, 48, 1, W + 2)
        bottom = F.conv2d(images[..., -1:, :], weight[:, :, :1, :], first_bias, padding=(0, halo))
        left = F.conv2d(images[..., :, :1], weight[:, :, :, -1:], first_bias, padding=(halo, 0))  # (N, 48, H + 2, 1)
        right = F.conv2d(images[..., :, -1:], weight[:, :, :, :1], first_bias, padding=(halo, 0))
        # Carried through the last two convolutions, the ring reaches only the outermost patches, each line through
        # the matching edge taps of their composed kernel.
        patches[..., :1, :] -= F.conv2d(top, last_two[:, :, :1, :], stride=(1, patch))
        patches[..., -1:, :] -= F.conv2d(bottom, last_two[:, :, -1:, :], stride=(1, patch))
        patches[..., :, :1] -= F.conv2d(left, last_two[:, :, :, :1], stride=(patch, 1))
        patches[..., :, -1:] -= F.conv2d(right, last_two[:, :, :, -1:], stride=(patch, 1))
        # A corner of the ring lies on a row and a column line: it was taken away twice, so add it back once.
        for row, column, ring in ((0, 0, top), (0, -1, top), (-1, 0, bottom), (-1, -1, bottom)):
            patches[..., row, column] += ring[:, :, 0, column] @ last_two[:, :, row, column].T
        return patches


class GlobalAveragePool(nn.AdaptiveAvgPool2d):
    """AdaptiveAvgPool2d(1) (the published `pool.0`; no parameters), whose gradient comes out in the layout of its
    input.

    The pool's gradient is a broadcast: the (N, C) gradient of the classifier's input, stride 0 over H and W. The ops
    that take it in the backward lay their outputs out by it, and with every block's output added to the residual
    stream, AOT autograd gives the whole stream's gradient NCHW strides even when the activations are channels_last.
    torch 2.11's inductor hands each convolution's backward its inputs in those strides, so each block's transposed
    convolution (feedforward1, at the stem's resolution) copied its incoming gradient to channels_last inside
    cuDNN: on an H100, one strided copy per block, 10.4 ms of a 92.9 ms compiled step at batch 128, 256 px
    (bench/NOTES.md). Taken over the channels_last view (N, H, W, C), the broadcast runs along the middle axes and
    the gradient is channels_last too. Same values; an NCHW input keeps the plain mean (and an NCHW gradient).
    """

    def __init__(self):
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return x.permute(0, 2, 3, 1).mean(dim=(1, 2), keepdim=True).permute(0, 3, 1, 2)
        return x.mean(dim=(2, 3), keepdim=True)


class WaveMix(nn.Module):
    def __init__(self, num_classes: int = 1000, depth: int = 16, mult: int = 2, ff_channel: int = 192,
                 final_dim: int = 192, dropout: float = 0.5, patch_size: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(Level3WaveBlock(mult, ff_channel, final_dim, dropout) for _ in range(depth))
        self.pool = nn.Sequential(GlobalAveragePool(), nn.Flatten(1), nn.Linear(final_dim, num_classes))
        self.conv = PatchifyStem(final_dim, patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(f"WaveMix needs image sides divisible by {SIZE_MULTIPLE} (patch 4, then 2^{LEVELS} "
                             f"for the DWT), got {height}x{width}")
        x = self.conv(images)
        for block in self.layers:
            x = block(x) + x
        return self.pool(x)


def wavemix_192_16(num_classes: int = 1000) -> WaveMix:
    return WaveMix(num_classes=num_classes, depth=16, mult=2, ff_channel=192, final_dim=192, dropout=0.5)


register_backbone(BackboneSpec(
    name="wavemix",
    paper_name="WaveMix-192/16 (level 3)",
    build=wavemix_192_16,
    head_attr="pool.2",
    weights_name="official WaveMix ImageNet checkpoint (wavemix_192_16_75.06.pth)",
    weights_url="https://huggingface.co/cloudwalker/wavemix/resolve/main/Saved_Models_Weights/ImageNet/"
                "wavemix_192_16_75.06.pth",
    imagenet_top1=75.32,  # paper Table 2
    size_multiple=SIZE_MULTIPLE,
))
