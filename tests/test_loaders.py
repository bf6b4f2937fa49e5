import json

import numpy as np
import pytest
import torch

from engine.errors import UnreadableImageError, UserInputError
from engine.loaders import (PIPELINES, get_dataset_spec, VAL_RATIO, count_per_class, resolve_dataset, scan_dataset,
                            select_samples, stratified_fraction)
from engine.loaders.demo import CLASSES, IMAGES_PER_CLASS, draw_image
from engine.loaders.torch_pipeline import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import CLASS_COLOURS, make_dataset, write_image


def labels_of(samples):
    return [label for _, label in samples]


# --- Indexing ------------------------------------------------------------------------------------------------------
def test_scan_train_test_layout(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    assert index.classes == sorted(CLASS_COLOURS)  # blue, green, red
    assert len(index.train) == 36 and len(index.test) == 12 and index.val is None
    for path, label in index.train + index.test:
        assert path.split("/")[1] == index.classes[label]


def test_scan_uses_a_val_folder_when_there_is_one(tmp_path):
    index = scan_dataset(make_dataset(tmp_path / "d", {"train": 3, "test": 2, "val": 2}))
    assert len(index.val) == 6 and all(path.startswith("val/") for path, _ in index.val)


def test_one_folder_is_split_by_a_stratified_seeded_test_split(tmp_path):
    make_dataset(tmp_path / "d", {"all": 10})
    root = tmp_path / "d" / "all"
    first, second = scan_dataset(root, test_split=0.3), scan_dataset(root, test_split=0.3)
    assert first.train == second.train and first.test == second.test
    assert count_per_class(first.test, 3) == [3, 3, 3]
    assert not set(first.train) & set(first.test)
    assert len(first.train) + len(first.test) == 30


@pytest.mark.parametrize("arrange, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "is empty"),
    (lambda root: (root / "train" / "a").mkdir(parents=True), "has train/ but no test/"),
    (lambda root: [(root / split / c).mkdir(parents=True) for split in ("train", "test") for c in "ab"],
     "has no images"),
    (lambda root: write_image(root / "a" / "1.png", (9, 9, 9)), r"has one class folder \(a\); a classifier needs two"),
])
def test_bad_dataset_folders_are_named(tmp_path, arrange, message):
    root = tmp_path / "data"
    arrange(root)
    with pytest.raises(UserInputError, match=message):
        scan_dataset(root)


def test_empty_class_folder_is_named(tiny_dataset):
    (tiny_dataset / "train" / "yellow").mkdir()
    with pytest.raises(UserInputError, match="train/yellow has no images"):
        scan_dataset(tiny_dataset)


def test_test_class_unknown_to_train_is_refused(tiny_dataset):
    write_image(tiny_dataset / "test" / "purple" / "p.png", (128, 0, 128))
    with pytest.raises(UserInputError, match="test/purple has no counterpart"):
        scan_dataset(tiny_dataset)


def test_a_test_folder_without_some_training_classes_is_named_in_a_warning(tiny_dataset, caplog):
    import shutil
    shutil.rmtree(tiny_dataset / "test" / "green")
    with caplog.at_level("WARNING", logger="engine"):
        index = scan_dataset(tiny_dataset)
    assert index.num_classes == 3  # the training classes decide the labels
    assert "test has no folder for 1 of the 3 training classes (green): its accuracy leaves them out" in caplog.text


