"""The HTTP service as a client sees it: serve.py running as a subprocess on 127.0.0.1.

Predictions are compared with predict.py's pipeline on the same picture (the service must give
the same rows); every kind of bad request is posted to one live server, each followed by a good
one, and the server must answer each with its 4xx and one line, then go on serving.
"""
import http.client
import json
import struct
import subprocess
import sys
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from ferkeras import CLASSES
from ferkeras.deploy.predict import predict_command
from ferkeras.service.images import image_size
from tests.helpers import REPO, compose

MAX_BYTES = 300_000
MAX_PIXELS = 2_000_000
MAX_FILES = 3


def post(url, path, body=b"", content_type=None, headers=None, chunked=False):
    """(status, parsed JSON) of a POST on a fresh connection."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = dict(headers or {})
    if content_type:
        headers["Content-Type"] = content_type
    try:
        if chunked:
            connection.request("POST", path, body=iter(body), headers=headers, encode_chunked=True)
        else:
            connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def get(url, path):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def multipart(files, field="file"):
    """(body, content type) of a multipart form with one part per (name, bytes) under `field`."""
    boundary = "ferkeras-test-boundary"
    body = b""
    for name, data in files:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width, height):
    """A 60-byte PNG whose header claims width x height: decoding it would allocate that many pixels."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def picture(group_picture_haar):
    return group_picture_haar.read_bytes()


@pytest.fixture(scope="module")
def group_picture_haar(tmp_path_factory, real_faces):
    """tests/test_predict.py's composed picture of six real faces the Haar cascade finds."""
    path = tmp_path_factory.mktemp("haar") / "group.png"
    cv2.imwrite(str(path), compose(real_faces))
    return path


@pytest.fixture(scope="module")
def server(start_server, fernet_onnx, yunet_model):
    # yunet_model: the service's default detector, found in the session cache (a skip without the file)
    return start_server("--model", fernet_onnx, "--max_bytes", MAX_BYTES, "--max_pixels", MAX_PIXELS,
                        "--max_files", MAX_FILES)


# ----------------------------------------------------------------------------- good requests

def test_predict_gives_predict_py_rows_for_the_same_picture(server, picture, group_picture_haar, fernet_onnx,
                                                            tmp_path):
    status, body = post(server.url, "/v1/predict", *multipart([("group.png", picture)]))
    assert status == 200, body
    assert (body["file"], body["width"], body["height"]) == ("group.png", 640, 480)

    predict_command([group_picture_haar], fernet_onnx, out=tmp_path, fmt="jsonl", no_annotate=True, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(body["faces"]) == len(rows) == 6
    for face, row in zip(body["faces"], rows):
        assert (face["face"], face["box"], face["label"]) == (row["face"], row["box"], row["label"])
        assert list(face["probabilities"]) == list(CLASSES)  # the FER+ order
        # Same crops, same model; only the batch the faces were scored in differs (float32 sums).
        np.testing.assert_allclose(list(face["probabilities"].values()), list(row["probabilities"].values()),
                                   atol=1e-5)

    # The raw body gives the same answer as the form.
    status, raw = post(server.url, "/v1/predict", picture, "image/png")
    assert status == 200 and raw["faces"] == body["faces"] and raw["file"] == "body"


def test_batch_scores_each_file_and_reports_a_bad_one_in_its_place(server, picture):
    files = [("a.png", picture), ("notes.txt", b"not a picture at all"), ("b.png", picture)]
    status, body = post(server.url, "/v1/predict/batch", *multipart(files, field="files"))
    assert status == 200, body
    first, bad, second = body["images"]
    assert first["file"] == "a.png" and len(first["faces"]) == 6 and second["faces"] == first["faces"]
    assert bad["file"] == "notes.txt" and bad["status"] == 422 and "not a readable image" in bad["error"]


def test_concurrent_requests_share_one_onnxruntime_call(start_server, fernet_onnx, picture):
    # The batch closes when it holds 24 faces (4 requests of 6) or after 5 s: with 4 requests sent
    # together it closes on the faces, however slowly the loaded test machine detects them.
    batching = start_server("--model", fernet_onnx, "--batch_faces", 24, "--batch_wait_ms", 5000)
    requests = 4
    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda _: post(batching.url, "/v1/predict", picture, "image/png"), range(requests)))
    assert all(status == 200 for status, _ in answers)
    assert all(body["faces"] == answers[0][1]["faces"] for _, body in answers)
    counts = batching.health()["batching"]
    assert (counts["calls"], counts["faces"]) == (1, 6 * requests), counts


