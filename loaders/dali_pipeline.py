"""The DALI input pipeline: decode (nvJPEG on the GPU, `device="mixed"`), resize with antialiasing,
TrivialAugmentWide and normalisation inside DALI (to float16 for mixed-precision runs), handed to torch as NCHW
batches that are channels_last in memory. Without a GPU the same operators run on the CPU (`device_id=None`),
which is how the tests run it.

Same files as the torch pipeline (it reads the run's file list), one full reshuffle per epoch (the list is
first permuted with the run's seed, since DALI's own reshuffle starts after the first epoch). In a distributed
run DALI's reader shards the training list across the ranks (equal shards, reshuffled across all of them each
epoch; its seed is the run's on every rank) and each rank augments from a stream of its own (Shard.stream_seed);
evaluation reads this rank's share of the files, as the other loaders do. Evaluation reads every file
exactly once per pass; its last batch is partial.

TrivialAugmentWide is set to torchvision's parameters: 31 magnitude bins, translation up to 32 pixels, fill 0,
nearest-neighbour interpolation. Remaining differences (README): DALI's own random streams, and its
implementations of sharpness, equalize and posterize, which are close to but not bit-identical with PIL's. With
`augmenter="engine"` DALI only decodes and resizes, and the engine's TrivialAugmentWide (torchvision's operations)
and normalisation follow on torch's stream (`AUGMENTERS`).
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from engine.distributed import SINGLE, Shard
from engine.errors import UnreadableImageError
from engine.loaders.augment import augment_and_normalise, fused_for, random_draws
from engine.loaders.batching import BatchCounts
from engine.loaders.index import DatasetIndex
from engine.loaders.splits import Sample
from engine.loaders.torch_pipeline import IMAGENET_MEAN, IMAGENET_STD, DeviceNormaliser

READER = "reader"
PREFETCH_BATCHES = 3
# The share of JPEGs sent to the GPU's hardware JPEG decoder (DALI's default: 0.65); the rest decode on CPU threads
# and SMs, where they compete with the training. On an H100 (bench/NOTES.md, ninth session) 0.9 decoded 17.6k
# img/s against 13.4-16.4k at DALI's default (decode + resize + TrivialAugmentWide, batch 128, 15 threads).
HW_DECODER_LOAD = 0.9
# How each GPU batch passes from DALI to torch. DALI's dynamic executor hands torch its own buffers (DLPack, no
# copy). "host": as DALI's iterator ships, the host waits for each batch, and the buffer is DALI's again once
# torch lets go of it on the host, which runs ahead of the GPU. "stream": each batch is bound to torch's current
# stream (`Pipeline.share_outputs(cuda_stream=...)`): that stream, not the host, waits for DALI's work, and DALI
# reuses the memory only after the stream is done with it. "stream" is the engine's: on an H100 (bench/NOTES.md,
# fourteenth session) both passed the GPU race test, and mobilenet_v3_large's end to end at batch 128 reached
# 0.92-1.14 of its synthetic rate with "stream" (three runs) against 0.71 with "host", whose wait for each batch
# stalls the host that a light model's step is bound by.
HANDOVERS = ("host", "stream")
DEFAULT_HANDOVER = "stream"
# Who augments a training batch. "dali": DALI's trivial_augment_wide and crop_mirror_normalize, inside the pipeline,
# as kernels on DALI's stream beside the training step (~1.9 ms of GPU time a batch of 128 at 256 px on an H100,
# warp_affine 1.2 ms of it: what keeps a GPU-bound step at 0.93-0.95 of its synthetic rate, bench/NOTES.md). "engine":
# DALI decodes and resizes to uint8, and the engine's TrivialAugmentWide (torchvision's operations; random draws,
# `augment.random_draws`) and normalisation follow on torch's stream, on a GPU as one fused kernel a batch
# (kernels/trivial_augment.py). "dali" is the default: side by side on an H200 (bench/NOTES.md, thirty-second
# session) "engine" took DALI's kernels beside resnet50's step from 2.3 to 0.3 ms a batch, yet its end to end read
# 0.899 of synthetic against "dali"'s 0.969 (mobilenet_v3_large: 0.791 against 0.936): it loses in a wait, for the
# host or for DALI, not in GPU work.
AUGMENTERS = ("dali", "engine")
DEFAULT_AUGMENTER = "dali"
# DALI's own TrivialAugmentWide calls `fn.experimental.filter` and `fn.experimental.equalize`, which DALI now
# flags as deprecated aliases: two warnings per pipeline that name DALI's code, not ours, and that no user can act
# on. DALI raises them under `simplefilter("default")` inside its own `catch_warnings`, so a filter cannot silence
# them; `_quiet_dali_aliases` records the warnings of the pipeline's construction and passes on every other one.
# How DALI's decoder reports a file it cannot decode (in a RuntimeError of many lines), and a failure it does not
# pin on a file (the line after "encountered:" says what failed)
UNDECODABLE = re.compile(r"Failed to decode sample #\d+ : (?P<path>.+)$", re.MULTILINE)
DECODER_FAILURE = re.compile(r"operator `nvidia\.dali\.fn\.decoders\.image`.*?encountered:\s*(?P<why>[^\n]+)",
                             re.DOTALL)
# Images PIL reads whose (format, mode) DALI's decoder (2.4, nvImageCodec) fails on, or reads as another picture
# than PIL: found by decoding one file of each PIL mode in TIFF, PNG, JPEG, WebP and BMP with both (bench/NOTES.md,
# twenty-second session). Every other pair tried decodes within a few grey levels of PIL (loaders.torch_pipeline).
DALI_MISREADS = {
    ("TIFF", "1"): "DALI's decoder fails on 1-bit TIFFs",
    ("TIFF", "I"): "DALI's decoder fails on 32-bit integer TIFFs",
    ("TIFF", "LA"): "DALI's decoder reads greyscale-with-alpha TIFFs as colour",
    ("TIFF", "LAB"): "DALI's decoder turns CIELAB TIFFs into other colours than PIL does",
}
DALI_ALIAS_NOTICE = re.compile(r"WARNING: `nvidia\.dali\.fn\.experimental\.\w+` is now deprecated")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _build_pipeline(files: list[str], labels: list[int], *, image_size, augment: bool, train: bool,
                    half: bool, batch_size: int, device: torch.device, seed: int, augment_seed: int, workers: int,
                    shard_id: int, num_shards: int, hw_decoder_load: float = HW_DECODER_LOAD, uint8_out: bool = False):
    """DALI's pipeline of the files; `uint8_out`: decoded and resized only, for the engine to augment. `seed`
    orders the files, `augment_seed` (this rank's own, Shard.stream_seed) seeds the augmentation."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug import trivial_augment

    on_gpu = device.type == "cuda"

    @pipeline_def(enable_conditionals=True)
    def pipeline():
        # the run's seed on every rank: the shards partition one list, reshuffled alike on every rank
        encoded, label = fn.readers.file(files=files, labels=labels, name=READER, shuffle_after_epoch=train,
                                         shard_id=shard_id, num_shards=num_shards, pad_last_batch=not train,
                                         seed=seed)
        # adjust_orientation off: the pixels as stored, as PIL (the torch and resident loaders, and the authors'
        # ImageFolder) reads them; DALI would otherwise turn photos by their EXIF orientation tag, and no other
        # loader would
        decoder = {"device": "mixed" if on_gpu else "cpu", "adjust_orientation": False}
        if on_gpu:
            decoder["hw_decoder_load"] = hw_decoder_load
        images = fn.decoders.image(encoded, output_type=types.RGB, **decoder)
        images = fn.resize(images, size=list(image_size), antialias=True)
        if uint8_out:
            return images, label.gpu() if on_gpu else label
        if augment and train:
            images = trivial_augment.trivial_augment_wide(images, num_magnitude_bins=31, fill_value=0,
                                                          interp_type=types.INTERP_NN, max_translate_abs=32)
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT16 if half else types.FLOAT,
                                          output_layout="HWC", mean=[m * 255 for m in IMAGENET_MEAN],
                                          std=[s * 255 for s in IMAGENET_STD])
        # labels come out on the GPU: copying them from the host per batch would synchronise the stream
        return images, label.gpu() if on_gpu else label

    device_id = (device.index or 0) if on_gpu else None  # None: a CPU-only pipeline
    # three batches in flight, as ANCHORS.md's DALI measurement (27k img/s on an H200) ran: a late batch (a large
    # JPEG, a busy thread) is absorbed instead of reaching the training step; one batch more of device memory
    return _quiet_dali_aliases(lambda: pipeline(batch_size=batch_size, num_threads=_threads(workers),
                                                device_id=device_id, seed=augment_seed,
                                                prefetch_queue_depth=PREFETCH_BATCHES))


