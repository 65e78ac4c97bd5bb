"""How each face detector's box frames a real FER+ face, compared with the FER+ crop itself.

    python benchmarks/face_framing.py --data_dir PATH [--faces 300] [--out benchmarks/results/face_framing.json]

Each validation face (48x48, the FER+ crop) is upscaled to 140 px and shown alone in the middle of a
280x280 faint noise picture; both detectors search it. For every face where a detector gives exactly
one box whose centre lies on the face, it records the crop's side over the box's longer side (what
`crop_face` squares) and the offset of the box centre from the crop centre, in crop sides. A margin m
gives a crop of side box x (1 + 2m), so the margin that frames the box as FER+ frames the face is
(median ratio - 1) / 2. Writes JSON (--out) and prints one line per detector.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common import load_average  # noqa: E402
from ferkeras.errors import run_cli, write_text_atomic  # noqa: E402
from ferkeras.deploy.predict import make_detector  # noqa: E402

SIDE = 140


def faint_noise(side, rng):
    """The test pictures' background: mid grey with faint blurred noise."""
    noise = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 3)
    return np.clip(110 + 8 * noise / noise.std(), 0, 255).astype(np.uint8)


def shown_alone(face, rng):
    picture = faint_noise(2 * SIDE, rng)
    picture[SIDE // 2:SIDE // 2 + SIDE, SIDE // 2:SIDE // 2 + SIDE] = cv2.resize(
        face, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    return picture


def framing(boxes):
    """(crop side / box side, centre offset x, centre offset y) of the one box on the face, else None."""
    on_face = [(x, y, w, h) for x, y, w, h in boxes
               if SIDE // 2 <= x + w / 2 <= SIDE * 3 // 2 and SIDE // 2 <= y + h / 2 <= SIDE * 3 // 2]
    if len(on_face) != 1 or len(boxes) != 1:
        return None
    x, y, w, h = on_face[0]
    return SIDE / max(w, h), (x + w / 2 - SIDE) / SIDE, (y + h / 2 - SIDE) / SIDE


def summarise(rows, shown, detector):
    ratios, dx, dy = (np.array(column) for column in zip(*rows)) if rows else ([], [], [])
    quartiles = np.percentile(ratios, [25, 50, 75]) if rows else [float("nan")] * 3
    return {"detector": detector.name, "faces_shown": shown, "framed": len(rows),
            "ratio_quartiles": [round(float(q), 3) for q in quartiles],
            "centre_offset_median": [round(float(np.median(dx)), 3), round(float(np.median(dy)), 3)]
            if rows else None,
            "implied_margin": round(float((quartiles[1] - 1) / 2), 3),
            "current_margin": detector.ferplus_margin}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data_dir", default=os.environ.get("FERKERAS_DATA", "data"),
                        help="FER+ data (default: $FERKERAS_DATA, else data/)")
    parser.add_argument("--faces", type=int, default=300, help="validation faces shown (default: 300)")
    parser.add_argument("--detector_model", help="YuNet ONNX file (default: found or fetched)")
    parser.add_argument("--out", default="benchmarks/results/face_framing.json", help="JSON report (default: %(default)s)")
    args = parser.parse_args(argv)
    from ferkeras.data.ferplus import load_labelled

    images, _, _ = load_labelled(args.data_dir, "valid", "majority")
    images = images[:args.faces]
    report = {"faces": len(images), "side": SIDE, "load_average": load_average(), "detectors": []}
    for name in ("haar", "yunet"):
        detector = make_detector(detector=name, detector_model=args.detector_model)
        rng = np.random.default_rng(1)
        rows = [r for r in (framing(detector.detect(shown_alone(face, rng))) for face in images) if r]
        summary = summarise(rows, len(images), detector)
        report["detectors"].append(summary)
        q1, median, q3 = summary["ratio_quartiles"]
        print(f"{name}: {summary['framed']} of {len(images)} faces framed; crop side / box side median "
              f"{median} (quartiles {q1}, {q3}); box centre offset {summary['centre_offset_median']} crop "
              f"sides; implied margin {summary['implied_margin']} (in use: {summary['current_margin']})")
    write_text_atomic(args.out, json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