def test_health_describes_model_contract_classes_and_limits(server, fernet_onnx):
    health = server.health()
    assert health["status"] == "ok"
    assert health["model"]["path"] == str(fernet_onnx) and health["model"]["parameters"] > 800_000
    assert health["contract"]["input"].endswith("[N,1,64,64] raw gray 0..255")
    assert health["classes"] == list(CLASSES)
    assert health["limits"] == {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, "max_files": MAX_FILES}
    assert health["detector"]["detector"] == "yunet" and health["detector"]["min_face"] == 48


# ----------------------------------------------------------------------------- bad requests

BAD_REQUESTS = {
    # name: (path, body, content type, chunked, expected status, words of the reason)
    "not an image": ("/v1/predict", b"plain text, not pixels", "image/png", False, 422, "not a readable image"),
    "empty body": ("/v1/predict", b"", "image/jpeg", False, 400, "empty upload"),
    "too large": ("/v1/predict", b"\xff\xd8" + bytes(MAX_BYTES + 70_000), "image/jpeg", False, 413,
                  "over this server's limit"),
    "too large, chunked": ("/v1/predict", [bytes(100_000)] * 5, "image/jpeg", True, 413, "over this server's limit"),
    "too many pixels": ("/v1/predict", png_claiming(40_000, 40_000), "image/png", False, 413, "megapixels"),
    "header only": ("/v1/predict", png_claiming(64, 64)[:33], "image/png", False, 422, "not a readable image"),
    "wrong content type": ("/v1/predict", b"hello", "text/plain", False, 415, "Content-Type text/plain"),
    "no content type": ("/v1/predict", b"hello", None, False, 415, "Content-Type missing"),
    "batch not multipart": ("/v1/predict/batch", b"hello", "image/png", False, 415, "multipart/form-data"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_4xx_and_the_server_goes_on(server, picture, name):
    path, body, content_type, chunked, expected, words = BAD_REQUESTS[name]
    status, answer = post(server.url, path, body, content_type, chunked=chunked)
    assert status == expected, answer
    assert words in answer["error"] and "\n" not in answer["error"]
    status, good = post(server.url, "/v1/predict", picture, "image/png")
    assert status == 200 and len(good["faces"]) == 6


def test_form_mistakes_get_their_4xx_and_the_server_goes_on(server, picture):
    cases = [
        ("/v1/predict", multipart([("group.png", picture)], field="image"), 400, "missing form field 'file'"),
        ("/v1/predict", multipart([("a.png", picture), ("b.png", picture)]), 413, "/v1/predict takes one image"),
        ("/v1/predict/batch", multipart([("a.png", picture)] * (MAX_FILES + 1), field="files"), 413,
         f"more than {MAX_FILES} files"),
        ("/v1/predict/batch", multipart([("a.png", picture)], field="file"), 400, "missing form field 'files'"),
        ("/v1/predict", (b"--x\r\nbroken", "multipart/form-data; boundary=x"), 400, "missing form field"),
    ]
    for path, (body, content_type), expected, words in cases:
        status, answer = post(server.url, path, body, content_type)
        assert status == expected and words in answer["error"], (path, status, answer)
        status, good = post(server.url, "/v1/predict", *multipart([("group.png", picture)]))
        assert status == 200 and len(good["faces"]) == 6


def test_wrong_method_and_unknown_paths_get_one_line_4xx(server):
    for path, expected in (("/v1/predict", 405), ("/nothing/here", 404), ("/../../etc/passwd", 404)):
        status, kind, body = get(server.url, path)
        assert status == expected and kind == "application/json"
        assert "\n" not in json.loads(body)["error"]


def test_no_traceback_in_the_server_log_after_the_bad_requests(server):
    # Runs after the tests above (file order): every bad request was answered, none crashed a handler.
    assert server.process.poll() is None
    assert "Traceback" not in server.log(), server.log()


# ----------------------------------------------------------------------------- the page's files

def test_the_page_and_its_files_are_served_and_written_as_a_static_site(start_server, fernet_onnx, yunet_model,
                                                                        tmp_path):
    from ferkeras.service import web

    site_server = start_server("--model", fernet_onnx, "--detector_model", yunet_model)
    status, kind, index = get(site_server.url, "/")
    assert status == 200 and kind.startswith("text/html") and b'src="app.js"' in index
    urls = web.site_files(fernet_onnx, yunet_model)
    if not all(path.is_file() for url, path in urls.items() if url.startswith("vendor/")):
        pytest.skip("onnxruntime-web is not installed (npm ci)")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "serve.py", "--model", str(fernet_onnx), "--detector_model", str(yunet_model),
                    "--write_site", str(site)], cwd=REPO, check=True, capture_output=True)
    for url in [*urls, "config.json"]:
        status, kind, served = get(site_server.url, "/" + url)
        assert status == 200 and served == (site / url).read_bytes(), url
        assert kind.split(";")[0] == web.media_type(url).split(";")[0]
    assert json.loads((site / "config.json").read_text())["classes"] == list(CLASSES)


