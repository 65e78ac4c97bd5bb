"""How much faster --cache_frozen trains: uncached step vs cache build + suffix step.

    python benchmarks/cache_frozen_speed.py --model_name FaceNet --freeze_before -98 \
        --weights ../shared/weights/facenet_keras.h5
    python benchmarks/cache_frozen_speed.py --model_name ResNet50 --freeze_before -51 --image_size 64

For one configuration it measures, on real FER+ faces, after a warm-up step each:
  - the uncached training step (whole model, frozen prefix recomputed): images/s;
  - building the cache (frozen prefix, inference): images/s per view;
  - the cached training step (trainable suffix on cached features): images/s;
and prints the time of one epoch over the full FER+ training split both ways, and of a whole run of
--epochs epochs including the cache build (--cache_views views per face). JSON goes to --out.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ferkeras  # noqa: E402  (sets TensorFlow's environment)
from ferkeras.timing import items_per_second, load_average, time_calls  # noqa: E402
from ferkeras.errors import write_text_atomic  # noqa: E402

FERPLUS_TRAIN_FACES = 28_709  # images in FER2013Train; the label modes keep slightly fewer


def rate(step, batch, seconds):
    """Images per second of `step()` over `batch` images, timed for about `seconds` after a warm-up."""
    timed = time_calls(step, 2, budget_s=seconds)
    return items_per_second(len(timed.walls) * batch, timed.total)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model_name", default="FaceNet")
    parser.add_argument("--weights", default="none", help="weights (speed does not depend on them)")
    parser.add_argument("--image_size", type=int, default=0, help="0 = the backbone's default")
    parser.add_argument("--freeze_before", type=int, default=-98)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--cache_views", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15, help="run length for the whole-run comparison")
    parser.add_argument("--seconds", type=float, default=20, help="timing window per measurement")
    parser.add_argument("--data_dir", default=os.environ.get("FERKERAS_DATA", "../shared/data/ferplus"))
    parser.add_argument("--out", default="benchmarks/results/cache_frozen_speed.json", help="JSON report (default: %(default)s)")
    args = parser.parse_args(argv)
    ferkeras.import_keras_quietly()
    import numpy as np

    from ferkeras.train.config import resolve
    from ferkeras.data.ferplus import load_labelled
    from ferkeras.train.frozen_cache import compile_suffix, split_model
    from ferkeras.train.run import new_model

    config, _ = resolve(["--model_name", args.model_name, "--weights", args.weights,
                         "--image_size", str(args.image_size), "--freeze_before", str(args.freeze_before),
                         "--batch_size", str(args.batch_size), "--class_weights", "none"])
    faces, targets, _ = load_labelled(args.data_dir, "valid", "majority")
    x = faces[:args.batch_size].astype(np.float32)[..., None]
    y = targets[:args.batch_size]
    model = new_model(config)
    prefix, suffix = split_model(model)
    features = prefix.predict_on_batch(x)
    compile_suffix(model, suffix)

    uncached = rate(lambda: model.train_on_batch(x, y), args.batch_size, args.seconds)
    build = rate(lambda: prefix.predict_on_batch(x), args.batch_size, args.seconds)
    cached = rate(lambda: suffix.train_on_batch(features, y), args.batch_size, args.seconds)

    n, views = FERPLUS_TRAIN_FACES, args.cache_views
    result = {
        "model_name": args.model_name, "image_size": model.get_layer("preprocess").image_size,
        "freeze_before": args.freeze_before, "batch_size": args.batch_size, "cache_views": views,
        "cut_shapes": [list(t.shape[1:]) for t in prefix.outputs],
        "uncached_train_img_s": uncached, "cache_build_img_s": build, "cached_train_img_s": cached,
        "epoch_s_uncached": n / uncached, "epoch_s_cached": n / cached, "cache_build_s": n * views / build,
        "speedup_per_epoch": cached / uncached,
        "run_s_uncached": args.epochs * n / uncached,
        "run_s_cached": n * views / build + args.epochs * n / cached,
        "epochs": args.epochs, "load_average": load_average(),
    }
    result["speedup_whole_run"] = result["run_s_uncached"] / result["run_s_cached"]
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"{args.model_name} @ {result['image_size']} px, freeze_before {args.freeze_before}, batch {args.batch_size}")
    print(f"  uncached training step  {uncached:8.1f} img/s  -> epoch of {n} faces {n / uncached / 60:6.1f} min")
    print(f"  cache build (inference) {build:8.1f} img/s  -> {views} views {n * views / build / 60:6.1f} min, once")
    print(f"  cached training step    {cached:8.1f} img/s  -> epoch {n / cached / 60:6.1f} min "
          f"({result['speedup_per_epoch']:.1f}x)")
    print(f"  {args.epochs} epochs: uncached {result['run_s_uncached'] / 3600:.2f} h, cached "
          f"{result['run_s_cached'] / 3600:.2f} h ({result['speedup_whole_run']:.1f}x); load average "
          f"{result['load_average']:.1f}")


if __name__ == "__main__":
    main()