def test_files_that_are_not_images_of_a_kind_the_loaders_read_are_counted_as_left_out(tiny_dataset, caplog):
    for name in ("red/a.gif", "red/b.GIF", "green/sub/c.jfif", "green/notes.txt", "blue/README", "blue/.DS_Store"):
        (tiny_dataset / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (tiny_dataset / "train" / name).write_bytes(b"x")
    with caplog.at_level("WARNING", logger="engine"):
        index = scan_dataset(tiny_dataset)
    assert len(index.train) == 3 * 12
    assert caplog.messages == [f"{tiny_dataset / 'train'}: 5 files left out (2 .gif, 1 .jfif, 1 .txt, 1 README), "
                               f"not of the image kinds the engine reads (.jpg, .jpeg, .png, .bmp, .tif, .tiff, "
                               f".webp, .ppm, .pgm)"]


def test_folders_beside_train_and_test_are_named_as_left_out(tiny_dataset, caplog):
    write_image(tiny_dataset / "yellow" / "y.png", (200, 200, 0))  # a class folder put at the top by mistake
    (tiny_dataset / ".engine-cache").mkdir()  # hidden: the engine's own, said nothing of
    with caplog.at_level("WARNING", logger="engine"):
        index = scan_dataset(tiny_dataset)
    assert index.classes == ["blue", "green", "red"]
    assert caplog.messages == [f"{tiny_dataset}: yellow/ left out (a dataset with train/ reads only train/, val/ "
                               f"and test/)"]


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(UserInputError, match="unknown dataset 'cifar11'"):
        resolve_dataset("cifar11", tmp_path)


# --- Fractions and selection splits ----------------------------------------------------------------------------------
def many_samples():
    # 3 classes of 50, 20 and 3 images
    return [(f"c{label}/{i}.png", label) for label, count in enumerate([50, 20, 3]) for i in range(count)]


def test_fraction_is_seeded_stratified_and_keeps_one_per_class():
    samples = many_samples()
    chosen = stratified_fraction(samples, 0.1, seed=1)
    assert chosen == stratified_fraction(samples, 0.1, seed=1)
    assert chosen != stratified_fraction(samples, 0.1, seed=2)
    assert count_per_class(chosen, 3) == [5, 2, 1]
    assert count_per_class(stratified_fraction(samples, 0.01, seed=1), 3) == [1, 1, 1]
    assert set(chosen) <= set(samples)
    assert stratified_fraction(samples, 1.0, seed=3) == samples


def test_fraction_never_touches_the_test_set(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    run = select_samples(index, 0.25, seed=0, select_on="test")
    assert count_per_class(run.train, 3) == [3, 3, 3]
    assert run.test == index.test and run.selection == index.test


def test_select_on_val_carves_a_disjoint_stratified_split(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    run = select_samples(index, 1.0, seed=0, select_on="val")
    assert not set(run.train) & set(run.selection)
    assert sorted(run.train + run.selection) == sorted(index.train)
    assert count_per_class(run.selection, 3) == [round(VAL_RATIO * 12)] * 3
    assert run.test == index.test


def test_select_on_val_with_one_image_per_class_is_refused(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    with pytest.raises(UserInputError, match="needs at least 2 per class"):
        select_samples(index, 0.01, seed=0, select_on="val")


# --- The demo dataset ----------------------------------------------------------------------------------------------
def test_demo_is_generated_once_in_the_standard_layout(tmp_path):
    dataset = resolve_dataset("demo", tmp_path)
    assert dataset.image_size == get_dataset_spec("demo").image_size and dataset.builtin
    index = scan_dataset(dataset.path)
    assert index.classes == sorted(CLASSES) and len(CLASSES) >= 6
    assert count_per_class(index.train, len(CLASSES)) == [IMAGES_PER_CLASS["train"]] * len(CLASSES)
    assert count_per_class(index.test, len(CLASSES)) == [IMAGES_PER_CLASS["test"]] * len(CLASSES)
    meta = json.loads((dataset.path / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES)
    stamp = (dataset.path / "meta.json").stat().st_mtime_ns
    assert resolve_dataset("demo", tmp_path).path == dataset.path
    assert (dataset.path / "meta.json").stat().st_mtime_ns == stamp  # not generated twice
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo.tmp")]


def test_demo_images_are_deterministic_and_varied():
    first = np.asarray(draw_image(2, 0, 7))
    assert np.array_equal(first, np.asarray(draw_image(2, 0, 7)))
    assert not np.array_equal(first, np.asarray(draw_image(2, 0, 8)))
    assert not np.array_equal(first, np.asarray(draw_image(2, 1, 7)))  # test images differ from train images


# --- The torch pipeline --------------------------------------------------------------------------------------------
def make_batches(index, samples, train, augment=False, batch_size=5, workers=0, seed=0, size=(16, 16)):
    return PIPELINES["torch"](index, samples, image_size=size, augment=augment, batch_size=batch_size,
                              train=train, device=torch.device("cpu"), seed=seed, workers=workers,
                              channels_last=True)


def test_batches_are_normalised_channels_last_and_labels_match_pixels(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    colours = {index.classes.index(name): colour for name, colour in CLASS_COLOURS.items()}
    for images, labels in make_batches(index, index.train, train=True).epoch(1):
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape[1:] == (3, 16, 16)
        assert images.is_contiguous(memory_format=torch.channels_last)
        pixels = (images * std + mean) * 255  # undo the normalisation
        for image, label in zip(pixels, labels):
            expected = torch.tensor(colours[int(label)], dtype=torch.float32)
            assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=8), (label, image.mean(dim=(1, 2)))


def test_evaluation_sees_every_image_exactly_once(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    batches = make_batches(index, index.test, train=False, batch_size=5)
    sizes = [labels.numel() for _, labels in batches.epoch(0)]
    assert sizes == [5, 5, 2] and len(batches) == 3
    labels = torch.cat([labels for _, labels in batches.epoch(0)])
    assert labels.tolist() == labels_of(index.test)  # in file order


def test_training_drops_only_the_last_partial_batch_and_reshuffles(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    batches = make_batches(index, index.train, train=True, batch_size=8)
    assert len(batches) == 4 and batches.num_images == 32
    first = torch.cat([labels for _, labels in batches.epoch(1)])
    assert first.numel() == 32
    assert not torch.equal(first, torch.cat([labels for _, labels in batches.epoch(2)]))


def test_same_seed_gives_the_same_augmented_first_batch(tiny_dataset):
    index = scan_dataset(tiny_dataset)

    def first_batch(seed, workers):
        images, labels = next(iter(make_batches(index, index.train, train=True, augment=True, seed=seed,
                                                workers=workers).epoch(3)))
        return images, labels

    images, labels = first_batch(0, 1)
    again_images, again_labels = first_batch(0, 1)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    # Each image's augmentation has its own seed: the number of loader processes changes nothing.
    in_process_images, in_process_labels = first_batch(0, 0)
    assert torch.equal(images, in_process_images) and torch.equal(labels, in_process_labels)
    other_images, _ = first_batch(1, 1)
    assert not torch.equal(images, other_images)


def test_loading_leaves_the_training_random_stream_alone(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    for _ in make_batches(index, index.train, train=True, augment=True).epoch(1):
        pass
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_named(tiny_dataset, workers):
    bad = tiny_dataset / "test" / "red" / "red_001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    index = scan_dataset(tiny_dataset)
    with pytest.raises(UnreadableImageError) as caught:
        for _ in make_batches(index, index.test, train=False, workers=workers).epoch(0):
            pass
    message = str(caught.value)
    assert message.startswith(f"cannot read image {bad}") and "\n" not in message


def test_demo_made_by_an_older_generator_is_replaced(tmp_path):
    old = tmp_path / "demo"
    make_dataset(old, {"train": 1, "test": 1})
    (old / "meta.json").write_text(json.dumps({"generator_version": 0}))
    index = scan_dataset(resolve_dataset("demo", tmp_path).path)
    assert index.classes == sorted(CLASSES)
