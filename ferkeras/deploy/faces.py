"""Reading photos, finding faces and cropping them the way FER+ faces are framed.

numpy and OpenCV only: no TensorFlow, no Keras, so that a deployment with onnxruntime alone can use it.

- `read_image` / `read_image_color`: any image OpenCV decodes (gray, BGR, BGRA, 16-bit, palette PNG,
  odd file names) as uint8 gray or BGR, or a one-line `UserError` naming the file.
- Two face detectors behind one interface, `detect(gray or BGR image) -> [(x, y, w, h), ...]` in
  reading order, each with the crop margin that frames its boxes as FER+ faces are framed
  (`ferplus_margin`): `YuNetDetector`, OpenCV's CNN face detector (`cv2.FaceDetectorYN`, the model
  file is found or fetched by `ferkeras.deploy.downloads`), and `FaceDetector`, OpenCV's frontal-face Haar
  cascade. YuNet finds more of the faces (turned, covered, low-contrast) and is faster.
- `crop_face`: a square crop around a box, resized to the model's side.
"""
import abc
import threading
from pathlib import Path

import cv2
import numpy as np

from ferkeras.errors import UserError

# Suffixes a folder scan picks up (lower case; the scan ignores case). Anything else in a folder is
# not looked at; a file named explicitly is tried whatever its suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm",
                  ".pnm", ".jp2", ".sr", ".ras", ".hdr", ".pic", ".avif")

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
YUNET_MODEL = "face_detection_yunet_2023mar.onnx"
# The crop margin that frames a Haar box as FER+ faces are framed. Measured on real FER+ faces: the
# cascade's box on a face is as large as the FER+ crop itself (the crop's side is a median 1.03 times
# the box's, 240 faces), and a ResNet50 trained on FER+ is most accurate on detected faces cropped
# with margin 0 (68.4% on 351 detected faces; 64.1% at 0.1, 52.1% at 0.2; benchmarks/predict_speed.py).
HAAR_MARGIN = FERPLUS_MARGIN = 0.0
# The same for YuNet's boxes, measured the same way (benchmarks/face_framing.py, 1200 validation faces
# shown alone at 140 px): YuNet's box is a little larger than the FER+ crop (the crop's side is a median
# 0.979 times the box's longer side, 1147 faces; Haar's: 1.022, 911 faces), so its crop is drawn in by
# 1% of the box on each side: (0.979 - 1) / 2 = -0.01.
YUNET_MARGIN = -0.01
_JPEG_MAGIC = b"\xff\xd8"


# ----------------------------------------------------------------------------- reading images

def decode_image(path):
    """The pixels of an image file as OpenCV decodes them: uint8/uint16/float, 1 to 4 channels.

    JPEGs are decoded so that their EXIF orientation is applied (phone photos are often stored
    sideways, and the cascade only finds upright faces); other formats are decoded unchanged so that
    an alpha channel survives. `np.fromfile` + `imdecode` reads paths `cv2.imread` chokes on
    (non-ASCII names on some platforms).
    """
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"{path}: not a readable image ({exc.strerror or type(exc).__name__}); "
                        "check that the file exists and can be read") from None
    return decode_image_bytes(data, path)


def decode_image_bytes(data, name="image"):
    """`decode_image` for the bytes of an image file already in memory (an upload, say); `name`
    names it in the one-line `UserError`."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if data.size == 0:
        raise UserError(f"{name}: not a readable image (empty file); give a JPEG, PNG or other image file")
    # JPEG has no alpha, so the orientation-aware flags lose nothing.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if data[:2].tobytes() == _JPEG_MAGIC \
        else cv2.IMREAD_UNCHANGED
    try:
        pixels = cv2.imdecode(data, flags)
    except cv2.error:
        pixels = None
    if pixels is None or pixels.size == 0:
        raise UserError(f"{name}: not a readable image (OpenCV cannot decode its {data.size:,} bytes); "
                        "give a JPEG, PNG, BMP, WebP or TIFF file")
    return pixels


def to_uint8(pixels, path="image"):
    """Any decoded depth -> uint8: 16-bit scaled by 1/257 (65535 -> 255); float taken as 0..1 when
    its maximum is at most 1, else as 0..255."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if pixels.dtype in (np.float32, np.float64, np.float16):
        finite = np.nan_to_num(pixels.astype(np.float32))
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(finite * scale + 0.5, 0, 255).astype(np.uint8)
    raise UserError(f"{path}: unsupported pixel type {pixels.dtype}; save the image as 8- or 16-bit")


