"""GPU-only checks: the fused DWT and WaveMix (compiled Triton kernels, not the interpreter; AMP; inductor) and
the fused optimizers. Skipped without CUDA; run them on a lent GPU with `TRITON_INTERPRET=0 python -m pytest -m gpu`."""
import pytest
import torch

from engine.kernels import haar_dwt, haar_dwt_backward_torch, haar_dwt_torch
from engine.kernels.haar_triton import ROW_CONFIGS, TILE_CONFIGS, haar_dwt_backward_triton, haar_dwt_triton
from engine.models.wavemix import WaveMix, wavemix_192_16

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def one_launch_configuration(monkeypatch) -> None:
    """The autotuners of both layouts left with their first configuration: each dtype and layout then compiles two
    kernels, not 12-16 (Triton compiles ~1.5 s each, the bulk of these tests' GPU time). Nothing is lost: every
    configuration gives the first one's result bit for bit (test_every_launch_configuration_...)."""
    from engine.kernels.haar_triton import FAMILIES
    for family in FAMILIES.values():
        for tuned in family.tuned.values():
            monkeypatch.setattr(tuned, "configs", tuned.configs[:1])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_kernel_on_cuda_matches_plain_torch(dtype, tolerance, channels_last, monkeypatch):
    if not (dtype == torch.bfloat16 and channels_last):  # WaveMix's case keeps the whole autotune
        one_launch_configuration(monkeypatch)
    x = torch.randn(16, 48, 64, 64, device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    outputs = haar_dwt(x, 3)
    expected = haar_dwt_torch(x.detach().float(), 3)
    assert all(relative_error(o, e) < tolerance for o, e in zip(outputs, expected))
    grads = [torch.randn_like(o) for o in outputs]
    torch.autograd.backward(outputs, grads)
    assert relative_error(x.grad, haar_dwt_backward_torch([g.float() for g in grads])) < tolerance


@pytest.mark.parametrize("channels_last, config",
                         [(True, config) for config in TILE_CONFIGS] + [(False, config) for config in ROW_CONFIGS],
                         ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items()) if isinstance(v, dict) else
                         ("channels_last" if v else "nchw"))
