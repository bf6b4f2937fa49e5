import csv
import logging
import urllib.error

import pytest
import torch

from engine.errors import UserInputError, WeightsUnavailableError
from engine.models import build_backbone, get_backbone_spec, hub_cache_path, list_backbones
from tests.conftest import REPO, run_main

PAPER_BACKBONES = {row["backbone"]: row for row in csv.DictReader(open(REPO / "engine" / "paper" / "backbones.csv"))}


def count_params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_registry_holds_every_backbone_of_the_paper():
    assert set(list_backbones()) == set(PAPER_BACKBONES)
    assert list_backbones("regnet*") == ["regnet_y_3_2gf"]


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_matches_paper_table(name):
    row = PAPER_BACKBONES[name]
    spec = get_backbone_spec(name)
    assert spec.head_attr == row["head_attr"]
    assert spec.weights_name == row["torchvision_weights"]
    torch.manual_seed(0)
    imagenet = build_backbone(name, 1000)
    assert abs(count_params(imagenet) - float(row["params_m"])) <= 0.05
    head = imagenet.get_submodule(spec.head_attr)
    assert (head.in_features, head.out_features) == (int(row["head_in_features"]), 1000)


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_for_three_classes_trains_a_step_at_64px(name):
    spec = get_backbone_spec(name)
    torch.manual_seed(0)
    imagenet_state = build_backbone(name, 1000).state_dict()
    torch.manual_seed(0)
    model = build_backbone(name, 3).to(memory_format=torch.channels_last)
    # Only the classifier differs from the ImageNet architecture.
    state = model.state_dict()
    assert state.keys() == imagenet_state.keys()
    changed = {key for key in state if state[key].shape != imagenet_state[key].shape}
    assert changed == {f"{spec.head_attr}.weight", f"{spec.head_attr}.bias"}

    images = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    logits = model(images)
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(UserInputError, match="unknown backbone 'resnet51'.*resnet50.*shufflenet_v2_x2_0"):
        build_backbone("resnet51", 10)


@pytest.mark.parametrize("name", [name for name in list_backbones() if get_backbone_spec(name).min_side > 1
                                  and get_backbone_spec(name).size_multiple == 1])
def test_each_backbone_takes_its_smallest_side_and_refuses_one_less_in_one_line(name):
    """The bound is the network's own: it runs at min_side on either side, fails a pixel below it, and the engine
    refuses that size before training, in one line, instead of failing in the first forward pass."""
    from engine.models import check_image_size
    smallest = get_backbone_spec(name).min_side
    model = build_backbone(name, 3).eval()
    with torch.inference_mode():
        for size in [(smallest, smallest), (smallest, 64), (64, smallest)]:
            check_image_size(name, size)
            assert model(torch.randn(1, 3, *size)).shape == (1, 3)
        for size in [(smallest - 1, 64), (64, smallest - 1)]:
            with pytest.raises(RuntimeError):
                model(torch.randn(1, 3, *size))
            with pytest.raises(UserInputError, match=f"{name} needs image sides of at least {smallest} px"):
                check_image_size(name, size)


