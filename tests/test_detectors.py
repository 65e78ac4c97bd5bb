"""The YuNet face detector beside the Haar cascade: real FER+ faces composed into 640x480 pictures.

YuNet (`cv2.FaceDetectorYN`, OpenCV Zoo's face_detection_yunet_2023mar.onnx) is the default detector
of predict.py; these tests need its model file (tests/conftest.py `yunet_model`) and the real faces.
The stand-in linear models (tests/conftest.py `models`) let every reported probability be recomputed here.
"""
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkeras import CLASSES
from ferkeras.commands.predict import main as predict_main
from ferkeras.errors import UserError
from ferkeras.deploy.faces import YUNET_MARGIN, FaceDetector, YuNetDetector
from ferkeras.deploy.predict import (EmotionPredictor, box_iou, default_workers, make_detector, predict_command,
                              predict_images, predict_video)
from tests.helpers import (FACE_SIDE, PLACES, REAL_FERPLUS, compose, faint_noise, linear_probabilities,
                           read_label_rows, run_in_process)

# Four faces per picture, 130 px, apart: in four pictures, the first 16 validation faces of FER+.
SPREAD = [(40, 60), (360, 40), (60, 300), (380, 290)]
SPREAD_SIDE = 130


def centred_on(box, place, side):
    """Whether the centre of `box` lies on the face placed at `place` with side `side`."""
    x, y, w, h = box
    return place[0] <= x + w / 2 <= place[0] + side and place[1] <= y + h / 2 <= place[1] + side


@pytest.fixture(scope="module")
def first_sixteen(ferplus_dir):
    """Four pictures holding the first 16 validation faces, whatever they show (not picked by a detector)."""
    if Path(ferplus_dir) != REAL_FERPLUS:
        pytest.skip("detection tests need the real FER+ faces; the synthetic stand-ins are not faces")
    folder = Path(ferplus_dir) / "FER2013Valid"
    names = [row[0] for row in read_label_rows(folder / "label.csv")[:16]]
    pictures = []
    for first in range(0, 16, 4):
        picture = faint_noise(480, 640, seed=first)
        for (x, y), name in zip(SPREAD, names[first:first + 4]):
            face = cv2.imread(str(folder / name), cv2.IMREAD_GRAYSCALE)
            picture[y:y + SPREAD_SIDE, x:x + SPREAD_SIDE] = cv2.resize(face, (SPREAD_SIDE, SPREAD_SIDE),
                                                                      interpolation=cv2.INTER_CUBIC)
        pictures.append(picture)
    return pictures


def faces_found(detector, pictures):
    """(placed faces with exactly one box centred on them, boxes centred on no face)."""
    found = stray = 0
    for picture in pictures:
        boxes = detector.detect(picture)
        found += sum(sum(centred_on(box, place, SPREAD_SIDE) for box in boxes) == 1 for place in SPREAD)
        stray += sum(not any(centred_on(box, place, SPREAD_SIDE) for place in SPREAD) for box in boxes)
    return found, stray


# ----------------------------------------------------------------------------- finding faces

def test_yunet_finds_the_faces_of_a_composed_picture_in_place_and_in_reading_order(real_faces, yunet_model):
    picture = compose(real_faces)
    detector = YuNetDetector(yunet_model)
    boxes = detector.detect(picture)
    assert len(boxes) == 6
    for box, (x, y) in zip(boxes, PLACES):  # PLACES is in reading order
        assert centred_on(box, (x, y), FACE_SIDE) and box_iou(box, (x, y, FACE_SIDE, FACE_SIDE)) > 0.5, (box, (x, y))
    assert detector.detect(cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR)) == boxes  # gray or BGR, the same search
    assert detector.detect(faint_noise(480, 640, seed=3)) == []


def test_yunet_finds_more_real_faces_than_the_haar_cascade(first_sixteen, yunet_model):
    yunet_found, yunet_stray = faces_found(YuNetDetector(yunet_model), first_sixteen)
    haar_found, _ = faces_found(FaceDetector(), first_sixteen)
    assert yunet_found >= 15 and yunet_stray <= 1, (yunet_found, yunet_stray)
    assert yunet_found > haar_found, (yunet_found, haar_found)


def test_thresholds_and_min_face_filter_yunet_boxes(first_sixteen, yunet_model):
    everything = YuNetDetector(yunet_model).detect(first_sixteen[0])
    assert YuNetDetector(yunet_model, score_threshold=0.99).detect(first_sixteen[0]) == []
    smallest = min(max(w, h) for _, _, w, h in everything)
    fewer = YuNetDetector(yunet_model, min_size=smallest + 1).detect(first_sixteen[0])
    assert fewer == [box for box in everything if max(box[2], box[3]) > smallest]
    # Searched at half size, the boxes come back in full-size pixels: each on its face, full-size.
    halved = YuNetDetector(yunet_model, max_side=320).detect(first_sixteen[0])
    assert len(halved) == 4 and all(centred_on(box, place, SPREAD_SIDE) for box, place in zip(halved, SPREAD))
    assert all(box[3] > SPREAD_SIDE * 0.6 for box in halved), halved


