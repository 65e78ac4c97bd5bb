"""int8 static quantization of an exported model: the float / int8 table, and the settings compared.

    python benchmarks/quantize_int8.py --onnx runs/<name>/model.onnx --data_dir PATH
    python benchmarks/quantize_int8.py --onnx runs/<name>/model.onnx --data_dir PATH --compare_settings

The first form does what `export.py --model M.onnx --quantize int8` does: writes <name>.int8.onnx and
quantization.json beside the float file and prints size, latency at batch 1, throughput at batch 64
and validation accuracy of both. --compare_settings also quantizes with each alternative
quantize_static setting (format, activation / weight types, per-channel weights, calibration method)
into a scratch folder, times all of them in alternating rounds with the float model, and writes
quantization_settings.json beside the float file: how the default was chosen.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path and sets TensorFlow's environment)
import ferkeras  # noqa: E402
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.tables import text_table  # noqa: E402
from ferkeras.timing import Stopwatch  # noqa: E402
from ferkeras.export.int8 import DEFAULT_CALIBRATION_FACES, SPEED_ROUNDS  # noqa: E402


def alternatives():
    """name -> (calibration method, per_channel, quantize_static overrides); the first is the default."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "QDQ U8S8 per-tensor minmax (default)": ("minmax", False, {}),
        "QDQ U8S8 per-tensor entropy (= minmax)": ("entropy", False, {}),
        "QDQ U8S8 per-tensor percentile": ("percentile", False, {}),
        "QDQ U8S8 per-channel 7-bit minmax": ("minmax", True, {}),
        "QDQ U8S8 per-channel 8-bit minmax": ("minmax", True, {"reduce_range": False}),
        "QOperator U8S8 per-tensor minmax": ("minmax", False, {"quant_format": QuantFormat.QOperator}),
        "QDQ S8S8 per-tensor minmax": ("minmax", False, {"activation_type": QuantType.QInt8}),
        "QDQ U8U8 per-tensor minmax": ("minmax", False, {"weight_type": QuantType.QUInt8}),
    }


def compare_settings(float_path, data_dir, calibration_count, rounds, threads):
    """Quantize with every alternative, then time them all with the float model; return the rows."""
    from tqdm import tqdm

    from ferkeras.deploy.contract import ContractSession, to_contract_input
    from ferkeras.evaluate.report import load_eval_split
    from ferkeras.export.int8 import calibration_faces, compare_speed, quantize_int8, top1_agreement, valid_metrics

    faces, labels, vote_dist = load_eval_split(data_dir, "valid")
    eval_input = to_contract_input(faces)
    calibration = calibration_faces(data_dir, calibration_count)
    # Scored once up front, so that every setting's seconds cover the same work: quantize, then score Valid.
    float_logits = ContractSession(float_path).logits(eval_input)
    rows = {"float": {"size_bytes": Path(float_path).stat().st_size, "top1_agreement": 1.0,
                      "valid": valid_metrics(float_logits, labels, vote_dist)}}
    paths = {"float": float_path}
    with tempfile.TemporaryDirectory(prefix="ferkeras-int8-settings-") as work:
        for index, (name, (method, per_channel, overrides)) in enumerate(tqdm(alternatives().items(),
                                                                               desc="quantizing", unit="setting")):
            path = Path(work) / f"setting{index}.onnx"
            with Stopwatch() as watch:
                result = quantize_int8(float_path, path, calibration, eval_input, method, per_channel,
                                       min_agreement=0.0, overrides=overrides, float_logits=float_logits)
            rows[name] = {"quantize_seconds": watch.seconds, "size_bytes": path.stat().st_size,
                          "top1_agreement": top1_agreement(float_logits, result["int8_logits"]),
                          "valid": valid_metrics(result["int8_logits"], labels, vote_dist)}
            paths[name] = path
        print(f"timing {len(paths)} models in {rounds} alternating rounds ...", flush=True)
        with common.LoadWindow() as load:
            speed = compare_speed(paths, eval_input, rounds=rounds, threads=threads)
    for name in rows:
        rows[name].update(speed[name])
    return {"calibration_faces": calibration_count, "valid_faces": int(len(labels)), "rounds": rounds,
            "threads": threads,
            "timing_load": load.as_dict(), "settings": rows}


def format_settings(report):
    table = [("setting", "MB", "ms b1", "img/s b64", "valid acc", "bal. acc", "agree", "quant s")]
    for name, row in report["settings"].items():
        seconds = f"{row['quantize_seconds']:.0f}" if "quantize_seconds" in row else "-"
        table.append((name, f"{row['size_bytes'] / 1e6:.1f}", f"{row['latency_ms_batch1']:.2f}",
                      f"{row['throughput_batch64']:.0f}", f"{row['valid']['accuracy']:.2%}",
                      f"{row['valid']['balanced_accuracy']:.2%}", f"{row['top1_agreement']:.2%}", seconds))
    return text_table(table, align="lrrrrrrr", min_widths=(38, 6, 7, 9, 9, 8, 7, 7), gap=" ")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--onnx", required=True, help="the float contract model (model.onnx of export.py)")
    parser.add_argument("--data_dir", required=True, help="FER+ data: train faces calibrate, valid faces score")
    parser.add_argument("--out", help="int8 file (default: <name>.int8.onnx beside --onnx)")
    parser.add_argument("--calibration_faces", type=int, default=DEFAULT_CALIBRATION_FACES,
                        help=f"training faces for calibration (default: {DEFAULT_CALIBRATION_FACES})")
    parser.add_argument("--compare_settings", action="store_true",
                        help="also compare the alternative quantize_static settings (writes "
                             "quantization_settings.json beside --onnx; takes minutes)")
    parser.add_argument("--rounds", type=int, default=SPEED_ROUNDS,
                        help=f"alternating timing rounds for --compare_settings (default: {SPEED_ROUNDS}; "
                             "10 latency calls and one batch of 64 per model and round)")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads while timing (default: 0, one per core; 1 is less "
                             "swayed by other jobs on shared cores)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        raise UserError(f"--threads: expected 0 (one per core) or more, got {args.threads}")
    if args.rounds < 1:
        raise UserError(f"--rounds: expected at least 1, got {args.rounds}")
    from ferkeras.export.int8 import quantize_command

    quantize_command(args.onnx, out=args.out, data_dir=args.data_dir, calibration_faces_count=args.calibration_faces,
                     threads=args.threads)
    if args.compare_settings:
        report = compare_settings(Path(args.onnx), args.data_dir, args.calibration_faces, args.rounds,
                                  args.threads)
        print(format_settings(report))
        ferkeras.import_keras_quietly()  # the machine facts name the TensorFlow version
        print(f"load average while timing (before / after): {report['timing_load']['load_before']:.1f} / "
              f"{report['timing_load']['load_after']:.1f}")
        common.write_report(Path(args.onnx).parent / "quantization_settings.json", "quantize_int8_settings",
                            common.command_line("benchmarks/quantize_int8.py", argv), report.pop("settings"),
                            extra=report)


if __name__ == "__main__":
    run_cli(main)
