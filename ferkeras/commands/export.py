"""Export a trained model to ONNX as a drop-in for the ONNX Model Zoo emotion-ferplus-8.onnx, or to TFLite.

    python export.py --run runs/quick                        # runs/quick/model.onnx + model.keras
    python export.py --model best.keras --out deploy/fer.onnx --saved_model
    python export.py --run runs/quick --check_reference emotion-ferplus-8.onnx
    python export.py --check_reference emotion-ferplus-8.onnx   # the reference alone
    python export.py --run runs/quick --quantize int8        # also runs/quick/model.int8.onnx
    python export.py --model runs/quick/model.onnx --quantize int8   # quantize an existing export
    python export.py --run runs/a --run runs/b --tta flip --out ensemble.onnx   # one file, both models
    python export.py --model models/ferplus-small.onnx --run runs/b --out ensemble.onnx  # .onnx members too
    python export.py --run runs/a_finetuned --run runs/a --average weights --out soup.onnx  # one network
    python export.py --run runs/quick --format tflite --quantize int8  # model.tflite + model.int8.tflite

The ONNX file takes Input3 float32 [N,1,64,64] (raw grayscale 0..255, NCHW) and returns
Plus692_Output_0 [N,8] logits in FER+ order; it is checked against the Keras model before it is kept.
The TFLite files take the same pixels in TFLite's NHWC layout, [N,64,64,1], and say so in
<file>.json beside them.
"""
import argparse
from pathlib import Path

import ferkeras  # sets TensorFlow's environment before it is imported
from ferkeras.deploy.contract import INPUT_NAME, OUTPUT_NAME
from ferkeras.errors import UserError
from ferkeras.export.weight_average import AVERAGE_CHOICES
from ferkeras.export.onnx import DEFAULT_OPSET, MAX_OPSET, export_command  # TensorFlow loads only when converting
from ferkeras.export.int8 import (CALIBRATION_METHODS, DEFAULT_CALIBRATION_FACES, DEFAULT_METHOD, MIN_AGREEMENT,
                               check_calibration_options, check_quantize_choice)

FORMATS = ("onnx", "tflite")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--format", default="onnx",
                        help=f"{' / '.join(FORMATS)}: ONNX (the emotion-ferplus-8 contract) or TFLite for phones and "
                             "edge boards (NHWC [N,64,64,1], same pixels and scores) (default: onnx)")
    parser.add_argument("--run", action="append", help="run folder made by train.py (runs/<name>); repeat for an "
                        "ensemble: one ONNX file that runs every member and averages their probabilities")
    parser.add_argument("--model", action="append",
                        help="a .keras model to export (or, with --check_reference or --quantize, an exported "
                             ".onnx file); repeat, or add to --run, for an ensemble, whose members may be .onnx "
                             "files (a shipped model, an int8 copy)")
    parser.add_argument("--checkpoint", default="best_acc",
                        help="with --run: best_acc, best_loss, last or a file path (default: best_acc)")
    parser.add_argument("--out", help="ONNX path (default: model.onnx in the run folder or beside --model); "
                                      "with an .onnx --model and --quantize, the int8 file's path; with "
                                      "--format tflite, the .tflite path (default: model.tflite)")
    parser.add_argument("--average", default="probabilities", choices=AVERAGE_CHOICES,
                        help="with several members: probabilities runs every member and averages their outputs; "
                             "weights averages their weights into one network (a \"model soup\": as fast as one "
                             "member), for members of one architecture and one basin, such as a run and a "
                             "fine-tune started from it (train.py --weights runs/<a>/model.keras); also writes "
                             "<out>.keras (default: probabilities)")
    parser.add_argument("--tta", default="none", choices=("none", "flip", "crops"),
                        help="build test-time augmentation into the graph: flip averages each face with its "
                             "mirror, crops adds five crops of 90%% of the side (default: none)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, 7..{MAX_OPSET} (default: {DEFAULT_OPSET})")
    parser.add_argument("--input_name", default=INPUT_NAME, help=f"input tensor name (default: {INPUT_NAME})")
    parser.add_argument("--output_name", default=OUTPUT_NAME, help=f"output tensor name (default: {OUTPUT_NAME})")
    parser.add_argument("--data_dir", help="FER+ data for the parity check and --check_reference "
                                           "(default: the run's data_dir, else $FERKERAS_DATA or data/)")
    parser.add_argument("--saved_model", action="store_true", help="also write a TF SavedModel folder")
    parser.add_argument("--check_reference", metavar="ONNX",
                        help="emotion-ferplus-8.onnx: verify it and score it beside our model")
    parser.add_argument("--split", default="valid", choices=("valid", "test", "train"),
                        help="split scored by --check_reference (default: valid)")
    quant = parser.add_argument_group("int8 quantization (onnxruntime static quantization)")
    quant.add_argument("--quantize", metavar="int8",
                       help="also write <name>.int8.onnx beside the float file, calibrated on training "
                            "faces, and report size, speed and validation accuracy of both in "
                            "quantization.json (only int8 exists); with --format tflite, <name>.int8.tflite "
                            "(full integer, float input and output; see docs/deploy.md)")
    quant.add_argument("--calibration_faces", type=int, default=DEFAULT_CALIBRATION_FACES,
                       help=f"training faces that calibrate the activation ranges (default: "
                            f"{DEFAULT_CALIBRATION_FACES})")
    quant.add_argument("--calibration_method", default=DEFAULT_METHOD,
                       help=f"{' / '.join(CALIBRATION_METHODS)}: how activation ranges are chosen from the "
                            f"calibration faces (default: {DEFAULT_METHOD})")
    quant.add_argument("--per_channel", action="store_true",
                       help="one weight scale per output channel (7-bit weights) instead of per tensor")
    quant.add_argument("--min_agreement", type=float, default=MIN_AGREEMENT,
                       help=f"refuse the int8 model (write nothing) if its top-1 prediction matches the float "
                            f"model's on fewer than this fraction of validation faces (default: {MIN_AGREEMENT})")
    return parser


