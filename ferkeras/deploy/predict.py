"""Recognise facial expressions in photos, folders and videos with a contract ONNX model.

numpy, onnxruntime and OpenCV only (plus tqdm for progress bars): no TensorFlow, no Keras, so this
runs wherever onnxruntime does. The model is any file with the `emotion-ferplus-8.onnx` contract
(see `ferkeras.deploy.contract`): our exports and the ONNX Model Zoo reference alike. Its outputs are
scores; they are turned into probabilities with a softmax here.

Images: each file is read (`ferkeras.deploy.faces.decode_image`), faces are found with OpenCV's YuNet
(default) or Haar cascade detector (or the whole image is taken as one face with `no_detect`), each
face is cropped square with the margin that frames that detector's boxes as FER+ faces are framed and
resized to 64x64 gray, and the faces of several images are scored together in batches. Reading and
detection run in a small thread pool ahead of inference (OpenCV and onnxruntime release the GIL), so
the next pictures are searched while the model scores the last batch. An image that cannot be read is
skipped with a one-line reason; the rest go on.

Videos: frame by frame, the same steps, then faces are followed from frame to frame by box overlap
(`NearestBoxTracker`) so that their probabilities can be smoothed over time.
"""
import contextlib
import csv
import io
import json
import os
import sys
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ferkeras import CLASSES, NUM_CLASSES
from ferkeras.deploy.contract import INPUT_SIZE, OnnxPredictor
from ferkeras.deploy.downloads import YUNET, model_file_path
from ferkeras.errors import UserError, atomic_path, check_output_folder, write_text_atomic
from ferkeras.timing import Stopwatch
from ferkeras.deploy.faces import (FERPLUS_MARGIN, IMAGE_SUFFIXES, FaceDetector, YuNetDetector, check_thresholds, crop_face,
                    decode_image, list_images, to_bgr, to_gray)

DEFAULT_MARGIN = FERPLUS_MARGIN  # Haar boxes framed as in FER+ (see ferkeras.deploy.faces.FERPLUS_MARGIN)
DETECTORS = ("yunet", "haar")
DEFAULT_DETECTOR = "yunet"
DEFAULT_SCORE_THRESHOLD = 0.6
DEFAULT_NMS_THRESHOLD = 0.3
MAX_WORKERS = 4  # reading + detection threads; more than the cores only adds contention
# The compact model ferkeras ships: ferkeras/shipped/ in an installed package (pyproject.toml maps the
# checkout's models/ there), models/ at the top of a checkout.
SHIPPED_MODEL = "ferplus-small.onnx"
# A batch is scored once it holds this many images even if it has fewer faces than the batch size,
# so that big photos waiting for their scores (and their annotated copies) do not pile up in memory.
MAX_PENDING_IMAGES = 16
FORMATS = ("jsonl", "csv", "both")
# BGR colour of each class's boxes in annotated images and videos, in CLASSES order.
CLASS_COLOURS = ((200, 200, 200), (0, 215, 255), (0, 140, 255), (255, 120, 0),
                 (0, 0, 230), (0, 160, 0), (200, 0, 200), (160, 160, 0))


def shipped_model_candidates():
    """Where the shipped model is looked for: inside the installed package, then in the checkout."""
    package = Path(__file__).resolve().parents[1]  # ferkeras/, this file being ferkeras/deploy/predict.py
    return [package / "shipped" / SHIPPED_MODEL, package.parent / "models" / SHIPPED_MODEL]


def default_model_path():
    """The shipped model's path when no --model is given; a one-line `UserError` if it is missing."""
    for candidate in shipped_model_candidates():
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c) for c in shipped_model_candidates())
    raise UserError(f"--model: not given, and the shipped model is missing ({looked}); pass --model FILE.onnx "
                    "(export.py writes one), or reinstall ferkeras / update the checkout")


# The name predict.py's users know for the ONNX predictor (`EmotionPredictor(model).probabilities(faces)`).
EmotionPredictor = OnnxPredictor


# ----------------------------------------------------------------------------- one image's faces

def whole_image_box(gray):
    height, width = gray.shape[:2]
    return (0, 0, int(width), int(height))


