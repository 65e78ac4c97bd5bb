"""Fixtures of the service tests: models, a composed picture of real FER+ faces, live servers.

- `fernet_onnx`: an untrained FerNetS (0.83 M parameters) exported with ferkeras.export.onnx, once per
  session: the kind of model the service ships, all of its operators run by onnxruntime and
  onnxruntime-web. Untrained, it gives every face about the same label.
- `linear_onnx`: the linear stand-in of the predict tests (tests/helpers.py `linear_model`), whose labels differ from face to face and
  turn on single grey levels: the model that shows two pipelines crop the very same pixels.
- `yunet_model`: the YuNet face detector (not committed: models/ or the shared weights folder).
- `group_picture`: six real FER+ faces on a 640x480 background, saved as PNG, that YuNet finds
  without borderline cases (see the fixture).
- `start_server`: `serve.py` started as a real subprocess on a free port of 127.0.0.1.
"""
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import (FACE_SIDE, PLACES, REAL_FERPLUS, REPO, SCREENSHOTS, YUNET_SETTINGS, compose,
                           linear_model, read_label_rows, yunet_faces)

YUNET_NAME = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_PLACES = (REPO / "models" / YUNET_NAME, REPO.parent / "shared" / "weights" / YUNET_NAME)


def pytest_terminal_summary(terminalreporter):
    for path in SCREENSHOTS:
        terminalreporter.write_line(f"page screenshot: {path}")


@pytest.fixture(scope="session")
def fernet_onnx(tmp_path_factory):
    import keras

    from ferkeras.export.onnx import export_onnx
    from ferkeras.models.registry import build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("fernet") / "fernet_small.onnx"
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), np.uint8)
    export_onnx(build_model("FerNetS", weights="none"), path, faces=faces)
    return path


@pytest.fixture(scope="session")
def linear_onnx(tmp_path_factory):
    return linear_model(tmp_path_factory.mktemp("linear") / "linear.onnx")


@pytest.fixture(scope="session")
def yunet_model():
    for path in YUNET_PLACES:
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == YUNET_SHA256, f"{path}: sha256 {digest}, not the published YuNet 2023mar file"
            return path
    pytest.skip(f"the YuNet model {YUNET_NAME} is not committed; put it in models/ (docs/serve.md says where "
                "to fetch it)")


@pytest.fixture(scope="session")
def group_picture(ferplus_dir, yunet_model, tmp_path_factory):
    """Six validation faces placed as tests/helpers.py `compose` places them, as an 8-bit gray PNG
    (which browsers and OpenCV decode to the same levels).

    The page and Python run YuNet on different engines, whose box coordinates differ by ~1e-5 px,
    so faces are taken in label.csv order only when the picture keeps no borderline case that such
    a difference could flip: every detection scores at least 0.005 away from the threshold, and no
    box coordinate lies within 0.01 of a half pixel (boxes are rounded to whole pixels to crop)."""
    if Path(ferplus_dir) != REAL_FERPLUS:
        pytest.skip("the page tests need the real FER+ faces; the synthetic stand-ins are not faces")
    folder = Path(ferplus_dir) / "FER2013Valid"
    picked = []
    for row in read_label_rows(folder / "label.csv")[:80]:
        face = cv2.resize(cv2.imread(str(folder / row[0]), cv2.IMREAD_GRAYSCALE), (FACE_SIDE, FACE_SIDE),
                          interpolation=cv2.INTER_CUBIC)
        if clear_cut(compose(picked + [face]), yunet_model, len(picked) + 1):
            picked.append(face)
        if len(picked) == len(PLACES):
            path = tmp_path_factory.mktemp("group") / "group.png"
            cv2.imwrite(str(path), compose(picked))
            return path
    pytest.fail(f"only {len(picked)} of the first 80 validation faces make a clear-cut picture for YuNet")


def clear_cut(gray, yunet, count, threshold=YUNET_SETTINGS["score_threshold"]):
    """YuNet finds `count` faces in `gray`, and nothing in it is within rounding reach of a change."""
    found = yunet_faces(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), yunet, threshold=threshold - 0.05)
    scores = found[:, 14]
    boxes = found[scores >= threshold, :4]
    return (int(np.sum(scores >= threshold)) == count and bool(np.all(np.abs(scores - threshold) > 0.005))
            and bool(np.all(np.abs(boxes - np.floor(boxes) - 0.5) > 0.01)))


# ----------------------------------------------------------------------------- live servers

class LiveServer:
    """serve.py as a subprocess; `url` is its address, `log()` what it wrote to stdout/stderr."""

    def __init__(self, args, log_path):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.process = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--port", "0", *map(str, args)],
                                        cwd=REPO, stdout=subprocess.PIPE, stderr=self.log_file, text=True)
        first = self.process.stdout.readline()  # "serving MODEL on http://127.0.0.1:PORT/ ..."
        match = re.search(r"http://127\.0\.0\.1:\d+/", first)
        if not match:
            self.stop()
            raise AssertionError(f"serve.py did not start: {first!r} {self.log()}")
        self.url = match.group(0)
        self.wait_ready()

    def wait_ready(self, timeout_s=30):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.url + "health", timeout=5) as response:
                    return json.loads(response.read())
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"serve.py never answered /health: {self.log()}") from None
                time.sleep(0.1)

    def health(self):
        with urllib.request.urlopen(self.url + "health", timeout=10) as response:
            return json.loads(response.read())

    def log(self):
        self.log_file.flush()
        return Path(self.log_path).read_text()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.log_file.close()


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """start_server(*args) -> a LiveServer; all are stopped when the module's tests are done."""
    started = []

    def start(*args):
        server = LiveServer(args, tmp_path_factory.mktemp("server") / "server.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