def test_one_detector_serves_several_threads_with_the_same_boxes(first_sixteen, yunet_model):
    detector = YuNetDetector(yunet_model)
    alone = [detector.detect(picture) for picture in first_sixteen]
    together = [None] * len(first_sixteen)

    def search(index):
        together[index] = detector.detect(first_sixteen[index])

    threads = [threading.Thread(target=search, args=(i,)) for i in range(len(first_sixteen))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


# ----------------------------------------------------------------------------- predicting with YuNet

def test_predict_scores_yunet_faces_cropped_with_the_yunet_margin(real_faces, models, yunet_model, tmp_path):
    picture = compose(real_faces)
    cv2.imwrite(str(tmp_path / "group.png"), picture)
    summary = predict_command([tmp_path / "group.png"], models["dynamic"], out=tmp_path / "out", progress=False)
    assert (summary.images, summary.faces) == (1, 6)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [row["box"] for row in rows] == [list(box) for box in YuNetDetector(yunet_model).detect(picture)]
    for row in rows:
        expected = linear_probabilities(picture, row["box"], YUNET_MARGIN)
        np.testing.assert_allclose([row["probabilities"][name] for name in CLASSES], expected, atol=1e-5)
        assert row["label"] == CLASSES[int(np.argmax(expected))]


def test_reading_ahead_in_threads_gives_the_rows_of_one_thread(first_sixteen, models, yunet_model, tmp_path):
    paths = []
    for index, picture in enumerate(first_sixteen * 2):
        paths.append(tmp_path / f"p{index}.jpg")
        cv2.imwrite(str(paths[-1]), picture)
    (tmp_path / "broken.png").write_text("not a picture")
    paths.insert(3, tmp_path / "broken.png")
    predictor = EmotionPredictor(models["dynamic"], batch_size=5)
    detector = make_detector(detector_model=yunet_model)
    one = list(predict_images(paths, predictor, detector, workers=1))
    three = list(predict_images(paths, predictor, detector, workers=3))
    assert [r.path for r in three] == [r.path for r in one] == paths
    assert [r.error is None for r in three] == [r.error is None for r in one] == [p.suffix == ".jpg" for p in paths]
    assert [r.boxes for r in three] == [r.boxes for r in one]
    for a, b in zip(one, three):
        if a.error is None:
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert default_workers(3) == 3 and default_workers(0) >= 1


def test_video_frames_are_searched_with_yunet_and_faces_keep_their_tracks(real_faces, models, yunet_model,
                                                                          tmp_path):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (640, 480))
    for shift in range(3):  # the group drifts right by 4 px a frame
        writer.write(cv2.cvtColor(np.roll(compose(real_faces), 4 * shift, axis=1), cv2.COLOR_GRAY2BGR))
    writer.release()
    summary = predict_video(clip, models["dynamic"], out=tmp_path / "out", no_annotate=True, progress=False)
    assert (summary.images, summary.faces) == (3, 18)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [row["track"] for row in rows] == list(range(1, 7)) * 3


# ----------------------------------------------------------------------------- the command line

def run_predict_main(argv, capsys):
    return run_in_process(predict_main, argv, capsys)


def test_detector_haar_still_works_from_the_command_line(real_faces, models, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "group.png"), compose(real_faces))
    code, out, err = run_predict_main(["--model", models["dynamic"], tmp_path / "group.png", "--detector", "haar",
                                       "--min_neighbors", "5", "--out", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    assert "1 images, 6 faces" in out
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [row["box"] for row in rows] == [list(box) for box in FaceDetector().detect(compose(real_faces))]


@pytest.mark.parametrize("flags, message", [
    (["--score_threshold", "0"], "--score_threshold: expected a number in (0, 1], got 0.0"),
    (["--score_threshold", "1.5"], "--score_threshold: expected a number in (0, 1], got 1.5"),
    (["--nms_threshold", "-0.1"], "--nms_threshold: expected a number in (0, 1], got -0.1"),
    (["--detector_model", "{tmp}/absent.onnx"], "{tmp}/absent.onnx: no such file; --detector_model expects"),
    (["--detector_model", "{tmp}/garbage.onnx"], "{tmp}/garbage.onnx: not a YuNet face detector model"),
    (["--detector_model", "{model}"], "{model}: not a YuNet face detector model"),
])
def test_bad_detector_flags_and_model_files_get_one_line_errors(models, tmp_path, capsys, flags, message):
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07 not a network")
    cv2.imwrite(str(tmp_path / "face.png"), faint_noise(100, 100, seed=1))
    values = {"tmp": tmp_path, "model": models["dynamic"]}
    argv = ["--model", models["dynamic"], tmp_path / "face.png", "--out", tmp_path / "out",
            *(flag.format(**values) for flag in flags)]
    code, out, err = run_predict_main(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and message.format(**values) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_flag_of_the_other_detector_is_refused(models, tmp_path, capsys):
    for flags, message in ((["--min_neighbors", "3"], "--min_neighbors applies to --detector haar only"),
                           (["--detector", "haar", "--score_threshold", "0.7"],
                            "--score_threshold applies to --detector yunet only")):
        code, _, err = run_predict_main(["--model", models["dynamic"], tmp_path, *flags], capsys)
        assert code == 2 and message in err.strip().splitlines()[-1]


def test_make_detector_refuses_an_unknown_detector():
    with pytest.raises(UserError, match="--detector: expected one of yunet, haar, got dlib"):
        make_detector(detector="dlib")
