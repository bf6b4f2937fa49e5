"""`engine profile` on the CPU: every field, with and without a dataset."""
import json

import pytest
import torch

from tests.conftest import run_main

FIELDS = {"backbone", "device", "image_size", "precision", "compile", "compile_mode", "compile_mode_reason",
          "cuda_graph_skips", "channels_last", "batch_size", "batch_size_reason", "first_step_s", "model_images_per_s",
          "step_ms", "phase_ms", "host_step_ms", "peak_memory_gib", "loader", "loader_images_per_s",
          "end_to_end_images_per_s", "verdict"}


def test_profile_json_reports_the_whole_pipeline(tiny_dataset, capsys):
    done = run_main(capsys, "profile", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--image-size",
                    "32", "--batch-size", "8", "--steps", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == FIELDS
    assert report["device"] == "cpu" and report["batch_size"] == 8 and report["loader"] == "torch"
    assert set(report["phase_ms"]) == {"forward", "backward", "optimizer"} and all(report["phase_ms"].values())
    assert report["model_images_per_s"] > 0 and report["loader_images_per_s"] > 0
    assert report["end_to_end_images_per_s"] > 0
    assert report["host_step_ms"] is None  # the CPU works as it enqueues: there is no separate host time
    assert report["compile_mode"] == "default" and report["cuda_graph_skips"] is None  # no CUDA graphs asked for
    assert report["compile_mode_reason"] == "auto: not compiled"  # the default mode, auto, said why
    assert report["verdict"].startswith(("compute-bound", "input-bound", "contention"))


def test_a_training_set_smaller_than_the_batch_is_profiled_at_the_batch_training_takes(tmp_path, capsys):
    from tests.conftest import make_dataset
    data = make_dataset(tmp_path / "small", {"train": 2, "test": 1})  # 6 training images, a batch of 8 asked
    done = run_main(capsys, "profile", "--backbone", "mobilenet_v3_large", "--data", str(data), "--image-size", "32",
                    "--batch-size", "8", "--steps", "2", "--json")
    report = json.loads(done.stdout)
    assert report["batch_size"] == 6  # the model alone at 8 would not compare with the loader's batches of 6
    assert report["batch_size_reason"].startswith("the whole training set (8 asked: ")
    assert report["step_ms"] == pytest.approx(6e3 / report["model_images_per_s"], rel=0.02)


@pytest.mark.parametrize("loader_rate, end_to_end, expected", [
    (1000.0, 950.0, "compute-bound"),  # end to end within 90 % of the model: the model is the limit
    (400.0, 380.0, "input-bound"),     # the loader alone cannot keep up with the step
    (4000.0, 600.0, "contention"),     # each alone is fast enough; together they are not
])
def test_the_verdict_tells_a_slow_loader_from_loader_and_model_slowing_each_other(loader_rate, end_to_end, expected):
    from engine.profile import verdict
    report = {"model_images_per_s": 1000.0, "loader_images_per_s": loader_rate, "end_to_end_images_per_s": end_to_end,
              "loader": "dali", "device": "NVIDIA H100 80GB HBM3", "phase_ms": {"forward": 1.0}}
    assert verdict(report).startswith(expected)


@pytest.mark.parametrize("host_ms, step_ms, launch_bound",
                         [(2.0, 30.0, False), (27.0, 30.0, True), (None, 30.0, False)])
def test_a_step_the_host_cannot_enqueue_faster_than_the_gpu_runs_it_is_called_launch_bound(host_ms, step_ms,
                                                                                          launch_bound):
    from engine.profile import _launch_hint
    hint = _launch_hint({"host_step_ms": host_ms, "step_ms": step_ms, "compile": True, "compile_mode": "default"})
    assert ("launch-bound" in hint) == launch_bound


@pytest.mark.parametrize("compile_model, mode, remedy", [(False, "default", "try --compile "),
                                                         (True, "default", "try --compile-mode reduce-overhead"),
                                                         (True, "max-autotune-no-cudagraphs",
                                                          "try --compile-mode reduce-overhead"),
                                                         (True, "reduce-overhead", "a larger --batch-size")])
def test_a_launch_bound_step_is_told_the_next_remedy_for_how_it_runs(compile_model, mode, remedy):
    from engine.profile import _launch_hint
    hint = _launch_hint({"host_step_ms": 9.0, "step_ms": 6.0, "compile": compile_model, "compile_mode": mode})
    assert "launch-bound" in hint and remedy in hint


def test_where_the_input_side_limits_a_dataset_that_fits_is_pointed_to_the_resident_loader(tiny_dataset):
    from engine.loaders import scan_dataset
    from engine.profile import _resident_hint
    from engine.run import prepare_profile_config
    config, index = prepare_profile_config(backbone="mobilenet_v3_large", data=str(tiny_dataset),
                                           image_size=(32, 32), device="cpu")
    assert "try --loader resident" in _resident_hint({"verdict": "contention: ..."}, config, index)
    assert _resident_hint({"verdict": "compute-bound: ..."}, config, index) == ""
    assert _resident_hint({"verdict": "input-bound: ..."}, config, None) == ""  # no dataset, nothing to keep
    resident = prepare_profile_config(backbone="mobilenet_v3_large", data=str(tiny_dataset), image_size=(32, 32),
                                      device="cpu", loader="resident")[0]
    assert _resident_hint({"verdict": "input-bound: ..."}, resident, scan_dataset(tiny_dataset)) == ""


def test_profile_without_data_measures_the_model_alone(capsys):
    done = run_main(capsys, "profile", "--backbone", "shufflenet_v2_x2_0", "--image-size", "32", "--steps", "1",
                    "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loader"] is None and report["batch_size"] == 32 and "CPU default" in report["batch_size_reason"]
    assert report["verdict"].startswith("model only")
    table = run_main(capsys, "profile", "--backbone", "shufflenet_v2_x2_0", "--image-size", "32", "--steps", "1")
    rows = dict(line.split(maxsplit=1) for line in table.stdout.splitlines()[1:] if line and " " in line)
    assert rows["image_size"] == "32x32" and rows["loader"] == rows["peak_memory_gib"] == "-"  # not measured
    assert rows["phase_ms"].startswith("forward ") and ", backward " in rows["phase_ms"]
    assert table.stdout.rstrip().splitlines()[-1].startswith("verdict: model only")
    bad = run_main(capsys, "profile", "--backbone", "wavemix", "--image-size", "48")
    assert bad.returncode == 2 and "divisible by 32" in bad.stderr


def test_the_table_reads_a_packing_measurement_by_count():
    """Counts as keys would run into their values ("1 468.5, 2 174.8"), and a breakdown within a breakdown into
    its neighbours."""
    from engine.cli import _readable
    packing = {"best_concurrency": 2, "total_images_per_s": {"1": 468.5, "2": 874.8}, "batch_sizes": {"1": 64, "2": 32}}
    assert _readable(packing) == ("best_concurrency 2, total_images_per_s (1: 468.5, 2: 874.8), "
                                  "batch_sizes (1: 64, 2: 32)")


def test_end_to_end_timing_starts_after_the_batches_a_loader_made_ahead():
    """A loader's prefetched batches, made while the warm-up ran, are taken untimed and unworked: timed, they would
    let a loader too slow for the step read as keeping up."""
    import itertools

    import torch

    from engine.profile import images_per_s
    taken, worked_on = [], []

    def batches():
        for number in itertools.count(1):
            taken.append(number)
            yield torch.zeros(2, 3), torch.zeros(2)

    rate = images_per_s(batches(), steps=5, warmup=2, work=lambda images, labels: worked_on.append(taken[-1]),
                        device=torch.device("cpu"), drain=3)
    assert worked_on == [1, 2, 6, 7, 8, 9, 10] and len(taken) == 10 and rate > 0


def test_the_clock_starts_when_the_first_timed_batch_arrives(monkeypatch):
    """After the drain the loader's queue is empty, and its first batch's wait (decode and resize, with nothing
    made ahead) is a start-up cost, not a rate: a loader that then keeps up reads as the step's rate. One that
    falls behind still reads as slow."""
    import itertools
    from types import SimpleNamespace

    import torch

    from engine import profile
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(profile, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def batches(first_wait: float, then_wait: float):
        for number in itertools.count(1):
            clock.now += first_wait if number == 6 else then_wait if number > 6 else 0.0  # 6: the first timed one
            yield torch.zeros(2, 3), torch.zeros(2)

    def step(images, labels):
        clock.now += 0.1

    def rate(first_wait: float, then_wait: float) -> float:
        return profile.images_per_s(batches(first_wait, then_wait), steps=5, warmup=2, work=step,
                                    device=torch.device("cpu"), drain=3)

    assert rate(first_wait=1.0, then_wait=0.0) == pytest.approx(10 / 0.5)  # keeps up: 2 images per 0.1 s step
    assert rate(first_wait=1.0, then_wait=0.2) == pytest.approx(10 / (0.5 + 4 * 0.2))  # each later batch late
    with pytest.raises(ValueError, match="ran out"):  # a rate of nothing is an error, not 0 images/s
        profile.images_per_s(iter([(torch.zeros(2, 3), torch.zeros(2))] * 5), steps=5, warmup=2, work=step,
                             device=torch.device("cpu"), drain=3)


@pytest.mark.parametrize("loader, workers, made_ahead", [("torch", 0, 0), ("torch", 2, 4), ("resident", 0, 0),
                                                         ("dali", 1, 6)])
def test_each_pipeline_says_how_many_batches_it_makes_ahead(tiny_dataset, loader, workers, made_ahead):
    import torch

    from engine.loaders import PIPELINES, dali_available, scan_dataset
    if loader == "dali" and not dali_available():
        pytest.skip("DALI is not installed")
    index = scan_dataset(tiny_dataset)
    pipeline = PIPELINES[loader](index, index.train, image_size=(32, 32), augment=False, batch_size=4, train=True,
                                 device=torch.device("cpu"), seed=0, workers=workers, channels_last=False)
    assert pipeline.queued_batches == made_ahead
