"""Shared pytest fixtures: FER+ data in both of its forms, small enough for quick tests.

- `ferplus_dir`: the real FER+ folder layout beside the checkout (../shared/data/ferplus) when it is
  there, else a synthetic one whose classes a small model can learn.
- `small_ferplus`: a few hundred faces of `ferplus_dir` copied into a small folder layout.
- `small_kaggle`: the same faces as a Kaggle `fer2013.csv` + FERPlus `fer2013new.csv` pair.
- `yunet_model`: the YuNet face detector file (../shared/weights), also put in the session's model
  cache so that the default detector finds it; tests that need it skip without it. No test downloads:
  FERKERAS_NO_DOWNLOAD is set for the whole session.

The fixtures build their files with csv and OpenCV directly, not with `ferkeras.data`, so that the
data loader's own tests compare it against something it did not produce.
"""
import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import ferkeras  # noqa: F401  (sets TensorFlow's environment before any test imports it)
from ferkeras import FACE_SIZE, NUM_CLASSES, VOTE_COLUMNS

REAL_FERPLUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ferplus"
SHARED_YUNET = Path(__file__).resolve().parents[2] / "shared" / "weights" / "face_detection_yunet_2023mar.onnx"
SPLIT_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid"}
USAGES = {"train": "Training", "valid": "PublicTest"}
SYNTHETIC_SIZES = {"train": 400, "valid": 120}
# Faces per class and faces that no label mode accepts (unknown / not-a-face votes), per split.
SMALL_PER_CLASS = {"train": 38, "valid": 11}
SMALL_REJECTED = {"train": 16, "valid": 8}
SMALL_SIZES = {split: NUM_CLASSES * SMALL_PER_CLASS[split] + SMALL_REJECTED[split] for split in USAGES}
FULL_BOX = "(0, 0, 48, 48)"
# FER2013's own 7-class "emotion" column, by FER+ class; ferkeras never reads it, but the file
# should look like the real one. Contempt has no FER2013 class and unsettled faces get neutral.
FER2013_EMOTION = {0: 6, 1: 3, 2: 5, 3: 4, 4: 0, 5: 1, 6: 2, 7: 6}


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
    import cv2

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


# ----------------------------------------------------------------------------------------------
# Helpers (plain functions so tests can build variants of the data too)


def read_label_rows(label_file):
    """Rows of a header-less FER+ label.csv as lists of strings: name, box, 10 votes."""
    with open(label_file, newline="") as handle:
        return [row for row in csv.reader(handle) if row]


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def settled_class(votes):
    """The class more than half of the votes (single stray votes removed) agree on, else None."""
    votes = np.where(np.asarray(votes) <= 1, 0, votes)
    top = int(np.argmax(votes))
    if top < NUM_CLASSES and 2 * votes[top] > votes.sum():
        return top
    return None


def pick_small_subset(rows, per_class, rejected, seed):
    """Pick up to `per_class` rows per settled class and `rejected` unsettled ones, topped up to size.

    Rare classes (contempt, disgust) may have fewer rows than asked; the shortfall is filled from
    the remaining rows so the subset always has the same size. Rows keep their label.csv order.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    wanted = {c: per_class for c in range(NUM_CLASSES)}
    wanted[None] = rejected
    chosen = []
    for index in order:
        label = settled_class([int(v) for v in rows[index][2:]])
        if wanted[label] > 0:
            wanted[label] -= 1
            chosen.append(index)
            if not any(wanted.values()):
                break
    size = NUM_CLASSES * per_class + rejected
    taken = set(chosen)
    chosen += [i for i in order if i not in taken][: size - len(chosen)]
    return [rows[i] for i in sorted(chosen)]


def make_synthetic_ferplus(out, sizes=SYNTHETIC_SIZES, seed=0):
    """Write a FER+ folder layout of learnable fake faces: per class a grating of its own angle.

    Each face's votes give its class 6-9 of 10 votes; about 1 in 16 faces is instead voted
    "unknown" or "not a face" (pixels pure noise), so the label modes have something to drop.
    """
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:FACE_SIZE, 0:FACE_SIZE].astype(np.float32)
    next_index = 0
    new_csv_rows = [["Usage", "Image name", *VOTE_COLUMNS]]
    for split, count in sizes.items():
        folder = out / SPLIT_FOLDERS[split]
        folder.mkdir(parents=True)
        label_rows = []
        for _ in range(count):
            name = f"fer{next_index:07d}.png"
            next_index += 1
            label = int(rng.integers(NUM_CLASSES))
            votes = np.zeros(len(VOTE_COLUMNS), dtype=int)
            if rng.random() < 1 / 16:
                votes[int(rng.integers(NUM_CLASSES, len(VOTE_COLUMNS)))] = 10
                image = rng.integers(0, 256, (FACE_SIZE, FACE_SIZE))
            else:
                votes[label] = int(rng.integers(6, 10))
                np.add.at(votes, rng.integers(0, NUM_CLASSES + 1, 10 - votes[label]), 1)
                angle = np.pi * label / NUM_CLASSES
                phase = rng.uniform(0, 2 * np.pi)
                wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / 12 + phase)
                image = 128 + 70 * wave + rng.normal(0, 20, wave.shape)
            cv2.imwrite(str(folder / name), np.clip(image, 0, 255).astype(np.uint8))
            label_rows.append([name, FULL_BOX, *votes])
            new_csv_rows.append([USAGES[split], name, *votes])
        write_csv(folder / "label.csv", label_rows)
    write_csv(out / "fer2013new.csv", new_csv_rows)
    return out
