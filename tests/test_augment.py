"""Batched TrivialAugmentWide (loaders/augment.py) against torchvision's, image by image."""
from collections import Counter

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from engine.loaders.augment import (NAMES, OPERATIONS, SPACE, augment_and_normalise, draw, random_draws,
                                   trivial_augment_wide)
from engine.loaders.torch_pipeline import DeviceNormaliser


def photos(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images with edges and flat areas (noise alone would hide geometric mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (count, 3, 4, 5), generator=generator, dtype=torch.uint8).float()
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    edges = (torch.rand(count, 1, height, width, generator=generator) > 0.9).float() * 80
    return (smooth + edges).clamp(0, 255).to(torch.uint8)


def torchvision_augmented(images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    transform = v2.TrivialAugmentWide()
    out = []
    for image, seed in zip(images, seeds):
        torch.manual_seed(seed)
        out.append(transform(image))
    return torch.stack(out)


def assert_equal(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    difference = (ours.int() - theirs.int()).abs()
    assert torch.equal(ours, theirs), f"{int((difference > 0).sum())} pixels differ, by up to {int(difference.max())}"


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40)])
def test_a_batch_equals_torchvision_image_by_image(height, width):
    seeds = list(range(1000, 1280))
    images = photos(len(seeds), height, width)
    assert {draw(seed)[0] for seed in seeds} == set(NAMES)  # every operation is exercised
    assert_equal(trivial_augment_wide(images, seeds), torchvision_augmented(images, seeds))


def test_the_draws_are_torchvisions():
    """A change in torchvision's sampling would change which operation an image gets: caught here directly."""
    image = photos(1, 16, 16)[0]
    for seed in range(60):
        name, magnitude = draw(seed)
        torch.manual_seed(seed)
        expected = v2.TrivialAugmentWide()(image)
        assert_equal(OPERATIONS.get(name, lambda x, m: x)(image[None], [magnitude])[0], expected)


@pytest.mark.parametrize("height, width", [(16, 16), (12, 20)])
def test_quarter_turns_take_torchvisions_exact_paths(height, width):
    images = photos(4, height, width)
    angles = [90.0, -90.0, 0.0, 45.0]
    ours = OPERATIONS["Rotate"](images, angles)
    for image, angle, result in zip(images, angles, ours):
        assert torch.equal(result, TF.rotate(image, angle))


def test_every_image_keeps_its_own_draw_whatever_else_is_in_the_batch():
    images = photos(6, 16, 16)
    alone = torch.cat([trivial_augment_wide(images[i:i + 1], [i + 7]) for i in range(6)])
    assert torch.equal(trivial_augment_wide(images, [i + 7 for i in range(6)]), alone)


def test_the_sharpness_blur_never_starts_cudnns_algorithm_search(monkeypatch):
    """Training turns cuDNN's search on; the number of images drawing Sharpness changes every batch, and each new
    count would be a new convolution shape to time (tens of ms each on a GPU): the blur runs without it, and the
    training's setting is back afterwards."""
    seen, convolve = [], torch.nn.functional.conv2d

    def conv2d(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return convolve(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    for count in (3, 5):
        OPERATIONS["Sharpness"](photos(count, 16, 16), [0.5] * count)
    assert seen == [False, False] and torch.backends.cudnn.benchmark is True


# --- The fused kernel (kernels/trivial_augment.py, through Triton's interpreter here) -----------------------------
@pytest.mark.parametrize("height, width, dtype, layout", [(32, 32, torch.float32, torch.channels_last),
                                                          (24, 40, torch.bfloat16, torch.contiguous_format)])
def test_the_fused_kernel_computes_what_the_batched_operations_and_the_normaliser_do(height, width, dtype, layout):
    """Bit for bit, every operation, both sides' parities, each output dtype and layout the loaders hand over;
    the input as either layout (the resident copy is channels_last, a plain tensor is not)."""
    seeds = list(range(1000, 1280))
    images = photos(len(seeds), height, width).contiguous(memory_format=torch.channels_last if
                                                           layout == torch.contiguous_format else
                                                           torch.contiguous_format)
    normalise = DeviceNormaliser(torch.device("cpu"), layout, dtype)
    draws = [draw(seed) for seed in seeds]
    fused = augment_and_normalise(images, draws, normalise, fused=True)
    expected = normalise.images(trivial_augment_wide(images, seeds))
    assert fused.dtype == dtype and fused.is_contiguous(memory_format=layout)
    differing = sorted({draws[i][0] for i in torch.nonzero((fused != expected).flatten(1).any(1)).flatten().tolist()})
    assert not differing, f"the fused kernel differs on {differing}"


def test_the_fused_kernel_takes_an_empty_batch_and_refuses_other_than_rgb():
    from engine.kernels.trivial_augment import augment_normalise
    normalise = DeviceNormaliser(torch.device("cpu"), torch.channels_last, torch.float32)
    empty = augment_and_normalise(photos(0, 8, 8), [], normalise, fused=True)
    assert empty.shape == (0, 3, 8, 8)
    grey = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="RGB images, not 1 channels"):
        augment_normalise(grey, *(None,) * 5, torch.float32, torch.channels_last)


def test_random_draws_follow_torchvisions_space_and_repeat_with_their_generator():
    draws = random_draws(np.random.default_rng(5), 4000)
    assert draws == random_draws(np.random.default_rng(5), 4000)
    counts = Counter(name for name, _ in draws)
    assert set(counts) == set(NAMES) and min(counts.values()) > 4000 / len(NAMES) * 0.7  # uniform over operations
    for name in NAMES:
        magnitudes, signed = SPACE[name]
        drawn = {magnitude for drawn_name, magnitude in draws if drawn_name == name}
        if magnitudes is None:
            assert drawn == {0.0}
            continue
        allowed = {float(m) for m in magnitudes} | ({-float(m) for m in magnitudes} if signed else set())
        assert drawn <= allowed and len(drawn) > len(allowed) // 2
        assert any(m < 0 for m in drawn) == signed


def test_a_loader_says_which_path_augments_its_batches(caplog):
    """No GPU here: the batched torch operations, said in the run's log (a GPU with triton takes the kernel)."""
    from engine.loaders.augment import fused_for
    with caplog.at_level("INFO", logger="engine"):
        assert fused_for("resident loader", torch.device("cpu")) is False
    assert "resident loader: TrivialAugmentWide and the normalisation by batched torch operations" in caplog.text