def crop_margin(detector, margin=None):
    """The margin faces are cropped with: `margin` when given, else the one that frames this
    detector's boxes as FER+ faces are framed (0 for whole images, `detector=None`)."""
    if margin is not None:
        return margin
    return detector.ferplus_margin if detector is not None else 0.0


def find_faces(image, detector, margin=None):
    """(boxes, crops) of one gray or BGR image; `detector=None` takes the whole image as one face.

    The detector searches the image as given (YuNet looks at colour); crops are gray. A whole image
    is cropped without margin: it is already a face crop, and a non-square one is made square by
    repeating its edges rather than by stretching.
    """
    gray = to_gray(image)
    if detector is None:
        box = whole_image_box(gray)
        return [box], [crop_face(gray, box, margin=0.0, size=INPUT_SIZE)]
    boxes = detector.detect(image if detector.colour else gray)
    margin = crop_margin(detector, margin)
    return boxes, [crop_face(gray, box, margin=margin, size=INPUT_SIZE) for box in boxes]


@dataclass
class ImageResult:
    """What became of one input file: its faces and probabilities, or why it was skipped."""
    path: Path
    boxes: list = field(default_factory=list)
    probabilities: np.ndarray = None
    pixels: np.ndarray = None  # as decoded, for the annotated copy
    error: str = None


@dataclass
class Timings:
    """Seconds spent per stage, summed over a run (for the benchmark and the summary line)."""
    read: float = 0.0
    detect: float = 0.0
    infer: float = 0.0
    write: float = 0.0

    @contextlib.contextmanager
    def timed(self, stage):
        """Add the seconds of a `with` block to `stage` (read, detect, infer or write)."""
        with Stopwatch() as watch:
            yield
        setattr(self, stage, getattr(self, stage) + watch.seconds)


def read_and_find(path, detector, margin):
    """(ImageResult, crops, read seconds, detect seconds) of one file; runs in the worker threads."""
    with Stopwatch() as reading:
        try:
            pixels = decode_image(path)
            colour = detector is not None and detector.colour and pixels.ndim == 3
            image = to_bgr(pixels, path) if colour else to_gray(pixels, path)
        except UserError as exc:
            pixels, error = None, str(exc)
        else:
            error = None
    if error:
        return ImageResult(Path(path), error=error), [], reading.seconds, 0.0
    with Stopwatch() as detecting:
        boxes, crops = find_faces(image, detector, margin)
    return ImageResult(Path(path), boxes=boxes, pixels=pixels), crops, reading.seconds, detecting.seconds


def default_workers(threads=0):
    """Reading + detection threads: `threads` when given, else one per core (at most MAX_WORKERS)."""
    return max(1, min(threads or os.cpu_count() or 1, MAX_WORKERS))


def read_ahead(paths, detector, margin, workers):
    """`read_and_find` of each path, in order, with up to 2 x `workers` files in flight at once."""
    if workers <= 1:
        yield from (read_and_find(path, detector, margin) for path in paths)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="ferkeras-detect") as pool:
        in_flight = deque()
        for path in paths:
            in_flight.append(pool.submit(read_and_find, path, detector, margin))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


def predict_images(paths, predictor, detector, margin=None, timings=None, workers=1):
    """Yield an `ImageResult` per path, in order. Faces of consecutive images share inference batches.

    `margin=None` crops with the detector's FER+ margin. With `workers` > 1, files are read and
    searched in that many threads ahead of the one that runs inference (`timings` then sums the
    seconds of all threads). An unreadable file yields a result with `error` set; nothing is raised.
    """
    timings = timings if timings is not None else Timings()
    margin = crop_margin(detector, margin)
    pending, pending_faces = [], []

    def score_pending():
        with timings.timed("infer"):
            probabilities = predictor.probabilities(np.stack(pending_faces)) if pending_faces else None
        offset = 0
        for result in pending:
            if result.error is None:
                result.probabilities = probabilities[offset:offset + len(result.boxes)] if result.boxes \
                    else np.zeros((0, NUM_CLASSES), np.float32)
                offset += len(result.boxes)
            yield result
        pending.clear()
        pending_faces.clear()

    for result, crops, read_s, detect_s in read_ahead(paths, detector, margin, workers):
        timings.read += read_s
        timings.detect += detect_s
        pending.append(result)
        pending_faces.extend(crops)
        if len(pending_faces) >= predictor.batch_size or len(pending) >= MAX_PENDING_IMAGES:
            yield from score_pending()
    yield from score_pending()


