"""The DALI pipeline on the CPU (device_id=None): same files, labels, layout and normalisation as the torch one."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from engine.loaders import PIPELINES, count_per_class, scan_dataset, select_samples
from engine.loaders.dali_pipeline import DALI_MISREADS, _quiet_dali_aliases
from engine.loaders.augment import augmented, random_draws
from engine.loaders.torch_pipeline import IMAGENET_MEAN, IMAGENET_STD, DeviceNormaliser
from tests.conftest import CLASS_COLOURS, make_dataset, make_shaded_dataset, run_main

pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install 'engine[dali]')")

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture
def shaded_dataset(tmp_path):
    return make_shaded_dataset(tmp_path / "d", {"train": 10, "test": 4}, side=32, darkest=0.5)


def batches(kind, index, samples, train, augment=False, batch_size=5, seed=0, dtype=torch.float32, **options):
    """The loader `kind` on the CPU; `options`: its own settings (DALI's augmenter, say)."""
    return PIPELINES[kind](index, samples, image_size=(16, 16), augment=augment, batch_size=batch_size, train=train,
                           device=torch.device("cpu"), seed=seed, workers=1, channels_last=True, dtype=dtype,
                           **options)


def pixel_means(images):
    return ((images * STD + MEAN) * 255).mean(dim=(2, 3))  # per image, per channel, in 0..255


def test_layout_dtype_and_labels_follow_the_pixels(shaded_dataset):
    index = scan_dataset(shaded_dataset)
    colours = {index.classes.index(name): torch.tensor(colour, dtype=torch.float32)
               for name, colour in CLASS_COLOURS.items()}
    for images, labels in batches("dali", index, index.train, train=True).epoch(1):
        assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.is_contiguous(memory_format=torch.channels_last)
        for mean, label in zip(pixel_means(images), labels):
            hue = colours[int(label)] / colours[int(label)].max()
            assert torch.allclose(mean / mean.max(), hue, atol=0.08)  # the shade scales, the hue stays


def test_evaluation_reads_every_file_once(shaded_dataset):
    index = scan_dataset(shaded_dataset)
    pipeline = batches("dali", index, index.test, train=False)
    for _ in range(2):  # each pass, not only the first
        sizes, labels = [], []
        for _, batch_labels in pipeline.epoch(0):
            sizes.append(len(batch_labels))
            labels += batch_labels.tolist()
        assert sizes == [5, 5, 2] and sorted(labels) == sorted(label for _, label in index.test)


def test_without_augmentation_the_tensors_nearly_equal_the_torch_loaders(shaded_dataset):
    """Same files in file order (evaluation), pixel by pixel. Tolerance: 0.1 after normalisation (about 6 grey
    levels) per pixel, 1 grey level per image mean. PNG decoding is exact in both, so what differs is the
    antialiased 32 -> 16 resize (PIL's filter vs DALI's): measured 0.053 per pixel at most, 0.19 levels in means."""
    index = scan_dataset(shaded_dataset)
    torch_images = torch.cat([x for x, _ in batches("torch", index, index.test, train=False).epoch(0)])
    dali_images = torch.cat([x for x, _ in batches("dali", index, index.test, train=False).epoch(0)])
    assert (torch_images - dali_images).abs().max() < 0.1
    assert torch.allclose(pixel_means(torch_images), pixel_means(dali_images), atol=1.0)


def image_in_mode(rgb: np.ndarray, mode: str) -> Image.Image:
    """The picture `rgb` as a file of `mode` would hold it; 16-bit greyscale (medical and microscopy PNGs) holds
    each grey level g as g * 257, the full 16-bit range."""
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)
    if mode == "F":  # floating-point TIFFs (microscopy, remote sensing) hold 0..1
        return Image.fromarray(grey.astype(np.float32) / 255)
    return Image.fromarray(rgb).convert(mode)