def dali_misread(image) -> str | None:
    """Why DALI's decoder would not read the image whose header PIL opened as `image` as PIL does (None: it would),
    so that a DALI run refuses such a file up front, naming it, rather than failing or training on a wrong picture."""
    why = DALI_MISREADS.get((image.format, image.mode))
    return f"{why} (--loader torch reads it)" if why else None


def _threads(workers: int) -> int:
    """DALI's CPU threads for --workers N: a pipeline needs one at least (--workers 0 is the CPU's default)."""
    return max(1, workers)


def _quiet_dali_aliases(build):
    """Call `build()` and re-issue every warning it raised except DALI's notices about its own aliases."""
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        built = build()
    for warning in raised:
        if not (issubclass(warning.category, DeprecationWarning) and DALI_ALIAS_NOTICE.match(str(warning.message))):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return built


@contextmanager
def _naming_undecodable_files():
    """A file DALI's decoder fails on, named in one line. The check before a DALI run (loaders.check_files: PIL's
    header check, seconds for 100k files, and `dali_misread`) lets truncated image data through, and DALI then stops
    with a RuntimeError of many lines, from the iterator's constructor (it reads the first batch) or any later batch.
    Where DALI does not name the file, the line says what failed and how to find the file."""
    try:
        yield
    except RuntimeError as error:
        failed, failure = UNDECODABLE.search(str(error)), DECODER_FAILURE.search(str(error))
        if failed is not None:
            raise UnreadableImageError(f"cannot read image {failed['path'].strip()}: its header is sound but its data "
                                       f"does not decode (a truncated or corrupt file); remove or replace it") from None
        if failure is not None:
            why = failure["why"].strip()
            raise UnreadableImageError(f"DALI's decoder failed on an image it does not name ({why}); --loader torch "
                                       f"reads every image with PIL and names any it cannot read") from None
        raise


