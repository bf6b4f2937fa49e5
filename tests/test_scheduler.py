"""The batch autotuner's search, with an injected memory model, the profile store, and packing."""
import subprocess
import sys
import threading
import time

import pytest
import torch

from engine import scheduler
from engine.errors import UserInputError
from engine.run import prepare_profile_config
from engine.scheduler import (autotune, batch_limit, cached_or_tuned, choose_batch_size, largest_fitting_batch,
                              host_share_key, profile_key, read_profiles, save_profile)


@pytest.fixture(autouse=True)
def no_collection_between_tries(monkeypatch):
    """free_memory's gc.collect hands a GPU's memory back between the search's tries. These steps hold no GPU
    memory, and in the suite's process, which holds every module the tests import, each collection takes ~0.3 s."""
    monkeypatch.setattr(scheduler, "free_memory", lambda: None)


class FakeStep:
    """Out of memory above `capacity` images; images/s peaks at `best` (bigger batches thrash in this model)."""

    def __init__(self, capacity: int, best: int):
        self.capacity, self.best, self.calls, self.out_of_memory = capacity, best, [], 0

    def __call__(self, batch: int, *, timed: bool = True) -> float | None:
        self.calls.append((batch, timed))
        if batch > self.capacity:
            self.out_of_memory += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for batch {batch}")
        if not timed:
            return None
        return float(batch if batch <= self.best else 2 * self.best - batch)


@pytest.mark.parametrize("capacity, limit, expected", [(100, 1000, 100), (100, 64, 64), (1000, 256, 256),
                                                       (5, 1000, 5), (0, 1000, 0), (16, 1000, 16), (17, 1000, 17)])
def test_largest_fitting_batch(capacity, limit, expected):
    assert largest_fitting_batch(lambda batch: batch <= capacity, limit) == expected


def test_autotune_backs_off_and_picks_the_fastest_candidate(caplog):
    step = FakeStep(capacity=100, best=72)
    with caplog.at_level("INFO", logger="engine"):
        choice = autotune(step, limit=1000)
    # each try is logged as it ends: the search is a silent minute on a GPU otherwise
    assert "batch 128 does not fit" in caplog.text and "batch 72: 72 img/s" in caplog.text
    assert choice.largest_fitting == 100 and step.out_of_memory >= 1
    assert sorted(choice.images_per_s) == [48, 72, 100]
    assert choice.batch_size == 72 and "largest fitting 100" in choice.reason
    assert "eager" in choice.reason  # its rates are not the compiled run's own


def test_batches_that_fit_only_untimed_are_one_line_not_a_traceback():
    """The search asks what fits with cuDNN's heuristic algorithms; the candidates are timed with its algorithm
    search, whose workspaces may need more. Where no candidate survives that, the user is told what to give."""
    class FitsOnlyUntimed(FakeStep):
        def __call__(self, batch: int, *, timed: bool = True) -> float | None:
            if timed:
                raise torch.OutOfMemoryError("CUDA out of memory (cuDNN workspace)")
            return super().__call__(batch, timed=timed)

    with pytest.raises(UserInputError, match=r"^batches up to 6 fit in memory, but none of \[6\] did when timed "
                                             r"with cuDNN's algorithm search; give a smaller --batch-size$"):
        autotune(FitsOnlyUntimed(capacity=6, best=6), limit=1000)


