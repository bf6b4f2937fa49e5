"""The benchmarks run (tiny shapes, CPU), so they do not rot between GPU sessions. Their numbers are not
asserted: speed is measured on a GPU and written to bench/NOTES.md."""
import json

import pytest
import torch

from engine.bench import dwt, wavemix_step


def test_dwt_benchmark_reports_every_implementation_against_a_copy(capsys):
    rows = dwt.main(["--quick", "--device", "cpu", "--dtype", "fp32"])
    assert [row["implementation"] for row in rows] == ["reference", "plain", "fused"]
    assert all(row["forward_gb_s"] >= 0 and row["fwd_bwd_of_copy"] >= 0 for row in rows)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "copy_gb_s" in lines[0] and lines[1:] == rows


def test_dwt_benchmark_prints_each_row_as_it_is_measured(monkeypatch, capsys):
    """A run stopped by its time limit (a slow compile on a lent GPU) keeps the header and the rows before it."""
    measured = dwt.measure

    def measure_then_stop(name, *args):
        if name == "plain":
            raise KeyboardInterrupt  # stands for the time limit's kill
        return measured(name, *args)

    monkeypatch.setattr(dwt, "measure", measure_then_stop)
    with pytest.raises(KeyboardInterrupt):
        dwt.main(["--quick", "--device", "cpu", "--dtype", "fp32"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "copy_gb_s" in lines[0] and [line["implementation"] for line in lines[1:]] == ["reference"]


def test_dwt_benchmark_times_each_launch_configuration_on_request():
    from engine.kernels.haar_triton import TILE_CONFIGS
    rows = dwt.main(["--quick", "--device", "cpu", "--dtype", "fp32", "--channels-last", "--configs"])
    configured = [row for row in rows if row["implementation"].startswith("fused, config")]
    assert len(configured) == len(TILE_CONFIGS)
    assert all(row["forward_ms"] > 0 and row["backward_ms"] > 0 for row in configured)


def test_wavemix_step_benchmark_runs_each_variant():
    rows = wavemix_step.main(["--quick", "--device", "cpu", "--variants", "plain:*:eager,fused:*:eager"])
    assert [(row["dwt"], row["compile"]) for row in rows] == [("plain", "eager")] * 2 + [("fused", "eager")] * 2
    assert all("error" not in row and row["images_per_s"] > 0 for row in rows)
    assert all(row["host_step_ms"] is None for row in rows)  # on a GPU: the host's time to enqueue a step


def test_wavemix_step_benchmark_runs_only_the_named_variants():
    rows = wavemix_step.main(["--quick", "--device", "cpu", "--variants", "fused:amp:eager,reference:fp32:eager"])
    assert [(row["dwt"], row["precision"]) for row in rows] == [("fused", "bf16 AMP + channels_last"),
                                                                ("reference", "fp32")]
    with pytest.raises(SystemExit, match="unknown variant 'fused:fp16:eager'"):
        wavemix_step.main(["--quick", "--device", "cpu", "--variants", "fused:fp16:eager"])
    chosen = wavemix_step.chosen_variants("fused:amp:compiled,*:amp:*")  # patterns; a variant runs once
    assert [wavemix_step.variant_name(*variant) for variant in chosen] == [
        "fused:amp:compiled", "plain:amp:eager", "plain:amp:compiled", "fused:amp:eager", "fused:amp:graphs"]


def test_loader_benchmark_compares_every_pipeline_with_synthetic_data():
    from engine.bench import loaders
    rows = loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--workers", "1", "--backbone",
                         "mobilenet_v3_large", "--rounds", "2"])
    assert [row["loader"] for row in rows] == ["synthetic (on device)", "dali", "resident", "torch"]
    assert all(row["train_img_s"] > 0 for row in rows if "error" not in row)
    # each end-to-end round against the synthetic rates measured just before and after it (the host's speed
    # drifts): synthetic, then (end to end, synthetic) twice; the row's ratio is the median round's
    for row in rows[1:]:
        assert "error" not in row, row
        synthetic, trained = row["synthetic_img_s"], row["train_img_s_rounds"]
        assert len(synthetic) == 3 and len(trained) == 2 and min(synthetic) > 0
        expected = [2 * trained[i] / (synthetic[i] + synthetic[i + 1]) for i in range(2)]
        assert row["of_synthetic_rounds"] == pytest.approx(expected, rel=1e-2)
        assert row["of_synthetic"] == pytest.approx(sum(expected) / 2, rel=1e-2)
        # printed to 0.1 img/s: the median of two rounds that end in .x5 rounds either way (168.25 -> 168.2)
        assert row["train_img_s"] == pytest.approx(sum(trained) / 2, abs=0.051)
    with pytest.raises(SystemExit):  # argparse: one line naming --rounds, exit 2
        loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--rounds", "0"])


