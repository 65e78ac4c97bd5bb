"""Shared pytest fixtures: FER+ data in both of its forms, small enough for quick tests, and real faces.

- `ferplus_dir`: the real FER+ folder layout beside the checkout (../shared/data/ferplus) when it is
  there, else a synthetic one whose classes a small model can learn.
- `small_ferplus`: a few hundred faces of `ferplus_dir` copied into a small folder layout.
- `small_kaggle`: the same faces as a Kaggle `fer2013.csv` + FERPlus `fer2013new.csv` pair.
- `yunet_model`: the YuNet face detector file (../shared/weights), also put in the session's model
  cache so that the default detector finds it; tests that need it skip without it. No test downloads:
  FERKERAS_NO_DOWNLOAD is set for the whole session, and `loopback_only` fails any connection made
  from the test process to an address other than this machine's.
- `real_faces`: real FER+ faces, upscaled, that the face detector finds when each is shown alone.
- `models`: the linear stand-ins of the contract model (tests/helpers.py `linear_model`), with a
  dynamic batch and with the reference's fixed batch of 1, whose scores numpy recomputes exactly.

Plain functions (the data builders among them) live in tests/helpers.py.
"""
import os
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

import ferkeras  # noqa: F401  (sets TensorFlow's environment before any test imports it)
from ferkeras import FACE_SIZE, NUM_CLASSES, VOTE_COLUMNS
from tests.helpers import (FACE_SIDE, FER2013_EMOTION, REAL_FERPLUS, SMALL_PER_CLASS, SMALL_REJECTED,
                           SPLIT_FOLDERS, USAGES, faint_noise, linear_model, make_synthetic_ferplus,
                           pick_small_subset, read_label_rows, upscaled, write_csv)

SHARED_YUNET = REAL_FERPLUS.parents[1] / "weights" / "face_detection_yunet_2023mar.onnx"
# How many faces `real_faces` gives: the composed pictures of test_predict hold six.
REAL_FACES = 6


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="session", autouse=True)
def loopback_only():
    """No test touches the network: a socket of the test process may connect to this machine only (the
    service tests' servers), so a test that would download or call out fails instead of passing online."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse_remote(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            raise OSError(f"tests may not touch the network (a connection to {address[0]} was attempted)")

    def guarded_connect(sock, address):
        refuse_remote(sock, address)
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        refuse_remote(sock, address)
        return connect_ex(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        yield


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the decoded-data cache of every test run in a temporary folder, not in ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FERKERAS_CACHE", str(tmp_path_factory.mktemp("ferkeras-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def cached_yunet(isolated_cache):
    """No downloads in tests; the shared YuNet file, when there, in the cache where predict looks for it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FERKERAS_NO_DOWNLOAD", "1")
        if SHARED_YUNET.is_file():
            weights = Path(os.environ["FERKERAS_CACHE"]) / "weights"
            weights.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHARED_YUNET, weights / SHARED_YUNET.name)
        yield


@pytest.fixture(scope="session")
def yunet_model(cached_yunet):
    """The YuNet model file (a copy in the session cache), or a skip when the shared file is absent."""
    if not SHARED_YUNET.is_file():
        pytest.skip(f"needs the YuNet face detector model ({SHARED_YUNET})")
    return Path(os.environ["FERKERAS_CACHE"]) / "weights" / SHARED_YUNET.name


@pytest.fixture(scope="session")
def ferplus_dir(tmp_path_factory):
    """The real FER+ folder layout when available, else a synthetic one (400 train, 120 valid)."""
    if (REAL_FERPLUS / SPLIT_FOLDERS["train"] / "label.csv").is_file():
        return REAL_FERPLUS
    return make_synthetic_ferplus(tmp_path_factory.mktemp("synthetic-ferplus"))