def test_an_image_size_too_large_for_the_card_is_one_line_naming_it(monkeypatch, tiny_dataset, capsys):
    """Not even one image fits: the autotuner says so in the terms a user changes (the size), and an out-of-memory
    error mid-training (a --batch-size too large) ends in one line too, not a traceback."""
    from engine import run
    from tests.conftest import run_main
    monkeypatch.setattr(scheduler.torch.cuda, "get_device_name", lambda *args: "NVIDIA H100")
    monkeypatch.setattr(scheduler.torch.cuda, "set_per_process_memory_fraction", lambda *args: None)
    monkeypatch.setattr(scheduler, "training_step_rate", lambda *args: FakeStep(capacity=0, best=1))
    with pytest.raises(UserInputError, match=r"^not even one resnet50 training image at 4096x4096 fits in 90% of the "
                                             r"NVIDIA H100's memory; lower --image-size$"):
        choose_batch_size("auto", device="cuda", default=32, backbone="resnet50", num_classes=3,
                          image_size=(4096, 4096), precision="bf16", compile_model=False, channels_last=True,
                          train_images=1000)

    def full_machine(*args, **kwargs):  # what torch's CPU allocator raises where the system refuses memory
        raise RuntimeError(CPU_ALLOCATOR_FAILURE)
    monkeypatch.setattr(run, "fit", full_machine)
    failed = run_main(capsys, "train", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset),
                      "--no-pretrained", "--image-size", "32", "--batch-size", "8", "--out", str(tiny_dataset.parent))
    errors = [line for line in failed.stderr.splitlines() if line.startswith("engine: error:")]
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and errors == [
        "engine: error: out of memory training mobilenet_v3_large at batch 8 and 32x32 on cpu "
        f"({CPU_ALLOCATOR_FAILURE}); lower --batch-size or --image-size"]


CPU_ALLOCATOR_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 536870912 bytes. Error code 12 (Cannot allocate memory)")


def test_out_of_memory_on_a_gpu_also_points_to_the_batch_autotune():
    """On a GPU `--batch-size auto` searches for the largest batch that fits, so the line offers it; on the CPU
    (above) auto is a fixed default, so it does not."""
    from engine.config import RunConfig
    from engine.run import out_of_memory_advice
    config = RunConfig("resnet50", "demo", "demo", "/d", (256, 256), augment=True, batch_size=512, device="cuda")
    with pytest.raises(UserInputError) as raised, out_of_memory_advice(config):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 1 GiB free.\nmore")
    assert str(raised.value) == (
        "out of memory training resnet50 at batch 512 and 256x256 on cuda (CUDA out of memory. Tried to allocate "
        "2.00 GiB. GPU 0 has 1 GiB free.); lower --batch-size or --image-size, or let --batch-size auto find the "
        "largest batch that fits")
    with pytest.raises(ValueError, match="^shape mismatch$"), out_of_memory_advice(config):
        raise ValueError("shape mismatch")  # any other error passes as it is
    graphed = RunConfig("resnet50", "demo", "demo", "/d", (256, 256), augment=True, batch_size=512, device="cuda",
                        compile=True, compile_mode="reduce-overhead")
    with pytest.raises(UserInputError) as raised, out_of_memory_advice(graphed):
        raise torch.OutOfMemoryError("CUDA out of memory.")
    assert str(raised.value).endswith("fits, or --compile-mode default (CUDA graphs, reduce-overhead, keep a memory "
                                      "pool of their own)")


def test_the_memory_search_skips_cudnns_algorithm_search_and_the_candidates_are_timed_with_it(monkeypatch):
    """Which batches fit needs no timed choice of convolution algorithms (seconds at each of ~10 sizes); the
    rates that pick the batch must be measured with the algorithms training uses."""
    step, searched = FakeStep(capacity=100, best=72), []
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # as the engine's step sets it

    def recording(batch, *, timed=True):
        searched.append((batch, torch.backends.cudnn.benchmark))
        return step(batch, timed=timed)

    autotune(recording, limit=1000)
    search, timed = searched[:-3], searched[-3:]
    assert search and not any(tuned for _, tuned in search)
    assert [batch for batch, _ in timed] == [100, 72, 48] and all(tuned for _, tuned in timed)
    assert torch.backends.cudnn.benchmark is True


def test_the_memory_search_only_asks_what_fits_and_times_the_candidates_alone():
    """Whether a batch fits needs its step run to its peak memory, not timed: on a large dataset the search tries
    batches of thousands of images, where timing each would take minutes."""
    step = FakeStep(capacity=100, best=72)
    autotune(step, limit=1000)
    search, candidates = step.calls[:-3], step.calls[-3:]
    assert [batch for batch, _ in search] == [16, 32, 64, 128, 96, 112, 104, 100, 102, 101]
    assert not any(timed for _, timed in search) and all(timed for _, timed in candidates)


