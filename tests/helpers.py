"""Plain functions and constants the test modules share (fixtures live in conftest.py).

- FER+ data in its layouts: the folder layout (label.csv beside the PNGs), picked subsets, and a
  synthetic stand-in whose classes a small model can learn.
- Weights files in the Keras-2 HDF5 layouts that published backbones ship in.
- Stand-in ONNX models: linear classifiers over the 64x64 contract input, scored exactly with numpy
  (the reference-layout ones of test_reference.py, and the one of the predict and service tests).
- Pictures: faint noise backgrounds and upscaled faces, to place real faces where a detector must
  find them; six of them composed into one picture.
- Running a command's `main` in this process, as its script runs it; running script command lines in
  one long-lived interpreter (tests/cli_batch.py), TensorFlow loaded once for all of them.
- The service tests' YuNet runs and external tools (node, chromium).
- Training runs: their per-epoch history and their checkpoint's weights, compared exactly.

The data helpers build their files with csv and OpenCV directly, not with `ferkeras.data.ferplus`, so that the
data loader's own tests compare it against something it did not produce.
"""
import atexit
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ferkeras import FACE_SIZE, NUM_CLASSES, VOTE_COLUMNS
from ferkeras.deploy.contract import INPUT_NAME, OUTPUT_NAME, softmax

REPO = Path(__file__).resolve().parents[1]
REAL_FERPLUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ferplus"
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


# ----------------------------------------------------------------------------- FER+ data


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


# ----------------------------------------------------------------------------- Keras-2 HDF5 files


def write_keras2_h5(path, layers, model_file=False, split_layer_names=False):
    """Write `layers` ([(Keras-2 layer name, [(weight name, array), ...]), ...]) as Keras 2 did.

    A save_weights file has the layer groups at the root; a full-model file has them under
    "model_weights". Keras 2 split a list attribute over name0, name1, ... when it was too large for
    HDF5; `split_layer_names` writes `layer_names` that way.
    """
    with h5py.File(path, "w") as h5:
        group = h5.create_group("model_weights") if model_file else h5
        names = np.array([name.encode("utf8") for name, _ in layers])
        if split_layer_names:
            for chunk, part in enumerate(np.array_split(names, 3)):
                group.attrs[f"layer_names{chunk}"] = part
        else:
            group.attrs["layer_names"] = names
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.2.4"
        for layer_name, weights in layers:
            layer_group = group.create_group(layer_name)
            layer_group.attrs["weight_names"] = np.array([name.encode("utf8") for name, _ in weights])
            for weight_name, array in weights:
                # Keras 2 named arrays "<layer>/<variable>:0", so "/" nests groups inside the layer's.
                layer_group.create_dataset(weight_name, data=array)
        if model_file:
            h5.attrs["model_config"] = b"{}"
            h5.attrs["keras_version"] = b"2.2.4"


def write_keras2_weights_h5(model, path, keras2_name=lambda name: name):
    """The Keras-2 HDF5 weights layout of published backbones (keras.applications, keras-vggface).

    Top-level attribute layer_names lists every layer; each layer's group lists its weight_names
    (trainable first, then non-trainable) and holds one dataset per weight. `keras2_name` gives a
    layer's Keras-2 name, which may contain "/" (nested groups, as in keras-vggface's files).
    """
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [keras2_name(layer.name).encode() for layer in model.layers]
        h5.attrs["backend"] = b"tensorflow"
        h5.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = h5.require_group(keras2_name(layer.name))
            variables = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{keras2_name(layer.name)}/{variable.name}:0" for variable in variables]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, variable in zip(names, variables):
                group.create_dataset(name, data=variable.numpy())


# ----------------------------------------------------------------------------- stand-in ONNX models

PIXELS = 64 * 64