def test_end_to_end_rounds_take_the_median_of_rates_that_drift(monkeypatch):
    """A step whose rate drifts (a host-bound one): each round is judged against the synthetic rates measured
    around it, so a drift common to both does not move the ratio, and one odd round does not move the median."""
    from engine.bench import loaders
    measured = iter([100.0, 90.0, 100.0, 45.0, 50.0, 70.0, 200.0])  # synthetic, then (loader, synthetic) x 3

    class Pipeline:
        queued_batches = 0

    def fake_rate(*args, **kwargs):
        return next(measured)

    monkeypatch.setattr(loaders, "images_per_s", fake_rate)
    monkeypatch.setattr(loaders, "synthetic_rate", fake_rate)
    monkeypatch.setattr(loaders, "endless", lambda pipeline: iter(()))
    row = loaders.end_to_end_rounds(Pipeline(), None, object(), 2, 1, torch.device("cpu"), rounds=3)
    assert row["synthetic_img_s"] == [100.0, 100.0, 50.0, 200.0]
    assert row["of_synthetic_rounds"] == [0.9, 0.6, 0.56]
    assert row["of_synthetic"] == 0.6 and row["train_img_s"] == 70.0
    # one round (the default): the rate and its ratio, without the lists of rounds
    measured = iter([100.0, 90.0, 80.0])
    row = loaders.end_to_end_rounds(Pipeline(), None, object(), 2, 1, torch.device("cpu"))
    assert row == {"train_img_s": 90.0, "synthetic_img_s": [100.0, 80.0], "of_synthetic": 1.0}


def test_loader_benchmark_measures_the_named_loaders_alone():
    from engine.bench import loaders
    rows = loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--workers", "1", "--loaders",
                         "resident,torch", "--loader-only", "--kernels", "2"])
    assert [row["loader"] for row in rows] == ["resident", "torch"]
    assert all(row["loader_only_img_s"] > 0 and "train_img_s" not in row for row in rows)
    # and where each loader's own time goes, per batch
    assert all(len(row["kernels"]["top_kernels"]) == 2 and row["kernels"]["profiled_ms_per_step"] > 0 for row in rows)
    with pytest.raises(SystemExit, match="unknown loader 'nope'"):
        loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--loaders", "nope"])
    with pytest.raises(SystemExit):  # argparse: one line naming --kernels, exit 2
        loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--kernels", "-1"])
    with pytest.raises(SystemExit):  # and --steps, which times at least one
        loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--steps", "0"])


def test_loader_benchmark_sets_both_dali_augmenters_side_by_side_in_one_process():
    """dali-engine is DALI with the engine augmenting, whatever --dali-augmenter says for the plain dali row: the
    two rows of one run are measured against the same card's drift."""
    from engine.bench import loaders
    rows = loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--workers", "1", "--loaders",
                         "dali,dali-engine", "--loader-only", "--dali-augmenter", "dali"])
    assert [(row["loader"], row.get("augmenter")) for row in rows] == [("dali", "dali"), ("dali-engine", "engine")]
    assert all(row["loader_only_img_s"] > 0 for row in rows), rows


@pytest.mark.parametrize("share", ["1.5", "-0.1", "half", "nan"])
def test_loader_benchmark_refuses_a_decoder_share_outside_0_to_1_in_one_line(capsys, share):
    from engine.bench import loaders
    with pytest.raises(SystemExit) as exit_:
        loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--dali-hw-decoder-load", share])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"--dali-hw-decoder-load: expected a share of the JPEGs from 0 to 1, got '{share}'" in error


