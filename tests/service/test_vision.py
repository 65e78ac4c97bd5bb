"""The page's pixel work (ferkeras/service/web/vision.mjs) under Node, against OpenCV and ferkeras.

The page must score the very crops the Python pipeline scores, so gray conversion and crops are
compared level for level with cv2.cvtColor and ferkeras.deploy.faces.crop_face (integer arithmetic on both
sides: exact), YuNet's decoding with cv2.FaceDetectorYN on the same picture, and reading order with
ferkeras.deploy.faces.reading_order.
"""
import json
import subprocess

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from ferkeras.deploy.faces import crop_face, reading_order
from ferkeras.deploy.contract import softmax
from tests.helpers import REPO, YUNET_SETTINGS, need_tool, yunet_faces

HARNESS = REPO / "tests" / "service" / "vision_harness.mjs"


def node(calls):
    """Results of [(function name, [args])] run by vision.mjs under Node."""
    need_tool("node", "apt-get install -y nodejs")
    payload = json.dumps([{"function": name, "args": args} for name, args in calls])
    done = subprocess.run(["node", str(HARNESS)], input=payload, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def u8(array):
    return {"u8": np.asarray(array, np.uint8).ravel().tolist()}


def test_gray_levels_are_opencvs():
    rgba = np.random.default_rng(0).integers(0, 256, (60, 70, 4), np.uint8)
    (gray,) = node([("grayFromRGBA", [u8(rgba), 70, 60])])
    np.testing.assert_array_equal(np.array(gray).reshape(60, 70), cv2.cvtColor(rgba[:, :, :3], cv2.COLOR_RGB2GRAY))


def test_crops_are_crop_faces_level_for_level():
    rng = np.random.default_rng(1)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (240, 320), np.uint8), (0, 0), 1.2)
    boxes = [(int(rng.integers(-30, 300)), int(rng.integers(-30, 220)), int(rng.integers(8, 200)),
              int(rng.integers(8, 200))) for _ in range(60)]
    # Whole-number shrink factors (OpenCV's block-average path), no resize, and enlarging.
    boxes += [(40, 30, 128, 128), (10, 20, 192, 150), (5, 5, 64, 64), (30, 40, 33, 31), (0, 0, 17, 20)]
    cases = [(box, margin) for box in boxes for margin in (0.0, 0.25)]
    cases = [(box, margin) for box, margin in cases if inside(box, margin, gray.shape)]
    crops = node([("cropFace", [u8(gray), 320, 240, list(box), margin, 64]) for box, margin in cases])
    for (box, margin), crop in zip(cases, crops):
        expected = crop_face(gray, box, margin=margin, size=64)
        np.testing.assert_array_equal(np.array(crop).reshape(64, 64), expected, err_msg=f"box {box} margin {margin}")


def inside(box, margin, shape):
    try:
        crop_face(np.zeros(shape, np.uint8), box, margin=margin)
        return True
    except ValueError:  # a box outside the picture, which crop_face refuses
        return False


def test_python_rounding_of_halves():
    values = [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 3.5001, 7.0]
    assert node([("roundHalfEven", [v]) for v in values]) == [round(v) for v in values]


def test_reading_order_is_ferkeras():
    rng = np.random.default_rng(2)
    boxes = [tuple(int(v) for v in (rng.integers(0, 600), rng.integers(0, 400), *rng.integers(40, 120, 2)))
             for _ in range(12)]
    (ordered,) = node([("readingOrder", [[{"box": list(box)} for box in boxes]])])
    assert [tuple(item["box"]) for item in ordered] == reading_order(boxes)


def test_softmax_is_the_predictors():
    scores = np.random.default_rng(3).normal(0, 4, (5, 8)).astype(np.float32)
    (probabilities,) = node([("softmax", [scores.ravel().tolist(), 8])])
    # float64 on both sides; the predictor then rounds to float32 (relative 6e-8).
    np.testing.assert_allclose(np.array(probabilities).reshape(5, 8), softmax(scores), rtol=1e-6)


def test_yunet_decoding_matches_cv2_face_detector(group_picture, yunet_model):
    bgr = cv2.imread(str(group_picture))
    square = np.zeros((640, 640, 3), np.uint8)
    square[:480] = bgr
    session = ort.InferenceSession(str(yunet_model), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    (tensor,) = node([("yunetInput", [u8(np.dstack([square[:, :, ::-1], np.full((640, 640), 255)])), 640])])
    np.testing.assert_array_equal(np.array(tensor, np.float32).reshape(1, 3, 640, 640),
                                  square.transpose(2, 0, 1)[None].astype(np.float32))  # blobFromImage of BGR
    outputs = dict(zip(names, session.run(None, {"input": np.array(tensor, np.float32).reshape(1, 3, 640, 640)})))
    options = {"inputSize": 640, "scoreThreshold": YUNET_SETTINGS["score_threshold"],
               "nmsThreshold": YUNET_SETTINGS["nms_threshold"], "topK": YUNET_SETTINGS["top_k"]}
    (faces,) = node([("decodeYunet", [{name: {"f32": value.ravel().tolist()} for name, value in outputs.items()},
                                      options, 1])])
    expected = yunet_faces(bgr, yunet_model)
    assert len(faces) == len(expected) == 6
    decoded = np.array([[*face["box"], *np.ravel(face["landmarks"]), face["score"]] for face in faces])
    # cv2 runs the network with OpenCV's own engine, here onnxruntime did: their float32 results
    # differ by ~1e-5 px; a decoding mistake (a stride, an offset, an exp) would be pixels off.
    np.testing.assert_allclose(decoded[:, :14], expected[:, :14], atol=0.01)
    np.testing.assert_allclose(decoded[:, 14], expected[:, 14], atol=1e-4)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_yunet_boxes_are_scaled_back_to_the_picture(scale):
    """One hand-made detection at stride 32 (row 3, column 4) decoded with a letterbox factor."""
    outputs = {f"{kind}_{stride}": np.zeros(((640 // stride) ** 2) * width, np.float32)
               for stride in (8, 16, 32) for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))}
    cell = 3 * 20 + 4
    outputs["cls_32"][cell], outputs["obj_32"][cell] = 0.81, 1.0  # score sqrt(0.81) = 0.9
    outputs["bbox_32"][4 * cell:4 * cell + 4] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    (faces,) = node([("decodeYunet", [{k: {"f32": v.tolist()} for k, v in outputs.items()},
                                      {"scoreThreshold": 0.85}, scale])])
    centre_x, centre_y, width, height = (4 + 0.5) * 32, (3 + 0.25) * 32, 2 * 32, 3 * 32
    expected = [(centre_x - width / 2) / scale, (centre_y - height / 2) / scale, width / scale, height / scale]
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0]["box"], expected, rtol=1e-6)  # float32 exp and log of the outputs
    assert faces[0]["score"] == pytest.approx(0.9, abs=1e-6)
    np.testing.assert_allclose(faces[0]["landmarks"][0], [4 * 32 / scale, 3 * 32 / scale], rtol=1e-6)
