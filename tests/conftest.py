"""Shared fixtures. Every test runs offline: the torch hub cache, the data root and the profile store point into a
temporary folder, and opening a network connection fails the test."""
from __future__ import annotations

import os

# Triton kernels run on CPU tensors through Triton's interpreter. It is chosen when a kernel is defined, so it
# is set before anything imports one. A GPU run of the suite can export TRITON_INTERPRET=0 to compile them.
os.environ.setdefault("TRITON_INTERPRET", "1")

import logging
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# Class colours of the tiny datasets: a model (and a reader) can tell a sample's label from its pixels.
CLASS_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("ENGINE_DATA", str(home / "data"))
    # the batch and packing choices a real GPU stored on this machine must not steer (or be overwritten by) a test
    monkeypatch.setenv("ENGINE_PROFILES", str(home / "profiles.json"))

    connect = socket.socket.connect

    def refuse_network(sock, address, *args, **kwargs):
        # Unix sockets carry DataLoader traffic; loopback reaches the tests' own HTTP servers.
        loopback = isinstance(address, tuple) and str(address[0]) in ("127.0.0.1", "::1", "localhost")
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not loopback:
            raise AssertionError(f"a test tried to open a network connection to {address}")
        return connect(sock, address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    resolve = socket.getaddrinfo

    def refuse_lookup(host, *args, **kwargs):  # a name lookup would leave the machine before any connect
        if host not in ("127.0.0.1", "::1", "localhost", None):
            raise AssertionError(f"a test tried to look up {host}")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)


def write_image(path: Path, colour: tuple[int, int, int], side: int = 32, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, float) + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


def make_dataset(root: Path, counts: dict[str, int], side: int = 32, ext: str = "png") -> Path:
    """<root>/<split>/<colour>/<n>.<ext>, `counts[split]` images per class."""
    for split, count in counts.items():
        for label, (name, colour) in enumerate(CLASS_COLOURS.items()):
            for index in range(count):
                write_image(root / split / name / f"{name}_{index:03d}.{ext}", colour, side,
                            seed=hash((split, label, index)) % 2**32)
    return root


def make_shaded_dataset(root: Path, counts: dict[str, int], side: int, darkest: float) -> Path:
    """3 colour classes in which every image has its own shade (darkest + 0.05 n of the class colour), so each
    file is recognisable from its pixels: <root>/<split>/<colour>/<n>.png."""
    for split, count in counts.items():
        for name, colour in CLASS_COLOURS.items():
            for index in range(count):
                shade = tuple(int(c * (darkest + 0.05 * index)) for c in colour)
                write_image(root / split / name / f"{index:02d}.png", shade, side=side, seed=index)
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """3 colour classes, 12 train and 4 test images each, 32x32 PNG."""
    return make_dataset(tmp_path / "tiny", {"train": 12, "test": 4})


def run_engine(*args: str, env_extra: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in a subprocess, as a user runs it, with this test's offline environment."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def run_main(capsys, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`engine ARGS` in this process, answered as run_engine answers: exit code, stdout and stderr (the log
    included). A fresh interpreter spends about 4 s importing torch; tests whose subject is the process itself
    (a kill, a signal, torchrun, the environment it starts with) keep run_engine."""
    from engine.cli import main
    engine_log = logging.getLogger("engine")
    handlers = engine_log.handlers[:]
    engine_log.handlers.clear()  # so that main() logs to this capture, not to the stream of the test that came first
    capsys.readouterr()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in (env_extra or {}).items():
                patch.setenv(name, value)
            main(list(args))
        code = 0
    except SystemExit as exited:
        code = exited.code or 0
    finally:
        engine_log.handlers[:] = handlers
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["engine", *args], code, captured.out, captured.err)
