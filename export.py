"""Export a trained model to ONNX as a drop-in for the ONNX Model Zoo emotion-ferplus-8.onnx.

    python export.py --run runs/quick                        # runs/quick/model.onnx + model.keras
    python export.py --model best.keras --out deploy/fer.onnx --saved_model
    python export.py --run runs/quick --check_reference emotion-ferplus-8.onnx
    python export.py --check_reference emotion-ferplus-8.onnx   # the reference alone

The ONNX file takes Input3 float32 [N,1,64,64] (raw grayscale 0..255, NCHW) and returns
Plus692_Output_0 [N,8] logits in FER+ order; it is checked against the Keras model before it is kept.
"""
import argparse
from pathlib import Path

import ferkeras  # sets TensorFlow's environment before it is imported
from ferkeras.contract import INPUT_NAME, OUTPUT_NAME
from ferkeras.errors import UserError, run_cli
from ferkeras.export import DEFAULT_OPSET, MAX_OPSET, export_command  # TensorFlow loads only when converting


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="run folder made by train.py (runs/<name>)")
    source.add_argument("--model", help="a .keras model to export (or, with --check_reference, a .onnx file)")
    parser.add_argument("--checkpoint", default="best_acc",
                        help="with --run: best_acc, best_loss, last or a file path (default: best_acc)")
    parser.add_argument("--out", help="ONNX path (default: model.onnx in the run folder or beside --model)")
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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (args.run or args.model or args.check_reference):
        raise UserError("nothing to do: give --run runs/<name> or --model FILE.keras to export, and/or "
                        "--check_reference emotion-ferplus-8.onnx")
    ferkeras.import_keras_quietly()
    from ferkeras.evaluation import run_config
    from ferkeras.reference import check_reference

    data_dir = args.data_dir or run_config(args.run).get("data_dir")
    # An .onnx --model is only scored against the reference; anything else is exported first.
    ours = args.model if args.model and args.model.lower().endswith(".onnx") and args.check_reference else None
    if (args.run or args.model) and not ours:
        ours = export_command(run=args.run, model=args.model, checkpoint=args.checkpoint, out=args.out,
                              opset=args.opset, input_name=args.input_name, output_name=args.output_name,
                              data_dir=data_dir, saved_model=args.saved_model)["onnx"]
    if args.check_reference:
        out_dir = Path(ours).parent if ours else Path(".")
        check_reference(args.check_reference, ours, data_dir=data_dir, split=args.split, out_dir=out_dir)


if __name__ == "__main__":
    run_cli(main)
