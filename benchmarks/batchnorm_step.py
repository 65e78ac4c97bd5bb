"""What the fused BatchNormalization gives a FerNet: its bare training step with ferkeras'
`FusedBatchNormalization` (models/batchnorm.py, what FerNet is built with) beside the same model with
Keras' own `BatchNormalization`.

    python benchmarks/batchnorm_step.py                                   # FerNetS and FerNetSD, batch 64
    python benchmarks/batchnorm_step.py --model_names FerNetS --mixed_precision bfloat16

Both models are built by train.py's own `new_model` (weights none) under the precision policy it uses,
the second with Keras' layer put back in place of the fused one, and timed with `train_on_batch` on one
fixed random batch: `--rounds` rounds of `--steps` steps each, the two models taking turns, so that
whatever else the machine does falls on both alike. The figure to read is the ratio (median over
rounds of the per-round ratio); images/s move with the machine and its load.
"""
import argparse
import contextlib
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.timing import time_calls  # noqa: E402

FERNETS = ("FerNetS", "FerNetSD", "FerNetM")
COLUMNS = (
    ("model", "model_name", None),
    ("precision", "mixed_precision", None),
    ("batch", "batch_size", "{}"),
    ("Keras BatchNormalization, images/s", "keras_img_s", "{:.1f}"),
    ("fused, images/s", "fused_img_s", "{:.1f}"),
    ("fused / Keras", "speedup", "{:.2f}x"),
    ("load 1-min before / after", "load", None),
)


@contextlib.contextmanager
def keras_batchnorm():
    """FerNet built with Keras' own BatchNormalization while inside (compact.py looks its layer up at build)."""
    import keras

    from ferkeras.models.backbones import compact

    fused = compact.FusedBatchNormalization
    compact.FusedBatchNormalization = keras.layers.BatchNormalization
    try:
        yield
    finally:
        compact.FusedBatchNormalization = fused


def build(model_name, batch_size, mixed_precision, fused):
    from ferkeras.train.config import resolve
    from ferkeras.train.distribute import precision_policy
    from ferkeras.train.run import new_model

    config, _ = resolve(["--model_name", model_name, "--weights", "none", "--batch_size", str(batch_size),
                         "--mixed_precision", mixed_precision])
    with precision_policy(config), (contextlib.nullcontext() if fused else keras_batchnorm()):
        return new_model(config)


def compare(model_name, batch_size, mixed_precision, rounds, steps):
    """One row: both variants' median images/s and the median per-round ratio."""
    import numpy as np

    models = {fused: build(model_name, batch_size, mixed_precision, fused) for fused in (False, True)}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, 48, 48, 1)).astype(np.float32)  # FER+ faces, as train.py feeds them
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, batch_size)]
    for model in models.values():  # tracing and the allocator's first growth are not steps
        for _ in range(2):
            model.train_on_batch(x, y)
    rates = {False: [], True: []}
    with common.LoadWindow() as load:
        for _ in range(rounds):
            for fused, model in models.items():
                timed = time_calls(lambda: model.train_on_batch(x, y), steps, warmup=0)
                rates[fused].append(batch_size / timed.median)
    return {"model_name": model_name, "mixed_precision": mixed_precision, "batch_size": batch_size,
            "keras_img_s": statistics.median(rates[False]), "fused_img_s": statistics.median(rates[True]),
            "speedup": statistics.median(f / k for f, k in zip(rates[True], rates[False])),
            "rounds": rounds, "steps": steps, **load.as_dict(), "load": load.text()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model_names", nargs="+", default=["FerNetS", "FerNetSD"],
                        help=f"FerNet sizes to time, of {', '.join(FERNETS)} (default: FerNetS FerNetSD)")
    parser.add_argument("--batch_size", type=int, default=64, help="(default: 64, the compact recipe's)")
    parser.add_argument("--mixed_precision", default="none", choices=("none", "bfloat16"),
                        help="train.py's --mixed_precision (default: none)")
    parser.add_argument("--rounds", type=int, default=5, help="turns each model takes (default: 5)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per turn (default: 10)")
    parser.add_argument("--out", default="benchmarks/results/batchnorm_step.json",
                        help="JSON report (default: %(default)s)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.model_names) - set(FERNETS))
    if unknown:
        raise UserError(f"--model_names: expected some of {', '.join(FERNETS)}; got {', '.join(unknown)}")
    if min(args.batch_size, args.rounds, args.steps) < 1:
        raise UserError(f"--batch_size, --rounds and --steps: at least 1; got {args.batch_size}, {args.rounds}, "
                        f"{args.steps}")
    keras = common.ferkeras.import_keras_quietly()
    rows = []
    for model_name in args.model_names:
        rows.append(compare(model_name, args.batch_size, args.mixed_precision, args.rounds, args.steps))
        print(common.format_table(COLUMNS, rows[-1:]), flush=True)
        keras.backend.clear_session()
    return common.finish("batchnorm_step", COLUMNS, rows, args.out, argv)


if __name__ == "__main__":
    run_cli(main)