def test_every_launch_configuration_compiles_and_matches_plain_torch(channels_last, config):
    """The autotuner may pick any of these: each, compiled for this GPU, gives the plain-torch transform."""
    x = torch.randn(8, 48, 64, 64, device="cuda", dtype=torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = haar_dwt_torch(x.float(), 3)
    assert all(relative_error(o, e) < 1e-2 for o, e in zip(haar_dwt_triton(x, 3, config), expected))
    grads = [torch.randn_like(o) for o in expected]
    grad = haar_dwt_backward_triton([g.to(torch.bfloat16) for g in grads], channels_last, config)
    assert relative_error(grad, haar_dwt_backward_torch(grads)) < 1e-2
    # and bit for bit what the family's first configuration gives: the autotuner's choice changes no result
    first = (TILE_CONFIGS if channels_last else ROW_CONFIGS)[0]
    assert all(torch.equal(a, b) for a, b in zip(haar_dwt_triton(x, 3, config), haar_dwt_triton(x, 3, first)))
    bf16_grads = [g.to(torch.bfloat16) for g in grads]
    assert torch.equal(grad, haar_dwt_backward_triton(bf16_grads, channels_last, first))


def test_the_autotuners_keep_their_choice_on_disk_for_the_next_run():
    """Compiled (not interpreted) kernels: each family's autotuners store their timings in Triton's cache, so the
    grid's next run of the same shape does not time every configuration again."""
    from engine.kernels.haar_triton import FAMILIES
    assert all(tuned.cache_results for family in FAMILIES.values() for tuned in family.tuned.values())


def test_wavemix_compiles_with_inductor_under_bf16_autocast():
    """WaveMix-192/16's blocks and head at depth 2: its 16 blocks are one block's code 16 times, and inductor's
    time grows with the graph (the full depth took 118 s of the fourteenth session's H100 GPU tests; the step
    benchmark compiles all 16 anyway)."""
    torch.manual_seed(0)
    model = WaveMix(10, depth=2).cuda().to(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    images = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    model.eval()  # dropout off, so eager and compiled must give the same logits (one compiled graph, with grad)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager, fused = model(images), compiled(images)
    # bf16 rounding differs between eager and inductor's fused ops over the blocks; a wrong kernel is off by ~1
    assert relative_error(fused.float(), eager.float()) < 5e-2
    fused.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_composed_stem_on_cuda_is_the_published_stem():
    """cuDNN's convolutions, channels_last, in-place ring corrections on the GPU: fp32 (TF32 off, so rounding is
    fp32's) to 1e-5 in values and gradients; under bf16 autocast to bf16 rounding."""
    torch.manual_seed(0)
    stem = wavemix_192_16(10).conv.cuda().to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 128, 96, device="cuda").contiguous(memory_format=torch.channels_last)
    direction = torch.randn(4, 192, 32, 24, device="cuda")
    results = {}
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for composed in (False, True):
            stem.zero_grad()
            patches = stem.composed_patches(images) if composed else stem[2](stem[1](stem[0](images)))
            (patches * direction).sum().backward()
            results[composed] = patches.detach(), [p.grad.clone() for conv in list(stem)[:3] for p in conv.parameters()]
    (published, published_grads), (composed, composed_grads) = results[False], results[True]
    assert relative_error(composed, published) < 1e-5
    assert all(relative_error(mine, theirs) < 1e-4 for mine, theirs in zip(composed_grads, published_grads))
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        half = stem.composed_patches(images)
    assert half.dtype == torch.bfloat16 and relative_error(half.float(), published) < 2e-2


@pytest.mark.parametrize("phase", ["adamw", "sgd"])
def test_fused_optimizers_step_as_the_reference_implementation(phase):
    from engine.trainer import OPTIMIZERS, make_optimizer

    torch.manual_seed(0)
    fused_model = torch.nn.Linear(64, 10).cuda()
    reference_model = torch.nn.Linear(64, 10).cuda()
    reference_model.load_state_dict(fused_model.state_dict())
    fused, reference = make_optimizer(phase, fused_model), OPTIMIZERS[phase](reference_model.parameters())
    assert fused.defaults["fused"] is True
    for _ in range(3):
        x = torch.randn(32, 64, device="cuda")
        for model, optimizer in ((fused_model, fused), (reference_model, reference)):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(fused_model.parameters(), reference_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_fused_augmentation_kernel_compiles_and_computes_what_the_batched_operations_do():
    """Compiled for this GPU, at DALI's batch (256 px, bf16, channels_last), against the batched torch operations
    and the normaliser on the same GPU (bit for bit in the interpreter, tests/test_augment.py): a GPU may round a
    warp's exact half-pixel or a blend the other way, rarely; a wrong operation differs on most of an image."""
    from engine.loaders.augment import augment_and_normalise, draw
    from engine.loaders.torch_pipeline import DeviceNormaliser

    generator = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (112, 3, 8, 8), generator=generator).float()
    images = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear").round().to(torch.uint8)
    images = images.cuda().contiguous(memory_format=torch.channels_last)
    normalise = DeviceNormaliser(torch.device("cuda"), torch.channels_last, torch.bfloat16)
    draws = [draw(seed) for seed in range(len(images))]
    fused = augment_and_normalise(images, draws, normalise, fused=True)
    expected = augment_and_normalise(images, draws, normalise, fused=False)
    assert fused.is_contiguous(memory_format=torch.channels_last) and fused.dtype == torch.bfloat16
    differing = (fused != expected).flatten(1).float().mean(1)
    assert differing.max() < 0.01, sorted({draws[i][0] for i in torch.nonzero(differing >= 0.01).flatten().tolist()})


@pytest.mark.parametrize("loader", ["resident", "torch"])
def test_batches_never_wait_for_the_gpu(tiny_dataset, loader):
    """Building a batch must not synchronise the stream (a host copy or a data-dependent shape would): the loader
    would then wait for the previous training step, and its host work could no longer overlap the GPU's."""
    from engine.loaders import PIPELINES, scan_dataset

    index = scan_dataset(tiny_dataset)
    pipeline = PIPELINES[loader](index, index.train, image_size=(24, 24), augment=True, batch_size=16,
                                 train=True, device=torch.device("cuda"), seed=0, workers=0, channels_last=True,
                                 dtype=torch.bfloat16)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [batch for epoch in (1, 2) for batch in pipeline.epoch(epoch)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(batches) == 2 * len(pipeline) and batches[0][0].dtype == torch.bfloat16


@pytest.mark.parametrize("loader", ["resident", "torch"])
def test_batches_made_ahead_on_a_side_stream_are_the_batches_made_in_turn(tiny_dataset, loader):
    """Made one batch ahead on the loader's side stream, while the consumer's stream is still busy with a long
    step, each batch is the one the CPU makes for the same seed and epoch; the side stream really is another, of
    higher priority."""
    from engine.loaders import PIPELINES, scan_dataset

    index = scan_dataset(tiny_dataset)

    def batches(device, epoch=1, busy=False):
        pipeline = PIPELINES[loader](index, index.train, image_size=(24, 24), augment=True, batch_size=8,
                                     train=True, device=torch.device(device), seed=3, workers=0,
                                     channels_last=True, dtype=torch.float32)
        out = []
        for images, labels in pipeline.epoch(epoch):
            if busy:
                torch.cuda._sleep(20_000_000)  # a long step on the consumer's stream, after the handover
            out.append((images.cpu(), labels.cpu()))
        return pipeline, out

    pipeline, on_gpu = batches("cuda", busy=True)
    assert pipeline.side_stream is not None and pipeline.side_stream != torch.cuda.current_stream()
    # ahead of the training's kernels for the SMs (loaders.batching.side_stream)
    assert pipeline.side_stream.priority < torch.cuda.current_stream().priority
    _, on_cpu = batches("cpu")
    assert len(on_gpu) == len(on_cpu)
    for (gpu_images, gpu_labels), (cpu_images, cpu_labels) in zip(on_gpu, on_cpu):
        assert torch.equal(gpu_labels, cpu_labels)
        # the same draws and operations: GPU kernels may round a value the other way (one level in 255), or
        # sample a warp's exact half-pixel boundary from the other neighbour; a wrong batch differs everywhere
        assert ((gpu_images - cpu_images).abs() < 0.05).float().mean() > 0.99
    # a consumer that stops after one batch leaves one made ahead: nothing it read may be reused under it
    for _ in zip(range(1), pipeline.epoch(2)):
        pass
    torch.cuda.synchronize()


def test_the_dwt_benchmark_times_the_kernels_through_a_cuda_graph():
    """bench.dwt's figures are the kernels' time (a CUDA graph replayed), not the host's launch overhead: the
    capture of the fused operator, forward and backward through autograd, must work, and leave the operator
    computing the same transform afterwards."""
    from engine.bench.timing import kernel_time_per_call
    x = torch.randn(16, 48, 64, 64, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    leaf = x.detach().requires_grad_(True)
    grads = [torch.randn_like(o) for o in haar_dwt(x, 3)]

    def forward_backward():
        torch.autograd.backward(haar_dwt(leaf, 3), grads)
        leaf.grad = None

    seconds, timing = kernel_time_per_call(forward_backward, torch.device("cuda"), 3, 10)
    assert timing == "CUDA graph replay" and 0 < seconds < 0.01
    expected = haar_dwt_torch(x.float(), 3)
    assert all(relative_error(o, e) < 1e-2 for o, e in zip(haar_dwt(x, 3), expected))


@pytest.mark.parametrize("choice", ["engine", "high"])
def test_the_training_streams_are_ordered_after_the_loader_and_before_what_follows(choice):
    """trainer.training_stream (engine train's, and bench.loaders' default) and bench.loaders --training-stream
    high: the step runs on a stream of its own at that priority, after what the loader enqueued on the current
    one before it (a batch's copy), and what comes after the block sees the step's results."""
    from engine.bench.loaders import step_stream
    device = torch.device("cuda")
    batch = torch.empty(1 << 24, device=device)
    torch.cuda._sleep(50_000_000)  # a slow loader on the current stream: the step must wait for it
    batch.fill_(1.0)
    with step_stream(choice, device):
        stream = torch.cuda.current_stream(device)
        assert stream != torch.cuda.default_stream(device) and (stream.priority < 0) == (choice == "high")
        result = batch * 2
    assert torch.equal(result, torch.full_like(batch, 2.0))  # on the current stream again, after the step


def test_stream_concurrency_reads_each_streams_kernels_from_the_profiler():
    """bench.loaders --kernels: the profiler's trace gives every stream that ran kernels, the side one too."""
    from engine.bench.timing import stream_concurrency
    device = torch.device("cuda")
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))  # after b is made

    def two_streams():
        a @ a
        with torch.cuda.stream(side):
            b @ b

    report = stream_concurrency(two_streams, device, steps=3)
    assert len(report["busy_ms_by_stream"]) == 2 and all(ms > 0 for ms in report["busy_ms_by_stream"].values())
    assert 0 <= report["concurrent_ms"] <= min(report["busy_ms_by_stream"].values()) <= report["span_ms"]
    # the side stream's matmul, named (one of the two streams is the busiest: the other one's kernels are listed)
    assert report["beside_top_kernels"] and all(kernel["ms"] > 0 for kernel in report["beside_top_kernels"])


def test_the_engine_step_and_the_batch_autotuner_run_with_cudnn_algorithm_search(monkeypatch):
    """What `engine profile` and the autotuner measure is what training runs: cuDNN's timed algorithm choice."""
    from engine.config import RunConfig
    from engine.profile import TrainStep
    from engine.scheduler import training_step_rate
    for make in (lambda: TrainStep(RunConfig("mobilenet_v3_large", "x", "x", "x", (64, 64), augment=False,
                                             precision="bf16", device="cuda"), 10),
                 lambda: training_step_rate("mobilenet_v3_large", 10, (64, 64), "bf16", True, torch.device("cuda"))):
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        make()
        assert torch.backends.cudnn.benchmark is True


def test_the_eager_host_share_tells_launch_bound_from_gpu_bound_on_a_real_gpu():
    """--compile-mode auto's measure on the hardware: a small model at a small batch (hundreds of tiny kernels) is
    launch-bound, four long matmuls a step are not."""
    from engine import scheduler
    cuda = torch.device("cuda")
    small = scheduler.synthetic_steps("mobilenet_v3_large", 3, (32, 32), "bf16", True, cuda)
    assert scheduler.eager_host_share(small, 8, cuda) >= scheduler.LAUNCH_BOUND
    matrix = torch.randn(8192, 8192, device=cuda)
    assert scheduler.eager_host_share(lambda batch: lambda: [matrix @ matrix for _ in range(4)], 1, cuda) < 0.2


def test_engine_trains_on_the_gpu_with_its_gpu_defaults_but_compile(tiny_dataset, tmp_path):
    """The trainer's GPU path end to end as a user runs it: bf16, channels_last, the resident loader (small
    images), fused AdamW, accuracy accumulated on the device, the padded evaluation batch, the background
    checkpoint writer. Eager, so that it costs seconds; the compiled step is timed by the GPU scripts."""
    import json

    from tests.conftest import run_engine

    out = tmp_path / "runs"
    done = run_engine("train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--no-pretrained",
                      "--image-size", "32", "--max-epochs", "2", "--batch-size", "8", "--no-compile",
                      "--device", "cuda", "--out", str(out))
    assert done.returncode == 0, done.stderr
    folder = out / "mobilenet_v3_large" / "tiny" / "f1" / "s0"
    config = json.loads((folder / "config.json").read_text())
    assert (config["loader"], config["precision"], config["device"]) == ("resident", "bf16", "cuda")
    result = json.loads((folder / "result.json").read_text())
    assert result["epochs"] == 2 and 0 <= result["test_acc"] <= 100 and (folder / "best.pt").exists()


def test_training_and_evaluation_replay_as_cuda_graphs_and_compute_what_the_eager_model_computes(monkeypatch):
    """--compile-mode reduce-overhead: the trainer's own epoch and evaluation loops run the compiled model as CUDA
    graphs (none skipped: BatchNorm's running statistics, the optimizer's in-place updates, a second shape for
    evaluation), and the losses, accuracy and weights are the eager model's."""
    import copy

    import torch.nn as nn

    from engine.trainer import compiled, cuda_graph_skips, evaluate, make_precision, train_one_epoch

    class Batches:
        batch_size = 16

        def __init__(self, images, labels):
            self.images, self.labels = images, labels

        def __len__(self):
            return len(self.images) // self.batch_size

        def epoch(self, epoch):
            yield from zip(self.images.split(self.batch_size), self.labels.split(self.batch_size))

    # full fp32 (TF32 would round each convolution to 10 bits, differently for each algorithm cuDNN picks)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 4)).cuda().to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    images = torch.randn(64, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    batches = Batches(images, torch.randint(0, 4, (64,), device="cuda"))
    precision, device = make_precision("fp32", "cuda"), torch.device("cuda")
    torch._dynamo.reset()
    skipped_before = cuda_graph_skips()
    graphed = compiled(model, "reduce-overhead")
    rows = []
    for run_model, weights in ((graphed, model), (reference, reference)):
        optimizer = torch.optim.SGD(weights.parameters(), lr=0.1, momentum=0.9)
        rows.append([train_one_epoch(run_model, batches, optimizer, precision, epoch, device, "off")["train_loss"]
                     for epoch in (1, 2, 3)] + [evaluate(run_model, batches, precision, device)])
    assert cuda_graph_skips() == skipped_before
    # inductor's fused BatchNorm sums in another order than cuDNN's: three epochs of SGD keep that near 1e-5
    assert rows[0] == pytest.approx(rows[1], rel=1e-3)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)
