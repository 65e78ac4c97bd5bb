"""Reading photos, finding faces and cropping them the way FER+ faces are framed.

numpy and OpenCV only: no TensorFlow, no Keras, so that a deployment with onnxruntime alone can use it.

- `read_image` / `read_image_color`: any image OpenCV decodes (gray, BGR, BGRA, 16-bit, palette PNG,
  odd file names) as uint8 gray or BGR, or a one-line `UserError` naming the file.
- `FaceDetector`: OpenCV's frontal-face Haar cascade, boxes in reading order.
- `crop_face`: a square crop around a box, resized to the model's side.
"""
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError

# Suffixes a folder scan picks up (lower case; the scan ignores case). Anything else in a folder is
# not looked at; a file named explicitly is tried whatever its suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm",
                  ".pnm", ".jp2", ".sr", ".ras", ".hdr", ".pic", ".avif")

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# The crop margin that frames a Haar box as FER+ faces are framed. Measured on real FER+ faces: the
# cascade's box on a face is as large as the FER+ crop itself (the crop's side is a median 1.03 times
# the box's, 240 faces), and a ResNet50 trained on FER+ is most accurate on detected faces cropped
# with margin 0 (68.4% on 351 detected faces; 64.1% at 0.1, 52.1% at 0.2; benchmarks/predict_speed.py).
FERPLUS_MARGIN = 0.0
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
    if data.size == 0:
        raise UserError(f"{path}: not a readable image (empty file); give a JPEG, PNG or other image file")
    # JPEG has no alpha, so the orientation-aware flags lose nothing.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if data[:2].tobytes() == _JPEG_MAGIC \
        else cv2.IMREAD_UNCHANGED
    try:
        pixels = cv2.imdecode(data, flags)
    except cv2.error:
        pixels = None
    if pixels is None or pixels.size == 0:
        raise UserError(f"{path}: not a readable image (OpenCV cannot decode its {data.size:,} bytes); "
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

class FaceDetector:
    """OpenCV's frontal-face Haar cascade (shipped with opencv-python-headless).

    `min_size` is the smallest face side in pixels that is looked for; `scale_factor` and
    `min_neighbors` are `detectMultiScale`'s (a higher `min_neighbors` gives fewer, surer faces).
    With `max_side`, a larger image is searched at a reduced size whose longer side is `max_side`
    (boxes are scaled back to the full image): the cascade's time grows with the pixel count, and
    a 12-megapixel photo takes seconds at full size. Faces smaller than the cascade's 24-pixel
    window at the reduced size are then not found.
    """

    def __init__(self, min_size=48, scale_factor=1.1, min_neighbors=5, cascade=None, max_side=None):
        if min_size < 1:
            raise UserError(f"min_size: expected a positive number of pixels, got {min_size}")
        if scale_factor <= 1.0:
            raise UserError(f"scale_factor: expected a number above 1 (e.g. 1.1), got {scale_factor}")
        cascade = Path(cascade) if cascade else Path(cv2.data.haarcascades) / HAAR_CASCADE
        self.cascade = cv2.CascadeClassifier(str(cascade))
        if self.cascade.empty():
            raise UserError(f"{cascade}: not a readable Haar cascade XML file; reinstall "
                            "opencv-python-headless or give the path of a cascade file")
        self.min_size = int(min_size)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.max_side = int(max_side) if max_side else None

    def detect(self, gray):
        """Boxes (x, y, w, h) of the faces in a uint8 gray image, as ints, in reading order."""
        if min(gray.shape[:2]) < self.min_size:
            return []
        scale = 1.0
        if self.max_side and max(gray.shape[:2]) > self.max_side:
            scale = self.max_side / max(gray.shape[:2])
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        min_side = max(1, int(round(self.min_size * scale)))
        found = self.cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors,
                                              minSize=(min_side, min_side))
        boxes = [tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)]
        return reading_order(boxes)


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
    FER+ faces are framed relative to a Haar box: see FERPLUS_MARGIN). Parts of the
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
    # Area averaging when shrinking avoids the aliasing bilinear gives on large photos.
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)