@pytest.fixture(scope="session")
def small_ferplus(ferplus_dir, tmp_path_factory):
    """~320 train and ~96 valid faces of `ferplus_dir` (all classes, a few rejected) as folders."""
    out = tmp_path_factory.mktemp("small-ferplus")
    for split, folder in SPLIT_FOLDERS.items():
        rows = read_label_rows(ferplus_dir / folder / "label.csv")
        picked = pick_small_subset(rows, SMALL_PER_CLASS[split], SMALL_REJECTED[split], seed=len(split))
        (out / folder).mkdir()
        for row in picked:
            shutil.copyfile(ferplus_dir / folder / row[0], out / folder / row[0])
        write_csv(out / folder / "label.csv", picked)
    return out


@pytest.fixture(scope="session")
def small_kaggle(small_ferplus, tmp_path_factory):
    """The faces of `small_ferplus` as a Kaggle fer2013.csv + FERPlus fer2013new.csv pair.

    Like the real files, rows are not in image-name order, some rows are non-faces with an empty
    image name (and pixels of their own), and one face appears twice under the same name.
    """
    rng = np.random.default_rng(7)
    pixel_rows, vote_rows = [["emotion", "pixels", "Usage"]], [["Usage", "Image name", *VOTE_COLUMNS]]
    for split, folder in SPLIT_FOLDERS.items():
        usage = USAGES[split]
        label_rows = read_label_rows(small_ferplus / folder / "label.csv")
        label_rows = [label_rows[i] for i in rng.permutation(len(label_rows))]
        label_rows.insert(len(label_rows) // 2, label_rows[0])  # a duplicate image, as FER2013 has
        for position, row in enumerate(label_rows):
            if position % 25 == 3:  # a non-face row: FER+ gave it no name and 10 "not a face" votes
                filler = rng.integers(0, 256, FACE_SIZE * FACE_SIZE)
                pixel_rows.append([6, " ".join(map(str, filler)), usage])
                vote_rows.append([usage, "", *([0] * (len(VOTE_COLUMNS) - 1)), 10])
            image = cv2.imread(str(small_ferplus / folder / row[0]), cv2.IMREAD_UNCHANGED)
            votes = [int(v) for v in row[2:]]
            emotion = FER2013_EMOTION[int(np.argmax(votes[:NUM_CLASSES]))]
            pixel_rows.append([emotion, " ".join(map(str, image.ravel())), usage])
            vote_rows.append([usage, row[0], *votes])
    out = tmp_path_factory.mktemp("small-kaggle")
    write_csv(out / "fer2013.csv", pixel_rows)
    write_csv(out / "fer2013new.csv", vote_rows)
    return out


@pytest.fixture(scope="module")
def real_faces(ferplus_dir):
    """The first validation faces the cascade finds when each is shown alone, upscaled, on the
    background of the tests (exactly one box, overlapping the face): six of the first 40."""
    from ferkeras.deploy.faces import FaceDetector
    from ferkeras.deploy.predict import box_iou

    if Path(ferplus_dir) != REAL_FERPLUS:
        pytest.skip("detection tests need the real FER+ faces; the synthetic stand-ins are not faces")
    folder = Path(ferplus_dir) / "FER2013Valid"
    detector, truth, picked = FaceDetector(), (FACE_SIDE // 2, FACE_SIDE // 2, FACE_SIDE, FACE_SIDE), []
    for row in read_label_rows(folder / "label.csv")[:40]:
        face = upscaled(folder / row[0])
        alone = faint_noise(2 * FACE_SIDE, 2 * FACE_SIDE, seed=1)
        alone[truth[1]:truth[1] + FACE_SIDE, truth[0]:truth[0] + FACE_SIDE] = face
        boxes = detector.detect(alone)
        if len(boxes) == 1 and box_iou(boxes[0], truth) > 0.5:
            picked.append(face)
        if len(picked) == REAL_FACES:
            return picked
    pytest.fail(f"the cascade found only {len(picked)} of the first 40 real faces shown alone")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{"dynamic": batch N, opset 17, "fixed": batch 1, opset 8 / IR 3}: the linear stand-in model files."""
    folder = tmp_path_factory.mktemp("models")
    return {"dynamic": linear_model(folder / "dynamic.onnx"),
            "fixed": linear_model(folder / "fixed.onnx", batch=1)}
