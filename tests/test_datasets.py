"""`engine data prepare` on tiny fixtures in each source's own format, and downloads from a local server."""
import dataclasses
import hashlib
import io
import json
import logging
import os
import pickle
import re
import sys
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.errors import UserInputError
from engine.loaders import (count_per_class, get_dataset_spec, prepare_dataset, registry, resolve_dataset,
                            scan_dataset)
from engine.loaders import download as download_module
from engine.loaders.datasets import SourceFile
from engine.loaders.download import DownloadError, download
from tests.conftest import run_main


def image_bytes(colour, fmt="JPEG", side=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, fmt)
    return buffer.getvalue()


def make_tar(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


def make_zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return path


def prepared(tmp_path, name, source, force=False, split_by=None):
    """`engine data prepare NAME --from SOURCE`, as a user runs it; then the result's meta.json and index."""
    root = tmp_path / "data"
    argv = ["data", "prepare", name, "--root", str(root), "--from", str(source)]
    argv += ["--force"] if force else []
    argv += ["--split-by", split_by] if split_by else []
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    target = root / name
    return target, json.loads((target / "meta.json").read_text()), scan_dataset(target)


# --- Converters -----------------------------------------------------------------------------------------------
def cifar_pickle(labels, labels_key):
    rng = np.random.default_rng(len(labels))
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return pickle.dumps({b"data": data, labels_key: labels}), data


def test_cifar10_pickles(tmp_path):
    names = [f"class{i}".encode() for i in range(10)]
    files = {"cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": names})}
    first_batch = None
    for index in range(1, 6):
        files[f"cifar-10-batches-py/data_batch_{index}"], data = cifar_pickle([index - 1, index + 4], b"labels")
        first_batch = data if first_batch is None else first_batch
    files["cifar-10-batches-py/test_batch"], _ = cifar_pickle([0, 1, 2], b"labels")
    archive = make_tar(tmp_path / "cifar-10-python.tar.gz", files)
    target, meta, index = prepared(tmp_path, "cifar10", archive)
    assert meta["counts"] == {"train": 10, "test": 3}
    assert meta["count_warnings"] and "the paper has 50000" in meta["count_warnings"][0]
    assert meta["checksums_md5"]["cifar-10-python.tar.gz"] == hashlib.md5(archive.read_bytes()).hexdigest()
    # The first training image: class 0, pixels as the pickle's RGB planes say.
    png = np.asarray(Image.open(target / "train" / "class0" / "00000.png"))
    assert np.array_equal(png, first_batch[0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar100_uses_fine_labels(tmp_path):
    names = [f"fine{i:02d}".encode() for i in range(100)]
    files = {"cifar-100-python/meta": pickle.dumps({b"fine_label_names": names}),
             "cifar-100-python/train": cifar_pickle([5, 99, 5], b"fine_labels")[0],
             "cifar-100-python/test": cifar_pickle([99], b"fine_labels")[0]}
    _, meta, index = prepared(tmp_path, "cifar100", make_tar(tmp_path / "c.tar.gz", files))
    assert index.classes == ["fine05", "fine99"] and meta["counts"] == {"train": 3, "test": 1}


def test_tiny_imagenet_val_becomes_test(tmp_path):
    files = {"tiny-imagenet-200/wnids.txt": b"n01\nn02\n"}
    for wnid in ("n01", "n02"):
        for i in range(3):
            files[f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG"] = image_bytes((10, 20, 30))
    files["tiny-imagenet-200/val/images/val_0.JPEG"] = image_bytes((1, 2, 3))
    files["tiny-imagenet-200/val/images/val_1.JPEG"] = image_bytes((4, 5, 6))
    files["tiny-imagenet-200/val/val_annotations.txt"] = b"val_0.JPEG\tn02\t0\t0\t8\t8\nval_1.JPEG\tn01\t0\t0\t8\t8\n"
    archive = make_zip(tmp_path / "tiny-imagenet-200.zip", files)
    target, meta, index = prepared(tmp_path, "tiny_imagenet", archive)
    assert meta["counts"] == {"train": 6, "test": 2}
    assert (target / "test" / "n02" / "val_0.jpeg").read_bytes() == files["tiny-imagenet-200/val/images/val_0.JPEG"]


def eurosat_zip(tmp_path, per_class=10):
    files = {f"2750/{name}/{name}_{i}.jpg": image_bytes(colour)
             for name, colour in (("Forest", (0, 90, 0)), ("River", (0, 0, 200)), ("Highway", (90, 90, 90)))
             for i in range(per_class)}
    return make_zip(tmp_path / "EuroSAT.zip", files), files


def test_the_wrong_archive_is_named_as_the_user_gave_it(tmp_path, capsys):
    """Not the temporary folder it was unpacked into, which is gone by the time the message is read."""
    archive = make_zip(tmp_path / "holiday.zip", {"photos/beach/1.jpg": image_bytes((200, 200, 0))})
    with pytest.raises(SystemExit) as exited:
        main(["data", "prepare", "eurosat", "--root", str(tmp_path / "data"), "--from", str(archive)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and ".tmp-" not in error
    assert error == "engine: error: the folder of class folders not found in the unpacked holiday.zip (looked for " \
                    "'2750'); is this the right archive or folder?"


def test_eurosat_gets_a_seeded_stratified_70_30_split(tmp_path):
    archive, files = eurosat_zip(tmp_path)
    target, meta, index = prepared(tmp_path, "eurosat", archive)
    assert count_per_class(index.train, 3) == [7, 7, 7] and count_per_class(index.test, 3) == [3, 3, 3]
    assert meta["split_seed"] == 0 and "70% train" in meta["split"]
    assert (target / "train" / "Forest").is_dir()
    # JPEGs are kept byte for byte.
    some = sorted((target / "train" / "River").iterdir())[0]
    assert some.read_bytes() == files[f"2750/River/{some.stem}.jpg"]
    first = sorted(index.test)
    again = scan_dataset(prepare_dataset(get_dataset_spec("eurosat"), tmp_path / "data", archive, force=True))
    assert sorted(again.test) == first  # the same seed, the same split


def test_uc_merced_tiff_becomes_png(tmp_path):
    files = {f"UCMerced_LandUse/Images/{name}/{name}{i:02d}.tif": image_bytes((i * 20, 0, 0), "TIFF")
             for name in ("beach", "forest") for i in range(5)}
    target, meta, index = prepared(tmp_path, "uc_merced", make_zip(tmp_path / "UCMerced_LandUse.zip", files))
    assert count_per_class(index.test, 2) == [1, 1] and count_per_class(index.train, 2) == [4, 4]
    assert all(path.endswith(".png") for path, _ in index.train)
    assert np.asarray(Image.open(target / index.train[0][0])).shape == (8, 8, 3)


def test_neu_bmp_classes_from_file_names(tmp_path):
    folder = tmp_path / "NEU-CLS"
    folder.mkdir()
    for prefix in ("Cr", "PS", "RS"):
        for i in range(1, 6):
            Image.new("L", (8, 8), 100).save(folder / f"{prefix}_{i}.bmp")
    _, meta, index = prepared(tmp_path, "neu", folder)
    assert index.classes == ["Cr", "PS", "RS"] and meta["counts"] == {"train": 12, "test": 3}


def test_dtd_partition_one(tmp_path):
    files = {f"dtd/images/{c}/{c}_{i:04d}.jpg": image_bytes((i, i, i)) for c in ("banded", "dotted") for i in range(4)}
    files["dtd/labels/train1.txt"] = b"banded/banded_0000.jpg\nbanded/banded_0001.jpg\ndotted/dotted_0000.jpg\n"
    files["dtd/labels/test1.txt"] = b"banded/banded_0002.jpg\ndotted/dotted_0003.jpg\n"
    _, meta, index = prepared(tmp_path, "dtd", make_tar(tmp_path / "dtd-r1.0.1.tar.gz", files))
    assert meta["counts"] == {"train": 3, "test": 2} and "partition 1" in meta["split"]


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_cut_short_is_one_line_naming_it_not_an_interrupt(tmp_path, capsys, caplog, kind):
    """A --from copy cut short (an interrupted browser download) failed in gzip's EOFError, which click reported
    as an interrupt, or, a zip, as no archive at all. It is named as damaged, and a checksum other than the
    published file's is said first."""
    files = {f"dtd/images/{c}/{c}_{i:04d}.jpg": np.random.default_rng(i).bytes(40000) for c in ("banded", "dotted")
             for i in range(4)}
    whole = (make_tar if kind == "tar.gz" else make_zip)(tmp_path / f"whole.{kind}", files)
    cut = tmp_path / ("dtd-r1.0.1.tar.gz" if kind == "tar.gz" else "dtd.zip")
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING, logger="engine"), pytest.raises(SystemExit) as exited:
        main(["data", "prepare", "dtd", "--root", str(tmp_path / "data"), "--from", str(cut)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2
    reason = "EOFError: Compressed file ended" if kind == "tar.gz" else "BadZipFile: its directory, at the end"
    assert error.startswith(f"engine: error: {cut} is cut short or damaged ({reason}") and error.endswith(
        "; fetch it again")
    if kind == "tar.gz":  # named as the published file: its checksum differs, and that is said
        assert any(message.startswith("dtd-r1.0.1.tar.gz is not the published file (MD5 ")
                   and "published fff73e5086ae6bdbea199a49dfb8a4c1)" in message for message in caplog.messages)
    assert not (tmp_path / "data" / "dtd").exists()


def test_food101_json_splits(tmp_path):
    files = {f"food-101/images/{c}/{i}.jpg": image_bytes((i, 0, 0)) for c in ("pizza", "sushi") for i in range(3)}
    files["food-101/meta/train.json"] = json.dumps({"pizza": ["pizza/0", "pizza/1"], "sushi": ["sushi/0"]}).encode()
    files["food-101/meta/test.json"] = json.dumps({"pizza": ["pizza/2"], "sushi": ["sushi/1", "sushi/2"]}).encode()
    _, meta, index = prepared(tmp_path, "food101", make_tar(tmp_path / "food-101.tar.gz", files))
    assert meta["counts"] == {"train": 3, "test": 3}
    assert count_per_class(index.test, 2) == [1, 2]


def test_cub200_official_split(tmp_path):
    classes = ["001.Albatross", "002.Auklet"]
    images = [f"{classes[i % 2]}/bird_{i}.jpg" for i in range(6)]
    files = {f"CUB_200_2011/images/{path}": image_bytes((i, i, 0)) for i, path in enumerate(images)}
    files["CUB_200_2011/images.txt"] = "".join(f"{i + 1} {p}\n" for i, p in enumerate(images)).encode()
    files["CUB_200_2011/train_test_split.txt"] = "".join(f"{i + 1} {int(i < 4)}\n" for i in range(6)).encode()
    _, meta, index = prepared(tmp_path, "cub200", make_tar(tmp_path / "CUB_200_2011.tgz", files))
    assert index.classes == classes and meta["counts"] == {"train": 4, "test": 2}


def test_prepare_is_idempotent_and_atomic(tmp_path):
    archive, _ = eurosat_zip(tmp_path, per_class=4)
    killed = tmp_path / "data" / ".eurosat.tmp-99999" / "out"  # a prepare killed mid-way (SIGKILL: no cleanup)
    killed.mkdir(parents=True)
    target, meta, _ = prepared(tmp_path, "eurosat", archive)
    assert not killed.parent.exists()  # the next prepare of the dataset removes it
    stamp = (target / "meta.json").stat().st_mtime_ns
    prepare_dataset(get_dataset_spec("eurosat"), tmp_path / "data", archive)
    assert (target / "meta.json").stat().st_mtime_ns == stamp
    broken = make_zip(tmp_path / "broken.zip", {"nothing/here.txt": b"x"})
    with pytest.raises(UserInputError, match="not found"):
        prepare_dataset(get_dataset_spec("uc_merced"), tmp_path / "data", broken)
    assert not (tmp_path / "data" / "uc_merced").exists()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".uc_merced.tmp")]


def test_cli_prepare_then_train_from_the_prepared_layout(tmp_path, capsys):
    archive, _ = eurosat_zip(tmp_path)
    root = tmp_path / "data"
    done = run_main(capsys, "data", "prepare", "eurosat", "--root", str(root), "--from", str(archive))
    assert done.returncode == 0, done.stderr
    assert "differs from the paper: train: 21 images, the paper has 18900" in done.stderr
    listed = run_main(capsys, "datasets", "--data-root", str(root))
    assert any(line.startswith("eurosat") and " 21/9 (differs) " in line for line in listed.stdout.splitlines())
    trained = run_main(capsys, "train", "--backbone", "mobilenet_v3_large", "--data", "eurosat", "--data-root",
                       str(root), "--no-pretrained", "--image-size", "32", "--max-epochs", "1", "--out",
                       str(tmp_path / "r"))
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "r/mobilenet_v3_large/eurosat/f1/s0/config.json").read_text())["counts"]["test"] == 9
    (root / "eurosat" / "meta.json").write_text('{"counts": ')  # damaged: the listing goes on and says so
    listed = run_main(capsys, "datasets", "--data-root", str(root))
    assert listed.returncode == 0 and any(line.startswith("eurosat") and " meta.json unreadable (prepare it again "
                                          "with --force) " in line for line in listed.stdout.splitlines())


def test_a_folder_named_as_a_builtin_dataset_is_pointed_out(tmp_path, monkeypatch, caplog):
    """`--data eurosat` beside a folder eurosat/ of the user's means the built-in one (and would download it)."""
    from engine.loaders import datasets
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eurosat").mkdir()
    datasets._say_folder_of_a_builtin_name.cache_clear()
    with caplog.at_level(logging.WARNING, logger="engine"), pytest.raises(UserInputError, match="--no-download"):
        resolve_dataset("eurosat", tmp_path / "data", download=False)
    assert caplog.messages == ["--data eurosat is the built-in dataset; for the folder eurosat here, give ./eurosat"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine"):
        folder = resolve_dataset("./eurosat", tmp_path / "data", download=False)  # the folder, as the line says
    assert not folder.builtin and folder.path.resolve() == tmp_path / "eurosat" and caplog.messages == []


def test_manual_datasets_say_what_to_do(tmp_path, capsys):
    for name, expected in (("neu", "engine data prepare neu"), ("plantclef", "APPROXIMATE")):
        with pytest.raises(SystemExit) as exited:
            main(["train", "--backbone", "resnet50", "--data", name, "--data-root", str(tmp_path)])
        assert exited.value.code == 2
        assert expected in capsys.readouterr().err


# --- Downloads ------------------------------------------------------------------------------------------------
class FlakyServer:
    """Serves one payload on 127.0.0.1 with HTTP ranges; the first response is cut after `cut` bytes; each response
    starts after `delay` seconds."""

    def __init__(self, payload: bytes, cut: int | None = None, delay: float = 0.0):
        self.payload, self.cut, self.delay, self.requests = payload, cut, delay, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                server.requests.append(start)
                time.sleep(server.delay)
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut is not None and len(server.requests) == 1:
                    self.wfile.write(body[:server.cut])
                    self.wfile.flush()
                    self.connection.close()  # the connection drops mid-file
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/file.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(download_module, "_backoff_scale", 0.0)


def test_download_resumes_after_a_cut_connection(tmp_path, quick_retries):
    payload = bytes(range(256)) * 4000
    server = FlakyServer(payload, cut=100_000)
    try:
        path = download(server.url, tmp_path / "file.zip", hashlib.md5(payload).hexdigest())
    finally:
        server.close()
    assert path.read_bytes() == payload
    assert server.requests[0] == 0 and server.requests[1] == 100_000  # the second request continued
    assert not (tmp_path / "file.zip.part").exists()


def test_a_download_in_a_log_file_says_how_far_it_is(tmp_path, monkeypatch, caplog):
    """Without a terminal (a grid's log, Slurm, nohup) a bar would be silent for the whole download: a line every
    LINE_EVERY_S seconds (a minute; here every block) names what has come of the total, the rate and the time left."""
    from engine import progress
    monkeypatch.setattr(progress.Progress, "LINE_EVERY_S", 0.0)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setattr(download_module, "CHUNK", 400_000)
    payload = bytes(1_000_000)
    server = FlakyServer(payload)
    caplog.set_level(logging.INFO, logger="engine")
    try:
        download(server.url, tmp_path / "file.zip", hashlib.md5(payload).hexdigest())
    finally:
        server.close()
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("downloading file")]
    assert [line.split(",")[0] for line in lines] == ["downloading file.zip: 400.0 kB of 1.0 MB (40 %)",
                                                      "downloading file.zip: 800.0 kB of 1.0 MB (80 %)",
                                                      "downloading file.zip: 1.0 MB of 1.0 MB (100 %)"]
    assert all(re.fullmatch(r".*\(\d+ %\), [\d.]+ [kMG]?B/s, about [\d.]+ (s|min|h) left", line) for line in lines)


def test_download_checksum_mismatch_is_an_error_and_leaves_nothing(tmp_path, quick_retries):
    server = FlakyServer(b"not what was promised")
    try:
        with pytest.raises(DownloadError, match="checksum mismatch"):
            download(server.url, tmp_path / "file.zip", "0" * 32)
    finally:
        server.close()
    assert not list(tmp_path.iterdir())


def test_train_prepares_an_auto_dataset_on_first_use(tmp_path, monkeypatch, quick_retries):
    archive, _ = eurosat_zip(tmp_path)
    server = FlakyServer(archive.read_bytes())
    spec = get_dataset_spec("eurosat")
    local = SourceFile(server.url, "EuroSAT.zip", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setitem(registry(), "eurosat", dataclasses.replace(spec, files=(local,)))
    try:
        dataset = resolve_dataset("eurosat", tmp_path / "data")
    finally:
        server.close()
    assert (dataset.path / "meta.json").exists() and len(scan_dataset(dataset.path).test) == 9
    assert (tmp_path / "data" / ".downloads" / "eurosat" / "EuroSAT.zip").exists()


def test_two_processes_asking_for_one_unprepared_dataset_download_it_once(tmp_path, monkeypatch, quick_retries,
                                                                          caplog):
    """A grid's cells on several GPUs, or two terminals: appending to one download at once would corrupt it. One
    prepares the dataset; the other waits for it, says so, and finds it prepared."""
    archive, _ = eurosat_zip(tmp_path)
    server = FlakyServer(archive.read_bytes(), delay=0.5)  # both are in flight at once
    local = SourceFile(server.url, "EuroSAT.zip", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setitem(registry(), "eurosat", dataclasses.replace(get_dataset_spec("eurosat"), files=(local,)))
    caplog.set_level(logging.INFO, logger="engine")
    try:
        with ThreadPoolExecutor(2) as pool:
            paths = list(pool.map(lambda _: resolve_dataset("eurosat", tmp_path / "data").path, range(2)))
    finally:
        server.close()
    assert server.requests == [0] and paths[0] == paths[1] and len(scan_dataset(paths[0]).test) == 9
    assert f"to finish preparing eurosat in {tmp_path / 'data'}" in caplog.text
    assert "eurosat was prepared in" in caplog.text


def test_an_unreachable_source_names_the_command_that_takes_a_copy(tmp_path, monkeypatch, quick_retries):
    spec = get_dataset_spec("eurosat")
    unreachable = SourceFile("http://127.0.0.1:9/EuroSAT.zip", "EuroSAT.zip", None)  # port 9: nothing listens
    monkeypatch.setitem(registry(), "eurosat", dataclasses.replace(spec, files=(unreachable,)))
    with pytest.raises(DownloadError, match=r"after 5 attempts.*engine data prepare eurosat --from PATH"):
        resolve_dataset("eurosat", tmp_path / "data")
    assert not (tmp_path / "data" / "eurosat").exists()


def test_a_failure_no_retry_can_mend_is_said_at_once(tmp_path, monkeypatch):
    """A missing file (404) and a host name that does not resolve (an offline machine) stop at the first attempt,
    without the retries' waits (no quick_retries here: a retry would sleep 2 s); a busy server (503) is retried."""
    import socket
    import urllib.error

    def answering(code):
        attempts = []

        def urlopen(request, timeout):
            attempts.append(request.full_url)
            raise urllib.error.HTTPError(request.full_url, code, "Not Found" if code == 404 else "Busy", {}, None)
        return attempts, urlopen

    attempts, urlopen = answering(404)
    monkeypatch.setattr(download_module.urllib.request, "urlopen", urlopen)
    with pytest.raises(DownloadError, match=r"^cannot download http://h/f.zip: the server answered 404 Not Found$"):
        download("http://h/f.zip", tmp_path / "f.zip")
    assert len(attempts) == 1

    def offline(request, timeout):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    monkeypatch.setattr(download_module.urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError, match="host name does not resolve"):
        download("http://h/f.zip", tmp_path / "f.zip")

    monkeypatch.setattr(download_module, "_backoff_scale", 0.0)
    attempts, urlopen = answering(503)
    monkeypatch.setattr(download_module.urllib.request, "urlopen", urlopen)
    with pytest.raises(DownloadError, match="after 5 attempts"):
        download("http://h/f.zip", tmp_path / "f.zip")
    assert len(attempts) == 5


def test_a_full_disk_during_a_download_is_not_retried_and_is_one_line(tmp_path, monkeypatch, capsys):
    """The disk, not the network: a write() to the open file fails with ENOSPC naming no file. No retry mends it,
    and the command line says it in one line (the download resumes from its .part when rerun)."""
    import errno
    attempts = []

    def disk_full(url, partial):
        attempts.append(url)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download_module, "_fetch_rest", disk_full)
    spec = get_dataset_spec("eurosat")
    monkeypatch.setitem(registry(), "eurosat", dataclasses.replace(spec, files=(SourceFile("http://h/E.zip", "E.zip",
                                                                                           None),)))
    failed = run_main(capsys, "data", "prepare", "eurosat", "--root", str(tmp_path / "data"))
    assert failed.returncode == 2 and len(attempts) == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == ("engine: error: No space left on device; free some space, then "
                                                      "rerun the same command to continue")


def test_prepare_all_goes_on_past_a_dataset_that_fails_and_names_it(tmp_path, monkeypatch, quick_retries, capsys):
    import engine.loaders
    archive, _ = eurosat_zip(tmp_path)
    server = FlakyServer(archive.read_bytes())
    eurosat, dtd = get_dataset_spec("eurosat"), get_dataset_spec("dtd")
    dead = dataclasses.replace(dtd, files=(SourceFile("http://127.0.0.1:9/dtd.tar.gz", "dtd.tar.gz", None),))
    served = dataclasses.replace(eurosat, files=(SourceFile(server.url, "EuroSAT.zip", None),))
    specs = {"dtd": dead, "eurosat": served, "neu": get_dataset_spec("neu")}  # dtd first: its failure stops nothing
    monkeypatch.setattr(engine.loaders, "registry", lambda: specs)
    try:
        with pytest.raises(SystemExit) as exited:
            main(["data", "prepare", "all", "--root", str(tmp_path / "data")])
    finally:
        server.close()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and error.startswith("engine: error: 1 downloadable dataset(s) not prepared: dtd ")
    assert (tmp_path / "data" / "eurosat" / "meta.json").exists() and not (tmp_path / "data" / "dtd").exists()


# --- .mat, HDF5, DICOM and patient-split sources ----------------------------------------------------------------
def test_flowers102_mat_lists(tmp_path):
    from scipy.io import savemat
    folder = tmp_path / "flowers_download"
    folder.mkdir()
    make_tar(folder / "102flowers.tgz", {f"jpg/image_{i:05d}.jpg": image_bytes((i, 0, 0)) for i in range(1, 9)})
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 1, 2, 2, 1, 2, 1, 2]])})
    savemat(folder / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2, 4]]),
                                   "tstid": np.array([[5, 6, 7, 8]])})
    target, meta, index = prepared(tmp_path, "flowers102", folder)  # the three downloaded files, side by side
    assert index.classes == ["class_001", "class_002"] and meta["counts"] == {"train": 4, "test": 4}
    assert (target / "train" / "class_002" / "image_00004.jpg").exists()
    assert set(meta["checksums_md5"]) == {"102flowers.tgz", "imagelabels.mat", "setid.mat"}