def test_compare_runs_the_engine_and_the_authors_loop_on_the_same_files():
    from engine.bench import compare
    rows = compare.main(["--data", "demo", "--quick", "--device", "cpu", "--backbones", "mobilenet_v3_large,wavemix",
                         "--training-streams", "engine,high", "--other-loaders", "resident,dali-engine"])
    assert [row["backbone"] for row in rows] == ["mobilenet_v3_large", "wavemix"]  # WaveMix: not torchvision's
    with pytest.raises(SystemExit) as refused:  # one line naming the valid backbones (argparse's error)
        compare.main(["--data", "demo", "--quick", "--device", "cpu", "--backbones", "resnet50,nope"])
    assert refused.value.code == 2
    for row in rows:
        assert row["engine_img_s"] > 0 and row["reference_img_s"] > 0 and row["ratio"] > 0
        assert row["engine_synthetic_img_s"] > 0
        # the rates are printed to 0.1 img/s and the ratio from the unrounded ones: a few img/s on this CPU
        assert row["engine_over_synthetic"] == pytest.approx(row["engine_img_s"] / row["engine_synthetic_img_s"],
                                                             rel=0.02)
        assert row["engine_step_ms"] == pytest.approx(8e3 / row["engine_synthetic_img_s"], rel=0.02)  # batch 8
        assert row["engine_host_step_ms"] is None  # on a GPU: the host's part of that step (engine.profile)
        # where the row's wall time went, to plan a GPU session's comparison: the parts fit inside the whole
        parts = [row["engine_setup_s"], row["engine_first_step_s"], row["reference_s"]]
        assert all(part >= 0 for part in parts) and row["reference_s"] > 0
        assert sum(parts) <= row["wall_s"] + 0.2  # each part rounded to 0.1 s
        # the same step and loader timed again with the step's stream at high priority (the same stream on a CPU)
        again = row["high_stream"]
        assert again["img_s"] > 0 and again["over_synthetic"] == pytest.approx(
            again["img_s"] / again["synthetic_img_s"], rel=0.02)
        assert "training_stream" not in row  # the row itself ran on the engine's stream
        # the same step fed by the resident loader, and by DALI with the engine augmenting (the row's own is torch
        # on the CPU)
        for other in (row["resident_loader"], row["dali-engine_loader"]):
            assert other["img_s"] > 0 and other["over_synthetic"] == pytest.approx(
                other["img_s"] / other["synthetic_img_s"], rel=0.02)


def test_compare_starts_no_backbone_past_its_time_budget_and_names_those_left(capsys):
    from engine.bench import compare
    # any first row takes longer than 0.01 s, so the second would end past the budget: not started
    rows = compare.main(["--data", "demo", "--quick", "--device", "cpu", "--time-budget", "0.01",
                         "--backbones", "shufflenet_v2_x2_0,mobilenet_v3_large,resnet50"])
    assert [row["backbone"] for row in rows] == ["shufflenet_v2_x2_0"]  # the first always runs
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"not_run": ["mobilenet_v3_large", "resnet50"], "reason": "--time-budget 0.01 s"} in lines
    assert lines[-1]["backbones"] == 1
    for bad in (["--time-budget", "0"], ["--training-streams", "engine,fast"], ["--training-streams", "high,high"],
                ["--other-loaders", "ffcv"], ["--other-loaders", "none,resident"]):
        with pytest.raises(SystemExit) as refused:  # one line naming the option (argparse), exit 2
            compare.main(["--data", "demo", "--quick", "--device", "cpu", *bad])
        assert refused.value.code == 2
    refusals = capsys.readouterr().err
    assert "--training-streams: 'engine,fast': each of engine, legacy, high at most once" in refusals
    assert "--other-loaders: 'ffcv': each of torch, dali, resident, dali-engine at most once" in refusals


def test_the_authors_loop_trains_wavemix_as_the_published_code_computes_it():
    import torch
    from engine.bench.reference_loop import authors_model
    from engine.models.wavemix import wavemix_192_16
    torch.manual_seed(0)
    native = wavemix_192_16(3).eval()
    published = authors_model("wavemix", 3).eval()
    assert not published.conv.composed  # the stem's three convolutions, as published
    missing, unexpected = published.load_state_dict(native.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("reference_dwt.") for key in missing)  # its filters, not weights
    published.double()  # the transforms' filters move with the model (a float32 filter would fail here)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = native.double()(images), published(images)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-6  # our stem composes its kernel in fp32


def test_the_authors_loop_refuses_a_folder_too_small_to_time(tiny_dataset):
    import torch
    from engine.bench.reference_loop import reference_epoch_rate
    with pytest.raises(ValueError, match="3 batches of 12 in an epoch"):  # 36 images: all of it warm-up
        reference_epoch_rate(str(tiny_dataset / "train"), "mobilenet_v3_large", (32, 32), 12, torch.device("cpu"))