def test_a_server_without_detector_model_explains_the_missing_file(start_server, fernet_onnx):
    plain = start_server("--model", fernet_onnx, "--detector", "haar")  # the page has a detector only when given one
    status, _, body = get(plain.url, "/models/detector.onnx")
    assert status == 404 and "--detector_model" in json.loads(body)["error"]


# ----------------------------------------------------------------------------- the command line

def run_serve(*args):
    return subprocess.run([sys.executable, "serve.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_missing_default_model_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "serve.py")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: models/ferplus-small.onnx: no such model file (the default --model); "
                                     "give --model PATH of an ONNX model with the emotion-ferplus-8 contract "
                                     "(export.py writes one)")


def test_busy_port_and_wrong_detector_file_are_one_line_errors(server, fernet_onnx):
    port = urllib.parse.urlsplit(server.url).port
    busy = run_serve("--model", fernet_onnx, "--port", port)
    assert busy.returncode == 2 and f"--port {port}: cannot listen there" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    wrong = run_serve("--model", fernet_onnx, "--detector_model", fernet_onnx)
    assert wrong.returncode == 2 and "not the YuNet face detector" in wrong.stderr


# ----------------------------------------------------------------------------- image headers

@pytest.mark.parametrize("suffix, params, kind", [
    (".jpg", [], "JPEG"), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "JPEG"), (".png", [], "PNG"),
    (".bmp", [], "BMP"), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP"),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP"),  # above 100: lossless (VP8L)
])
def test_image_size_reads_the_header_as_opencv_decodes_the_file(suffix, params, kind):
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
    encoded = cv2.imencode(suffix, pixels, params)[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image_size(encoded) == (kind, decoded.shape[1], decoded.shape[0]) == (kind, 53, 37)
    assert image_size(encoded[:10]) is None


def test_main_is_importable_by_the_ferkeras_command_and_raises_user_errors(tmp_path):
    from ferkeras.errors import UserError
    from ferkeras.service import main

    with pytest.raises(UserError, match="missing.onnx: no such model file; give --model PATH"):
        main(["--model", str(tmp_path / "missing.onnx")])


def test_the_service_imports_no_tensorflow_or_keras(fernet_onnx, yunet_model):
    code = ("import sys; from ferkeras.service.app import Settings, create_app; "
            f"create_app(Settings(model={str(fernet_onnx)!r})); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_load_test_script_runs_end_to_end_on_a_live_server(server, small_ferplus, tmp_path):
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--url", server.url, "--data_dir",
                           str(small_ferplus), "--pictures", "3", "--clients", "2", "--requests", "6", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert (report["answered"], report["errors"], report["clients"]) == (6, 0, 2)
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    refused = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--url", "http://192.0.2.1:8000/"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "only talks to a server on 127.0.0.1" in refused.stderr