def test_stanford_dogs_mat_lists(tmp_path):
    from scipy.io import savemat
    folder = tmp_path / "dogs"
    folder.mkdir()
    breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    names = [f"{breeds[i % 2]}/{breeds[i % 2][:9]}_{i}.jpg" for i in range(6)]
    make_tar(folder / "images.tar", {f"Images/{name}": image_bytes((i, i, i)) for i, name in enumerate(names)})
    lists = {}
    for split, chosen in (("train", names[:4]), ("test", names[4:])):
        path = tmp_path / f"{split}_list.mat"
        savemat(path, {"file_list": np.array([[name] for name in chosen], dtype=object)})
        lists[f"lists/{split}_list.mat"] = path.read_bytes()
    make_tar(folder / "lists.tar", lists)
    _, meta, index = prepared(tmp_path, "stanford_dogs", folder)
    assert index.classes == breeds and meta["counts"] == {"train": 4, "test": 2}


def test_galaxy10_hdf5(tmp_path):
    import h5py
    path = tmp_path / "Galaxy10_DECals.h5"
    answers = np.repeat(np.arange(10), 10)
    with h5py.File(path, "w") as bundle:
        bundle["images"] = np.random.default_rng(0).integers(0, 256, (100, 16, 16, 3), dtype=np.uint8)
        bundle["ans"] = answers
    target, meta, index = prepared(tmp_path, "galaxy10", path)
    assert index.classes[0] == "0_disturbed" and index.classes[9] == "9_edge_on_with_bulge"
    assert count_per_class(index.test, 10) == [1] * 10 and "90% train" in meta["split"]
    with h5py.File(path) as bundle:
        first_test = index.test[0][0]
        expected = bundle["images"][int(first_test.split("/")[-1].split(".")[0])]
    assert np.array_equal(np.asarray(Image.open(target / first_test)), expected)