def test_the_authors_loop_runs_without_cudnn_algorithm_search_and_restores_it(tiny_dataset, monkeypatch):
    """The engine turns cuDNN's algorithm search on for its own step; the authors' loop, timed in the same
    process after it, must run as published (without it), and leave the switch as it found it."""
    import torch
    from engine.bench import reference_loop
    seen = []
    build = reference_loop.authors_model

    def recording_model(backbone, num_classes):
        model = build(backbone, num_classes)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(torch.backends.cudnn.benchmark))
        return model

    monkeypatch.setattr(reference_loop, "authors_model", recording_model)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    rate = reference_loop.reference_epoch_rate(str(tiny_dataset / "train"), "shufflenet_v2_x2_0", (32, 32), 4,
                                               torch.device("cpu"), workers=0, max_steps=2)
    assert rate > 0 and seen == [False] * 5  # 3 warm-up steps and 2 timed
    assert torch.backends.cudnn.benchmark is True


def test_augment_benchmark_times_every_implementation():
    """The fused kernel's row too: the suite runs Triton's interpreter, as a GPU would run the kernel."""
    from engine.bench import augment
    rows = augment.main(["--quick", "--device", "cpu"])
    assert [row["implementation"] for row in rows] == ["torchvision per image", "batched", "batched, normalised",
                                                       "fused kernel, normalised"]
    assert all(row["images_per_s"] > 0 for row in rows)


def test_augment_benchmark_says_where_the_kernel_cannot_run(monkeypatch, capsys):
    from engine.bench import augment
    monkeypatch.delenv("TRITON_INTERPRET")
    rows = augment.main(["--quick", "--device", "cpu"])
    assert "fused kernel, normalised" not in [row["implementation"] for row in rows]
    assert '"skipped": "the kernel needs triton and a GPU, not cpu"' in capsys.readouterr().out


def test_wavemix_step_benchmark_says_where_the_step_time_goes():
    rows = wavemix_step.main(["--quick", "--device", "cpu", "--variants", "fused:fp32:eager", "--kernels", "4"])
    kernels = rows[0]["kernels"]
    top = kernels["top_kernels"]
    assert len(top) == 4 and [k["ms"] for k in top] == sorted((k["ms"] for k in top), reverse=True)
    assert sum(kernels["by_kind_ms"].values()) == pytest.approx(kernels["profiled_ms_per_step"], rel=1e-2)
    assert kernels["by_kind_ms"]["convolution/matmul"] > 0  # WaveMix is mostly convolutions


