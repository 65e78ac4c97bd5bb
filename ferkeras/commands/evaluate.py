"""Evaluate a FER+ model under the majority protocol, or compare training runs.

    python evaluate.py --run runs/quick                      # best_acc checkpoint, valid split
    python evaluate.py --run runs/quick --checkpoint last --tta flip
    python evaluate.py --model runs/quick/model.onnx --split valid
    python evaluate.py --run runs/a --run runs/b --tta crops --out ensemble   # an ensemble of two
    python evaluate.py --model runs/quick/model.int8.tflite
    python evaluate.py --compare runs/* --out compare.png

Writes eval_<split>.json and confusion_<split>.png (in the run folder, beside --model, or in --out).
"""
import argparse

import ferkeras  # sets TensorFlow's environment before it is imported
from ferkeras.errors import UserError


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action="append", help="run folder made by train.py (runs/<name>); repeat for "
                                                       "an ensemble (the members' probabilities are averaged)")
    source.add_argument("--model", action="append", help="a .keras checkpoint, a .onnx or a .tflite export; repeat "
                                                         "for an ensemble")
    source.add_argument("--compare", nargs="+", metavar="RUN", help="run folders to tabulate side by side")
    parser.add_argument("--checkpoint", default="best_acc",
                        help="with --run: best_acc, best_loss, last or a file path (default: best_acc)")
    parser.add_argument("--data_dir", help="FER+ data (default: the run's data_dir, else $FERKERAS_DATA or data/)")
    parser.add_argument("--split", default="valid", choices=("valid", "test", "train"), help="default: valid")
    parser.add_argument("--batch_size", type=int, default=64, help="faces per inference batch (default: 64)")
    parser.add_argument("--tta", default="none", choices=("none", "flip", "crops"),
                        help="flip: average the softmax of each face and its mirror image; crops: also five "
                             "crops of 90%% of the side (corners and centre) (default: none)")
    parser.add_argument("--out", help="output folder (default: the run folder or the model's folder; for an "
                                      "ensemble, ensemble/); "
                                      "with --compare, the PNG path (default: compare.png)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    ferkeras.import_keras_quietly()
    if args.batch_size < 1:
        raise UserError(f"--batch_size: expected a positive number, got {args.batch_size}")
    if args.compare:
        from ferkeras.evaluate.compare import compare_runs
        compare_runs(args.compare, args.out or "compare.png")
        return
    from ferkeras.evaluate.report import evaluate_command  # TensorFlow loads here, after flag errors
    evaluate_command(run=args.run, model=args.model, checkpoint=args.checkpoint, data_dir=args.data_dir,
                     split=args.split, batch_size=args.batch_size, tta=args.tta, out=args.out)

