"""The HTTP service: FastAPI routes over ferkeras.deploy.predict's TensorFlow-free pipeline.

    POST /v1/predict        one image: multipart field `file`, or the raw body (Content-Type image/...)
    POST /v1/predict/batch  several images: multipart fields `files`
    GET  /health            the model, its contract, the classes, the detector and the limits
    GET  /                  the page that runs the models in the browser (see web.py)

A request goes: bytes -> `images.decode_upload` (size checked from the header first) -> gray ->
faces found and cropped (`ferkeras.deploy.predict.find_faces`) in a thread pool, so that decoding and
detection of concurrent requests use all cores -> crops scored by the `MicroBatcher` together with
other requests' crops -> one row per face, as predict.py writes them (`ferkeras.deploy.predict.face_row`).

Every mistake in a request is answered with a 4xx and {"error": "<one line>"}: 400 malformed
(empty body, missing field), 413 over a limit (bytes, pixels, files), 415 wrong content type, 422
not a readable image. In a batch, a bad image gets {"file", "status", "error"} in its place and the
others are still scored.
"""
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ferkeras import CLASSES
from ferkeras.deploy.contract import INPUT_SIZE
from ferkeras.errors import UserError
from ferkeras.deploy.faces import to_gray
from ferkeras.deploy.predict import DEFAULT_MARGIN, EmotionPredictor, face_row, find_faces, make_detector
from ferkeras.service import web
from ferkeras.service.batching import MicroBatcher
from ferkeras.service.images import ImageRejected, decode_upload

IMAGE_TYPES = ("image/", "application/octet-stream")
API_ROUTES = ("/v1/predict", "/v1/predict/batch")
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers on top of the files themselves


@dataclass
class Settings:
    model: Path
    # Keyword arguments of ferkeras.deploy.predict.make_detector, passed through unchanged.
    detector_options: dict = field(default_factory=lambda: dict(min_face=48, min_neighbors=5, detect_side=1280,
                                                                threads=1))
    margin: float = DEFAULT_MARGIN
    max_bytes: int = 10_000_000
    max_pixels: int = 40_000_000
    max_files: int = 16
    batch_faces: int = 64
    batch_wait_ms: float = 5.0
    workers: int = 2
    threads: int = 1  # onnxruntime threads; 0 = one per core
    detector_model: Path = None  # YuNet, for the page
    ort_dir: Path = web.DEFAULT_ORT_DIR


class RequestError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class FaceService:
    """Decoding, detection and scoring of uploaded images, shared by all requests."""

    def __init__(self, settings):
        self.settings = settings
        self.predictor = EmotionPredictor(settings.model, batch_size=settings.batch_faces, threads=settings.threads)
        make_detector(**settings.detector_options)  # bad options fail at start-up, not per request
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="decode-detect")
        self.batcher = MicroBatcher(self.predictor.probabilities, settings.batch_faces,
                                    settings.batch_wait_ms / 1000)

    def detector(self):
        # OpenCV's detectors keep per-image buffers inside them, so each worker thread has its own.
        if not hasattr(self.local, "detector"):
            self.local.detector = make_detector(**self.settings.detector_options)
        return self.local.detector

    def find(self, data, name):
        """Runs in the pool: ((height, width), boxes, crops) of one upload."""
        pixels = decode_upload(data, name, self.settings.max_pixels)
        try:
            gray = to_gray(pixels, name)
        except UserError as exc:  # e.g. a pixel type or channel count we do not read
            raise ImageRejected(422, str(exc)) from None
        boxes, crops = find_faces(gray, self.detector(), self.settings.margin)
        return gray.shape, boxes, crops

    async def predict(self, data, name):
        if len(data) > self.settings.max_bytes:
            raise ImageRejected(413, f"{name}: {len(data):,} bytes, over this server's limit of "
                                     f"{self.settings.max_bytes:,} (--max_bytes); send a smaller file")
        loop = asyncio.get_running_loop()
        (height, width), boxes, crops = await loop.run_in_executor(self.pool, self.find, data, name)
        probabilities = await self.batcher.score(np.stack(crops) if crops else [])
        faces = [face_row(name, index, box, probs) for index, (box, probs) in enumerate(zip(boxes, probabilities))]
        for face in faces:
            del face["file"]  # said once for the image
        return {"file": name, "width": int(width), "height": int(height), "faces": faces}

    def health(self):
        info = self.predictor.info
        return {
            "status": "ok",
            "model": {key: info[key] for key in ("path", "size_bytes", "parameters", "opset", "producer", "metadata")},
            "contract": {"input": f"{info['input_name']}: float32 [{info['batch'] or 'N'},1,{INPUT_SIZE},"
                                  f"{INPUT_SIZE}] raw gray 0..255",
                         "output": f"{info['output_name']}: float32 [{info['batch'] or 'N'},{len(CLASSES)}] "
                                   "scores; probabilities are their softmax"},
            "classes": list(CLASSES),
            "detector": {**{key: str(value) if isinstance(value, Path) else value
                            for key, value in self.settings.detector_options.items()}, "margin": self.settings.margin},
            "limits": {key: getattr(self.settings, key) for key in ("max_bytes", "max_pixels", "max_files")},
            "batching": {"max_faces": self.batcher.max_faces, "max_wait_ms": self.settings.batch_wait_ms,
                         "calls": self.batcher.calls, "faces": self.batcher.faces},
            "page_detector": str(self.settings.detector_model) if self.settings.detector_model else None,
        }