def test_a_photo_with_an_exif_orientation_is_read_as_stored_by_every_loader(tmp_path):
    """A photo tagged "turn 90 degrees" (EXIF orientation 6): DALI's decoder turns it by default, PIL does not; the
    engine's DALI pipeline keeps it as stored, as the other loaders and the authors' ImageFolder read it."""
    half_red = np.zeros((16, 32, 3), np.uint8)
    half_red[:, :16], half_red[:, 16:] = (220, 20, 20), (20, 20, 220)  # red left, blue right, as stored
    for split in ("train", "test"):
        for name in ("a", "b"):
            photo, exif = Image.fromarray(half_red), Image.Exif()
            exif[0x0112] = 6
            (tmp_path / "d" / split / name).mkdir(parents=True)
            photo.save(tmp_path / "d" / split / name / "photo.jpg", exif=exif.tobytes(), quality=95)
    index = scan_dataset(tmp_path / "d")
    images = {kind: next(iter(batches(kind, index, index.test, train=False).epoch(0)))[0][0]
              for kind in ("torch", "dali")}
    for image in images.values():
        left, right = pixel_means(image[None, :, :, :8])[0], pixel_means(image[None, :, :, 8:])[0]
        assert left[0] > 150 > left[2] and right[2] > 150 > right[0]  # red left, blue right: not turned
    assert (images["torch"] - images["dali"]).abs().max() < 0.2  # JPEG decoders differ by a few levels