def linear_weights(seed):
    """Weights that make the stand-in's classes depend on where a face is bright."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1e-4, (PIXELS, 8)).astype(np.float32),
            rng.normal(0, 0.1, (1, 8)).astype(np.float32))


def linear_onnx(path, weight, bias, batch=1, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                in_shape=None, out_classes=8, elem_type=TensorProto.FLOAT, opset=8, ir_version=3):
    """Input [batch,1,64,64] -> Reshape [batch,4096] -> MatMul -> Add -> [batch,8], like the reference
    (opset 8, IR 3, weights also listed as graph inputs as old exporters did)."""
    batch_dim = batch if batch else "N"
    shape_values = np.array([-1 if not batch else batch, PIXELS], dtype=np.int64)
    initializers = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B"),
                    numpy_helper.from_array(shape_values, "flat_shape")]
    nodes = [helper.make_node("Reshape", [input_name, "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["scores"]),
             helper.make_node("Add", ["scores", "B"], [output_name])]
    inputs = [helper.make_tensor_value_info(input_name, elem_type, in_shape or [batch_dim, 1, 64, 64])]
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in initializers]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_dim, out_classes])]
    graph = helper.make_graph(nodes, "standin", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="test-standin")
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


def standin_weights(seed=3):
    """The weights of `linear_model`: small enough that a face's scores stay near the bias, large
    enough that every face, and a crop one grey level off, scores differently."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2e-4, (64 * 64, 8)).astype(np.float32), rng.normal(0, 0.3, 8).astype(np.float32)


def linear_model(path, batch=None):
    """Input3 [batch,1,64,64] -> Flatten -> MatMul -> Add -> Plus692_Output_0 [batch,8]; batch None =
    dynamic (opset 17, like our exports), batch 1 = the reference's opset 8 / IR 3 layout."""
    weight, bias = standin_weights()
    dim = batch or "N"
    nodes = [helper.make_node("Flatten", ["Input3"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["scores"]),
             helper.make_node("Add", ["scores", "B"], ["Plus692_Output_0"])]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("Input3", TensorProto.FLOAT, [dim, 1, 64, 64])],
        [helper.make_tensor_value_info("Plus692_Output_0", TensorProto.FLOAT, [dim, 8])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8 if batch else 17)])
    model.ir_version = 3 if batch else 8
    onnx.save(model, str(path))
    return path


def expected_probabilities(gray, box):
    """The stand-in's probabilities for the face in `box`, computed without the predictor: the box
    cut out of the image (boxes here lie inside it and are square, so no margin and no padding),
    resized to 64x64 (area averaging to shrink, bilinear to enlarge), through the same linear map."""
    x, y, w, h = box
    shrink = cv2.INTER_AREA if w > 64 else cv2.INTER_LINEAR
    face = cv2.resize(gray[y:y + h, x:x + w], (64, 64), interpolation=shrink)
    weight, bias = standin_weights()
    return softmax((face.astype(np.float64).reshape(1, -1) @ weight + bias))[0]


def linear_probabilities(gray, box, margin):
    """The stand-in's probabilities for a face cropped as predict.py crops it."""
    from ferkeras.deploy.faces import crop_face

    weight, bias = standin_weights()
    face = crop_face(gray, box, margin=margin, size=64).astype(np.float64)
    return softmax(face.reshape(1, -1) @ weight + bias)[0]


# ----------------------------------------------------------------------------- pictures

FACE_SIDE = 140  # the side real FER+ faces are upscaled to before they are placed in a picture
# Where the six faces of a composed picture go: two rows whose heads are not level.
PLACES = [(30, 40), (250, 60), (470, 50), (30, 300), (250, 280), (470, 310)]
CANVAS = (480, 640)


def faint_noise(height, width, seed):
    """A mid-grey background with faint blurred noise: textured, yet with no face-like blobs."""
    noise = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 1, (height, width)).astype(np.float32),
                             (0, 0), 3)
    return np.clip(110 + 8 * noise / noise.std(), 0, 255).astype(np.uint8)


def upscaled(path):
    return cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (FACE_SIDE, FACE_SIDE),
                      interpolation=cv2.INTER_CUBIC)


def compose(faces, seed=2):
    """A 640x480 gray picture with up to six FACE_SIDE faces at PLACES (in reading order)."""
    canvas = faint_noise(*CANVAS, seed=seed)
    for (x, y), face in zip(PLACES, faces):
        canvas[y:y + FACE_SIDE, x:x + FACE_SIDE] = face
    return canvas


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------- commands in this process


