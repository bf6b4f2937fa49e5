"""The batch autotuner's search, with an injected memory model, and the profile store."""
import pytest
import torch

from engine import scheduler
from engine.scheduler import (autotune, batch_limit, cached_or_tuned, choose_batch_size, largest_fitting_batch,
                              profile_key, read_profiles)


class FakeStep:
    """Out of memory above `capacity` images; images/s peaks at `best` (bigger batches thrash in this model)."""

    def __init__(self, capacity: int, best: int):
        self.capacity, self.best, self.calls, self.out_of_memory = capacity, best, [], 0

    def __call__(self, batch: int) -> float:
        self.calls.append(batch)
        if batch > self.capacity:
            self.out_of_memory += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for batch {batch}")
        return float(batch if batch <= self.best else 2 * self.best - batch)


@pytest.mark.parametrize("capacity, limit, expected", [(100, 1000, 100), (100, 64, 64), (1000, 256, 256),
                                                       (5, 1000, 5), (0, 1000, 0), (16, 1000, 16), (17, 1000, 17)])
def test_largest_fitting_batch(capacity, limit, expected):
    assert largest_fitting_batch(lambda batch: batch <= capacity, limit) == expected


def test_autotune_backs_off_and_picks_the_fastest_candidate():
    step = FakeStep(capacity=100, best=72)
    choice = autotune(step, limit=1000)
    assert choice.largest_fitting == 100 and step.out_of_memory >= 1
    assert sorted(choice.images_per_s) == [48, 72, 100]
    assert choice.batch_size == 72 and "largest fitting 100" in choice.reason


def test_autotune_respects_the_training_set_limit():
    assert batch_limit(1000) == 125 and batch_limit(3) == 1
    choice = autotune(FakeStep(capacity=10_000, best=10_000), limit=batch_limit(1000))
    assert choice.batch_size == 125 and "capped by the training set" in choice.reason


def test_errors_other_than_out_of_memory_are_not_swallowed():
    def broken(batch):
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

    def must_not_run(batch):
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


def test_packing_takes_more_runs_only_when_they_pay():
    assert scheduler.best_concurrency({1: 100.0, 2: 180.0, 3: 185.0}.get)[0] == 2  # 3 adds under 5 %
    assert scheduler.best_concurrency({1: 100.0, 2: 103.0, 3: 104.0}.get)[0] == 1
    assert scheduler.best_concurrency({1: 100.0, 2: 90.0, 3: 150.0}.get)[0] == 3


def test_packing_is_measured_with_real_processes_and_stored(tmp_path):
    path = tmp_path / "profiles.json"
    best, rates = scheduler.measure_packing("shufflenet_v2_x2_0", (32, 32), 4, "cpu", steps=1, path=path)
    assert set(rates) == {1, 2, 3} and all(rate > 0 for rate in rates.values()) and best in rates
    stored = read_profiles(path)[scheduler.packing_key("cpu", "shufflenet_v2_x2_0", (32, 32))]
    assert stored["concurrency"] == best and stored["batch_size"] == 4