def content_type(request):
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request, max_files, too_many):
    """The multipart form of a request, or a 400/413 (`too_many` files) saying what is wrong with it."""
    try:
        return await request.form(max_files=max_files, max_fields=16)
    except HTTPException as exc:  # Starlette's multipart errors
        if "Too many files" in str(exc.detail):
            raise RequestError(413, too_many) from None
        raise RequestError(400, f"malformed multipart form ({exc.detail}); send multipart/form-data") from None


def uploads(form, field_name):
    """The files sent under `field_name` as [(name, bytes-awaitable)], or a 400 when there are none."""
    files = [value for value in form.getlist(field_name) if not isinstance(value, str)]
    if not files:
        sent = ", ".join(sorted(set(form.keys()))) or "none"
        raise RequestError(400, f"missing form field '{field_name}' with an image file (fields sent: {sent}); "
                                f"send the image as {field_name}=@photo.jpg")
    return files


class BodyLimit:
    """ASGI middleware: a request body over the route's limit gets a 413 before it is all read.

    The declared Content-Length is checked up front; a chunked body is counted as it arrives.
    """

    def __init__(self, app, limit_for):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_response(413, f"request body of {int(declared):,} bytes, over this server's limit "
                                           f"of {limit:,} for {scope['path']} (--max_bytes); send a smaller file")
            return await response(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise RequestError(413, f"request body over this server's limit of {limit:,} bytes for "
                                        f"{scope['path']} (--max_bytes); send a smaller file")
            return message

        await self.app(scope, counted, send)


def error_response(status, message):
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings):
    """The FastAPI application for `settings`; the model is loaded here (a bad file raises UserError)."""
    service = FaceService(settings)
    site = web.site_files(settings.model, settings.detector_model, settings.ort_dir)
    config = web.config_text(web.page_config(settings.margin))

    @asynccontextmanager
    async def lifespan(app):
        await service.batcher.start()
        yield
        await service.batcher.stop()
        service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ferkeras", summary="Facial expressions of the faces in a photo", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.service = service
    one_image = settings.max_bytes + FORM_OVERHEAD
    app.add_middleware(BodyLimit, limit_for=lambda path: one_image * settings.max_files
                       if path == "/v1/predict/batch" else one_image)

    @app.exception_handler(RequestError)
    @app.exception_handler(ImageRejected)
    async def rejected(request, exc):
        return error_response(exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # 404, 405 and the like, also as one line
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.post("/v1/predict")
    async def predict(request: Request):
        """One image: the multipart form field `file`, or the raw body with an image Content-Type."""
        kind = content_type(request)
        if kind == "multipart/form-data":
            form = await read_form(request, 1, "more than one file: /v1/predict takes one image; "
                                               "send several to /v1/predict/batch as fields 'files'")
            try:
                upload = uploads(form, "file")[0]
                data, name = await upload.read(), upload.filename or "file"
            finally:
                await form.close()  # uploads are spooled to temporary files
            return await service.predict(data, name)
        if kind.startswith(IMAGE_TYPES):
            return await service.predict(await request.body(), "body")
        raise RequestError(415, f"Content-Type {kind or 'missing'}: send multipart/form-data with field 'file', "
                                "or the image itself with Content-Type image/jpeg, image/png, image/webp or image/bmp")

    @app.post("/v1/predict/batch")
    async def predict_batch(request: Request):
        """Several images as multipart fields `files`; a bad image is reported in its place."""
        if content_type(request) != "multipart/form-data":
            raise RequestError(415, f"Content-Type {content_type(request) or 'missing'}: send multipart/form-data "
                                    "with one field 'files' per image")
        form = await read_form(request, settings.max_files,
                               f"more than {settings.max_files} files in one batch, this server's limit "
                               "(--max_files); split them over several requests")
        try:
            contents = [(await upload.read(), upload.filename or f"files[{index}]")
                        for index, upload in enumerate(uploads(form, "files"))]
        finally:
            await form.close()
        results = await asyncio.gather(*(service.predict(data, name) for data, name in contents),
                                       return_exceptions=True)
        return {"images": [result if not isinstance(result, BaseException) else failed(name, result)
                           for (_, name), result in zip(contents, results)]}

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/config.json", include_in_schema=False)
    async def page_config():
        return Response(config, media_type="application/json", headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index():
        return serve_file("index.html")

    @app.get("/{url:path}", include_in_schema=False)
    async def static(url: str):
        if f"/{url}" in API_ROUTES:
            raise RequestError(405, f"GET /{url}: use POST with an image (see /docs)")
        if url not in site:  # only the files of the table: no path outside them can be asked for
            raise RequestError(404, f"GET /{url}: no such page or file on this server")
        return serve_file(url)

    def serve_file(url):
        path = site[url]
        if path is None or not path.is_file():
            raise RequestError(404, web.missing_reason(url))
        return FileResponse(path, media_type=web.media_type(path), headers={"Cache-Control": "no-cache"})

    return app


def failed(name, exc):
    """A batch entry for an image that could not be scored; anything but a rejection is a bug."""
    if not isinstance(exc, (ImageRejected, RequestError)):
        raise exc
    return {"file": name, "status": exc.status, "error": str(exc)}
