"""`engine profile` on the CPU: every field, with and without a dataset."""
import json

from tests.conftest import run_engine

FIELDS = {"backbone", "device", "image_size", "precision", "compile", "channels_last", "batch_size",
          "batch_size_reason", "first_step_s", "model_images_per_s", "step_ms", "phase_ms", "peak_memory_gib",
          "loader", "loader_images_per_s", "end_to_end_images_per_s", "verdict"}


def test_profile_json_reports_the_whole_pipeline(tiny_dataset):
    done = run_engine("profile", "--backbone", "mobilenet_v3_large", "--data", str(tiny_dataset), "--image-size", "32",
                      "--batch-size", "8", "--steps", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == FIELDS
    assert report["device"] == "cpu" and report["batch_size"] == 8 and report["loader"] == "torch"
    assert set(report["phase_ms"]) == {"forward", "backward", "optimizer"} and all(report["phase_ms"].values())
    assert report["model_images_per_s"] > 0 and report["loader_images_per_s"] > 0
    assert report["end_to_end_images_per_s"] > 0
    assert report["verdict"].startswith(("compute-bound", "input-bound"))


def test_profile_without_data_measures_the_model_alone():
    done = run_engine("profile", "--backbone", "shufflenet_v2_x2_0", "--image-size", "32", "--steps", "1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["loader"] is None and report["batch_size"] == 32 and "CPU default" in report["batch_size_reason"]
    assert report["verdict"].startswith("model only")
    bad = run_engine("profile", "--backbone", "wavemix", "--image-size", "48")
    assert bad.returncode == 2 and "divisible by 32" in bad.stderr