# ----------------------------------------------------------------------------- rows and files

def face_row(file, face_index, box, probabilities, **extra):
    """One output row: file, extra fields (frame, track...), face index, box, label, probabilities."""
    top = int(np.argmax(probabilities))
    return {
        "file": str(file),
        **extra,
        "face": face_index,
        "box": [int(v) for v in box],
        "label": CLASSES[top],
        "confidence": round(float(probabilities[top]), 6),
        "probabilities": {name: round(float(p), 6) for name, p in zip(CLASSES, probabilities)},
    }


def rows_to_csv(rows, fields):
    """CSV text with columns `fields`, then x, y, w, h, label, confidence and one per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*fields, "x", "y", "w", "h", "label", "confidence", *CLASSES])
    for row in rows:
        writer.writerow([*(row[name] for name in fields), *row["box"], row["label"],
                         f"{row['confidence']:.6f}", *(f"{row['probabilities'][c]:.6f}" for c in CLASSES)])
    return buffer.getvalue()


def write_rows(out_dir, rows, fmt, csv_fields):
    """predictions.jsonl and/or predictions.csv in `out_dir`, written atomically; the paths written."""
    out_dir = Path(out_dir)
    written = []
    if fmt in ("jsonl", "both"):
        path = out_dir / "predictions.jsonl"
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
        written.append(path)
    if fmt in ("csv", "both"):
        path = out_dir / "predictions.csv"
        write_text_atomic(path, rows_to_csv(rows, csv_fields))
        written.append(path)
    return written


# ----------------------------------------------------------------------------- annotation

def draw_face(image, box, text, class_index):
    """A box in the class's colour with `text` on a filled label above it (inside when at the top)."""
    x, y, w, h = box
    colour = CLASS_COLOURS[class_index]
    thickness = max(1, round(min(image.shape[:2]) / 320))
    scale = max(0.4, min(image.shape[:2]) / 900)
    cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    label_top = y - text_h - baseline - 2 * thickness
    if label_top < 0:
        label_top = y
    cv2.rectangle(image, (x, label_top), (x + text_w + 2 * thickness, label_top + text_h + baseline +
                                          2 * thickness), colour, cv2.FILLED)
    cv2.putText(image, text, (x + thickness, label_top + text_h + thickness), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (0, 0, 0), thickness, cv2.LINE_AA)


def annotate(bgr, boxes, probabilities, tags=None):
    """A copy of `bgr` with each face's box, label and confidence (and an optional tag like '#3')."""
    image = bgr.copy()
    for index, (box, probs) in enumerate(zip(boxes, probabilities)):
        top = int(np.argmax(probs))
        prefix = f"{tags[index]} " if tags else ""
        draw_face(image, box, f"{prefix}{CLASSES[top]} {probs[top]:.0%}", top)
    return image


def write_image_atomic(path, bgr):
    """Encode by the suffix of `path` and move into place; falls back to PNG for suffixes OpenCV
    cannot write (e.g. .gif). Returns the path written."""
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", bgr)
    except cv2.error:
        ok = False
    if not ok:
        path = path.with_suffix(".png")
        ok, encoded = cv2.imencode(".png", bgr)
    with atomic_path(path) as tmp:
        encoded.tofile(str(tmp))
    return path