def _bind_outputs_to_current_stream(pipe, device: torch.device) -> None:
    """The "stream" handover: DALI's iterator asks the pipeline for each batch with `share_outputs()`; this
    pipeline answers with the batch bound to torch's stream current at that moment."""
    share = pipe.share_outputs
    pipe.share_outputs = lambda: share(cuda_stream=torch.cuda.current_stream(device))


class DaliBatches(BatchCounts):
    """Batches of one split for the trainer, with the torch pipeline's interface."""

    queued_batches = 2 * PREFETCH_BATCHES  # DALI's CPU stage and its GPU stage each hold that many ahead
    misread = staticmethod(dali_misread)

    @staticmethod
    def parallelism(workers: int) -> str:
        return "DALI threads: %d" % _threads(workers)

    def __init__(self, index: DatasetIndex, samples: list[Sample], *, image_size: tuple[int, int], augment: bool,
                 batch_size: int, train: bool, device: torch.device, seed: int, workers: int, channels_last: bool,
                 dtype: torch.dtype = torch.float32, shard: Shard = SINGLE, hw_decoder_load: float = HW_DECODER_LOAD,
                 handover: str = DEFAULT_HANDOVER, augmenter: str = DEFAULT_AUGMENTER):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if handover not in HANDOVERS:
            raise ValueError(f"unknown DALI handover {handover!r}; choose from {', '.join(HANDOVERS)}")
        if augmenter not in AUGMENTERS:
            raise ValueError(f"unknown DALI augmenter {augmenter!r}; choose from {', '.join(AUGMENTERS)}")
        self._set_counts(len(samples), batch_size, train, shard)
        if train:  # DALI's reader shards the whole list, so its reshuffle after each epoch spans every rank
            order, reader_shard = shard.even(np.random.default_rng(seed).permutation(len(samples))), shard
        else:  # evaluation: this rank's files alone, shared out as every loader does (Shard.take)
            order, reader_shard = shard.take(np.arange(len(samples)), train=False), SINGLE
        files = [str(index.root / samples[i][0]) for i in order]
        labels = [samples[i][1] for i in order]
        self.channels_last, self.device, self.dtype = channels_last, device, dtype
        self.augment_seed = reader_shard.stream_seed(seed)
        # the engine augments (and normalises) this split's batches: DALI hands over uint8
        self.engine_augments = augment and train and augmenter == "engine"
        if self.engine_augments:
            self.normalise = DeviceNormaliser.for_loader(device, channels_last, dtype)
            self.fused_augment = fused_for("DALI decodes and resizes", device)
        pipe = _build_pipeline(files, labels, image_size=image_size, augment=augment, train=train,
                               half=dtype != torch.float32,
                               batch_size=self.batch_size, device=device, seed=seed,
                               augment_seed=self.augment_seed, workers=workers,
                               shard_id=reader_shard.rank, num_shards=reader_shard.world_size,
                               hw_decoder_load=hw_decoder_load, uint8_out=self.engine_augments)
        if handover == "stream" and device.type == "cuda":
            _bind_outputs_to_current_stream(pipe, device)
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        with _naming_undecodable_files():
            self.iterator = DALIGenericIterator([pipe], ["images", "labels"], reader_name=READER,
                                                last_batch_policy=policy, auto_reset=True)

    def epoch(self, epoch: int):
        batches = iter(self.iterator)
        # the engine's augmentation: the same each time run, this rank's own
        draws = np.random.default_rng([self.augment_seed, epoch])
        while True:
            with _naming_undecodable_files():
                batch = next(batches, None)
            if batch is None:
                return
            images = batch[0]["images"].permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last, no copy
            # Images and labels are on the pipeline's device already (labels: see the pipeline).
            labels = batch[0]["labels"].view(-1).long()
            if self.engine_augments:
                yield augment_and_normalise(images, random_draws(draws, len(images)), self.normalise,
                                            self.fused_augment), labels
                continue
            if not self.channels_last:
                images = images.contiguous()
            # DALI has no bfloat16: a bf16 run gets DALI's float16, cast (one small pass) to the run's dtype.
            yield images.to(self.dtype), labels