def test_device_time_leaves_out_the_annotated_ranges_that_span_kernels():
    """On a GPU a compiled graph's "## Call CompiledFxGraph ##" range is recorded on the device as well, spanning
    the kernels inside it: counted, it doubles their time (a 94 ms step read as 219.5 ms). Host events never count
    as device time; on the CPU every operator's own time is what there is."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType
    from engine.bench.timing import timed_events

    def event(key, device_type, microseconds, annotation=False):
        return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=microseconds,
                               self_cpu_time_total=microseconds, is_user_annotation=annotation)

    averages = [event("## Call CompiledFxGraph abc ##", DeviceType.CUDA, 900.0, annotation=True),
                event("## Call CompiledFxGraph abc ##", DeviceType.CPU, 50.0),
                event("sm90_xmma_fprop_implicit_gemm", DeviceType.CUDA, 500.0),
                event("triton_poi_fused_gelu_1", DeviceType.CUDA, 300.0)]
    assert timed_events(averages, on_gpu=True) == [("sm90_xmma_fprop_implicit_gemm", 500.0),
                                                   ("triton_poi_fused_gelu_1", 300.0)]
    assert len(timed_events(averages, on_gpu=False)) == 4


def test_kernel_breakdown_names_the_operator_behind_a_layout_conversion():
    """An NCHW batch into a channels_last convolution is converted inside the convolution: the breakdown says
    which operator copied, and what shape, not only that a copy kernel ran."""
    import torch
    from engine.bench.timing import kernel_breakdown

    model = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32)
    copies = kernel_breakdown(lambda: model(images).sum().backward(), torch.device("cpu"), steps=2, top=5)["copies"]
    # among them, not necessarily first: on a busy 2-core CPU the backward's copies sometimes took longer
    assert any(copy["shapes"].startswith("[[4, 3, 32, 32]") and "aten::convolution" in copy["called_from"]
               for copy in copies)
    assert [c["ms"] for c in copies] == sorted((c["ms"] for c in copies), reverse=True)


def test_loader_benchmark_compiles_the_step_when_asked(monkeypatch, capsys):
    """--compile: the end-to-end rows feed the model as engine train runs it on a GPU, compiled (here the compile
    is stood in for, as inductor takes minutes on this CPU)."""
    from engine.bench import loaders
    compiled = []
    monkeypatch.setattr(loaders, "compiled", lambda model: compiled.append(model) or model)
    rows = loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--workers", "0", "--loaders", "torch",
                         "--backbone", "mobilenet_v3_large", "--compile"])
    assert len(compiled) == 1 and [row["loader"] for row in rows] == ["synthetic (on device)", "torch"]
    assert '"compile": true' in capsys.readouterr().out.splitlines()[0]
    loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--workers", "0", "--loaders", "torch",
                  "--backbone", "mobilenet_v3_large"])
    assert len(compiled) == 1  # eager unless asked


def test_the_host_breakdown_names_the_call_that_waits():
    """A wait inside a builtin (DALI's iterator waiting for its outputs) shows as that builtin's own time."""
    import time

    from engine.bench.timing import host_breakdown
    breakdown = host_breakdown(lambda: time.sleep(0.02), steps=3, top=2)
    slowest = breakdown["top_functions"][0]
    assert "sleep" in slowest["function"] and slowest["calls_per_call"] == 1.0
    assert 20 <= slowest["ms"] <= breakdown["ms_per_call"]


def test_loader_benchmark_says_where_the_hosts_time_goes():
    from engine.bench import loaders
    rows = loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--workers", "0", "--loaders", "torch",
                         "--backbone", "mobilenet_v3_large", "--host-functions", "3"])
    row = rows[1]
    for part in ("host", "host_end_to_end"):
        functions = row[part]["top_functions"]
        assert len(functions) == 3 and sum(f["ms"] for f in functions) <= row[part]["ms_per_call"]
    # end to end, the step's own work is among the host's costliest calls
    assert any("backward" in f["function"] for f in row["host_end_to_end"]["top_functions"]), row["host_end_to_end"]


def test_a_failing_profile_keeps_the_loaders_measured_rate(monkeypatch):
    """The profile is a diagnostic: a profiler field named differently on the GPU machine's torch must not cost
    the row its rate."""
    from engine.bench import loaders

    def broken(*args, **kwargs):
        raise AttributeError("'FunctionEvent' object has no attribute 'device_time_total'")

    monkeypatch.setattr(loaders, "kernel_breakdown", broken)
    rows = loaders.main(["--data", "demo", "--quick", "--device", "cpu", "--workers", "1", "--loaders", "resident",
                         "--loader-only", "--kernels", "2"])
    assert rows[0]["loader_only_img_s"] > 0 and "device_time_total" in rows[0]["kernels"]["error"]


def test_stream_overlap_tells_a_loader_beside_the_step_from_one_taking_turns_with_it():
    from engine.bench.timing import kernel_intervals, stream_overlap

    def trace(*kernels):  # (stream, start us, duration us), as torch.profiler's chrome trace writes them
        return [{"cat": "kernel", "ts": start, "dur": duration, "args": {"stream": stream}}
                for stream, start, duration in kernels] + [{"cat": "cpu_op", "ts": 0, "dur": 99}]

    step = [(7, 0, 10), (7, 10, 10), (7, 30, 10)]  # the training stream: busy 30 of 40 us
    beside = stream_overlap(kernel_intervals(trace(*step, (13, 5, 10), (13, 32, 4))))
    assert beside == {"busy": {7: 30, 13: 14}, "concurrent": 14, "span": 40}
    turns = stream_overlap(kernel_intervals(trace(*step, (13, 20, 10))))
    assert turns["concurrent"] == 0 and turns["busy"][13] == 10 and turns["span"] == 40


def test_the_kernels_beside_the_step_are_named_by_their_time_on_the_other_streams():
    """bench.loaders --kernels: which of a loader's operators takes the GPU time it spends beside the step."""
    from engine.bench.timing import kernels_beside

    def kernel(stream, name, duration):
        return {"cat": "kernel", "name": name, "ts": 0, "dur": duration, "args": {"stream": stream}}

    events = [kernel(7, "conv", 30), kernel(7, "bn", 20), kernel(13, "resize", 4), kernel(13, "resize", 5),
              kernel(13, "normalize", 2), kernel(21, "warp_affine", 6), {"cat": "cpu_op", "name": "x", "dur": 99}]
    beside = kernels_beside(events, main_stream=7, top=2)
    assert beside == [{"stream": "13", "name": "resize", "us": 9}, {"stream": "21", "name": "warp_affine", "us": 6}]
    assert kernels_beside([kernel(7, "conv", 30)], main_stream=7, top=5) == []  # the step alone: nothing beside it


@pytest.mark.parametrize("name, kind", [
    ("_haar_forward_kernel", "dwt"),
    ("triton_poi_fused_add_gelu_3", "inductor fused"),
    ("triton_red_fused__native_batch_norm_legit_functional_7", "normalisation"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution/matmul"),
    ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>", "optimizer"),
    ("Memcpy DtoD (Device -> Device)", "copy/cat"),
    ("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>", "eager elementwise/reduction"),
])
def test_kernel_names_are_read_as_what_they_do(name, kind):
    from engine.bench.timing import kernel_kind
    assert kernel_kind(name) == kind


def test_kernels_compile_for_hopper_without_spilling_and_with_vector_loads():
    """Compiled for sm_90a here (no GPU needed): a kernel change that spills registers, or loses the vectorised
    channels_last loads, shows before any GPU time is spent. Each layout's configuration 1 is TILE 512 on 4 warps,
    4 elements a thread: wide enough for vectors (TILE 64 on one warp, the tile tree's first, has 2 a thread, one
    32-bit access)."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "engine.bench.kernel_registers", "--configs", "1"],
                            capture_output=True, text=True, env=env, check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(row["layout"], row["direction"]) for row in rows] == [
        ("channels_last", "forward"), ("channels_last", "backward"), ("nchw", "forward"), ("nchw", "backward")]
    for row in rows:
        assert row["spill_bytes"] == 0 and row["programs_per_sm"] >= 2
    for forward, backward in (rows[:2], rows[2:]):  # pixels move as vectors, in both layouts
        assert any(width.startswith("ld.global.v") for width in forward["loads"])
        assert any(width.startswith("st.global.v") for width in backward["stores"])


def test_the_high_bands_move_as_vectors_not_two_byte_accesses():
    """Channel c's three high bands (channels C + 3c + k) are gathered into one contiguous run: compiled for
    sm_90a, the forward stores and the backward loads them as wide vectors, in the forward's and the backward's
    picks on the fourteenth session's H100 (the first two configurations). As three tiles 3 channels apart they
    compiled to one 2-byte access an element, and ran at under half the bandwidth."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "engine.bench.kernel_registers", "--configs", "0,1",
                             "--layouts", "channels_last"], capture_output=True, text=True, env=env, check=True)
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) == 4  # each configuration's forward and backward
    for forward, backward in zip(reports[::2], reports[1::2]):
        assert "st.global.b16" not in forward["stores"] and "ld.global.b16" not in backward["loads"]
        assert forward["stores"].get("st.global.v4.b32", 0) > 0 and backward["loads"].get("ld.global.v4.b32", 0) > 0
        assert forward["spill_bytes"] == backward["spill_bytes"] == 0


