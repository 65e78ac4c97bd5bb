"""The files of the in-browser page: our HTML/JS/CSS, onnxruntime-web's runtime, the two models.

The page needs nothing from the service but these files: it runs the face detector and the
expression model itself with onnxruntime-web. So the same table of files is served by the HTTP
service and written out by `ferkeras serve --write_site DIR` for any static web server.
"""
import json
import shutil
from pathlib import Path

from ferkeras import CLASSES
from ferkeras.errors import UserError
from ferkeras.deploy.predict import CLASS_COLOURS

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = ("index.html", "app.js", "vision.mjs", "style.css")
# onnxruntime-web's WebAssembly build: the ES module the page imports, and the runtime it loads
# beside itself (one .mjs + .wasm pair serves both the single- and the multi-threaded case).
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ORT_DIR = REPO_ROOT / "node_modules" / "onnxruntime-web" / "dist"  # where `npm ci` puts it
EXPRESSION_URL = "models/expression.onnx"
DETECTOR_URL = "models/detector.onnx"
# YuNet's decoding settings, the same as cv2.FaceDetectorYN's defaults in OpenCV's samples.
YUNET = {"inputSize": 640, "scoreThreshold": 0.9, "nmsThreshold": 0.3, "topK": 5000}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
               ".css": "text/css", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
               ".json": "application/json"}


def site_files(model, detector_model, ort_dir=DEFAULT_ORT_DIR):
    """{url path under the site root: file} for everything the page loads; a file may be missing
    (no `npm ci`) or None (no detector model), which `missing_reason` explains."""
    files = {name: WEB_DIR / name for name in PAGE_FILES}
    files.update({f"vendor/{name}": Path(ort_dir) / name for name in ORT_FILES})
    files[EXPRESSION_URL] = Path(model)
    files[DETECTOR_URL] = Path(detector_model) if detector_model else None
    return files


def missing_reason(url):
    """Why the file at `url` is not there, and the fix, in one line."""
    if url.startswith("vendor/"):
        return (f"{url}: onnxruntime-web is not installed beside the service; run `npm ci` in the "
                "repository root (it reads package.json)")
    if url == DETECTOR_URL:
        return (f"{url}: this server has no face detector for the page; start it with --detector_model "
                "face_detection_yunet_2023mar.onnx")
    return f"{url}: not on this server"


def page_config(margin):
    """config.json of the page: crop margin, detector settings, model locations, and the class
    colours of predict.py's annotated images (BGR there, #rrggbb here)."""
    colours = [f"#{red:02x}{green:02x}{blue:02x}" for blue, green, red in CLASS_COLOURS]
    return {"margin": margin, "yunet": YUNET, "classes": list(CLASSES), "colours": colours,
            "models": {"expression": EXPRESSION_URL, "detector": DETECTOR_URL}}


def config_text(config):
    """config.json as served and as written into a static site (the same bytes)."""
    return json.dumps(config, indent=2) + "\n"


def media_type(path):
    return MEDIA_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def write_site(folder, files, config):
    """Copy the page, the runtime and the models into `folder`, plus config.json; every file must be
    there (a static site cannot explain a missing one). Returns the number of files written."""
    missing = [url for url, path in files.items() if path is None or not path.is_file()]
    if missing:
        raise UserError(missing_reason(missing[0]))
    folder = Path(folder)
    for url, path in files.items():
        (folder / url).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / url)
    (folder / "config.json").write_text(config_text(config))
    return len(files) + 1
