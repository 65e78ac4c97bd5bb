"""Export time: seconds for `ferkeras.export.onnx.export_onnx` (tf2onnx conversion, metadata, contract check and
the 256-face parity check against Keras) on freshly built models.

    python benchmarks/export_time.py --data_dir ../shared/data/ferplus                      # README table
    python benchmarks/inference_speed.py --run benchmarks/results/exports/VGG13 --data_dir ../shared/data/ferplus

Each config (MODEL[@IMAGE_SIZE], weights none: export time does not depend on the weights' values) gets
a folder under --out_dir holding model.onnx and model.keras, laid out like a run folder, so that
inference_speed.py can time both files afterwards. Each export runs in this one process, in order; the
first also pays for importing tf2onnx (shown apart as "first conversion").
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras.errors import atomic_path, run_cli  # noqa: E402
from ferkeras.timing import Stopwatch  # noqa: E402

DEFAULT_CONFIGS = ("VGG13", "ResNet50@64")

COLUMNS = (
    ("model", "config", None),
    ("parameters", "parameters", "{:,}"),
    ("ONNX MB", "onnx_mb", "{:.1f}"),
    ("export_onnx s", "export_s", "{:.1f}"),
    ("of which parity check s", "parity_s", "{:.1f}"),
    ("max softmax diff", "max_softmax_diff", "{:.1e}"),
    ("model.keras save s", "keras_save_s", "{:.1f}"),
    ("first conversion", "first", None),
    ("load 1-min before / after", "load", None),
)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data_dir", required=True, help="FER+ data for the parity faces, e.g. ../shared/data/ferplus")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="MODEL[@IMAGE_SIZE] ... (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: export.py's)")
    parser.add_argument("--out_dir", default="benchmarks/results/exports",
                        help="one folder per config with model.onnx and model.keras (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/export_time.json", help="JSON report (default: %(default)s)")
    return parser


def timed_parity(export_module):
    """Wrap export's check_parity so its share of export_onnx's time is known; returns the seconds list."""
    original, seconds = export_module.check_parity, []

    def check_parity(*args, **kwargs):
        watch = Stopwatch()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(watch.elapsed())

    export_module.check_parity = check_parity
    return original, seconds


def export_one(spec, args, first):
    """Build, export and save one config; return its table row."""
    import train_speed
    from ferkeras.export import onnx as export
    from ferkeras.models.registry import build_model

    model_name, image_size, _ = train_speed.parse_spec(spec)
    model = build_model(model_name, weights="none", image_size=image_size or None)
    folder = Path(args.out_dir) / spec.replace("@", "-")
    options = {"opset": args.opset} if args.opset else {}
    original, parity_seconds = timed_parity(export)
    try:
        with common.LoadWindow() as load, Stopwatch() as exporting:
            report = export.export_onnx(model, folder / "model.onnx", config={"model_name": model_name,
                                        "image_size": image_size, "weights": "none"}, source="export_time.py",
                                        data_dir=args.data_dir, **options)
    finally:
        export.check_parity = original
    with Stopwatch() as saving, atomic_path(folder / "model.keras") as tmp:
        model.save(tmp)
    return {"config": spec, "parameters": report["parameters"], "onnx_mb": report["size_bytes"] / 1e6,
            "opset": report["opset"], "export_s": exporting.seconds, "parity_s": sum(parity_seconds),
            "parity_faces": report["parity"]["faces"], "max_softmax_diff": report["parity"]["max_softmax_diff"],
            "keras_save_s": saving.seconds, "first": "yes" if first else "no", "folder": str(folder),
            **load.as_dict(), "load": load.text()}


def main(argv=None):
    args = build_parser().parse_args(argv)
    import train_speed

    for spec in args.configs:
        train_speed.parse_spec(spec)  # a malformed spec fails before TensorFlow loads
    common.ferkeras.import_keras_quietly()
    rows = []
    for index, spec in enumerate(args.configs):
        print(f"\n=== {spec} ===", flush=True)
        rows.append(export_one(spec, args, first=index == 0))
    return common.finish("export_time", COLUMNS, rows, args.out, argv)


if __name__ == "__main__":
    run_cli(main)