def test_the_augmentation_kernel_compiles_for_hopper_without_spilling_at_the_engines_block():
    """The fused TrivialAugmentWide kernel, which the tests otherwise run only in Triton's interpreter, compiled
    for sm_90a: it compiles, and at the block it launches with it spills nothing and leaves an SM room for 8
    programs or more (a gather of bytes lives on how many are in flight)."""
    import json
    import os
    import subprocess
    import sys

    from engine.kernels.trivial_augment import BLOCK
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "engine.bench.kernel_registers", "--augment"],
                            capture_output=True, text=True, env=env, check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(row["out"], row["block"]) for row in rows} >= {("bf16", BLOCK), ("fp32", BLOCK)}
    for row in rows:
        assert row["spill_bytes"] == 0
        if row["block"] == BLOCK:
            assert row["programs_per_sm"] >= 8


def test_kernel_registers_refuses_interpreted_kernels():
    from engine.bench import kernel_registers
    with pytest.raises(SystemExit, match="unset TRITON_INTERPRET"):
        kernel_registers.main([])


# --- The one-call GPU scripts: a renamed flag must fail here, not after minutes of someone's device time --------------
def _script_commands(script):
    """(module, argv) of every `python3 -m engine...` command in a bench/gpu_*.sh script, its shell variables
    replaced by the script's own values (its first assignment of each), once for every item of a for loop."""
    import itertools
    import re
    import shlex
    text = script.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    values, loops = {}, {}

    def expand(word):  # $name, ${name}, and ${name//,/ } (a comma-separated list as a loop's words)
        word = re.sub(r"\$\{(\w+)//,/ \}", lambda m: values[m[1]].replace(",", " "), word)
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m[1]], word)

    for line in lines:
        if match := re.match(r"\s*(\w+)=(\S+)$", line):  # name=value, or name=${VARIABLE:-default}
            values.setdefault(match[1], re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", match[2]))
        if match := re.match(r"\s*for (\w+) in (.+?); do", line):
            loops[match[1]] = shlex.split(expand(match[2]))
    for line in lines:
        if match := re.search(r"python3 -m (engine(?:\.bench\.\w+)?) (.*)", line):
            command = re.split(r"\s(?:\||&&|\d?>)", match[2])[0]  # up to a pipe, a chain or a redirection
            looped = sorted({name for name in re.findall(r"\$\{?(\w+)\}?", command) if name in loops})
            for items in itertools.product(*(loops[name] for name in looped)):
                values.update(zip(looped, items))
                yield match[1], shlex.split(expand(command))  # expanded first: an unquoted $variable splits


def _parse_only(module_name, argv, monkeypatch):
    """Parse `argv` as the module's main would, and stop there: SystemExit(2) on a flag it does not take."""
    import argparse
    import importlib

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed) as parsed:
        importlib.import_module(module_name).main(argv)
    monkeypatch.undo()
    return parsed.value.args[0]