def test_the_real_step_runs_untimed_to_its_peak_memory(monkeypatch):
    """The untimed question runs the step twice (the optimizer's state exists only after the first) and measures
    nothing; the timed one warms up, then times."""
    clock = []
    monkeypatch.setattr(scheduler.time, "perf_counter", lambda: clock.append(1) or float(len(clock)))
    run = scheduler.training_step_rate("mobilenet_v3_large", 3, (32, 32), "fp32", True, torch.device("cpu"),
                                       steps=1, warmup=1)
    assert run(2, timed=False) is None and not clock
    assert run(2) > 0 and len(clock) == 2


def test_autotune_respects_the_training_set_limit():
    assert batch_limit(1000) == 125 and batch_limit(3) == 1
    choice = autotune(FakeStep(capacity=10_000, best=10_000), limit=batch_limit(1000))
    assert choice.batch_size == 125 and "capped by the training set" in choice.reason


@pytest.mark.parametrize("message, full", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
    ("CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`", True),
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 536870912 bytes.", True),
    ("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED", False),
    ("shape mismatch", False),
])
def test_a_full_card_is_read_from_torch_cudnn_and_cublas_messages(message, full):
    assert scheduler.says_out_of_memory(message) is full
    assert scheduler.is_out_of_memory(RuntimeError(message)) is full


def test_errors_other_than_out_of_memory_are_not_swallowed():
    def broken(batch, **_):
        raise ValueError("shape mismatch")
    with pytest.raises(ValueError, match="shape mismatch"):
        autotune(broken, limit=64)


def test_profile_store_round_trips_and_is_used(tmp_path):
    path = tmp_path / "profiles.json"
    key = profile_key("NVIDIA H200", "regnet_y_3_2gf", (256, 256), "bf16", True, True)
    for part in ("NVIDIA H200", torch.__version__, "regnet_y_3_2gf", "256x256", "bf16", "compile", "channels_last"):
        assert part in key
    assert key != profile_key("NVIDIA H200", "regnet_y_3_2gf", (256, 256), "bf16", False, True)
    first = cached_or_tuned(key, FakeStep(capacity=100, best=72), limit=1000, path=path)
    stored = read_profiles(path)[key]
    assert stored["batch_size"] == first.batch_size == 72 and "measured_at" in stored

    def must_not_run(batch, **_):
        raise AssertionError("the store should have answered")

    again = cached_or_tuned(key, must_not_run, limit=1000, path=path)
    assert again.batch_size == 72 and again.reason.startswith("profile store")
    retuned = cached_or_tuned(key, FakeStep(capacity=100, best=72), limit=40, path=path)  # a smaller training set
    assert retuned.batch_size <= 40


def test_explicit_and_cpu_batch_sizes_need_no_search(monkeypatch):
    monkeypatch.setattr(scheduler, "autotune", lambda *a, **k: pytest.fail("no search expected"))
    common = dict(default=32, backbone="resnet50", num_classes=3, image_size=(64, 64), precision="fp32",
                  compile_model=False, channels_last=True, train_images=600)
    assert choose_batch_size(48, device="cpu", **common) == (48, "--batch-size")
    size, reason = choose_batch_size("auto", device="cpu", **common)
    assert size == 32 and "CPU default" in reason


def test_the_real_step_measures_images_per_second_on_cpu():
    rate = scheduler.training_step_rate("mobilenet_v3_large", 3, (32, 32), "fp32", True, torch.device("cpu"),
                                        steps=1, warmup=1)
    assert rate(4) > 0