@pytest.mark.parametrize("mode", ["I;16", "F", "L", "P", "LA", "RGBA"])
def test_every_loader_reads_each_image_mode_as_the_same_picture(tmp_path, mode):
    """PIL's convert("RGB") clips 16-bit greyscale to white, and takes floating-point greyscale as 0..255 (0..1 comes
    out black); DALI reads the first by its high byte, the second as 0..1. The torch and resident loaders read them
    as DALI does. Tolerances as above (the resize differs; the decoded pixels do not)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, colour in CLASS_COLOURS.items():
            for n in range(2):
                rgb = np.clip(np.array(colour) * (0.5 + 0.2 * n) + rng.normal(0, 8, (32, 32, 3)), 0, 255)
                folder = tmp_path / "d" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                image_in_mode(rgb.astype(np.uint8), mode).save(folder / f"{n}.{'tif' if mode == 'F' else 'png'}")
    index = scan_dataset(tmp_path / "d")
    decoded = {kind: torch.cat([x for x, _ in batches(kind, index, index.test, train=False).epoch(0)])
               for kind in ("torch", "dali", "resident")}
    assert Image.open(index.root / index.test[0][0]).mode == mode
    assert pixel_means(decoded["dali"]).max() < 200  # none of these pictures is near white
    for kind in ("torch", "resident"):
        assert (decoded[kind] - decoded["dali"]).abs().max() < 0.1, kind
        assert torch.allclose(pixel_means(decoded[kind]), pixel_means(decoded["dali"]), atol=1.0), kind


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_runs_get_their_autocast_dtype_from_every_loader(shaded_dataset, dtype):
    """DALI normalises to float16 (it has no bfloat16; a bf16 run gets a cast of it); torch and resident cast their
    float32 result. Either way the value is the float32 one rounded to the dtype: bf16 keeps 8 bits of mantissa,
    so |x| <= 2.7 is within 2.7 * 2**-8 = 0.011 (float16 rounding first adds at most 0.001)."""
    index = scan_dataset(shaded_dataset)
    for kind in ("dali", "torch", "resident"):
        exact = torch.cat([x for x, _ in batches(kind, index, index.test, train=False).epoch(0)])
        half = torch.cat([x for x, _ in batches(kind, index, index.test, train=False, dtype=dtype).epoch(0)])
        assert half.dtype == dtype and half.is_contiguous(memory_format=torch.channels_last), kind
        assert (half.float() - exact).abs().max() < 0.012, kind


def test_same_files_as_the_torch_loader(shaded_dataset):
    """A training fraction: one epoch of each pipeline holds the same images (matched by their pixels)."""
    index = scan_dataset(shaded_dataset)
    run = select_samples(index, 0.5, seed=4, select_on="test")
    means = {}
    for kind in ("torch", "dali"):
        pipeline = batches(kind, index, run.train, train=True, batch_size=len(run.train))
        images, labels = next(iter(pipeline.epoch(1)))
        order = torch.argsort(pixel_means(images).sum(1) + 1000 * labels)
        means[kind] = pixel_means(images)[order]
    assert count_per_class(run.train, 3) == [5, 5, 5]
    assert torch.allclose(means["torch"], means["dali"], atol=2.5)


def test_same_seed_same_first_batch(shaded_dataset):
    index = scan_dataset(shaded_dataset)

    def first(seed):
        return next(iter(batches("dali", index, index.train, train=True, augment=True, seed=seed).epoch(1)))

    (a, la), (b, lb), (c, _) = first(0), first(0), first(1)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_an_augmenting_pipeline_shows_the_user_no_notice_about_dalis_own_aliases(shaded_dataset, recwarn):
    """DALI's TrivialAugmentWide uses `fn.experimental.*` aliases that DALI itself flags as deprecated; those
    notices name DALI's code and are dropped, while every other warning of the pipeline's construction passes."""
    index = scan_dataset(shaded_dataset)
    next(iter(batches("dali", index, index.train, train=True, augment=True).epoch(1)))
    assert not [w for w in recwarn if "nvidia.dali.fn.experimental" in str(w.message)]

    def build():
        warnings.warn("WARNING: `nvidia.dali.fn.experimental.equalize` is now deprecated.", DeprecationWarning)
        warnings.warn("a warning of the user's own", UserWarning)
        return "pipeline"

    with pytest.warns(UserWarning, match="of the user's own") as passed:
        assert _quiet_dali_aliases(build) == "pipeline"
    assert [type(w.message) for w in passed] == [UserWarning]


def test_the_engine_augments_dalis_uint8_batches_by_its_own_draws(shaded_dataset):
    """--dali-augmenter engine: DALI decodes and resizes only; each training batch is then the engine's
    TrivialAugmentWide (by the epoch's draws, `random_draws` from (seed, epoch)) of the very batch DALI made,
    normalised, with its labels, in the run's layout and dtype."""
    index = scan_dataset(shaded_dataset)

    def epoch(augment, augmenter, dtype, epoch_number=2):
        pipeline = batches("dali", index, index.train, train=True, augment=augment, seed=3, dtype=dtype,
                           augmenter=augmenter)
        return list(pipeline.epoch(epoch_number))

    normalise = DeviceNormaliser(torch.device("cpu"), torch.channels_last, torch.bfloat16)
    draws = np.random.default_rng([3, 2])
    augmented_batches = epoch(True, "engine", torch.bfloat16)
    plain_batches = epoch(False, "dali", torch.float32)  # float32: its uint8 pixels recovered exactly below
    assert len(augmented_batches) == len(plain_batches) == 6
    for (images, labels), (plain, plain_labels) in zip(augmented_batches, plain_batches):
        assert torch.equal(labels, plain_labels) and images.dtype == torch.bfloat16
        assert images.is_contiguous(memory_format=torch.channels_last)
        uint8 = ((plain / normalise.inverse_std) + normalise.mean).round().clamp(0, 255).to(torch.uint8)
        assert torch.equal(images, normalise.images(augmented(uint8, random_draws(draws, len(uint8)))))
    assert not torch.equal(epoch(True, "engine", torch.bfloat16, 1)[0][0], augmented_batches[0][0])  # drawn anew


def test_an_unknown_dali_augmenter_is_refused(shaded_dataset):
    with pytest.raises(ValueError, match="unknown DALI augmenter 'kornia'; choose from dali, engine"):
        batches("dali", scan_dataset(shaded_dataset), [], train=True, augment=True, augmenter="kornia")


def test_training_drops_the_partial_batch_and_reshuffles(shaded_dataset):
    index = scan_dataset(shaded_dataset)
    pipeline = batches("dali", index, index.train, train=True, batch_size=8)
    epochs = [torch.cat([labels for _, labels in pipeline.epoch(e)]) for e in (1, 2)]
    assert [len(e) for e in epochs] == [24, 24] and len(pipeline) == 3
    assert not torch.equal(epochs[0], epochs[1])


def test_engine_trains_with_the_dali_loader(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    done = run_main(capsys, "train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--no-pretrained",
                    "--image-size", "32", "--batch-size", "8", "--max-epochs", "2", "--loader", "dali",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr
    folder = out / "mobilenet_v3_large" / "tiny" / "f1" / "s0"
    assert json.loads((folder / "config.json").read_text())["loader"] == "dali"
    assert "loader dali (DALI threads: 1)" in done.stderr  # --workers 0, the CPU's default, is one DALI thread
    assert json.loads((folder / "result.json").read_text())["epochs"] == 2
    auto = run_main(capsys, "train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--no-pretrained",
                    "--image-size", "32", "--max-epochs", "1", "--out", str(tmp_path / "auto"))
    assert "loader: torch (auto: no GPU: the portable default" in auto.stderr


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_unreadable_images_are_named_or_skipped_and_counted(tiny_dataset, tmp_path, loader, capsys):
    bad = tiny_dataset / "train" / "red" / "red_003.png"
    bad.write_bytes(b"not a png")
    common = ["train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--no-pretrained",
              "--image-size", "32", "--batch-size", "8", "--max-epochs", "1", "--loader", loader]
    failed = run_main(capsys, *common, "--out", str(tmp_path / "stop"))
    assert failed.returncode == 2 and f"cannot read image {bad}" in failed.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "stop").rglob("result.json"))
    skipped = run_main(capsys, *common, "--skip-bad-images", "--out", str(tmp_path / "skip"))
    assert skipped.returncode == 0, skipped.stderr
    config = json.loads(next((tmp_path / "skip").rglob("config.json")).read_text())
    assert config["skipped_images"] == ["train/red/red_003.png"] and config["counts"]["train"] == 35


def test_a_truncated_image_that_passes_the_header_check_is_named_in_one_line(tmp_path, capsys):
    """A download cut short keeps a sound JPEG header: the check before the run passes it, and DALI's decoder fails
    on it mid-run with a RuntimeError of many lines. The run ends with one line naming the file, as the other
    loaders' errors do."""
    data = make_dataset(tmp_path / "jpegs", {"train": 4, "test": 2}, side=64, ext="jpg")
    cut = data / "test" / "red" / "red_001.jpg"
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    failed = run_main(capsys, "train", "--backbone", "mobilenet_v3_large", "--data", str(data), "--no-pretrained",
                      "--image-size", "32", "--batch-size", "4", "--max-epochs", "1", "--loader", "dali", "--out",
                      str(tmp_path / "runs"))
    errors = [line for line in failed.stderr.splitlines() if line.startswith("engine: error:")]
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert errors == [f"engine: error: cannot read image {cut}: its header is sound but its data does not decode "
                      f"(a truncated or corrupt file); remove or replace it"]
    assert not list((tmp_path / "runs").rglob("result.json"))


def write_misread(path, mode):
    """A 16x16 picture in PIL `mode`, as a TIFF (the container of every pair in DALI_MISREADS)."""
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    wide = {"I": grey.astype(np.int32) * 100}
    image = Image.fromarray(wide[mode]) if mode in wide else Image.fromarray(grey).convert("RGB").convert(mode)
    image.save(path)
    assert Image.open(path).mode == mode


GPU_DECODER = pytest.param("mixed", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                             reason="needs a CUDA GPU")])