def _gpu_scripts():
    from tests.conftest import REPO
    return sorted((REPO / "bench").glob("gpu_*.sh"))


def test_gpu_scripts_only_pass_flags_the_benchmarks_and_the_cli_take(monkeypatch):
    from engine.cli import cli
    commands = [command for script in _gpu_scripts() for command in _script_commands(script)]
    assert {module for module, _ in commands} >= {"engine", "engine.bench.loaders", "engine.bench.wavemix_step",
                                                 "engine.bench.dwt", "engine.bench.compare"}
    for module, argv in commands:
        if module == "engine":  # click: parse into a context without running the command
            cli.commands[argv[0]].make_context(argv[0], argv[1:])
            continue
        args = _parse_only(module, argv, monkeypatch)
        if module == "engine.bench.wavemix_step":  # its variant names are checked after parsing
            assert wavemix_step.chosen_variants(args.variants)
        if module == "engine.bench.compare":
            from engine.grid import pick_names
            from engine.models import list_backbones
            assert pick_names(args.backbones, list_backbones(), "backbone")
        if module == "engine.bench.loaders":
            from engine.bench import loaders
            assert loaders.chosen_loaders(args.loaders)


def test_a_renamed_flag_in_a_gpu_script_is_caught(monkeypatch):
    with pytest.raises(SystemExit):
        _parse_only("engine.bench.wavemix_step", ["--only", "fused"], monkeypatch)


def test_layouts_names_a_convolution_whose_gradient_arrives_nchw(capsys):
    """A convolution straight before global average pooling: AdaptiveAvgPool2d's broadcast gradient reaches it
    NCHW in the traced backward (cuDNN would copy it), WaveMix's GlobalAveragePool's channels_last."""
    from engine.bench.layouts import convolution_backward_tensors, main, misplaced
    from engine.models.wavemix import GlobalAveragePool

    images = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    for pool, expected in ((torch.nn.AdaptiveAvgPool2d(1), [{"gradient": "(2, 8, 16, 16) nchw"}]),
                           (GlobalAveragePool(), [])):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), pool, torch.nn.Flatten(),
                                    torch.nn.Linear(8, 2)).to(memory_format=torch.channels_last)
        assert misplaced(convolution_backward_tensors(model, images)) == expected
    rows = main(["--backbones", "mobilenet_v3_large", "--image-size", "32"])
    assert rows[0]["convolutions"] == 62 and rows[0]["not_channels_last"] == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["backbone"] == "mobilenet_v3_large"