def check_quantize_flags(args, onnx_model):
    if args.quantize is None:
        return
    check_quantize_choice(args.quantize)
    check_calibration_options(args.calibration_faces, args.calibration_method)
    if not 0 <= args.min_agreement <= 1:
        raise UserError(f"--min_agreement: expected a fraction 0..1, got {args.min_agreement}")
    if not (args.run or args.model):
        raise UserError("--quantize: nothing to quantize; give --run runs/<name> (export, then quantize) "
                        "or --model FILE.onnx (quantize an existing export)")
    if onnx_model and args.saved_model:
        raise UserError(f"--saved_model: {onnx_model} is already ONNX; a SavedModel needs the .keras model "
                        "(give --run or --model FILE.keras)")


def check_tflite_flags(args):
    """Flags whose meaning is ONNX's alone are refused with --format tflite, rather than ignored."""
    onnx_only = (("--check_reference", args.check_reference is not None, "it compares ONNX files"),
                 ("--saved_model", args.saved_model, "it comes with the ONNX export"),
                 ("--opset", args.opset != DEFAULT_OPSET, "it is an ONNX setting"),
                 ("--per_channel", args.per_channel, "TFLite always quantizes convolutions per channel"),
                 ("--calibration_method", args.calibration_method != DEFAULT_METHOD,
                  "the TFLite converter calibrates by min/max only"))
    for flag, given, reason in onnx_only:
        if given:
            raise UserError(f"{flag}: applies to --format onnx only ({reason}); drop it for --format tflite")
    check_quantize_flags(args, None)


def export_tflite(args):
    from ferkeras.export.tflite import check_tflite_out, export_tflite_command

    check_tflite_flags(args)
    if args.out:
        check_tflite_out(Path(args.out))
    ferkeras.import_keras_quietly()  # only converting needs TensorFlow: flag errors come first

    export_tflite_command(run=args.run, model=args.model, checkpoint=args.checkpoint, out=args.out,
                          data_dir=args.data_dir, quantize=args.quantize,
                          calibration_faces_count=args.calibration_faces, min_agreement=args.min_agreement,
                          input_name=args.input_name, output_name=args.output_name)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.format not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {args.format!r}")
    runs, models = args.run or [], args.model or []
    ensemble = len(runs) + len(models) > 1 or args.tta != "none"
    if args.average == "weights" and len(runs) + len(models) < 2:
        raise UserError("--average weights needs at least two members: give --run or --model FILE.keras twice or more")
    if args.format == "tflite":
        if ensemble:
            raise UserError("--format tflite exports one model; drop the extra --run / --model and --tta, or "
                            "export the ensemble as ONNX")
        args.run, args.model = (runs or [None])[0], (models or [None])[0]
        return export_tflite(args)
    if not (args.run or args.model or args.check_reference):
        raise UserError("nothing to do: give --run runs/<name> or --model FILE.keras to export, and/or "
                        "--check_reference emotion-ferplus-8.onnx")
    from ferkeras.train.run_folder import run_config
    from ferkeras.export.reference import check_reference

    if ensemble:
        if args.quantize is not None or args.check_reference or args.saved_model:
            raise UserError("--quantize, --check_reference and --saved_model work on one model; export the ensemble "
                            "or TTA graph first, then pass its .onnx to --model (or give int8 members)")
        ferkeras.import_keras_quietly()
        from ferkeras.export.ensemble import export_ensemble_command
        export_ensemble_command(runs, models, args.checkpoint, args.tta, args.out, average=args.average,
                                opset=args.opset, input_name=args.input_name, output_name=args.output_name,
                                data_dir=args.data_dir)
        return
    args.run, args.model = (runs or [None])[0], (models or [None])[0]
    data_dir = args.data_dir or (run_config(args.run).data_dir if args.run else None)
    # An .onnx --model is only quantized or scored against the reference; anything else is exported first.
    onnx_model = args.model if args.model and args.model.lower().endswith(".onnx") and \
        (args.check_reference or args.quantize is not None) else None
    check_quantize_flags(args, onnx_model)
    ours = onnx_model
    if (args.run or args.model) and not ours:
        ferkeras.import_keras_quietly()  # only converting needs TensorFlow
        ours = export_command(run=args.run, model=args.model, checkpoint=args.checkpoint, out=args.out,
                              opset=args.opset, input_name=args.input_name, output_name=args.output_name,
                              data_dir=data_dir, saved_model=args.saved_model)["onnx"]
    if args.quantize is not None:
        from ferkeras.export.int8 import quantize_command

        quantize_command(ours, out=args.out if onnx_model else None, data_dir=data_dir,
                         calibration_faces_count=args.calibration_faces, method=args.calibration_method,
                         per_channel=args.per_channel, min_agreement=args.min_agreement)
    if args.check_reference:
        out_dir = Path(ours).parent if ours else Path(".")
        check_reference(args.check_reference, ours, data_dir=data_dir, split=args.split, out_dir=out_dir)

