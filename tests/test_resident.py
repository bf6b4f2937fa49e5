"""The resident pipeline: decoded once, cached next to the dataset, batches gathered on the device."""
import json
import logging

import pytest
import torch

from engine.errors import UserInputError
from engine.loaders import PIPELINES, has_small_images, scan_dataset
from tests.conftest import CLASS_COLOURS, make_dataset, run_main


def batches(kind, index, samples, train, augment=False, size=(32, 32), seed=0, batch_size=5):
    return PIPELINES[kind](index, samples, image_size=size, augment=augment, batch_size=batch_size, train=train,
                           device=torch.device("cpu"), seed=seed, workers=0, channels_last=True)


def test_without_augmentation_at_native_size_it_equals_the_torch_loader(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    resident = torch.cat([x for x, _ in batches("resident", index, index.test, train=False).epoch(0)])
    reference = torch.cat([x for x, _ in batches("torch", index, index.test, train=False).epoch(0)])
    labels = torch.cat([y for _, y in batches("resident", index, index.test, train=False).epoch(0)])
    assert torch.equal(resident, reference)
    assert labels.tolist() == [label for _, label in index.test]
    assert resident.is_contiguous(memory_format=torch.channels_last)


def test_cached_next_to_the_dataset_and_reused(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    batches("resident", index, index.train, train=True)
    cached = list((tiny_dataset / ".engine-cache").glob("*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    batches("resident", index, index.train, train=True)
    assert cached[0].stat().st_mtime_ns == stamp
    assert scan_dataset(tiny_dataset).classes == index.classes  # the cache folder is not a class

    # a decode killed while writing its copy (SIGKILL: no cleanup) leaves a temporary file: the next decode removes it
    killed = cached[0].with_name(f".{cached[0].name}.tmp-99999.npy")
    killed.write_bytes(b"half a copy")
    cached[0].unlink()
    batches("resident", index, index.train, train=True)
    assert cached[0].exists() and not killed.exists()

    # an image replaced under its own name (a corrupt one fixed, the dataset prepared again) is decoded again
    from PIL import Image
    replaced = index.root / index.train[0][0]
    Image.new("RGB", (32, 32), (255, 255, 255)).save(replaced)
    again = batches("resident", index, index.train, train=False, batch_size=len(index.train))
    assert len(list((tiny_dataset / ".engine-cache").glob("*.npy"))) == 2
    assert again.images[0].min() == 255  # the new white image, not the cached old one


def test_runs_starting_together_decode_the_copy_once(tiny_dataset, monkeypatch):
    """A grid's cells of one dataset on several GPUs: one decodes, the others wait for its copy and read it."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.loaders import resident
    index, decoded, read_rgb = scan_dataset(tiny_dataset), [], resident.read_rgb

    def counted(path):
        decoded.append(path)
        return read_rgb(path)

    monkeypatch.setattr(resident, "read_rgb", counted)
    with ThreadPoolExecutor(3) as pool:
        copies = list(pool.map(lambda _: resident.decoded_images(index, index.train, (32, 32)), range(3)))
    assert len(decoded) == len(index.train) and all((copy == copies[0]).all() for copy in copies)


@pytest.mark.parametrize("damage", ["cut short", "another shape", "not numpy"])
def test_a_damaged_decoded_copy_is_decoded_again(tiny_dataset, caplog, damage):
    """The copy is a cache: a damaged one (a disk fault, a copy cut short by hand) is said and made again, where it
    ended the run in numpy's traceback."""
    import numpy as np

    from engine.loaders.resident import decoded_images
    index = scan_dataset(tiny_dataset)
    first = decoded_images(index, index.train, (32, 32))
    path = next((tiny_dataset / ".engine-cache").glob("*.npy"))
    {"cut short": lambda: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
     "another shape": lambda: np.save(path, first[:3]),
     "not numpy": lambda: path.write_bytes(b"garbage")}[damage]()
    with caplog.at_level("WARNING", logger="engine"):
        again = decoded_images(index, index.train, (32, 32))
    assert np.array_equal(again, first) and np.array_equal(np.load(path), first)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"the decoded copy {path} is damaged (")
    assert warnings[0].endswith("): decoding again")


def test_images_of_different_sides_are_decoded_in_parallel_at_the_run_size_and_a_bad_one_is_named(tmp_path):
    from PIL import Image

    from engine.errors import UnreadableImageError
    from engine.loaders.resident import decoded_images
    dataset = make_dataset(tmp_path / "mixed", {"train": 6, "test": 2}, side=40)
    Image.new("RGB", (56, 24), (0, 255, 0)).save(next((dataset / "train").rglob("*.png")))  # another side
    index = scan_dataset(dataset)
    copy = batches("resident", index, index.train, train=False, size=(32, 32), batch_size=6)
    reference = batches("torch", index, index.train, train=False, size=(32, 32), batch_size=6)
    ours, theirs = (torch.cat([x for x, _ in pipeline.epoch(0)]) for pipeline in (copy, reference))
    assert copy.images.shape[-2:] == (32, 32) and torch.equal(ours, theirs)  # resized once, as torch resizes
    larger = make_dataset(tmp_path / "larger", {"train": 2, "test": 1}, side=48)  # one side, larger than the run's
    assert batches("resident", scan_dataset(larger), scan_dataset(larger).train, train=False).images.shape[-2:] \
        == (32, 32)
    bad = next((dataset / "test").rglob("*.png"))
    bad.write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match=f"cannot read image {bad}"):
        decoded_images(index, index.test, (32, 32))


def test_resized_and_augmented_batches_are_seeded_and_labelled(tiny_dataset):
    index = scan_dataset(tiny_dataset)

    def first(seed):
        return next(iter(batches("resident", index, index.train, train=True, augment=True, size=(16, 16),
                                 seed=seed).epoch(1)))

    (a, la), (b, lb), (c, _) = first(0), first(0), first(1)
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    plain = batches("resident", index, index.train, train=True, size=(16, 16), batch_size=8)
    epoch = [y for _, y in plain.epoch(1)]
    assert len(epoch) == 4 and sum(len(y) for y in epoch) == 32  # the partial batch is dropped


def test_small_images_are_detected(tmp_path):
    assert has_small_images(scan_dataset(make_dataset(tmp_path / "small", {"train": 2, "test": 1}, side=32)))
    assert not has_small_images(scan_dataset(make_dataset(tmp_path / "big", {"train": 2, "test": 1}, side=96)))


def test_auto_keeps_small_images_resident_only_within_the_gpu_budget(tiny_dataset, monkeypatch, caplog):
    from types import SimpleNamespace

    from engine.loaders import resident
    from engine.run import resolve_loader

    index = scan_dataset(tiny_dataset)  # 36 training images of 32x32x3 bytes: 110592 bytes
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *args: SimpleNamespace(total_memory=4_000_000))
    monkeypatch.setattr("engine.run.dali_available", lambda: False)
    assert resident._budget(torch.device("cuda")) == 200_000  # 5 % of the card
    assert resolve_loader("auto", "cuda", index, (32, 32)) == "resident"
    monkeypatch.setenv("ENGINE_MEMORY_SHARE", "0.5")  # one of two runs packed on the card: half the budget
    assert resident._budget(torch.device("cuda")) == 100_000
    with caplog.at_level("INFO", logger="engine"):
        assert resolve_loader("auto", "cuda", index, (32, 32)) == "torch"
    assert "too many for the resident budget" in caplog.text
    with pytest.raises(UserInputError, match="need 0.0 GiB, over the resident loader's budget on cuda"):
        PIPELINES["resident"](index, index.train, image_size=(32, 32), augment=False, batch_size=4, train=True,
                              device=torch.device("cuda"), seed=0, workers=0, channels_last=True)


def test_without_dali_auto_keeps_larger_images_resident_where_they_fit(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from engine.run import resolve_loader

    index = scan_dataset(make_dataset(tmp_path / "big", {"train": 4, "test": 2}, side=96))  # not small images
    card = SimpleNamespace(total_memory=100_000_000)  # 5 %: 5 MB a split, 12 x 32x32x3 bytes fit
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *args: card)
    monkeypatch.setattr("engine.run.dali_available", lambda: True)
    assert resolve_loader("auto", "cuda", index, (32, 32)) == "dali"  # DALI first, when it is there
    monkeypatch.setattr("engine.run.dali_available", lambda: False)
    with caplog.at_level("INFO", logger="engine"):
        assert resolve_loader("auto", "cuda", index, (32, 32)) == "resident"
    assert "DALI is not installed; the decoded images fit the GPU budget" in caplog.text
    card.total_memory = 100  # nothing fits: the torch loader, as before
    assert resolve_loader("auto", "cuda", index, (32, 32)) == "torch"
    assert resolve_loader("auto", "cpu", index, (32, 32)) == "torch"  # without a GPU, always


def test_engine_trains_with_the_resident_loader(tiny_dataset, tmp_path, capsys):
    done = run_main(capsys, "train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--no-pretrained",
                    "--image-size", "32", "--batch-size", "8", "--max-epochs", "1", "--loader", "resident",
                    "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    config = json.loads(next((tmp_path / "r").rglob("config.json")).read_text())
    assert config["loader"] == "resident" and len(CLASS_COLOURS) == config["num_classes"]
