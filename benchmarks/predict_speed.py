"""End-to-end speed (and face-level accuracy) of predict.py on composed pictures of real FER+ faces.

    python benchmarks/predict_speed.py --model runs/<name>/model.onnx --data_dir PATH
    python benchmarks/predict_speed.py --model a.onnx --model b.int8.onnx --margins 0 0.1 0.2 --pictures 200
    python benchmarks/predict_speed.py --model small.onnx --detector yunet haar --pictures 100

Builds a folder of JPEG pictures (default 50, 640x480, deterministic): each holds 1 to 4 validation
faces with a majority label, upscaled to 100-160 px and placed apart on a faint noise background.
For each model and each face detector (default: YuNet and the Haar cascade, side by side) it runs the
predictor as predict.py does (read, detect, crop, infer, annotated copies written; reading and
detection in predict.py's thread pool) and reports pictures/s and faces/s, the seconds per stage
(summed over the threads) and the CPU time per picture, detection recall (placed faces found with IoU > 0.5) and false
detections, and the accuracy on the found faces against their majority labels beside the same
model's accuracy on the original 48x48 crops. Faces are cropped with each detector's own FER+ margin
unless --margins is given; with several --margins, the accuracy runs are repeated per margin (without
annotation). Prints the load average around each run and writes JSON (--out).
"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common import LoadWindow  # noqa: E402
from ferkeras.errors import UserError, run_cli, write_text_atomic  # noqa: E402
from ferkeras.timing import Stopwatch  # noqa: E402
from ferkeras.deploy.predict import (DETECTORS, EmotionPredictor, box_iou, crop_margin, make_detector,  # noqa: E402
                              predict_command)

CANVAS = (480, 640)


def faint_background(rng):
    """Mid grey with a gentle brightness gradient and faint blurred noise."""
    height, width = CANVAS
    noise = cv2.GaussianBlur(rng.normal(0, 1, CANVAS).astype(np.float32), (0, 0), 3)
    ramp = np.linspace(-20, 20, width, dtype=np.float32)[None, :] * rng.choice([-1, 1])
    return np.clip(110 + ramp + 8 * noise / noise.std(), 0, 255).astype(np.uint8)


def place_faces(rng, count, gap=24):
    """Up to `count` non-overlapping squares (x, y, side) inside the canvas, `gap` pixels apart."""
    height, width = CANVAS
    placed = []
    for _ in range(200):
        if len(placed) == count:
            break
        side = int(rng.integers(100, 161))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if all(x + side + gap <= px or px + ps + gap <= x or y + side + gap <= py or py + ps + gap <= y
               for px, py, ps in placed):
            placed.append((x, y, side))
    return placed


def build_pictures(folder, images, labels, count, seed):
    """Write `count` pictures; return per picture the placed boxes, face indices and labels."""
    rng = np.random.default_rng(seed)
    truth = {}
    for number in range(count):
        canvas = faint_background(rng)
        places = place_faces(rng, int(rng.integers(1, 5)))
        faces = rng.choice(len(images), len(places), replace=False)
        for (x, y, side), face in zip(places, faces):
            canvas[y:y + side, x:x + side] = cv2.resize(images[face], (side, side), interpolation=cv2.INTER_CUBIC)
        path = folder / f"picture_{number:03d}.jpg"
        cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
        truth[str(path)] = [{"box": (x, y, s, s), "face": int(f), "label": int(labels[f])}
                            for (x, y, s), f in zip(places, faces)]
    return truth


def score_rows(rows, truth, original_predictions):
    """Detection recall, false detections, and the accuracy of the found faces against their labels,
    beside the accuracy of the same model on the original 48x48 crops of those same faces."""
    from ferkeras import CLASSES

    found = correct = correct_original = false = 0
    by_file = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    for file, placed in truth.items():
        for row in by_file.get(file, []):
            match = max(placed, key=lambda p: box_iou(row["box"], p["box"]))
            if box_iou(row["box"], match["box"]) > 0.5:
                found += 1
                correct += CLASSES.index(row["label"]) == match["label"]
                correct_original += original_predictions[match["face"]] == match["label"]
            else:
                false += 1
    placed_total = sum(len(p) for p in truth.values())
    return {"placed_faces": placed_total, "found_faces": found, "recall": found / placed_total,
            "false_detections": false, "accuracy_found": correct / found if found else None,
            "accuracy_found_original_crops": correct_original / found if found else None}


def run_model(model, folder, truth, images, labels, margins, threads, batch_size, work, detector="yunet",
              detector_model=None):
    margins = margins or [crop_margin(make_detector(detector=detector, detector_model=detector_model))]
    with Stopwatch() as loading:
        predictor = EmotionPredictor(model, batch_size=batch_size, threads=threads)
    placed = sorted({p["face"] for pictures in truth.values() for p in pictures})
    originals = predictor.probabilities(images[placed]).argmax(axis=1)
    crop_accuracy = float(np.mean(originals == labels[placed]))
    original_predictions = dict(zip(placed, originals))
    out = work / f"out_{Path(model).stem}_{detector}"
    options = dict(batch_size=batch_size, threads=threads, detector=detector, detector_model=detector_model,
                   progress=False)
    with LoadWindow() as load, Stopwatch() as predicting:
        summary = predict_command([folder], model, out=out, margin=margins[0], **options)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    timing = summary.timings
    result = {
        "model": str(model),
        "detector": detector,
        **load.as_dict(),
        "size_mb": round(Path(model).stat().st_size / 1e6, 1),
        "load_s": round(loading.seconds, 2),
        "pictures": summary.images,
        "faces_found": summary.faces,
        "seconds": round(summary.seconds, 2),
        "images_per_s": round(summary.images / summary.seconds, 2),
        "faces_per_s": round(summary.faces / summary.seconds, 2),
        # CPU seconds of all threads: far less swayed by other jobs on shared cores than the wall clock.
        "cpu_ms_per_image": round(1000 * predicting.cpu_seconds / summary.images, 1),
        "cores_used": round(predicting.cpu_seconds / summary.seconds, 2),
        "ms_per_image": {stage: round(1000 * getattr(timing, stage) / summary.images, 1)
                         for stage in ("read", "detect", "infer", "write")},
        "accuracy_on_original_crops": round(crop_accuracy, 4),
        "by_margin": {},
    }
    result["by_margin"][str(margins[0])] = score_rows(rows, truth, original_predictions)
    for margin in margins[1:]:
        margin_out = work / f"margin_{margin}_{detector}"
        predict_command([folder], model, out=margin_out, margin=margin, no_annotate=True, **options)
        rows = [json.loads(line) for line in (margin_out / "predictions.jsonl").read_text().splitlines()]
        result["by_margin"][str(margin)] = score_rows(rows, truth, original_predictions)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", action="append", required=True, help="contract ONNX model (repeatable)")
    parser.add_argument("--data_dir", default=os.environ.get("FERKERAS_DATA", "data"),
                        help="FER+ data (default: $FERKERAS_DATA, else data/)")
    parser.add_argument("--pictures", type=int, default=50, help="pictures to compose (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the composition (default: 0)")
    parser.add_argument("--detector", nargs="+", default=list(DETECTORS), choices=DETECTORS,
                        help=f"face detectors to compare (default: {' '.join(DETECTORS)})")
    parser.add_argument("--detector_model", help="YuNet ONNX file (default: found or fetched, as predict.py does)")
    parser.add_argument("--margins", type=float, nargs="+",
                        help="crop margins to score; the first is timed (default: each detector's FER+ margin)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime / OpenCV threads (0 = default)")
    parser.add_argument("--batch_size", type=int, default=64, help="faces per inference call (default: 64)")
    parser.add_argument("--out", default="benchmarks/results/predict_speed.json", help="JSON report (default: %(default)s)")
    args = parser.parse_args(argv)
    for model in args.model:
        if not Path(model).is_file():
            raise UserError(f"{model}: no such ONNX file; give a contract model (export.py writes one)")
    from ferkeras.data.ferplus import load_labelled

    images, targets, _ = load_labelled(args.data_dir, "valid", "majority")
    labels = targets.argmax(axis=1)
    report = {"pictures": args.pictures, "canvas": list(CANVAS[::-1]), "seed": args.seed,
              "cpu_cores": os.cpu_count(), "cv2_threads": cv2.getNumThreads(), "models": []}  # one per model x detector
    with tempfile.TemporaryDirectory(prefix="predict-speed-") as tmp:
        work = Path(tmp)
        folder = work / "pictures"
        folder.mkdir()
        truth = build_pictures(folder, images, labels, args.pictures, args.seed)
        for model in args.model:
            for detector in args.detector:
                with contextlib.redirect_stderr(io.StringIO()):  # the per-picture "no face found" lines
                    result = run_model(model, folder, truth, images, labels, args.margins, args.threads,
                                       args.batch_size, work, detector, args.detector_model)
                report["models"].append(result)
                print_result(result)
    write_text_atomic(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def print_result(result):
    stages = "  ".join(f"{k} {v}" for k, v in result["ms_per_image"].items())
    print(f"{Path(result['model']).name}, {result['detector']}: {result['images_per_s']} pictures/s, "
          f"{result['faces_per_s']} faces/s ({result['faces_found']} faces in {result['pictures']} pictures; "
          f"load {result['load_before']} / {result['load_after']}); CPU {result['cpu_ms_per_image']} ms/picture "
          f"({result['cores_used']} cores busy); ms/picture, summed over threads: {stages}")
    for margin, scores in result["by_margin"].items():
        print(f"  margin {margin}: recall {scores['recall']:.3f} ({scores['found_faces']}/"
              f"{scores['placed_faces']}), false {scores['false_detections']}, accuracy on found "
              f"{scores['accuracy_found']:.3f} (same faces' original crops "
              f"{scores['accuracy_found_original_crops']:.3f}; all placed faces' "
              f"{result['accuracy_on_original_crops']:.3f})")


if __name__ == "__main__":
    run_cli(main)
