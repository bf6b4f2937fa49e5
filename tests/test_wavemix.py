"""Native WaveMix-192/16 against the published implementation (PyPI wavemix 0.2.4 on pytorch_wavelets)."""
import json

import pytest
import torch

from engine.bench.layouts import convolution_backward_tensors
from engine.models import build_backbone, hub_cache_path, get_backbone_spec
from engine.models.wavemix import wavemix_192_16
from tests.conftest import run_main
from tests.oracles import reference_wavemix


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    native = wavemix_192_16(1000).eval()
    reference = reference_wavemix(1000).eval()
    return native, reference


def test_state_dict_has_the_reference_keys_and_shapes(models):
    native, reference = models
    ours, theirs = native.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[key].shape == theirs[key].shape for key in ours)
    assert round(sum(p.numel() for p in native.parameters()) / 1e6, 2) == 27.86


def test_output_equals_the_reference_with_the_same_weights(models):
    native, reference = models
    reference.load_state_dict(native.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = native(images), reference(images)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-5


def test_official_checkpoint_layout_loads_strictly_through_the_hub_cache():
    torch.manual_seed(1)
    official = reference_wavemix(1000).state_dict()  # the published model's own keys, as its checkpoint has them
    path = hub_cache_path(get_backbone_spec("wavemix").weights_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official, path)
    model = build_backbone("wavemix", 7, pretrained=True)
    assert model.pool[2].out_features == 7
    for key, value in official.items():
        if not key.startswith("pool.2."):
            assert torch.equal(model.state_dict()[key], value), key


def test_trains_under_bf16_autocast_and_channels_last():
    torch.manual_seed(0)
    model = build_backbone("wavemix", 3).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 2])).backward()
    assert logits.shape == (2, 3)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_block_compiles_as_one_graph():
    block = wavemix_192_16(3).layers[0].eval()
    x = torch.randn(2, 192, 16, 16)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), block(x), rtol=1e-5, atol=1e-5)


def test_the_residual_streams_gradient_reaches_every_block_channels_last():
    """The head's pooling gradient is a broadcast; taken as AdaptiveAvgPool2d, it made the whole residual stream's
    gradient NCHW, and each block's transposed convolution copied it (10.4 ms of an H100 step). Every feature map's
    gradient must reach its convolution channels_last (the stem's one-pixel border lines and its kernel
    composition, tiny, aside)."""
    torch.manual_seed(0)
    model = wavemix_192_16(3).to(memory_format=torch.channels_last)
    del model.layers[2:]  # two blocks show the stream as well as sixteen
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    gradients = [convolution["gradient"] for convolution in convolution_backward_tensors(model, images)]
    feature_maps = [g for g in gradients if g.shape[0] == 2 and min(g.shape[2:]) > 1]
    assert len(feature_maps) == 2 * 10 + 1  # per block: the reduction, 3 x (two 1x1, one transposed); the stem
    assert all(g.is_contiguous(memory_format=torch.channels_last) for g in feature_maps)
    with torch.no_grad():  # the pooling itself: the mean, in either layout
        features = torch.randn(2, 192, 4, 4)
        for layout in (torch.contiguous_format, torch.channels_last):
            pooled = model.pool[0](features.contiguous(memory_format=layout))
            assert torch.allclose(pooled, torch.nn.functional.adaptive_avg_pool2d(features, 1), atol=1e-6)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (256, 256)])
def test_composed_stem_is_the_published_stem_in_values_and_gradients(size):
    """One 8x8/4 convolution composed from the three (and the border ring the published way) computes the
    published stem, and hands each of its six parameters the same gradient."""
    torch.manual_seed(0)
    stem = wavemix_192_16(3).conv
    images = torch.randn(2, 3, *size)
    direction = torch.randn(2, 192, size[0] // 4, size[1] // 4)  # a fixed random direction: every patch counts
    results = {}
    for composed in (False, True):
        stem.composed = composed
        stem.zero_grad()
        patches = stem[2](stem[1](stem[0](images))) if not composed else stem.composed_patches(images)
        (patches * direction).sum().backward()
        results[composed] = (patches.detach(), [p.grad.clone() for conv in list(stem)[:3] for p in conv.parameters()])
    (published, published_grads), (composed, composed_grads) = results[False], results[True]
    assert composed.shape == published.shape == (2, 192, size[0] // 4, size[1] // 4)
    assert ((composed - published).norm() / published.norm()).item() < 1e-5
    for mine, theirs in zip(composed_grads, published_grads):
        assert ((mine - theirs).norm() / theirs.norm()).item() < 2e-5


def test_composed_stem_compiles_as_one_graph_and_runs_under_bf16_autocast():
    torch.manual_seed(0)
    stem = wavemix_192_16(3).conv.eval().to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(stem, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(images), stem(images), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = stem.composed_patches(images)
        published = stem[2](stem[1](stem[0](images)))
    assert half.dtype == torch.bfloat16
    assert ((half.float() - published).norm() / published.norm()).item() < 2e-2  # bf16 rounding, not a bug
    with torch.no_grad():  # a model cast to bf16 whole, without autocast, runs too
        whole = stem.to(torch.bfloat16).composed_patches(images.to(torch.bfloat16))
    assert ((whole.float() - published).norm() / published.norm()).item() < 2e-2


def test_image_sides_must_be_multiples_of_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        wavemix_192_16(3)(torch.randn(1, 3, 48, 48))


def test_engine_trains_wavemix_end_to_end(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    done = run_main(capsys, "train", "--backbone", "wavemix", "--data", str(tiny_dataset), "--no-pretrained",
                    "--image-size", "32", "--batch-size", "8", "--max-epochs", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "wavemix" / "tiny" / "f1" / "s0" / "result.json").read_text())["epochs"] == 1
    refused = run_main(capsys, "train", "--backbone", "wavemix", "--data", str(tiny_dataset), "--no-pretrained",
                       "--image-size", "48", "--out", str(out))
    assert refused.returncode == 2 and "wavemix needs image sides divisible by 32" in refused.stderr