def test_host_step_time_is_the_median_enqueue_time_after_a_synchronisation_each(monkeypatch):
    """On a GPU the host's part of a step is timed with the device idle before each (so a full launch queue
    cannot block it): the median of the repeats, in milliseconds."""
    import time

    calls = []
    monkeypatch.setattr(scheduler, "synchronize", lambda device: calls.append("sync"))
    durations = iter([0.030, 0.010, 0.011, 0.012, 0.500])  # one slow outlier (a recompile, a page fault)

    def step(images, labels):
        calls.append("step")
        time.sleep(next(durations))

    host_ms = scheduler.host_step_ms(step, (None, None), torch.device("cuda"))
    assert 11.5 <= host_ms < 20 and calls == ["sync", "step"] * 5 + ["sync"]
    assert scheduler.host_step_ms(step, (None, None), torch.device("cpu")) is None


class FakeGpu:
    """A GPU whose steps the host enqueues in `host_s` each, and which runs each in `device_s` once synchronised."""

    def __init__(self, host_s: float, device_s: float):
        self.host_s, self.device_s, self.queued = host_s, device_s, 0

    def make_step(self, batch: int):
        def step():
            time.sleep(self.host_s)
            self.queued += 1
        return step

    def synchronize(self, device):
        time.sleep(max(0.0, self.queued * self.device_s - self.host_s * self.queued))  # what the host did not cover
        self.queued = 0


@pytest.mark.parametrize("host_s, device_s, launch_bound", [(0.001, 0.012, False), (0.012, 0.004, True)])
def test_the_eager_host_share_tells_a_launch_bound_step_from_a_gpu_bound_one(monkeypatch, host_s, device_s,
                                                                             launch_bound):
    gpu = FakeGpu(host_s, device_s)
    monkeypatch.setattr(scheduler, "synchronize", gpu.synchronize)
    share = scheduler.eager_host_share(gpu.make_step, 8, torch.device("cuda"), steps=4, warmup=1)
    assert (share >= scheduler.EAGER_LAUNCH_BOUND) == launch_bound
    assert share < 0.5 if not launch_bound else 0.8 <= share <= 1.2


# 0.765: shufflenet_v2_x2_0's eager share at batch 256 on an H100, whose compiled step was launch-bound (its host
# 35.7 ms for 30.5 ms on the GPU) when the rule's line stood at 0.8 and gave it no graphs
@pytest.mark.parametrize("share, mode, words", [(0.97, "reduce-overhead", "takes 97% of the eager step's time"),
                                                (0.765, "reduce-overhead", "compiled step is launch-bound"),
                                                (0.6, "reduce-overhead", "CUDA graphs replay it in one launch"),
                                                (0.3, "default", "compiled step is GPU-bound")])
def test_cuda_graphs_go_to_steps_that_will_be_launch_bound_once_compiled(share, mode, words):
    chosen, why = scheduler.graphs_where_launch_bound(share, 192)
    assert chosen == mode and why.startswith("auto: the host takes") and "at batch 192" in why and words in why


def test_the_host_share_is_measured_once_per_key_and_batch_beside_the_batch_choice(tmp_path):
    path = tmp_path / "profiles.json"
    key = profile_key("NVIDIA H100", "shufflenet_v2_x2_0", (256, 256), "bf16", True, True)
    measured = []

    def measure(batch):
        measured.append(batch)
        return 0.9612

    assert scheduler.cached_or_measured_share(key, 192, measure, path) == 0.961
    assert scheduler.cached_or_measured_share(key, 192, measure, path) == 0.961 and measured == [192]
    scheduler.cached_or_measured_share(key, 128, measure, path)  # another batch is another question
    assert measured == [192, 128]
    # each share is an entry of its own, none inside the batch choice's: the autotune still runs for the key, and
    # its entry holds the batch choice alone
    stored = read_profiles(path)
    assert [stored[host_share_key(key, batch)]["eager_host_share"] for batch in (192, 128)] == [0.961, 0.961]
    choice = cached_or_tuned(key, FakeStep(capacity=100, best=72), limit=1000, path=path)
    assert choice.batch_size == 72 and not choice.reason.startswith("profile store")
    assert "eager_host_share" not in read_profiles(path)[key]
    assert scheduler.cached_or_measured_share(key, 192, measure, path) == 0.961 and measured == [192, 128]
    # a store from before: the share inside the key's entry, alone, is no batch choice either
    older = tmp_path / "older.json"
    save_profile(key, {"eager_host_share": {"192": 0.961}}, older)
    assert cached_or_tuned(key, FakeStep(capacity=100, best=72), limit=1000, path=older).batch_size == 72


