"""The page in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright,
loading the page from a live serve.py on 127.0.0.1.

The page finds faces with YuNet and scores them with the contract model in onnxruntime-web; the
Python side runs the same steps with cv2.FaceDetectorYN, ferkeras.deploy.faces.crop_face and the
onnxruntime predictor on the same picture. Boxes and labels must be the same, probabilities equal
up to the two engines' float32 evaluation order. Screenshots are kept (paths printed at the end).
"""
import json

import cv2
import numpy as np
import pytest

from ferkeras import CLASSES
from ferkeras.deploy.faces import YUNET_MARGIN, crop_face, read_image, reading_order
from ferkeras.deploy.predict import EmotionPredictor, box_iou
from tests.helpers import SCREENSHOTS, need_tool, yunet_faces

TIMEOUT_MS = 180_000  # loading onnxruntime-web and two models on two busy cores


@pytest.fixture(scope="module")
def chromium():
    """A Playwright Chromium on Debian's browser, with a fake camera that shows `webcam.y4m`."""
    path = need_tool("chromium", "apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        yield lambda *args: playwright.chromium.launch(executable_path=path, headless=True, args=list(args))


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(url)
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=TIMEOUT_MS)
    return page, problems


def wait_result(page):
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=TIMEOUT_MS)
    return page.evaluate("document.body.dataset.state"), page.inner_text("#status")


def listed_faces(page):
    """The faces listed in #results, read in one call: one frame's list, not items of several frames
    (the webcam loop replaces the list every frame), and one wait for the page's busy main thread
    instead of one per attribute (which took most of the webcam test's 30 s)."""
    items = page.evaluate("Array.from(document.querySelectorAll('#results li'), item => "
                          "[item.dataset.box, item.dataset.label, item.dataset.probabilities])")
    return [{"box": [int(v) for v in box.split(",")], "label": label, "probabilities": json.loads(probabilities)}
            for box, label, probabilities in items]


def python_pipeline(picture, model, yunet):
    """The page's steps in Python: YuNet boxes rounded to whole pixels, reading order, crops,
    contract model, softmax."""
    found = yunet_faces(cv2.imread(str(picture)), yunet)
    boxes = reading_order([tuple(int(round(v)) for v in face[:4]) for face in found])
    gray = read_image(picture)
    crops = np.stack([crop_face(gray, box, margin=YUNET_MARGIN, size=64) for box in boxes])  # as predict.py frames YuNet boxes
    return boxes, EmotionPredictor(model).probabilities(crops)


@pytest.fixture(scope="module", params=["linear", "fernet"])
def model(request):
    return request.getfixturevalue(f"{request.param}_onnx")


@pytest.fixture(scope="module")
def page_server(start_server, model, yunet_model):
    return start_server("--model", model, "--detector_model", yunet_model)


def test_page_draws_the_faces_and_labels_python_finds(chromium, page_server, model, yunet_model, group_picture,
                                                      tmp_path):
    browser = chromium()
    page, problems = open_page(browser, page_server.url)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
    page.set_input_files("#file", str(group_picture))
    state, status = wait_result(page)
    screenshot = tmp_path / f"page-{model.stem}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    SCREENSHOTS.append(screenshot)
    assert (state, status) == ("done", "group.png: 6 faces, numbered in reading order."), problems

    faces = listed_faces(page)
    boxes, probabilities = python_pipeline(group_picture, model, yunet_model)
    assert [tuple(face["box"]) for face in faces] == boxes
    assert [face["label"] for face in faces] == [CLASSES[i] for i in probabilities.argmax(axis=1)]
    # The same crops in both (tests/test_vision.py shows them equal level for level): what is left
    # is float32 arithmetic in another order, ~1e-6 on probabilities; a crop one grey level or one
    # pixel off moves the linear model's by 1e-3 and more.
    np.testing.assert_allclose([face["probabilities"] for face in faces], probabilities, atol=1e-4)

    # The canvas shows the picture with the boxes drawn over it, in the colour of each label.
    drawn = page.evaluate("Array.from(document.getElementById('picture').getContext('2d')"
                          ".getImageData(0, 0, 640, 480).data)")
    drawn = np.array(drawn, np.uint8).reshape(480, 640, 4)
    colours = page.evaluate("fetch('config.json').then(r => r.json()).then(c => c.colours)")
    for face in faces:
        x, y, w, h = face["box"]
        colour = np.array([int(colours[CLASSES.index(face["label"])][k:k + 2], 16) for k in (1, 3, 5)])
        edge = drawn[y + h // 2, max(x, 0) - 1:max(x, 0) + 2, :3].astype(int)  # the box's left side
        assert np.abs(edge - colour).sum(axis=1).min() <= 3, (face, edge, colour)
    assert not problems
    browser.close()


@pytest.mark.parametrize("model", ["linear"], indirect=True)
def test_unreadable_file_is_said_on_the_page_which_keeps_working(chromium, page_server, group_picture, tmp_path):
    browser = chromium()
    page, problems = open_page(browser, page_server.url)
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is text with a photo's name")
    page.set_input_files("#file", str(fake))
    assert wait_result(page) == ("error", "holiday.jpg: not a readable image (the browser cannot decode it); "
                                          "choose a JPEG, PNG or WebP photo.")
    assert listed_faces(page) == []
    page.set_input_files("#file", str(group_picture))
    assert wait_result(page)[0] == "done" and len(listed_faces(page)) == 6
    assert not problems
    browser.close()


def write_y4m(path, gray, frames=3):
    """A few identical frames of a gray picture as a YUV4MPEG2 file (Chromium's fake camera input)."""
    height, width = gray.shape
    chroma = np.full((height // 2) * (width // 2), 128, np.uint8).tobytes()
    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            handle.write(b"FRAME\n" + gray.tobytes() + chroma + chroma)


@pytest.mark.parametrize("model", ["linear"], indirect=True)
def test_webcam_frames_are_analysed_live(chromium, page_server, model, yunet_model, group_picture, tmp_path):
    camera = tmp_path / "webcam.y4m"
    write_y4m(camera, read_image(group_picture))
    browser = chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                       f"--use-file-for-fake-video-capture={camera}")
    page, problems = open_page(browser, page_server.url)
    page.click("#webcam")
    page.wait_for_function("/frame [3-9]/.test(document.getElementById('status').textContent)", timeout=TIMEOUT_MS)
    assert page.inner_text("#webcam") == "Stop the webcam"
    # The camera path converts the frames to YUV and back, so levels (and labels) may move a little;
    # the faces must still be found where they are.
    still = python_pipeline(group_picture, model, yunet_model)[0]
    found = [face["box"] for face in listed_faces(page)]
    assert len(found) == len(still) and all(max(box_iou(box, other) for other in still) > 0.7 for box in found)
    page.click("#webcam")
    assert page.inner_text("#webcam") == "Use the webcam"
    assert not problems
    browser.close()


def test_page_without_detector_model_says_how_to_give_one(chromium, start_server, fernet_onnx):
    server = start_server("--model", fernet_onnx, "--detector", "haar")  # the page has a detector only when given one
    browser = chromium()
    page, _ = open_page(browser, server.url)
    assert page.evaluate("document.body.dataset.state") == "error"
    assert "--detector_model" in page.inner_text("#status")
    assert page.is_disabled("#file")
    browser.close()