def breakhis_tree(tmp_path):
    """Three benign and four malignant patients, four 40X images each (and a 100X image that must be ignored)."""
    files = {}
    for kind, code, patients in (("benign", "B", ["14-100", "14-101", "14-102"]),
                                 ("malignant", "M", ["15-200", "15-201", "15-202", "15-203"])):
        for patient in patients:
            for i in range(4):
                name = f"SOB_{code}_A-{patient}-40-{i:03d}.png"
                files[f"BreaKHis_v1/histology_slides/breast/{kind}/SOB/x/SOB_{code}_A_{patient}/40X/{name}"] = \
                    image_bytes((i * 30, 0, 0), "PNG")
            files[f"BreaKHis_v1/histology_slides/breast/{kind}/SOB/x/SOB_{code}_A_{patient}/100X/"
                  f"SOB_{code}_A-{patient}-100-000.png"] = image_bytes((0, 0, 0), "PNG")
    return make_tar(tmp_path / "BreaKHis_v1.tar.gz", files)


def patients_of(samples):
    return {"-".join(path.split("/")[-1].split("-")[1:3]) for path, _ in samples}


def test_breakhis_splits_by_patient_and_optionally_by_image(tmp_path):
    archive = breakhis_tree(tmp_path)
    _, meta, index = prepared(tmp_path, "breakhis_40x", archive)
    assert index.classes == ["benign", "malignant"] and meta["counts"]["train"] + meta["counts"]["test"] == 28
    assert not patients_of(index.train) & patients_of(index.test)
    assert "by patient" in meta["split"] and meta["split_by"] == "patient"
    assert all(count > 0 for count in count_per_class(index.test, 2))
    _, meta, index = prepared(tmp_path, "breakhis_40x", archive, force=True, split_by="image")
    assert meta["split_by"] == "image" and patients_of(index.train) & patients_of(index.test)
    with pytest.raises(UserInputError, match="--split-by applies to"):
        prepare_dataset(get_dataset_spec("eurosat"), tmp_path / "data", archive, split_by="image")