def save_imagenet_file(name: str, seed: int = 1) -> dict:
    """Put a (random) ImageNet state dict where torch's hub cache keeps the real one."""
    torch.manual_seed(seed)
    state = get_backbone_spec(name).build().state_dict()
    path = hub_cache_path(get_backbone_spec(name).weights_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_pretrained_loads_cached_imagenet_weights_and_replaces_only_the_head():
    imagenet = save_imagenet_file("shufflenet_v2_x2_0")
    model = build_backbone("shufflenet_v2_x2_0", 5, pretrained=True)
    state = model.state_dict()
    for key, value in imagenet.items():
        if key.startswith("fc."):
            assert state[key].shape[0] == 5
        else:
            assert torch.equal(state[key], value), key


def test_offline_without_cached_weights_names_file_and_url(monkeypatch):
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    spec = get_backbone_spec("mobilenet_v3_large")
    with pytest.raises(WeightsUnavailableError) as caught:
        build_backbone("mobilenet_v3_large", 4, pretrained=True)
    message = str(caught.value)
    assert spec.weights_url in message
    assert str(hub_cache_path(spec.weights_url)) in message
    assert "--no-pretrained" in message


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04cut", bytes(range(256)) * 20])
def test_an_unreadable_cached_file_is_named_with_what_to_do(content):
    """Empty, a zip cut short, or not a torch file at all: one line (an empty one was read as an interrupt, the
    others ended in torch.load's traceback), torch's reason cut to its first sentence."""
    cached = hub_cache_path(get_backbone_spec("wavemix").weights_url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(content)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_backbone("wavemix", 3, pretrained=True)
    message = str(caught.value)
    assert message.startswith(f"cached weights {cached} are unreadable (") and message.endswith(
        "); delete the file and retry, or train with --no-pretrained") and "If you are seeing" not in message


def test_an_eof_error_is_not_reported_as_an_interrupt(monkeypatch, capsys):
    """click turns every EOFError into its Abort, which reads as Ctrl-C; an EOFError nothing caught is a bug or a
    file cut short, and keeps its traceback."""
    from engine import models

    def cut_short(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(models, "list_backbones", cut_short)
    with pytest.raises(EOFError, match="Ran out of input"):
        run_main(capsys, "backbones")
    assert "interrupted" not in capsys.readouterr().err


def test_a_download_whose_checksum_differs_is_refused_and_not_cached(monkeypatch, tmp_path):
    """torchvision names each file by its SHA-256 prefix (resnet50-11ad3fa6.pth): a download that does not hash to
    it (cut short, altered on the way) must not land in the cache, where every later run would load it."""
    import io
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    served = (tmp_path / "other.pth").read_bytes()

    class Response(io.BytesIO):  # what urlopen answers, with another file's bytes
        def info(self):
            return self

        def get_all(self, header):  # the response's headers: only Content-Length is asked
            return [str(len(served))]

    monkeypatch.setattr(torch.hub, "urlopen", lambda request: Response(served))
    spec = get_backbone_spec("resnet50")
    with pytest.raises(WeightsUnavailableError, match="invalid hash value"):
        build_backbone("resnet50", 4, pretrained=True)
    cached = hub_cache_path(spec.weights_url)
    assert not cached.exists() and not list(cached.parent.glob("*.partial"))


def test_weights_file_full_model_loads_exactly(tmp_path):
    torch.manual_seed(3)
    source = build_backbone("shufflenet_v2_x2_0", 3)
    path = tmp_path / "model.pt"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}}, path)  # a compiled run's
    torch.manual_seed(4)
    loaded = build_backbone("shufflenet_v2_x2_0", 3, weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_file_with_other_head_keeps_body_and_reinitialises_head(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="engine")
    torch.manual_seed(5)
    source = build_backbone("shufflenet_v2_x2_0", 1000)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(6)
    loaded = build_backbone("shufflenet_v2_x2_0", 7, weights=path)
    assert loaded.fc.out_features == 7
    assert torch.equal(loaded.conv1[0].weight, source.conv1[0].weight)
    assert "re-initialised" in caplog.text


def test_weights_file_of_another_architecture_is_refused_in_one_short_line(tmp_path):
    """Counts and a few keys, not torch's list of every key (kilobytes for a whole other backbone); a run's
    best.pt is traced to the backbone its config.json names."""
    path = tmp_path / "best.pt"
    torch.save({"model": build_backbone("resnet50", 3).state_dict()}, path)
    with pytest.raises(UserInputError, match=r"does not fit shufflenet_v2_x2_0: \d+ keys missing \(.*\), "
                                             r"\d+ keys unexpected \(.*\)$") as refused:
        build_backbone("shufflenet_v2_x2_0", 3, weights=path)
    assert len(str(refused.value)) < 400 and "\n" not in str(refused.value)
    (tmp_path / "config.json").write_text('{"backbone": "resnet50"}')
    with pytest.raises(UserInputError, match="; the config.json beside it says resnet50$"):
        build_backbone("shufflenet_v2_x2_0", 3, weights=path)
    wider = build_backbone("shufflenet_v2_x2_0", 3).state_dict()
    wider["conv1.0.weight"] = torch.zeros(48, 3, 3, 3)
    torch.save(wider, path)
    with pytest.raises(UserInputError, match=r"1 key of another shape \(conv1.0.weight\)"):
        build_backbone("shufflenet_v2_x2_0", 3, weights=path)
    with pytest.raises(UserInputError, match="does not exist"):
        build_backbone("shufflenet_v2_x2_0", 3, weights=tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")  # torch.load's EOFError says nothing: the user is told what it is
    with pytest.raises(UserInputError, match="empty.pt is empty$"):
        build_backbone("shufflenet_v2_x2_0", 3, weights=tmp_path / "empty.pt")


def test_shufflenet_keeps_a_channels_last_input_channels_last_and_computes_torchvisions_function():
    """torchvision's channel shuffle hands back NCHW after every block; ours shuffles in place of layout. Same
    modules, same state_dict, same outputs."""
    import torchvision

    torch.manual_seed(0)
    ours = build_backbone("shufflenet_v2_x2_0", 5).eval().to(memory_format=torch.channels_last)
    theirs = torchvision.models.shufflenet_v2_x2_0(num_classes=5).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    layouts = []
    for block in (block for stage in (ours.stage2, ours.stage3, ours.stage4) for block in stage):
        block.register_forward_hook(
            lambda module, inputs, output: layouts.append(output.is_contiguous(memory_format=torch.channels_last)))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mine = ours(images.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(mine, theirs(images), rtol=1e-4, atol=1e-5)
        assert len(layouts) == 16 and all(layouts)
        layouts.clear()
        assert torch.allclose(ours(images), theirs(images), rtol=1e-4, atol=1e-5)  # NCHW in: torchvision's path
