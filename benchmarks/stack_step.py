"""What the bare stack gives: the training step of Keras' own ResNet50 beside ferkeras' ResNet50, as a
fraction of this machine's float32 matrix-product rate, at several batch sizes.

    python benchmarks/stack_step.py                                   # 64 px, batches 32 and 64
    python benchmarks/stack_step.py --image_size 224 --batch_sizes 32

`keras.applications.ResNet50(weights=None)` on 3-channel input of the same size is the stack with
nothing of ferkeras in it: no in-graph resize, grayscale to RGB or normalisation, no dropout head, no
data pipeline. ferkeras' model is built as train.py builds it (`new_model`, every layer trainable).
Both are timed with `train_on_batch` on one fixed batch (median of --steps after 2 warm-up steps),
alternating, with the matrix-product rate taken before and after; FLOP conventions are in common.py.
The gap between the two rows bounds what ferkeras' layers cost (separate processes of the same step
differ by up to ~20% on a 2-core machine: repeat before reading much into it); the gap to
train_speed.py's end-to-end figure is what its loop costs.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.timing import time_calls  # noqa: E402


def keras_resnet50(image_size):
    import keras

    model = keras.applications.ResNet50(weights=None, input_shape=(image_size, image_size, 3), classes=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    return model, (image_size, image_size, 3)


def ferkeras_resnet50(image_size, batch_size):
    from ferkeras.train.config import resolve
    from ferkeras.train.run import new_model

    config, _ = resolve(["--model_name", "ResNet50", "--image_size", str(image_size), "--weights", "none",
                         "--freeze_before", "0", "--batch_size", str(batch_size)])
    return new_model(config), (48, 48, 1)  # FER+ faces; the model resizes them in its graph


def step_rate(model, input_shape, batch_size, steps):
    """(median seconds per train_on_batch step, training FLOPs per image) on one random batch."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, *input_shape)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, batch_size)]
    timed = time_calls(lambda: model.train_on_batch(x, y), steps, warmup=2)
    return timed.median, common.training_flops(model)


COLUMNS = (
    ("model", "model", None),
    ("batch", "batch_size", "{}"),
    ("s per step", "step_s", "{:.3f}"),
    ("images/s", "img_s", "{:.1f}"),
    ("train GFLOP/img", "training_gflop", "{:.2f}"),
    ("% of matmul rate", "fraction", "{:.0%}"),
    ("matmul GFLOP/s", "matmul_gflops", "{:.0f}"),
    ("load 1-min before / after", "load", None),
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--image_size", type=int, default=64, help="input side of both models (default: 64)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 64], help="(default: 32 64)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model and batch (default: 8)")
    parser.add_argument("--out", default="benchmarks/results/stack_step.json", help="JSON report (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.image_size < 32 or min(args.batch_sizes) < 1 or args.steps < 1:
        raise UserError("--image_size: at least 32 (ResNet50's smallest input); --batch_sizes and --steps: at "
                        f"least 1; got {args.image_size}, {args.batch_sizes}, {args.steps}")
    keras = common.ferkeras.import_keras_quietly()
    builders = {"keras.applications.ResNet50": lambda batch: keras_resnet50(args.image_size),
                "ferkeras ResNet50": lambda batch: ferkeras_resnet50(args.image_size, batch)}
    rows = []
    for batch_size in args.batch_sizes:
        for name, build in builders.items():
            with common.LoadWindow() as load:
                before, _ = common.matmul_rate()
                model, input_shape = build(batch_size)
                step_s, flops = step_rate(model, input_shape, batch_size, args.steps)
                after, _ = common.matmul_rate()
            matmul = (before + after) / 2
            img_s = batch_size / step_s
            rows.append({"model": name, "image_size": args.image_size, "batch_size": batch_size, "step_s": step_s,
                         "img_s": img_s, "training_gflop": flops / 1e9, "matmul_gflops": matmul,
                         "fraction": img_s * flops / 1e9 / matmul, **load.as_dict(), "load": load.text()})
            print(common.format_table(COLUMNS, rows[-1:]), flush=True)
            del model
            keras.backend.clear_session()
    return common.finish("stack_step", COLUMNS, rows, args.out, argv)


if __name__ == "__main__":
    run_cli(main)
