"""Seconds per ResNet50 training step under each --mixed_precision / --jit_compile setting.

    python benchmarks/precision_speed.py --data_dir ../shared/data/ferplus          # the README table

Each setting builds the model as train.py does (ferkeras.train.distribute's dtype policy and compile options,
weights none) and times `train_on_batch` on one batch of real training faces, repeated: the first step
(tracing, and XLA compilation where on) is reported apart, then one more warm-up step, then the mean of
--steps steps. The load average is printed because neighbours' jobs skew such timings.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ferkeras  # noqa: E402  (sets TensorFlow's environment before it is imported)
from ferkeras.errors import run_cli  # noqa: E402
from ferkeras.timing import Stopwatch, load_average, time_calls  # noqa: E402

SETTINGS = (("none", False), ("bfloat16", False), ("float16", False), ("none", True), ("bfloat16", True))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None, help="FER+ data (default: $FERKERAS_DATA, else data/)")
    parser.add_argument("--image_size", type=int, default=64, help="side the graph resizes faces to (default 64)")
    parser.add_argument("--batch_size", type=int, default=32, help="faces per step (default 32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (default 5)")
    return parser.parse_args(argv)


def time_setting(precision, jit, faces, targets, image_size, steps):
    import keras

    from ferkeras.train import distribute
    from ferkeras.models.losses import loss_for_mode
    from ferkeras.models.registry import build_model
    from ferkeras.train.config import Config

    config = Config(mixed_precision=precision, jit_compile=jit)
    keras.utils.set_random_seed(0)
    with distribute.precision_policy(config):
        model = build_model("ResNet50", weights="none", image_size=image_size, dropout_rate=0.0)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss_for_mode("majority"),
                      **distribute.compile_options(config))
    with Stopwatch() as first_step:
        model.train_on_batch(faces, targets)
    step = time_calls(lambda: model.train_on_batch(faces, targets), steps).total / steps
    return {"mixed_precision": precision, "jit_compile": jit, "first_step_s": round(first_step.seconds, 1),
            "step_s": round(step, 3), "images_per_s": round(len(faces) / step, 1),
            "load_average": round(load_average(), 1)}


def main(argv=None):
    args = parse_args(argv)
    ferkeras.import_keras_quietly()
    import numpy as np

    from ferkeras.data.ferplus import load_split, resolve_data_dir

    faces = load_split(resolve_data_dir(args.data_dir), "train").images[:args.batch_size]
    faces = faces.astype(np.float32)[..., None]
    targets = np.eye(8, dtype=np.float32)[np.arange(len(faces)) % 8]
    for precision, jit in SETTINGS:
        print(json.dumps(time_setting(precision, jit, faces, targets, args.image_size, args.steps)), flush=True)


if __name__ == "__main__":
    run_cli(main)
