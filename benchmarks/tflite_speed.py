"""TFLite float32 / int8 beside ONNX float32 / int8 of the same Keras model: size, latency, throughput, accuracy.

    python benchmarks/tflite_speed.py --run runs/<name> --data_dir PATH
    python benchmarks/tflite_speed.py --model best.keras --data_dir PATH --threads 1 --out_dir /tmp/files

Exports the model five ways, each with the checks export.py runs (parity with Keras, int8 agreement):
ONNX float32 and int8 (onnxruntime static quantization, ferkeras.export.int8's defaults), TFLite float32,
TFLite int8 as `export.py --format tflite --quantize int8` writes it (full integer, float I/O), and
TFLite dynamic-range int8 (the alternative that needs no calibration), both int8 flavours calibrated /
checked like the shipped ones. Then it scores all five on the FER+ validation faces (majority protocol)
and times them in alternating rounds (ferkeras.export.int8.time_sessions), so a machine shared with other
jobs slows all of them alike: latency at batch 1 (median call) and throughput at batch 64.

onnxruntime and LiteRT (XNNPACK) get the same number of threads (--threads, default: all cores).
Writes the Markdown table to stdout and the JSON report to --json (default tflite_speed.json in
--out_dir, else in the current folder).
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path and sets TensorFlow's environment)
import ferkeras  # noqa: E402
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.timing import Stopwatch  # noqa: E402
from ferkeras.export.int8 import DEFAULT_CALIBRATION_FACES, SPEED_ROUNDS  # noqa: E402

COLUMNS = [("model", "name", None), ("file", "file", None), ("size (MB)", "size_mb", "{:.2f}"),
           ("latency batch 1 (ms)", "latency_ms_batch1", "{:.2f}"),
           ("throughput batch 64 (faces/s)", "throughput_batch64", "{:.0f}"),
           ("valid accuracy", "accuracy", "{:.2%}"), ("balanced accuracy", "balanced_accuracy", "{:.2%}"),
           ("top-1 agreement with Keras", "agreement", "{:.2%}"), ("export + check (s)", "export_seconds", "{:.0f}")]


def export_all(model, config, source, data_dir, work, calibration, eval_input):
    """Write the five files into `work`; return {name: (path, export seconds)}."""
    from ferkeras.export.onnx import export_onnx
    from ferkeras.export.int8 import quantize_int8
    from ferkeras.export.tflite import DYNAMIC_RANGE, FULL_INT8, export_tflite

    work = Path(work)
    jobs = {
        "ONNX float32": (work / "model.onnx",
                         lambda path: export_onnx(model, path, config, source, data_dir=data_dir)),
        "ONNX int8": (work / "model.int8.onnx",
                      lambda path: quantize_int8(work / "model.onnx", path, calibration, eval_input)),
        "TFLite float32": (work / "model.tflite",
                           lambda path: export_tflite(model, path, config, source, data_dir=data_dir)),
        "TFLite int8 (full integer, shipped)": (
            work / "model.int8.tflite",
            lambda path: export_tflite(model, path, config, source, data_dir=data_dir, scheme=FULL_INT8,
                                       calibration=calibration)),
        "TFLite int8 (dynamic range)": (
            work / "model.dynamic.tflite",
            lambda path: export_tflite(model, path, config, source, data_dir=data_dir, scheme=DYNAMIC_RANGE)),
    }
    files = {}
    for name, (path, job) in jobs.items():
        with Stopwatch() as watch:
            job(path)
        files[name] = (path, watch.seconds)
        print(f"exported {name}: {path.name} ({files[name][1]:.0f} s)", flush=True)
    return files


def open_session(path, threads):
    from ferkeras.deploy.contract import ContractSession
    from ferkeras.deploy.tflite import TfliteSession

    if Path(path).suffix == ".onnx":
        return ContractSession(path, intra_threads=threads), "onnx"
    return TfliteSession(path, threads=threads), "tflite"


def measure(files, keras_logits, eval_faces, threads, rounds):
    """Scores, accuracy and agreement of every file on the validation faces, then the timing rounds."""
    from ferkeras.export.int8 import time_sessions, top1_agreement, valid_metrics
    from ferkeras.deploy.tflite import to_tflite_input
    from ferkeras.deploy.contract import to_contract_input

    faces, labels, vote_dist = eval_faces
    layouts = {"onnx": to_contract_input(faces), "tflite": to_tflite_input(faces)}
    rows, sessions = {}, {}
    for name, (path, seconds) in files.items():
        session, layout = open_session(path, threads)
        logits = session.logits(layouts[layout])
        valid = valid_metrics(logits, labels, vote_dist)
        rows[name] = {"name": name, "file": path.name, "size_mb": path.stat().st_size / 1e6,
                      "size_bytes": path.stat().st_size, "accuracy": valid["accuracy"],
                      "balanced_accuracy": valid["balanced_accuracy"], "macro_f1": valid["macro_f1"],
                      "agreement": top1_agreement(keras_logits, logits), "export_seconds": seconds}
        sessions[name] = (session, layouts[layout])
    with common.LoadWindow() as load:
        speed = time_sessions(sessions, rounds=rounds, threads=threads)
    for name, row in rows.items():
        row.update({key: speed[name][key] for key in ("latency_ms_batch1", "throughput_batch64", "latency_runs")})
    return list(rows.values()), load


def runtime_versions():
    import ai_edge_litert
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "ai_edge_litert": ai_edge_litert.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder made by train.py (its best_acc checkpoint)")
    source.add_argument("--model", help="a .keras model")
    parser.add_argument("--data_dir", help="FER+ data (default: the run's data_dir, else $FERKERAS_DATA or data/)")
    parser.add_argument("--calibration_faces", type=int, default=DEFAULT_CALIBRATION_FACES,
                        help=f"training faces that calibrate both int8 files (default: {DEFAULT_CALIBRATION_FACES})")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads of onnxruntime and of LiteRT alike (default: all cores)")
    parser.add_argument("--rounds", type=int, default=SPEED_ROUNDS, help=f"timing rounds (default: {SPEED_ROUNDS})")
    parser.add_argument("--out_dir", help="keep the five files here (default: a scratch folder)")
    parser.add_argument("--json", help="report path (default: tflite_speed.json in --out_dir or here)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        raise UserError(f"--threads and --rounds: expected whole numbers >= 1, got {args.threads} and {args.rounds}")
    ferkeras.import_keras_quietly()
    from ferkeras.deploy.contract import to_contract_input
    from ferkeras.evaluate.report import load_eval_split
    from ferkeras.export.onnx import export_source
    from ferkeras.models.weights import load_model_file
    from ferkeras.export.int8 import calibration_faces

    source_path, config = export_source(args.run, args.model)
    data_dir = args.data_dir or (config.data_dir if config else None)
    model = load_model_file(source_path)
    eval_faces = load_eval_split(data_dir, "valid")
    calibration = calibration_faces(data_dir, args.calibration_faces)
    eval_input = to_contract_input(eval_faces[0])
    keras_logits = model.predict(eval_input.transpose(0, 2, 3, 1), batch_size=64, verbose=0)
    with tempfile.TemporaryDirectory(prefix="ferkeras-tflite-speed-") as scratch:
        work = Path(args.out_dir) if args.out_dir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        files = export_all(model, config, source_path, data_dir, work, calibration, eval_input)
        rows, load = measure(files, keras_logits, eval_faces, args.threads, args.rounds)
    print(f"\n{source_path} ({config.model_name if config else model.name}, {model.count_params():,} parameters), "
          f"FER+ valid {len(eval_faces[1])} faces; {args.threads} threads; load average {load.text()} "
          "(before / after timing)\n")
    print(common.format_table(COLUMNS, rows))
    json_path = Path(args.json) if args.json else Path(args.out_dir or ".") / "tflite_speed.json"
    common.write_report(json_path, "tflite_speed", common.command_line("benchmarks/tflite_speed.py", argv), rows,
                        {"source": str(source_path), "runtimes": runtime_versions(),
                         "threads": args.threads, "rounds": args.rounds,
                         "calibration_faces": len(calibration), "valid_faces": len(eval_faces[1]),
                         **load.as_dict()})
    return rows


if __name__ == "__main__":
    run_cli(main)