@pytest.mark.parametrize("decoder", ["cpu", GPU_DECODER])
@pytest.mark.parametrize("image_format, mode", sorted(DALI_MISREADS))
def test_each_image_kind_the_dali_loader_refuses_is_one_its_decoder_misreads(tmp_path, image_format, mode, decoder):
    """The table stays true: DALI's decoder fails on each of these, or reads it as another picture than PIL, on
    the CPU and on the GPU ("mixed", where the engine decodes). (A DALI that mends one fails this test; its row then
    comes out of the table.)"""
    from nvidia.dali import fn, pipeline_def, types
    from engine.loaders.torch_pipeline import read_rgb
    path = tmp_path / "image.tif"
    write_misread(path, mode)

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if decoder == "mixed" else None)
    def decode():
        encoded, _ = fn.readers.file(files=[str(path)])
        return fn.decoders.image(encoded, device=decoder, output_type=types.RGB)

    pipe = decode()
    pipe.build()
    try:
        images = pipe.run()[0]
    except RuntimeError:
        return  # fails
    decoded = np.asarray((images.as_cpu() if decoder == "mixed" else images)[0]).astype(int)
    assert np.abs(decoded - np.asarray(read_rgb(path)).astype(int)).max() > 16  # another picture


def test_an_image_dalis_decoder_misreads_is_named_before_the_run_or_skipped(tiny_dataset, tmp_path, capsys):
    odd = tiny_dataset / "train" / "red" / "odd.tif"
    write_misread(odd, "I")
    common = ["train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--no-pretrained",
              "--image-size", "32", "--batch-size", "8", "--max-epochs", "1", "--loader", "dali"]
    failed = run_main(capsys, *common, "--out", str(tmp_path / "stop"))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == (
        f"engine: error: cannot read image {odd}: DALI's decoder fails on 32-bit integer TIFFs (--loader torch reads "
        f"it); --skip-bad-images leaves them out")
    assert not list((tmp_path / "stop").rglob("result.json"))
    skipped = run_main(capsys, *common, "--skip-bad-images", "--out", str(tmp_path / "skip"))
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(next((tmp_path / "skip").rglob("config.json")).read_text())["skipped_images"] == [
        "train/red/odd.tif"]
    torch_loader = run_main(capsys, *common[:-1], "torch", "--out", str(tmp_path / "torch"))
    assert torch_loader.returncode == 0, torch_loader.stderr  # PIL reads it: only DALI's runs refuse it