def test_compile_mode_auto_measures_only_a_compiled_run_on_one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "FakeGPU")
    monkeypatch.setattr(scheduler, "synthetic_steps", lambda *args: "steps")
    shares = []
    monkeypatch.setattr(scheduler, "eager_host_share", lambda steps, batch, device: shares.append(batch) or 0.95)
    shape = dict(backbone="shufflenet_v2_x2_0", num_classes=3, image_size=(64, 64), precision="bf16",
                 channels_last=True, batch_size=192)
    choose = scheduler.choose_compile_mode
    assert choose("max-autotune", device="cuda", compile_model=True, world_size=1, **shape) == ("max-autotune",
                                                                                              "--compile-mode")
    assert choose("auto", device="cuda", compile_model=False, world_size=1, **shape) == ("default",
                                                                                       "auto: not compiled")
    assert choose("auto", device="cpu", compile_model=True, world_size=1, **shape)[1] == "auto: CUDA graphs need a GPU"
    assert choose("auto", device="cuda", compile_model=True, world_size=2, **shape)[0] == "default"  # DDP: no graphs
    assert shares == []  # none of those measured anything
    mode, why = choose("auto", device="cuda", compile_model=True, world_size=1, **shape)
    assert mode == "reduce-overhead" and "launch-bound" in why and shares == [192]
    assert choose("auto", device="cuda", compile_model=True, world_size=1, **shape)[0] == "reduce-overhead"
    assert shares == [192]  # the second run read the profile store


