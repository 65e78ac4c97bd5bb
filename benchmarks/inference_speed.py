"""ONNX (onnxruntime) versus Keras inference speed of an exported run, on real validation faces.

    python benchmarks/inference_speed.py --run runs/<name> --data_dir PATH
    python benchmarks/export_time.py --data_dir PATH && python benchmarks/inference_speed.py --data_dir PATH \\
        --run benchmarks/results/exports/* --out benchmarks/results/inference_speed.json      # README table

Each folder needs model.onnx and model.keras (what export.py, or export_time.py, writes). Measured, for
both: evaluation images/s over the validation faces kept by the majority protocol (3,191 in FER+), in
batches of 64 through the very predictors evaluate.py uses (after one warm-up batch); latency per image
at batch 1 and throughput at batch 64 (best of --repeats calls). Keras gets the same 64x64 contract
input the ONNX file takes for latency and throughput, and the 48x48 faces for evaluation, as evaluate.py
feeds it. Writes inference_speed.json into each folder, and all rows into --out if given.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.timing import time_calls  # noqa: E402


def best_of(fn, repeats):
    """Seconds of the fastest of `repeats` calls, after one warm-up call (tracing and allocator growth are
    not inference)."""
    return time_calls(fn, repeats).best


COLUMNS = (
    ("model", "model", None),
    ("runtime", "runtime", None),
    ("evaluation img/s (batch 64)", "eval_img_s", "{:.0f}"),
    ("faces evaluated", "eval_faces", "{:,}"),
    ("latency batch 1 ms", "batch1_ms", "{:.1f}"),
    ("throughput batch 64 img/s", "batch64_img_s", "{:.0f}"),
    ("load 1-min before / after", "load", None),
)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--run", required=True, nargs="+", help="folder(s) with model.onnx and model.keras")
    parser.add_argument("--data_dir", required=True, help="FER+ data, e.g. ../shared/data/ferplus")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls for throughput (x4 for latency) (default: 5)")
    parser.add_argument("--eval_faces", type=int, default=0,
                        help="evaluate on the first N kept validation faces only (default: 0 = all)")
    parser.add_argument("--onnx_only", action="store_true",
                        help="time the ONNX file only: for folders without model.keras (an exported ensemble)")
    parser.add_argument("--out", help="also write every folder's rows into this one JSON report")
    return parser


def measure(label, predictor, batch1, batch64, eval_faces, repeats):
    """One runtime's row: evaluation images/s, batch-1 latency and batch-64 throughput."""
    from ferkeras.evaluate.tta import timed_logits

    with common.LoadWindow() as load:
        _, eval_img_s = timed_logits(predictor, eval_faces)
        batch1_s = best_of(batch1, repeats * 4)
        batch64_s = best_of(batch64, repeats)
    return {"runtime": label, "eval_img_s": eval_img_s, "eval_faces": int(len(eval_faces)),
            "batch1_ms": 1000 * batch1_s, "batch64_img_s": 64 / batch64_s, **load.as_dict(), "load": load.text()}


def main(argv=None):
    args = build_parser().parse_args(argv)
    runs = [Path(run) for run in args.run]
    for run in runs:
        for name in ("model.onnx",) if args.onnx_only else ("model.onnx", "model.keras"):
            if not (run / name).is_file():
                raise UserError(f"{run / name}: not found; --run needs folders with model.onnx and model.keras "
                                "(python export.py --run ..., or benchmarks/export_time.py), or --onnx_only")
    common.ferkeras.import_keras_quietly()
    from ferkeras.evaluate.report import load_eval_split

    faces = load_eval_split(args.data_dir, "valid")[0]
    if args.eval_faces:
        faces = faces[:args.eval_faces]
    command = common.command_line("benchmarks/inference_speed.py", argv)
    rows = []
    for run in runs:
        run_rows = measure_run(run, faces, args.repeats, with_keras=not args.onnx_only)
        print(common.format_table(COLUMNS, run_rows), flush=True)
        common.write_report(run / "inference_speed.json", "inference_speed", command, run_rows, summary(run, run_rows))
        rows += run_rows
    if len(runs) > 1:
        print("\n" + common.format_table(COLUMNS, rows))
    if args.out:
        common.write_report(args.out, "inference_speed", command, rows)
    return rows


def measure_run(run, faces, repeats, with_keras=True):
    """The onnxruntime and (with_keras) Keras rows of one exported folder."""
    from ferkeras.deploy.contract import INPUT_NAME, to_contract_input
    from ferkeras.models.predictor import KerasPredictor
    from ferkeras.deploy.contract import OnnxPredictor
    from ferkeras.models.weights import load_model_file

    contract = to_contract_input(faces[:64])
    nhwc = contract.transpose(0, 2, 3, 1)
    onnx = OnnxPredictor(run / "model.onnx", batch_size=64)
    session = onnx.session.session
    rows = [measure("onnxruntime", onnx, lambda: session.run(None, {INPUT_NAME: contract[:1]}),
                    lambda: session.run(None, {INPUT_NAME: contract}), faces, repeats)]
    if with_keras:
        model = load_model_file(run / "model.keras")
        keras_predictor = KerasPredictor(model, batch_size=64, path=run / "model.keras")
        rows.append(measure("keras", keras_predictor, lambda: model.predict_on_batch(nhwc[:1]),
                            lambda: model.predict_on_batch(nhwc), faces, repeats))
    return [{"model": run.name, **row} for row in rows]


def summary(run, rows):
    """The keys of the first version of this report, kept for what reads them."""
    by_runtime = {row["runtime"]: row for row in rows}
    figures = {"onnx_file_mb": (run / "model.onnx").stat().st_size / 1e6}
    for runtime, prefix in (("onnxruntime", "onnx"), ("keras", "keras")):
        if runtime in by_runtime:
            figures.update({f"{prefix}_batch1_ms": by_runtime[runtime]["batch1_ms"],
                            f"{prefix}_batch64_img_s": by_runtime[runtime]["batch64_img_s"],
                            f"{prefix}_eval_img_s": by_runtime[runtime]["eval_img_s"]})
    return figures


if __name__ == "__main__":
    run_cli(main)
