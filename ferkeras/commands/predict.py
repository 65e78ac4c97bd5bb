"""Recognise facial expressions in photos, folders of photos and videos with an ONNX model.

    python predict.py photo.jpg                                            # the shipped model
    python predict.py --model runs/quick/model.onnx photo.jpg              # predictions/ beside you
    python predict.py --model emotion-ferplus-8.onnx photos/ --out preds   # a folder, recursively
    python predict.py --model model.onnx crops/ --no_detect                # inputs are face crops
    python predict.py --model model.onnx --video clip.mp4 --smooth 0.6     # a video, frame by frame
    python predict.py photos/ --detector haar                              # the Haar cascade

(`ferkeras predict ...` once installed with pip.) Without --model, the compact model shipped with
ferkeras (models/ferplus-small.onnx) is used. Any model with the emotion-ferplus-8.onnx contract works
(input [N,1,64,64] raw gray 0..255, output [N,8] scores; a fixed batch of 1 is fine); scores become
probabilities with a softmax. Faces are found with OpenCV's YuNet face detector (default; its model
file, face_detection_yunet_2023mar.onnx from the OpenCV Zoo, MIT, is taken from --detector_model, else
$FERKERAS_WEIGHTS/ or ~/.cache/ferkeras/weights/, else downloaded there once with its sha256 checked)
or with the frontal-face Haar cascade (--detector haar), cropped square around the box centre (side =
box side x (1 + 2 x margin); the default margin frames each detector's boxes as FER+ faces are
framed), converted to 64x64 gray and scored in batches.

Writes into --out: predictions.jsonl and/or predictions.csv, one row per face: file, face index (in
reading order: rows of faces top to bottom, each row left to right), box x y w h, label, confidence
and the 8 class probabilities; and annotated/<name>, a copy of each image with boxes, labels and
confidences. For a video the rows also have frame, time_s and track (a face followed across frames:
each face joins the track whose last box overlaps it most, IoU >= 0.3, and a track ends after 5
frames unseen), and annotated/<stem>.mp4 is the annotated video.

A file that cannot be read, a non-image, or a picture without a face is reported on its own line and
the others go on. Exit status: 0 when at least one image was processed, 1 when none could be, 2 for a
wrong command line or model file (reported before any work). Uses numpy, onnxruntime and OpenCV only.
"""
import argparse
from pathlib import Path

from ferkeras.deploy.faces import HAAR_MARGIN, YUNET_MARGIN
from ferkeras.deploy.predict import (DEFAULT_DETECTOR, DEFAULT_NMS_THRESHOLD, DEFAULT_SCORE_THRESHOLD, DETECTORS, FORMATS,
                              SHIPPED_MODEL)

# Flags that only one detector reads, and the value each takes when not given.
DETECTOR_FLAGS = {"haar": {"min_neighbors": 5},
                  "yunet": {"score_threshold": DEFAULT_SCORE_THRESHOLD, "nms_threshold": DEFAULT_NMS_THRESHOLD,
                            "detector_model": None}}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("inputs", nargs="*", metavar="IMAGE|FOLDER",
                        help="image files and folders (searched recursively for image files)")
    parser.add_argument("--model", help="ONNX model with the emotion-ferplus-8 contract (default: the shipped "
                                        f"models/{SHIPPED_MODEL})")
    parser.add_argument("--video", metavar="FILE", help="process this video frame by frame instead of images")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--format", default="both", choices=FORMATS,
                        help="rows as predictions.jsonl, predictions.csv or both (default: both)")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="faces per onnxruntime call; a fixed-batch model uses its own (default: 64)")
    parser.add_argument("--min_face", type=int, default=48,
                        help="smallest face side in pixels that is looked for (default: 48)")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS,
                        help="face detector: yunet (OpenCV's CNN detector; finds more faces, faster) or haar "
                             f"(the frontal-face Haar cascade) (default: {DEFAULT_DETECTOR})")
    parser.add_argument("--score_threshold", type=float,
                        help="yunet: smallest face score kept, in (0, 1]; higher = fewer, surer faces "
                             f"(default: {DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--nms_threshold", type=float,
                        help="yunet: boxes overlapping more than this IoU, in (0, 1], are merged "
                             f"(default: {DEFAULT_NMS_THRESHOLD})")
    parser.add_argument("--detector_model", metavar="PATH",
                        help="yunet: the face_detection_yunet_2023mar.onnx file (default: $FERKERAS_WEIGHTS/, "
                             "then ~/.cache/ferkeras/weights/, else downloaded there once)")
    parser.add_argument("--min_neighbors", type=int,
                        help="haar: cascade neighbours a face needs; higher = fewer, surer faces (default: 5)")
    parser.add_argument("--detect_side", type=int, default=1280,
                        help="search larger images at this longer side, boxes scaled back; 0 = full size "
                             "(default: 1280)")
    parser.add_argument("--margin", type=float,
                        help="fraction of the face box added on each side of the square crop (default: the "
                             f"detector's FER+ framing: {YUNET_MARGIN} for yunet, {HAAR_MARGIN} for haar)")
    parser.add_argument("--no_detect", action="store_true",
                        help="inputs are already face crops: each whole image is one face (no margin)")
    parser.add_argument("--no_annotate", action="store_true", help="write no annotated images or video")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for onnxruntime and OpenCV, and pictures read and searched at once; "
                             "0 = one per core (default: 0)")
    parser.add_argument("--smooth", type=float, default=0.0, metavar="ALPHA",
                        help="video only: per-track moving average p = ALPHA x previous + (1 - ALPHA) x "
                             "this frame; 0 = none (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def detector_options(parser, args):
    """The detector's own flags, with their defaults; a flag given for the other detector is an error."""
    options = {}
    for detector, flags in DETECTOR_FLAGS.items():
        for flag, default in flags.items():
            value = getattr(args, flag)
            if value is not None and (detector != args.detector or args.no_detect):
                parser.error(f"--{flag} applies to --detector {detector} only"
                             + (" (and --no_detect looks for no faces)" if args.no_detect else ""))
            options[flag] = default if value is None else value
    return options


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.inputs) == bool(args.video):
        parser.error("give image files / folders, or --video FILE (one of the two)")
    from ferkeras.deploy.predict import predict_command, predict_video

    options = dict(model=args.model, out=args.out, fmt=args.format, batch_size=args.batch_size,
                   min_face=args.min_face, margin=args.margin, no_detect=args.no_detect,
                   no_annotate=args.no_annotate, threads=args.threads, detect_side=args.detect_side,
                   progress=not args.quiet, detector=args.detector, **detector_options(parser, args))
    if args.video:
        summary = predict_video(args.video, smooth=args.smooth, **options)
        unit = "frames"
    else:
        if args.smooth:
            parser.error("--smooth applies to --video only")
        summary = predict_command(args.inputs, **options)
        unit = "images"
    print(summary.line(unit))
    for path in summary.written[:2]:
        print(f"wrote {path}")
    if len(summary.written) > 2:
        print(f"wrote {len(summary.written) - 2} annotated file(s) under {Path(args.out) / 'annotated'}")
    return 0 if summary.images else 1