class AnnotatedNames:
    """Unique output names under annotated/: a folder's images keep their relative path, a file its
    name; a name already taken in this run gets -2, -3, ... before the suffix."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.taken = set()

    def name_for(self, relative):
        candidate, count = Path(relative), 1
        while candidate.as_posix().lower() in self.taken:
            count += 1
            candidate = Path(relative).with_name(f"{Path(relative).stem}-{count}{Path(relative).suffix}")
        self.taken.add(candidate.as_posix().lower())
        return self.folder / candidate


# ----------------------------------------------------------------------------- the images command

def expand_inputs(inputs):
    """[(path, name under annotated/)] for files and folders given on the command line.

    A missing input or a folder without images is a mistake in the command line, reported before
    any work; files inside folders that turn out unreadable are skipped later, one by one.
    """
    items = []
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            found = list_images(given)
            if not found:
                raise UserError(f"{given}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES[:6])}... "
                                "files, recursively); give a folder of photos or an image file")
            items.extend((path, path.relative_to(given)) for path in found)
        elif given.exists():
            items.append((given, Path(given.name)))
        else:
            raise UserError(f"{given}: no such file or folder; give image files or folders of images")
    return items


@dataclass
class Summary:
    images: int = 0
    faces: int = 0
    no_face: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    timings: Timings = field(default_factory=Timings)
    written: list = field(default_factory=list)

    def line(self, unit="images"):
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        skipped_part = "" if unit == "frames" else f"{skipped} skipped{f' ({reasons})' if reasons else ''}, "
        return (f"{self.images} {unit}, {self.faces} faces, {self.no_face} {unit} without a face, "
                f"{skipped_part}{rate:.1f} {unit}/s")


def skip_reason(path, message):
    """The kind of problem in a one-line error about `path`, for the summary's counts: the words
    between the path and the first parenthesis or semicolon ('not a readable image')."""
    prefix = f"{path}: "
    text = message[len(prefix):] if message.startswith(prefix) else message
    return text.split(" (")[0].split(";")[0].strip()


def predict_command(inputs, model=None, out="predictions", fmt="both", batch_size=64, min_face=48,
                    margin=None, no_detect=False, no_annotate=False, threads=0,
                    min_neighbors=5, detect_side=1280, progress=True, detector=DEFAULT_DETECTOR,
                    score_threshold=DEFAULT_SCORE_THRESHOLD, nms_threshold=DEFAULT_NMS_THRESHOLD,
                    detector_model=None):
    """Score the faces of image files and folders; write rows and annotated copies into `out`.

    `model=None` is the shipped model (`default_model_path`); `margin=None` the detector's FER+
    margin. Returns a `Summary`; `summary.images == 0` means nothing could be processed.
    """
    check_options(fmt, batch_size, margin, threads, out=out)
    predictor = EmotionPredictor(model or default_model_path(), batch_size=batch_size, threads=threads)
    detector = None if no_detect else make_detector(min_face, min_neighbors, detect_side, threads, detector,
                                                    score_threshold, nms_threshold, detector_model)
    items = expand_inputs(inputs)
    names = AnnotatedNames(Path(out) / "annotated")
    annotated_name = dict(items)
    summary, rows = Summary(), []
    watch = Stopwatch()
    bar = tqdm(total=len(items), unit="image", desc="predict", disable=not progress or len(items) < 2)
    for result in predict_images([path for path, _ in items], predictor, detector, margin, summary.timings,
                                 workers=default_workers(threads)):
        bar.update()
        if result.error:
            summary.skipped[skip_reason(result.path, result.error)] += 1
            bar.write(f"skipped: {result.error}", file=sys.stderr)
            continue
        summary.images += 1
        summary.faces += len(result.boxes)
        if not result.boxes:
            summary.no_face += 1
            bar.write(f"{result.path}: no face found (faces smaller than {min_face} px are not looked for; "
                      "try a smaller --min_face, or --no_detect for face crops)", file=sys.stderr)
        rows.extend(face_row(result.path, i, box, probs)
                    for i, (box, probs) in enumerate(zip(result.boxes, result.probabilities)))
        if not no_annotate:
            with summary.timings.timed("write"):
                bgr = annotate(to_bgr(result.pixels, result.path), result.boxes, result.probabilities)
                summary.written.append(write_image_atomic(names.name_for(annotated_name[result.path]), bgr))
    bar.close()
    summary.seconds = watch.elapsed()
    if summary.images:
        summary.written[:0] = write_rows(out, rows, fmt, ["file", "face"])
    return summary


def check_options(fmt, batch_size, margin, threads, smooth=0.0, out=None):
    if out is not None:
        check_output_folder(out, "--out")
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt}")
    if batch_size < 1:
        raise UserError(f"--batch_size: expected a positive number of faces, got {batch_size}")
    if margin is not None and not -0.5 < margin <= 2.0:
        raise UserError(f"--margin: expected a fraction of the face box between -0.5 and 2 "
                        f"(0.2 adds 20% of the box on each side), got {margin}")
    if threads < 0:
        raise UserError(f"--threads: expected 0 (the libraries' default) or a positive number, got {threads}")
    if not 0.0 <= smooth < 1.0:
        raise UserError(f"--smooth: expected a weight in [0, 1) for the previous frames "
                        f"(0 = no smoothing), got {smooth}")


def make_detector(min_face=48, min_neighbors=5, detect_side=1280, threads=0, detector=DEFAULT_DETECTOR,
                  score_threshold=DEFAULT_SCORE_THRESHOLD, nms_threshold=DEFAULT_NMS_THRESHOLD,
                  detector_model=None):
    """A face detector from predict.py's flags: YuNet (its model file given, cached or fetched once;
    see `ferkeras.deploy.downloads`) or the Haar cascade. Both have `detect(gray or BGR) -> boxes` in reading
    order and `ferplus_margin`; one detector may serve several threads. A one-line `UserError` for a
    bad value or an unusable model file."""
    if threads:
        cv2.setNumThreads(threads)
    if detector not in DETECTORS:
        raise UserError(f"--detector: expected one of {', '.join(DETECTORS)}, got {detector}")
    if min_face < 1:
        raise UserError(f"--min_face: expected a positive number of pixels, got {min_face}")
    if detect_side and detect_side < 64:
        raise UserError(f"--detect_side: expected 0 (full size) or at least 64 pixels, got {detect_side}")
    if detector == "haar":
        if min_neighbors < 0:
            raise UserError(f"--min_neighbors: expected 0 or more, got {min_neighbors}")
        return FaceDetector(min_size=min_face, min_neighbors=min_neighbors, max_side=detect_side or None)
    check_thresholds(score_threshold, nms_threshold)  # before a model file is looked for or fetched
    return YuNetDetector(model_file_path(YUNET, detector_model), min_size=min_face, score_threshold=score_threshold,
                         nms_threshold=nms_threshold, max_side=detect_side or None)


# ----------------------------------------------------------------------------- videos

class NearestBoxTracker:
    """Follows faces from frame to frame by box overlap and smooths their probabilities.

    Each face of a frame is matched to the live track whose last box overlaps it most (intersection
    over union at least `min_iou`), best overlaps first, one face per track; a face left over starts
    a new track. A track not matched for more than `max_missing` frames ends, so a face that the
    detector misses for a frame or two keeps its track and its smoothed state.

    Smoothing is an exponential moving average per track: p = alpha * p_previous + (1 - alpha) * p_frame,
    where alpha = 0 keeps each frame's own probabilities.
    """

    def __init__(self, alpha=0.0, min_iou=0.3, max_missing=5):
        self.alpha = alpha
        self.min_iou = min_iou
        self.max_missing = max_missing
        self.tracks = {}  # id -> {"box", "probabilities", "missing"}
        self.next_id = 1

    def update(self, boxes, probabilities):
        """[(track id, smoothed probabilities)] for the faces of one frame, in the order given."""
        pairs = sorted(((box_iou(box, track["box"]), face, track_id)
                        for face, box in enumerate(boxes) for track_id, track in self.tracks.items()),
                       reverse=True)
        assigned, used = {}, set()
        for overlap, face, track_id in pairs:
            if overlap < self.min_iou:
                break
            if face not in assigned and track_id not in used:
                assigned[face] = track_id
                used.add(track_id)
        results = []
        for face, (box, probs) in enumerate(zip(boxes, probabilities)):
            track_id = assigned.get(face)
            if track_id is None:
                track_id = self.next_id
                self.next_id += 1
                smoothed = np.asarray(probs, np.float32)
            else:
                previous = self.tracks[track_id]["probabilities"]
                smoothed = (self.alpha * previous + (1 - self.alpha) * probs).astype(np.float32)
            self.tracks[track_id] = {"box": box, "probabilities": smoothed, "missing": -1}
            results.append((track_id, smoothed))
        for track_id in list(self.tracks):
            self.tracks[track_id]["missing"] += 1
            if self.tracks[track_id]["missing"] > self.max_missing:
                del self.tracks[track_id]
        return results


def box_iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter_w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    inter_h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def open_video(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such video file; give the path of an .mp4, .avi or other video")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError(f"{path}: not a readable video (OpenCV's FFmpeg cannot open it); "
                        "convert it to .mp4 (H.264 or MPEG-4) and try again")
    return capture


def video_writer(path, fps, size):
    """An annotated-video writer: Motion-JPEG for .avi, MPEG-4 part 2 ('mp4v') otherwise, the codecs
    OpenCV's pip wheels can always write."""
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if Path(path).suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise UserError(f"{path}: OpenCV cannot write this video; choose an output folder you can "
                        "write to, or --no_annotate")
    return writer