def test_compile_mode_auto_where_the_eager_step_does_not_fit_says_so_and_compiles_as_usual(monkeypatch, caplog):
    """A --batch-size the eager step cannot hold (the compiled one may: inductor keeps fewer activations) is no
    traceback: the mode is default, with a warning; any other failure of the measure is raised."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "FakeGPU")
    monkeypatch.setattr(scheduler, "synthetic_steps", lambda *args: "steps")
    shape = dict(backbone="resnet50", num_classes=3, image_size=(64, 64), precision="bf16", channels_last=True,
                 batch_size=4096, device="cuda", compile_model=True, world_size=1)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(scheduler, "eager_host_share", out_of_memory)
    with caplog.at_level("WARNING", logger="engine"):
        mode, why = scheduler.choose_compile_mode("auto", **shape)
    assert (mode, why) == ("default", "auto: the eager step at batch 4096 does not fit in memory to be measured")
    assert why in caplog.text
    monkeypatch.setattr(scheduler, "eager_host_share", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        scheduler.choose_compile_mode("auto", **shape)


def test_the_real_eager_steps_share_one_model_across_batches_on_cpu():
    make_step = scheduler.synthetic_steps("mobilenet_v3_large", 3, (32, 32), "fp32", True, torch.device("cpu"))
    make_step(2)()
    make_step(4)()  # another batch, the same model and optimizer


def test_packing_takes_more_runs_only_when_they_pay():
    assert scheduler.best_concurrency({1: 100.0, 2: 180.0, 3: 185.0}.get)[0] == 2  # 3 adds under 5 %
    assert scheduler.best_concurrency({1: 100.0, 2: 103.0, 3: 104.0}.get)[0] == 1
    assert scheduler.best_concurrency({1: 100.0, 2: 90.0, 3: 150.0}.get)[0] == 3


def test_packed_copies_train_at_once_and_the_best_count_is_stored(tmp_path, monkeypatch):
    path = tmp_path / "profiles.json"
    config, _ = prepare_profile_config(backbone="shufflenet_v2_x2_0", data=None, image_size=(32, 32), batch_size=4,
                                       device="cpu")
    reports = {}
    run_copies = scheduler.run_packed_copies
    monkeypatch.setattr(scheduler, "run_packed_copies",
                        lambda config, copies, seconds: reports.setdefault(copies, run_copies(config, copies, seconds)))
    best, rates, batches = scheduler.measure_packing(config, seconds=1.5, options=(1, 2), path=path)
    assert set(rates) == {1, 2} and all(rate > 0 for rate in rates.values()) and best in rates
    assert batches == {1: 4, 2: 4}  # the user's batch, kept by every copy
    (first, second) = (report["window"] for report in reports[2])
    overlap = min(first[1], second[1]) - max(first[0], second[0])
    assert overlap > 0.8 * 1.5  # timed over the same stretch of time, whatever their start-ups took
    assert rates[2] == round(sum(report["images_per_s"] for report in reports[2]), 1)
    stored = read_profiles(path)[scheduler.packing_key("cpu", "shufflenet_v2_x2_0", (32, 32))]
    assert stored["concurrency"] == best and stored["batch_size"] == 4


def test_a_copy_waits_at_the_barrier_until_every_copy_is_ready(tmp_path):
    waiter = threading.Thread(target=scheduler.wait_for_copies, args=(tmp_path, 2))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive()  # alone, it waits
    (tmp_path / "ready-12345").touch()  # the other copy is compiled and warm
    waiter.join(timeout=5)
    assert not waiter.is_alive()


def test_the_first_failed_copy_stops_the_others_and_is_named():
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    assert scheduler._first_failure([waiting, failing]) == 1
    assert waiting.returncode is not None and time.monotonic() - started < 30  # killed, not waited for


def test_a_copy_that_fails_for_another_reason_than_memory_is_raised(tmp_path):
    config, _ = prepare_profile_config(backbone="shufflenet_v2_x2_0", data=None, image_size=(32, 32), batch_size=4,
                                       device="cpu")
    config.backbone = "no_such_backbone"  # every copy refuses it: not an out-of-memory, which rules a count out
    with pytest.raises(RuntimeError, match="a packed copy failed: .*no_such_backbone"):
        scheduler.run_packed_copies(config, 2, seconds=1.0)


def test_a_packed_run_tunes_its_batch_in_its_share_of_the_gpu(monkeypatch):
    fractions = []
    monkeypatch.setenv("ENGINE_MEMORY_SHARE", scheduler.share_environment(2)["ENGINE_MEMORY_SHARE"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "FakeGPU")
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, *args: fractions.append(fraction))
    monkeypatch.setattr(scheduler, "training_step_rate", lambda *args: FakeStep(capacity=100, best=72))
    size, reason = choose_batch_size("auto", device="cuda", default=32, backbone="resnet50", num_classes=3,
                                     image_size=(64, 64), precision="bf16", compile_model=True, channels_last=True,
                                     train_images=10_000)
    assert size == 72 and "0.5 of the GPU" in reason
    assert fractions == [scheduler.MEMORY_CAP * 0.5, 0.5]  # searched under its share, and kept to it after
    key = profile_key("FakeGPU", "resnet50", (64, 64), "bf16", True, True, share=0.5)
    assert key.endswith("|share 0.5") and read_profiles()[key]["batch_size"] == 72
    assert profile_key("FakeGPU", "resnet50", (64, 64), "bf16", True, True) not in read_profiles()  # solo: its own


@pytest.mark.parametrize("value", ["0", "1.5", "half", "-0.5"])
def test_a_memory_share_out_of_range_is_refused(monkeypatch, value):
    monkeypatch.setenv("ENGINE_MEMORY_SHARE", value)
    with pytest.raises(UserInputError, match=f"ENGINE_MEMORY_SHARE must be a number in \\(0, 1\\], got '{value}'"):
        scheduler.keep_to_memory_share("cpu")


def test_concurrent_writers_lose_no_entry_of_the_profile_store(tmp_path):
    path = tmp_path / "profiles.json"

    def write(writer: int) -> None:
        for number in range(25):
            scheduler.save_profile(f"writer {writer} key {number}", {"batch_size": number}, path)

    writers = [threading.Thread(target=write, args=(writer,)) for writer in range(6)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    assert len(read_profiles(path)) == 6 * 25
