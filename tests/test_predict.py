"""predict.py: faces found in composed pictures of real FER+ faces, scored by stand-in ONNX models.

The stand-in models (tests/conftest.py `models`) are linear maps of the 64x64 pixels built with onnx.helper (one with a dynamic
batch, one with the reference's fixed batch of 1), so every probability the predictor reports is
recomputed here with numpy from the image pixels under the reported box. Detection tests place real
FER+ faces (upscaled to 140 px) at known places on a faint noise background and need the real faces;
everything else runs on whatever `ferplus_dir` provides. These tests use the Haar cascade (its boxes are
square and lie inside the picture, so the expected crops are plain slices); YuNet, the default detector,
is tested in test_detectors.py.
"""
import csv
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ferkeras import CLASSES
from ferkeras.errors import UserError
from ferkeras.deploy.faces import FaceDetector, crop_face, read_image, read_image_color, reading_order
from ferkeras.deploy.predict import CLASS_COLOURS, NearestBoxTracker, box_iou, predict_command, predict_video
from tests.helpers import CANVAS, FACE_SIDE, PLACES, compose, expected_probabilities, faint_noise, read_jsonl

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("tensorflow", "keras", "tf2onnx", "torch")


# ----------------------------------------------------------------------------- detection and scoring

def test_faces_are_found_in_place_in_reading_order_and_scored(real_faces, models, tmp_path):
    picture = compose(real_faces)
    cv2.imwrite(str(tmp_path / "group.png"), picture)
    summary = predict_command([tmp_path / "group.png"], models["dynamic"], out=tmp_path / "out", progress=False,
                              detector="haar")
    assert (summary.images, summary.faces, summary.no_face) == (1, 6, 0)

    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [row["face"] for row in rows] == list(range(6))
    for row, (x, y) in zip(rows, PLACES):  # PLACES is in reading order, so rows must follow it
        assert box_iou(row["box"], (x, y, FACE_SIDE, FACE_SIDE)) > 0.6, (row["box"], (x, y))
        expected = expected_probabilities(picture, row["box"])
        got = np.array([row["probabilities"][name] for name in CLASSES])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert row["label"] == CLASSES[int(np.argmax(expected))]
        assert row["confidence"] == pytest.approx(expected.max(), abs=1e-5)
    # The six faces score differently, so a mix-up of boxes and probabilities would show above.
    assert len({tuple(np.round(list(r["probabilities"].values()), 4)) for r in rows}) == 6

    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(int(t["x"]), int(t["y"]), t["label"]) for t in table] == \
        [(r["box"][0], r["box"][1], r["label"]) for r in rows]
    assert float(table[0]["happiness"]) == pytest.approx(rows[0]["probabilities"]["happiness"], abs=1e-6)

    annotated = cv2.imread(str(tmp_path / "out" / "annotated" / "group.png"))
    assert annotated.shape == picture.shape + (3,)
    for row in rows:  # the middle of each box's left edge is drawn in the colour of its label
        x, y, w, h = row["box"]
        assert tuple(annotated[y + h // 2, x]) == CLASS_COLOURS[CLASSES.index(row["label"])]


def test_a_fixed_batch_model_gives_the_same_rows(real_faces, models, tmp_path):
    """The reference takes one face per call; a folder of pictures must come out the same."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), compose(real_faces))
    cv2.imwrite(str(folder / "b.jpg"), compose(real_faces[::-1], seed=5))
    dynamic = predict_command([folder], models["dynamic"], out=tmp_path / "dyn", batch_size=4,
                              no_annotate=True, progress=False, detector="haar")
    fixed = predict_command([folder], models["fixed"], out=tmp_path / "fix", no_annotate=True, progress=False,
                            detector="haar")
    assert dynamic.faces == fixed.faces == 12
    first = read_jsonl(tmp_path / "dyn" / "predictions.jsonl")
    second = read_jsonl(tmp_path / "fix" / "predictions.jsonl")
    assert [(r["file"], r["box"]) for r in first] == [(r["file"], r["box"]) for r in second]
    for a, b in zip(first, second):
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()),
                                   atol=1e-5)
    assert not (tmp_path / "dyn" / "annotated").exists()


def test_large_pictures_are_searched_at_detect_side_with_boxes_in_full_size_pixels(real_faces):
    picture = compose(real_faces)
    large = cv2.resize(picture, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)  # 1920x1440
    small_boxes = FaceDetector().detect(picture)
    large_boxes = FaceDetector(max_side=640).detect(large)
    assert len(large_boxes) == len(small_boxes) == 6
    for small, big in zip(small_boxes, large_boxes):
        assert box_iou([3 * v for v in small], big) > 0.9, (small, big)


def test_a_picture_without_faces_gives_no_rows_and_says_so(models, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "empty.png"), faint_noise(*CANVAS, seed=3))
    summary = predict_command([tmp_path / "empty.png"], models["dynamic"], out=tmp_path / "out",
                              progress=False, detector="haar")
    assert (summary.images, summary.faces, summary.no_face) == (1, 0, 1)
    assert "no face found" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "out" / "predictions.jsonl") == []
    assert (tmp_path / "out" / "annotated" / "empty.png").is_file()


# ----------------------------------------------------------------------------- reading odd files

def exif_rotated_jpeg(gray):
    """JPEG bytes of `gray` with an EXIF orientation of 6 (stored sideways, shown turned 90 degrees)."""
    jpeg = cv2.imencode(".jpg", gray)[1].tobytes()
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + \
        struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    return jpeg[:2] + app1 + jpeg[2:]


def write_odd_images(folder, face):
    """The same 48x48 face in every form a user's folder may hold, plus broken files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    bgra = cv2.cvtColor(face, cv2.COLOR_GRAY2BGRA)
    bgra[:, :12, 3] = 0  # a transparent strip on the left
    cv2.imwrite(str(folder / "gray.png"), face)
    cv2.imwrite(str(folder / "rgba.png"), bgra)
    cv2.imwrite(str(folder / "deep.png"), face.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "colour.bmp"), cv2.cvtColor(face, cv2.COLOR_GRAY2BGR))
    Image.fromarray(face).convert("P").save(folder / "palette.png")
    (folder / "wide name é.png").write_bytes(cv2.imencode(".png", face)[1].tobytes())
    (folder / "notes.jpg").write_text("not a picture")
    (folder / "empty.png").write_bytes(b"")


def test_read_image_handles_gray_alpha_16_bit_palette_exif_and_odd_names(ferplus_dir, tmp_path):
    face = cv2.imread(str(sorted((Path(ferplus_dir) / "FER2013Valid").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    write_odd_images(tmp_path, face)
    for name in ("gray.png", "deep.png", "colour.bmp", "palette.png", "wide name é.png"):
        np.testing.assert_array_equal(read_image(tmp_path / name), face, err_msg=name)
    rgba = read_image(tmp_path / "rgba.png")
    assert (rgba[:, :12] == 255).all()  # transparent pixels composite on white
    np.testing.assert_array_equal(rgba[:, 12:], face[:, 12:])
    assert read_image_color(tmp_path / "gray.png").shape == (48, 48, 3)

    tall = np.zeros((40, 80), np.uint8)
    tall[:, :20] = 255  # bright on the left as stored; orientation 6 turns it to the top
    (tmp_path / "phone.jpg").write_bytes(exif_rotated_jpeg(tall))
    shown = read_image(tmp_path / "phone.jpg")
    assert shown.shape == (80, 40)
    assert shown[:20].mean() > 200 and shown[30:].mean() < 30

    for name, reason in (("notes.jpg", "not a readable image"), ("empty.png", "empty file"),
                         ("absent.png", "not a readable image")):
        with pytest.raises(UserError, match=reason) as caught:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)


def test_crop_face_is_square_on_the_box_centre_with_edges_replicated():
    gradient = np.tile(np.arange(100, 200, dtype=np.uint8), (100, 1))  # pixel value = 100 + column
    crop = crop_face(gradient, (0, 40, 20, 20), margin=0.5, size=40)  # side 40 from column -10
    assert crop.shape == (40, 40)
    assert (crop[:, :10] == 100).all()  # outside the image: column 0 repeated
    np.testing.assert_array_equal(crop[:, 10:], np.tile(np.arange(100, 130, dtype=np.uint8), (40, 1)))
    tall = crop_face(gradient, (50, 10, 10, 30), margin=0.0, size=30)  # a 10x30 box -> 30x30 square
    np.testing.assert_array_equal(tall[0], np.arange(140, 170, dtype=np.uint8))
    assert crop_face(gradient, (10, 10, 80, 80), margin=0.0, size=64).shape == (64, 64)


def test_reading_order_reads_rows_top_to_bottom_each_left_to_right():
    boxes = [(300, 55, 100, 100), (20, 300, 100, 100), (10, 40, 100, 100), (160, 20, 100, 100),
             (170, 330, 90, 90)]
    assert reading_order(boxes) == [(10, 40, 100, 100), (160, 20, 100, 100), (300, 55, 100, 100),
                                    (20, 300, 100, 100), (170, 330, 90, 90)]


# ----------------------------------------------------------------------------- the CLI in a fresh process

def run_predict(args, cwd):
    """predict.py in a fresh interpreter; afterwards it prints which heavy frameworks got imported."""
    driver = ("import runpy, sys\n"
              f"sys.path.insert(0, {str(REPO)!r})\n"
              f"sys.argv = ['predict.py', *{[str(a) for a in args]!r}]\n"
              "code = 0\n"
              "try:\n"
              f"    runpy.run_path({str(REPO / 'predict.py')!r}, run_name='__main__')\n"
              "except SystemExit as exc:\n"
              "    code = exc.code or 0\n"
              f"print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r}))\n"
              "sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", driver], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_goes_on_past_bad_files_and_imports_no_tensorflow(ferplus_dir, models, tmp_path):
    folder = tmp_path / "faces"
    face = cv2.imread(str(sorted((Path(ferplus_dir) / "FER2013Valid").glob("*.png"))[1]), cv2.IMREAD_GRAYSCALE)
    write_odd_images(folder, face)
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    result = run_predict(["--model", models["fixed"], folder, "--no_detect", "--out", tmp_path / "out",
                          "--format", "csv"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "6 images, 6 faces, 0 images without a face, 2 skipped (2 not a readable image)" \
        in result.stdout
    assert f"skipped: {folder / 'notes.jpg'}: not a readable image" in result.stderr
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert sorted(Path(row["file"]).name for row in table) == \
        ["colour.bmp", "deep.png", "gray.png", "palette.png", "rgba.png", "wide name é.png"]
    assert not (tmp_path / "out" / "predictions.jsonl").exists()
    for row in table:  # --no_detect: the whole 48x48 image is the face
        assert (row["x"], row["y"], row["w"], row["h"]) == ("0", "0", "48", "48")
        expected = expected_probabilities(read_image(row["file"]), (0, 0, 48, 48))
        np.testing.assert_allclose([float(row[name]) for name in CLASSES], expected, atol=2e-6)
    assert len(list((tmp_path / "out" / "annotated").iterdir())) == 6


def test_cli_exit_codes_for_nothing_processed_and_a_wrong_model(models, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_text("text")
    (tmp_path / "broken" / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    nothing = run_predict(["--model", models["dynamic"], tmp_path / "broken", "--out", tmp_path / "o1",
                           "--detector", "haar"], tmp_path)
    assert nothing.returncode == 1
    assert "0 images, 0 faces, 0 images without a face, 2 skipped (2 not a readable image)" in nothing.stdout

    wrong = tmp_path / "wrong.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 224, 224])])
    onnx.save(helper.make_model(graph), str(wrong))
    for model, message in ((wrong, "expected one float32 input [N,1,64,64]"),
                           (tmp_path / "none.onnx", "no such ONNX file")):
        result = run_predict(["--model", model, tmp_path / "broken", "--out", tmp_path / "o2"], tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {model}: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()
    missing = run_predict(["--model", models["dynamic"], tmp_path / "nowhere.jpg", "--detector", "haar"], tmp_path)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


# ----------------------------------------------------------------------------- videos

def test_tracker_follows_faces_by_overlap_and_smooths_per_track():
    tracker = NearestBoxTracker(alpha=0.5, max_missing=2)
    one, two = np.eye(8)[1], np.eye(8)[4]
    first = tracker.update([(0, 0, 50, 50), (200, 0, 50, 50)], [one, two])
    assert [track for track, _ in first] == [1, 2]
    # Listed the other way round and moved a little: each keeps its track, the average halves.
    second = tracker.update([(205, 3, 50, 50), (4, 2, 50, 50)], [one, one])
    assert [track for track, _ in second] == [2, 1]
    np.testing.assert_allclose(second[0][1], 0.5 * two + 0.5 * one)
    np.testing.assert_allclose(second[1][1], one)
    tracker.update([(6, 2, 50, 50)], [two])  # face 2 unseen for one frame...
    back = tracker.update([(206, 2, 50, 50)], [two])  # ...comes back within max_missing: same track
    assert back[0][0] == 2
    for _ in range(3):
        tracker.update([], [])
    assert tracker.update([(206, 2, 50, 50)], [one])[0][0] == 3  # gone too long: a new track


def test_video_rows_are_per_frame_smoothed_and_the_annotated_video_is_written(ferplus_dir, models, tmp_path):
    faces = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
             for p in sorted((Path(ferplus_dir) / "FER2013Valid").glob("*.png"))[:8]]
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 96))
    for face in faces:
        writer.write(cv2.cvtColor(cv2.resize(face, (96, 96)), cv2.COLOR_GRAY2BGR))
    writer.release()
    capture, decoded = cv2.VideoCapture(str(clip)), []
    while (frame := capture.read())[0]:
        decoded.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2GRAY))

    alpha = 0.6
    summary = predict_video(clip, models["dynamic"], out=tmp_path / "out", no_detect=True, smooth=alpha,
                            progress=False)
    assert (summary.images, summary.faces) == (8, 8) == (len(decoded), len(decoded))
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [(r["frame"], r["track"], r["time_s"]) for r in rows] == [(i, 1, i / 10) for i in range(8)]
    smoothed = expected_probabilities(decoded[0], (0, 0, 96, 96))
    for row, gray in zip(rows, decoded):
        if row["frame"]:
            smoothed = alpha * smoothed + (1 - alpha) * expected_probabilities(gray, (0, 0, 96, 96))
        np.testing.assert_allclose(list(row["probabilities"].values()), smoothed, atol=2e-5)
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        assert next(csv.reader(handle))[:5] == ["file", "frame", "time_s", "track", "face"]
    annotated = cv2.VideoCapture(str(tmp_path / "out" / "annotated" / "clip.avi"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    assert annotated.read()[1].shape == (96, 96, 3)

    (tmp_path / "not_a_video.mp4").write_text("text")
    with pytest.raises(UserError, match="not a readable video"):
        predict_video(tmp_path / "not_a_video.mp4", models["dynamic"], out=tmp_path / "o2", no_detect=True,
                      progress=False)