def predict_video(video, model=None, out="predictions", fmt="both", batch_size=64, min_face=48,
                  margin=None, no_detect=False, no_annotate=False, threads=0,
                  min_neighbors=5, detect_side=1280, smooth=0.0, progress=True, detector=DEFAULT_DETECTOR,
                  score_threshold=DEFAULT_SCORE_THRESHOLD, nms_threshold=DEFAULT_NMS_THRESHOLD,
                  detector_model=None):
    """Score every frame of a video; write per-face rows (with frame, time and track) and an
    annotated copy (annotated/<stem>.mp4, or .avi for an .avi input). Returns a `Summary` counting
    frames as its images. `model`, `margin` and the detector options as in `predict_command`."""
    check_options(fmt, batch_size, margin, threads, smooth, out=out)
    predictor = EmotionPredictor(model or default_model_path(), batch_size=batch_size, threads=threads)
    detector = None if no_detect else make_detector(min_face, min_neighbors, detect_side, threads, detector,
                                                    score_threshold, nms_threshold, detector_model)
    video = Path(video)
    capture = open_video(video)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    tracker = NearestBoxTracker(alpha=smooth)
    summary, rows = Summary(), []
    suffix = ".avi" if video.suffix.lower() == ".avi" else ".mp4"
    annotated_path = Path(out) / "annotated" / f"{video.stem}{suffix}"
    writer = None
    watch = Stopwatch()
    # The annotated video is written under a temporary name and moved into place once complete.
    target = contextlib.nullcontext() if no_annotate else atomic_path(annotated_path)
    with target as tmp_video, tqdm(total=total, unit="frame", desc="video", disable=not progress) as bar:
        while True:
            with summary.timings.timed("read"):
                ok, frame = capture.read()
            if not ok:
                break
            frame_index = summary.images
            summary.images += 1
            bar.update()
            with summary.timings.timed("detect"):
                boxes, crops = find_faces(frame, detector, margin)
            with summary.timings.timed("infer"):
                probabilities = predictor.probabilities(np.stack(crops)) if crops else np.zeros((0, NUM_CLASSES))
            tracked = tracker.update(boxes, probabilities)
            summary.faces += len(boxes)
            summary.no_face += not boxes
            rows.extend(face_row(video, i, box, smoothed, frame=frame_index,
                                 time_s=round(frame_index / fps, 4), track=track_id)
                        for i, (box, (track_id, smoothed)) in enumerate(zip(boxes, tracked)))
            if not no_annotate:
                with summary.timings.timed("write"):
                    if writer is None:
                        writer = video_writer(tmp_video, fps, (frame.shape[1], frame.shape[0]))
                    writer.write(annotate(frame, boxes, [p for _, p in tracked], [f"#{t}" for t, _ in tracked]))
        capture.release()
        if writer is not None:
            writer.release()
        if summary.images == 0:
            raise UserError(f"{video}: not a readable video (no frame could be decoded); "
                            "convert it to .mp4 (H.264 or MPEG-4) and try again")
    if not no_annotate:
        summary.written.append(annotated_path)
    summary.seconds = watch.elapsed()
    summary.written[:0] = write_rows(out, rows, fmt, ["file", "frame", "time_s", "track", "face"])
    return summary