def write_dicom(path, value):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes([value]) * 64
    ds.save_as(path, enforce_file_format=True)


def test_rsna_dicom_one_image_per_patient(tmp_path):
    folder = tmp_path / "rsna" / "stage_2_train_images"
    folder.mkdir(parents=True)
    rows = ["patientId,x,y,width,height,Target"]
    for i in range(10):
        write_dicom(folder / f"p{i}.dcm", 20 * i)
        target = i % 2
        rows += [f"p{i},1,1,2,2,1", f"p{i},3,3,2,2,1"] if target else [f"p{i},,,,,0"]  # boxes repeat a patient
    (tmp_path / "rsna" / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    target_dir, meta, index = prepared(tmp_path, "rsna_pneumonia", tmp_path / "rsna")
    assert index.classes == ["normal", "pneumonia"] and meta["counts"] == {"train": 8, "test": 2}
    some = target_dir / index.test[0][0]
    assert np.asarray(Image.open(some)).shape == (8, 8)


def test_plantvillage_is_manual_and_takes_its_zip(tmp_path):
    with pytest.raises(UserInputError, match="Plant_leave_diseases_dataset_without_augmentation.zip"):
        resolve_dataset("plantvillage", tmp_path / "data")
    files = {f"Plant_leave_diseases_dataset_without_augmentation/{c}/{i}.JPG": image_bytes((i, 9, 9))
             for c in ("Apple___healthy", "Background_without_leaves") for i in range(5)}
    _, meta, index = prepared(tmp_path, "plantvillage", make_zip(tmp_path / "pv.zip", files))
    assert index.classes == ["Apple___healthy", "Background_without_leaves"] and meta["counts"]["test"] == 2


def test_a_missing_optional_reader_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    (tmp_path / "Galaxy10_DECals.h5").write_bytes(b"")
    with pytest.raises(UserInputError, match=r"needs the Python package h5py: pip install 'engine\[datasets\]'"):
        prepare_dataset(get_dataset_spec("galaxy10"), tmp_path / "data", tmp_path / "Galaxy10_DECals.h5")


def test_a_broken_image_in_a_source_is_named(tmp_path):
    archive = make_zip(tmp_path / "EuroSAT.zip", {"2750/Forest/Forest_1.jpg": b"not a jpeg",
                                                  "2750/Forest/Forest_2.jpg": image_bytes((0, 90, 0))})
    with pytest.raises(UserInputError, match="cannot read image .*Forest_1.jpg"):
        prepare_dataset(get_dataset_spec("eurosat"), tmp_path / "data", archive)
    assert not (tmp_path / "data" / "eurosat").exists()


def test_stanford_cars_devkit(tmp_path):
    from scipy.io import savemat
    folder = tmp_path / "cars"
    (folder / "devkit").mkdir(parents=True)
    savemat(folder / "devkit" / "cars_meta.mat",
            {"class_names": np.array([["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"]], dtype=object)})
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for split, count in (("train", 4), ("test", 2)):
        (folder / f"cars_{split}").mkdir()
        rows = []
        for i in range(1, count + 1):
            (folder / f"cars_{split}" / f"{i:05d}.jpg").write_bytes(image_bytes((i, 0, 0)))
            rows.append((1, 1, 5, 5, 1 + i % 2, f"{i:05d}.jpg"))
        name = "devkit/cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        savemat(folder / name, {"annotations": np.array([rows], dtype=fields)})
    _, meta, index = prepared(tmp_path, "stanford_cars", folder)
    assert index.classes == ["AM General Hummer SUV 2000", "Ram C-V Cargo Van Minivan 2012"]
    assert meta["counts"] == {"train": 4, "test": 2}


def test_plantclef_rule_takes_the_20_largest_species(tmp_path):
    folder = tmp_path / "PlantCLEF2016Train"
    folder.mkdir()
    for class_id in range(25):  # species k has 10 + k images: the 20 largest are 5..24
        for i in range(10 + class_id):
            stem = f"{class_id}_{i}"
            (folder / f"{stem}.jpg").write_bytes(image_bytes((class_id, i, 0)))
            (folder / f"{stem}.xml").write_text(f"<Image><ClassId>{class_id}</ClassId>"
                                                f"<Species>Species {class_id}</Species></Image>")
    _, meta, index = prepared(tmp_path, "plantclef", folder)
    assert len(index.classes) == 20 and "4_Species_4" not in index.classes and "24_Species_24" in index.classes
    assert meta["approximate"] is True and "90% train" in meta["split"]
    assert "approximate" in get_dataset_spec("plantclef").description