def test_a_decoder_failure_dali_does_not_pin_on_a_file_is_one_line(tiny_dataset, tmp_path, capsys, monkeypatch):
    """Past the check (here: with the table emptied), a file DALI's decoder fails on without naming it still ends
    the run in one line, which says how to find the file."""
    from engine.loaders import dali_pipeline
    monkeypatch.setattr(dali_pipeline, "DALI_MISREADS", {})
    write_misread(tiny_dataset / "test" / "red" / "odd.tif", "I")
    failed = run_main(capsys, "train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset),
                      "--no-pretrained", "--image-size", "32", "--batch-size", "8", "--max-epochs", "1",
                      "--loader", "dali", "--out", str(tmp_path / "runs"))
    errors = [line for line in failed.stderr.splitlines() if line.startswith("engine: error:")]
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert len(errors) == 1 and errors[0].startswith("engine: error: DALI's decoder failed on an image it does not "
                                                     "name (")
    assert errors[0].endswith("--loader torch reads every image with PIL and names any it cannot read")
    assert not list((tmp_path / "runs").rglob("result.json"))


def test_the_stream_handover_binds_every_batch_dalis_iterator_asks_for(shaded_dataset, monkeypatch):
    """The "stream" handover hooks the pipeline's share_outputs, which DALI's iterator calls for each batch: every
    batch of an epoch is asked for through it, with the stream current at that moment (on the CPU, where there is
    none, the test stands in None for it)."""
    from engine.loaders import dali_pipeline
    index = scan_dataset(shaded_dataset)
    pipeline = batches("dali", index, index.test, train=False)
    asked = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: asked.append(device))
    dali_pipeline._bind_outputs_to_current_stream(pipeline.iterator._pipes[0], torch.device("cuda"))
    list(pipeline.epoch(0))  # its first batch was fetched when the iterator was made, before the binding
    assert len(asked) == len(pipeline) - 1
    list(pipeline.epoch(0))
    assert len(asked) == 2 * len(pipeline) - 1 and set(asked) == {torch.device("cuda")}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("handover", ["host", "stream"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_batches_stay_intact_while_the_training_stream_lags_behind(shaded_dataset, dtype, handover):
    """DALI hands its own buffers to torch (DLPack, no copy) and the host runs ahead of the GPU: a batch's memory
    must still hold that batch when the training stream, busy with earlier steps, reads it, although the host has
    moved on and DALI keeps decoding into its buffers. Each batch is read (and, in a bf16 run, cast) behind a long
    kernel on the consumer's stream (the training's own, as engine train runs); DALI's CPU operators, on the same
    files in file order, say what it must be. For both handovers (loaders/dali_pipeline.py): the host waiting for
    each batch, or torch's stream."""
    options = dict(augment=False, train=False, dtype=dtype, handover=handover)
    on_gpu, on_cpu = (read_behind_a_busy_stream(shaded_dataset, device, (0, 1), options) for device in ("cuda", "cpu"))
    assert_the_same_batches(on_gpu, on_cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_batches_the_engine_augments_are_the_cpus_while_the_training_stream_lags_behind(shaded_dataset):
    """--dali-augmenter engine on a GPU: DALI's uint8 batch, handed over without a copy, is read by the fused kernel
    on the training stream behind a long step; it must be the batch the CPU pipeline makes (same files, same draws,
    its batched torch operations), up to the GPU resize's and the kernel's rare other roundings."""
    options = dict(augment=True, train=True, dtype=torch.bfloat16, augmenter="engine")
    on_gpu, on_cpu = (read_behind_a_busy_stream(shaded_dataset, device, (1, 2), options) for device in ("cuda", "cpu"))
    assert_the_same_batches(on_gpu, on_cpu)


def read_behind_a_busy_stream(dataset, device: str, epochs, options: dict) -> list:
    """Every batch of `epochs` from the DALI pipeline on `device`, each read (copied; cast or augmented by the
    engine where the options say) on the training stream, as engine train runs, behind ~10 ms of a step still
    running there on a GPU: no host synchronisation, so the batch is read in stream order."""
    from engine.trainer import training_stream
    index, kept = scan_dataset(dataset), []
    with training_stream(torch.device(device)):
        pipeline = PIPELINES["dali"](index, index.train, image_size=(16, 16), batch_size=5, device=torch.device(device),
                                     seed=0, workers=2, channels_last=True, **options)
        for epoch in epochs:
            for images, labels in pipeline.epoch(epoch):
                if device == "cuda":
                    torch.cuda._sleep(20_000_000)  # ~10 ms of a step still running: the next read waits too
                kept.append((images.clone(), labels.clone()))
    torch.cuda.synchronize()
    return [(images.float().cpu(), labels.cpu()) for images, labels in kept]


def assert_the_same_batches(on_gpu: list, on_cpu: list) -> None:
    assert len(on_gpu) == len(on_cpu) == 12
    for (gpu_images, gpu_labels), (cpu_images, cpu_labels) in zip(on_gpu, on_cpu):
        assert torch.equal(gpu_labels, cpu_labels)
        # the GPU's resize may round a value the other way; a batch overwritten by a later one differs everywhere
        # (every image is another shade: 0.2 apart after normalisation)
        assert ((gpu_images - cpu_images).abs() < 0.05).float().mean() > 0.99