def run_in_process(main, argv, capsys):
    """A command's `main` as its script runs it, in this process: (exit status, stdout, stderr)."""
    from ferkeras.errors import run_cli

    try:
        code = run_cli(main, [str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code or 0, captured.out, captured.err


class BatchWorker:
    """tests/cli_batch.py --serve: one interpreter, TensorFlow loaded once, that runs lists of cases."""

    def __init__(self):
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "cli_batch.py"), "--serve"], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def run(self, cases_file):
        self.process.stdin.write(f"{cases_file}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:  # it died: say how, and start afresh for the next caller
            self.process.wait()
            self.log.seek(0)
            raise AssertionError(f"tests/cli_batch.py exited {self.process.returncode}: "
                                 f"{self.log.read().decode(errors='replace')[-3000:]}")
        return json.loads(line)

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()
        self.log.close()


_batch_worker = []  # the session's BatchWorker, started by the first `batch`


def batch(tmp_path, cases):
    """Several (script, args[, env]) cases run as `python SCRIPT ARGS` runs, in the session's one
    tests/cli_batch.py interpreter; their results as subprocess.CompletedProcess objects."""
    listed = [{"script": str(case[0]), "argv": [str(a) for a in case[1]], "env": case[2] if len(case) > 2 else {}}
              for case in cases]
    cases_file = Path(tmp_path) / "cases.json"
    cases_file.write_text(json.dumps(listed))
    if not _batch_worker or _batch_worker[0].process.poll() is not None:
        _batch_worker[:] = [BatchWorker()]
        atexit.register(_batch_worker[0].stop)
    results = _batch_worker[0].run(cases_file)
    return [subprocess.CompletedProcess([case["script"], *case["argv"]], r["returncode"], r["stdout"], r["stderr"])
            for case, r in zip(listed, results)]


# ----------------------------------------------------------------------------- training runs


def run_history(run_dir):
    """A run's training.csv: one row per epoch."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "training.csv")


def checkpoint_arrays(run_dir, which="last"):
    """Every weight of a run's checkpoint (trainable, frozen, BatchNorm statistics), by variable path."""
    import keras

    model = keras.saving.load_model(Path(run_dir) / "checkpoints" / f"{which}.keras")
    return {variable.path: keras.ops.convert_to_numpy(variable) for variable in model.weights}


def assert_same_run(actual_dir, expected_dir):
    """Two runs that trained bit for bit alike: the same logged epochs and the same checkpoint.

    Exact, not approximate: on one machine, in one process kind, the same operations on the same
    inputs round the same way, so any difference is a difference in what the runs did.
    """
    import pandas as pd

    pd.testing.assert_frame_equal(run_history(actual_dir), run_history(expected_dir), check_exact=True)
    actual, expected = checkpoint_arrays(actual_dir), checkpoint_arrays(expected_dir)
    assert actual.keys() == expected.keys()
    for path, array in expected.items():
        np.testing.assert_array_equal(actual[path], array, err_msg=path)


# ----------------------------------------------------------------------------- the service tests

YUNET_SETTINGS = dict(score_threshold=0.9, nms_threshold=0.3, top_k=5000)  # ferkeras.service.web.YUNET
SCREENSHOTS = []  # the page tests' screenshots, listed at the end of the run (tests/service/conftest.py)


def yunet_faces(bgr, yunet, threshold=YUNET_SETTINGS["score_threshold"]):
    """cv2.FaceDetectorYN on the picture letterboxed as the page does (640x640, black beyond it):
    rows x, y, w, h, 5 landmarks, score, best first."""
    height, width = bgr.shape[:2]
    assert max(height, width) == 640, "the tests compare pictures the page feeds YuNet unscaled"
    square = np.zeros((640, 640, 3), np.uint8)
    square[:height, :width] = bgr
    detector = cv2.FaceDetectorYN.create(str(yunet), "", (640, 640), threshold, YUNET_SETTINGS["nms_threshold"],
                                         YUNET_SETTINGS["top_k"])
    found = detector.detect(square)[1]
    return np.zeros((0, 15), np.float32) if found is None else found


def need_tool(name, install):
    """The path of program `name`; without it the test is skipped, except in CI (.ci/run sets
    FERKERAS_CI=1; CI=true is set there too), which installs it, so that there its absence fails."""
    import pytest

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({install}); .ci/run installs it"
        if os.environ.get("FERKERAS_CI") or os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def some_faces(n=4, seed=0):
    """(n, 48, 48, 1) float32 faces 0..255: real FER+ validation faces when present, else random."""
    pngs = sorted((REAL_FERPLUS / "FER2013Valid").glob("*.png"))[:n]
    if len(pngs) == n:
        faces = np.stack([cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) for png in pngs])
    else:
        faces = np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
    return faces[..., None].astype(np.float32)