def to_bgr(pixels, path="image"):
    """Decoded pixels -> uint8 BGR (H, W, 3). Transparent pixels are composited on white, as image
    viewers show them, so a cut-out face keeps its outline instead of turning into a black shape."""
    pixels = to_uint8(pixels, path)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    channels = pixels.shape[2]
    if channels == 1:
        return cv2.cvtColor(pixels[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 2:  # gray + alpha
        pixels = cv2.merge([pixels[:, :, 0]] * 3 + [pixels[:, :, 1]])
        channels = 4
    if channels == 3:
        return pixels
    if channels == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        composed = pixels[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return (composed + 0.5).astype(np.uint8)
    raise UserError(f"{path}: unsupported image with {channels} channels; save it as gray, RGB or RGBA")


def to_gray(pixels, path="image"):
    """Decoded pixels -> uint8 grayscale (H, W), with the same alpha and depth rules as `to_bgr`."""
    pixels = to_uint8(pixels, path)
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] == 1:
        return pixels[:, :, 0]
    return cv2.cvtColor(to_bgr(pixels, path), cv2.COLOR_BGR2GRAY)


def read_image(path):
    """uint8 grayscale (H, W) of an image file; `UserError` when it cannot be read."""
    return to_gray(decode_image(path), path)


def read_image_color(path):
    """uint8 BGR (H, W, 3) of an image file (for annotated copies); `UserError` when unreadable."""
    return to_bgr(decode_image(path), path)


def list_images(folder):
    """Image files under `folder` (recursively), by suffix, in sorted order.

    Entries that only look like image files (a broken link, a link that loops) are listed too, so
    that reading them fails and they are counted among the skipped files instead of vanishing."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())


# ----------------------------------------------------------------------------- finding faces

class _Detector(abc.ABC):
    """What both detectors share: a uint8 gray or BGR image in, face boxes (x, y, w, h) of the full-size
    image out, as ints, in reading order.

    `min_size` is the smallest face side in pixels that is looked for. With `max_side`, a larger image
    is searched at a reduced size whose longer side is `max_side` (boxes are scaled back to the full
    image): detection time grows with the pixel count, and a 12-megapixel photo takes seconds at full
    size. One detector may be used from several threads at once: OpenCV's detector objects keep state
    between calls, so each thread gets its own.
    """

    name = None
    ferplus_margin = 0.0  # the crop margin that frames this detector's boxes as FER+ faces are framed
    colour = False  # whether the detector looks at colour (else a gray image is all it needs)

    def __init__(self, min_size, max_side):
        if min_size < 1:
            raise UserError(f"min_size: expected a positive number of pixels, got {min_size}")
        self.min_size = int(min_size)
        self.max_side = int(max_side) if max_side else None
        self._local = threading.local()
        self._local.engine = self._create()  # built here so that a broken model fails at once

    @abc.abstractmethod
    def _create(self):
        """A new OpenCV detector object (one per thread)."""

    def _engine(self):
        """This thread's OpenCV detector object."""
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = self._local.engine = self._create()
        return engine

    def detect(self, image):
        """Boxes (x, y, w, h) of the faces in a uint8 gray or BGR image, as ints, in reading order."""
        image = self._prepare(image)
        if min(image.shape[:2]) < self.min_size:
            return []
        scale = 1.0
        if self.max_side and max(image.shape[:2]) > self.max_side:
            scale = self.max_side / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        boxes = [tuple(int(round(v / scale)) for v in box) for box in self._find(image, scale)]
        return reading_order(boxes)


class FaceDetector(_Detector):
    """OpenCV's frontal-face Haar cascade (shipped with opencv-python-headless).

    `scale_factor` and `min_neighbors` are `detectMultiScale`'s (a higher `min_neighbors` gives fewer,
    surer faces). Faces smaller than the cascade's 24-pixel window at the searched size are not found.
    """

    name = "haar"
    ferplus_margin = HAAR_MARGIN

    def __init__(self, min_size=48, scale_factor=1.1, min_neighbors=5, cascade=None, max_side=None):
        if scale_factor <= 1.0:
            raise UserError(f"scale_factor: expected a number above 1 (e.g. 1.1), got {scale_factor}")
        self.cascade_path = Path(cascade) if cascade else Path(cv2.data.haarcascades) / HAAR_CASCADE
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        super().__init__(min_size, max_side)
        self.cascade = self._local.engine

    def _create(self):
        cascade = cv2.CascadeClassifier(str(self.cascade_path))
        if cascade.empty():
            raise UserError(f"{self.cascade_path}: not a readable Haar cascade XML file; reinstall "
                            "opencv-python-headless or give the path of a cascade file")
        return cascade

    def _prepare(self, image):
        return to_gray(image)

    def _find(self, gray, scale):
        min_side = max(1, int(round(self.min_size * scale)))
        found = self._engine().detectMultiScale(gray, scaleFactor=self.scale_factor,
                                                minNeighbors=self.min_neighbors, minSize=(min_side, min_side))
        return np.asarray(found).reshape(-1, 4)


class YuNetDetector(_Detector):
    """OpenCV's YuNet face detector (`cv2.FaceDetectorYN`, a CNN of 53,121 weights; OpenCV Zoo, MIT).

    `model_path` is the ONNX file (`ferkeras.deploy.downloads.model_file_path(YUNET)` finds or fetches it). A face
    is kept when its score is at least `score_threshold` (0..1; higher = fewer, surer faces) and its
    longer box side at least `min_size`; overlapping boxes whose IoU exceeds `nms_threshold` are merged
    into the best-scoring one. A colour image is searched in colour, a gray one as gray BGR.
    """

    name = "yunet"
    ferplus_margin = YUNET_MARGIN
    colour = True

    def __init__(self, model_path, min_size=48, score_threshold=0.6, nms_threshold=0.3, max_side=None,
                 top_k=5000):
        check_thresholds(score_threshold, nms_threshold)
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise UserError(f"{self.model_path}: no such YuNet model file; give the path of {YUNET_MODEL} "
                            "(--detector_model), or leave the flag out to use the cached copy")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        super().__init__(min_size, max_side)

    def _create(self):
        try:
            engine = cv2.FaceDetectorYN.create(str(self.model_path), "", (64, 64), self.score_threshold,
                                               self.nms_threshold, self.top_k)
            engine.detect(np.zeros((64, 64, 3), np.uint8))  # a model that loads but is no YuNet fails here
        except cv2.error:
            raise UserError(f"{self.model_path}: not a YuNet face detector model (OpenCV cannot run it); "
                            f"give the path of {YUNET_MODEL}, or delete the file so that it is fetched "
                            "again, or use --detector haar") from None
        return engine

    def _prepare(self, image):
        return to_bgr(image)

    def detect(self, image):
        # The network finds faces of any size; the smallest wanted is filtered on the boxes as reported.
        return [box for box in super().detect(image) if max(box[2], box[3]) >= self.min_size]

    def _find(self, bgr, scale):
        engine = self._engine()
        engine.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, found = engine.detect(bgr)
        return [] if found is None else [tuple(face[:4]) for face in found]


def check_thresholds(score_threshold, nms_threshold):
    """A one-line UserError unless both YuNet thresholds lie in (0, 1]."""
    for flag, value in (("--score_threshold", score_threshold), ("--nms_threshold", nms_threshold)):
        if not 0.0 < value <= 1.0:
            raise UserError(f"{flag}: expected a number in (0, 1], got {value}")


def reading_order(boxes):
    """Sort boxes into rows, top to bottom, and each row left to right.

    Boxes are taken by the height of their centres; a box joins the current row when its centre
    lies within the vertical extent of the row's first box, and otherwise starts a new row. Faces
    of one row of people therefore read left to right even when their heads are not level.
    """
    rows = []
    for box in sorted(boxes, key=lambda b: (b[1] + b[3] / 2, b[0])):
        centre_y = box[1] + box[3] / 2
        if rows and rows[-1][0][1] <= centre_y <= rows[-1][0][1] + rows[-1][0][3]:
            rows[-1].append(box)
        else:
            rows.append([box])
    return [box for row in rows for box in sorted(row, key=lambda b: b[0])]


# ----------------------------------------------------------------------------- cropping

def crop_face(gray, box, margin=FERPLUS_MARGIN, size=64):
    """uint8 (size, size) square crop around a face box.

    The square is centred on the box centre with side max(w, h) * (1 + 2 * margin), so `margin` is
    the fraction of the box side added on each side (0 keeps the box's own extent, which is how
    FER+ faces are framed relative to a Haar box: see FERPLUS_MARGIN; YuNet's boxes take YUNET_MARGIN;
    a negative margin draws the crop in). Parts of the
    square outside the image are filled by replicating the edge pixels, so a face at the border is
    not cut or padded with black.
    """
    x, y, w, h = box
    side = max(1, int(round(max(w, h) * (1 + 2 * margin))))
    left = int(round(x + w / 2 - side / 2))
    top = int(round(y + h / 2 - side / 2))
    height, width = gray.shape[:2]
    inner = gray[max(top, 0):min(top + side, height), max(left, 0):min(left + side, width)]
    if inner.size == 0:
        raise ValueError(f"box {box} lies outside the {width}x{height} image")
    pads = (max(-top, 0), max(top + side - height, 0), max(-left, 0), max(left + side - width, 0))
    square = cv2.copyMakeBorder(inner, *pads, cv2.BORDER_REPLICATE) if any(pads) else inner
    return cv2.resize(square, (size, size), interpolation=resize_interpolation(side, size))


def resize_interpolation(side, size):
    """How an image `side` pixels across is resized to `size`, wherever faces are resized: area
    averaging when shrinking (bilinear aliases on large photos), bilinear when enlarging."""
    return cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
