"""Input pipeline speed: images/s of train.py's `FaceBatches` on its own, per augmentation recipe, against
the images/s of the training step it feeds.

    python benchmarks/pipeline_speed.py --data_dir ../shared/data/ferplus                  # README table
    python benchmarks/pipeline_speed.py --data_dir ../shared/data/ferplus --train_json benchmarks/results/train_speed.json

The batches come from `ferkeras.train.run.make_batches` (shuffling, augmentation, float32 conversion,
class-weight sample weights) over real training faces, read one after the other in one thread, as
`model.fit` reads a PyDataset with workers=1 (on a tf.data prefetch thread, beside the training step).
The training step is ResNet50 at 64x64, every layer trainable (--step_config): measured here as the
median bare `train_on_batch` step unless --train_json gives a train_speed.py report to take it from.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.timing import items_per_second, time_calls  # noqa: E402

RECIPES = ("none", "crop_flip", "ferplus")
# The pipeline must outrun the step it feeds by this factor, so it never is the bottleneck.
REQUIRED_HEADROOM = 10


def pipeline_rate(batches, seconds, max_batches=None):
    """(images/s, batches read): read batches in order, from the first, for about `seconds`."""
    limit = len(batches) if max_batches is None else min(len(batches), max_batches)
    sizes = []

    def read_next():
        sizes.append(len(batches[len(sizes)][0]))

    timed = time_calls(read_next, min(2, limit), warmup=0, budget_s=seconds, max_repeats=limit)
    return items_per_second(sum(sizes), timed.total), len(sizes)


def step_rate_from_report(path, spec):
    """The bare-step images/s of `spec` in a train_speed.py JSON report."""
    import json

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such train_speed.py report; run benchmarks/train_speed.py or drop --train_json")
    rows = {row["config"]: row for row in json.loads(path.read_text())["results"]}
    if spec not in rows:
        raise UserError(f"{path}: has no row for {spec!r} (it has {', '.join(rows)}); pass --step_config "
                        "one of those or drop --train_json")
    return rows[spec]["bare_img_s"], str(path)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data_dir", required=True, help="FER+ data (either form), e.g. ../shared/data/ferplus")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES,
                        help="augmentation recipes to time (default: all)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per batch (default: train.py's, 32)")
    parser.add_argument("--seconds", type=float, default=10, help="time spent reading batches per recipe (default: 10)")
    parser.add_argument("--max_batches", type=int, default=None, help="read at most this many batches per recipe")
    parser.add_argument("--step_config", default="ResNet50@64",
                        help="the training step to compare with, MODEL[@IMAGE_SIZE][:FREEZE_BEFORE] (default: %(default)s)")
    parser.add_argument("--step_seconds", type=float, default=20, help="time spent timing that step (default: 20)")
    parser.add_argument("--train_json", help="take the step's images/s from this train_speed.py report instead")
    parser.add_argument("--out", default="benchmarks/results/pipeline_speed.json", help="JSON report (default: %(default)s)")
    return parser


COLUMNS = (
    ("augmentation", "augment", None),
    ("pipeline img/s (1 thread)", "pipeline_img_s", "{:,.0f}"),
    ("batches read", "batches", "{}"),
    ("training step img/s", "step_img_s", "{:.1f}"),
    ("pipeline / step", "headroom", "{:.0f}x"),
    (f"at least {REQUIRED_HEADROOM}x", "enough", None),
    ("load 1-min before / after", "load", None),
)


def main(argv=None):
    args = build_parser().parse_args(argv)
    import train_speed

    train_speed.parse_spec(args.step_config)
    common.ferkeras.import_keras_quietly()
    from ferkeras.data.ferplus import load_labelled
    from ferkeras.train.run import make_batches

    images, targets, _ = load_labelled(args.data_dir, "train", "majority")
    settings = argparse.Namespace(batch_size=args.batch_size, data_dir=args.data_dir, augment="crop_flip",
                                  mixed_precision="none")
    rows = []
    for recipe in args.recipes:
        settings.augment = recipe
        config = train_speed.train_config(args.step_config, settings, output_dir="unused")
        batches = make_batches(config, (images, targets))
        with common.LoadWindow() as load:
            img_s, count = pipeline_rate(batches, args.seconds, args.max_batches)
        rows.append({"augment": recipe, "pipeline_img_s": img_s, "batches": count, "batch_size": args.batch_size,
                     **load.as_dict(), "load": load.text()})
        print(f"{recipe}: {img_s:,.0f} images/s over {count} batches", flush=True)

    if args.train_json:
        step_img_s, step_source = step_rate_from_report(args.train_json, args.step_config)
        step_load = None
    else:
        settings.augment = "crop_flip"
        config = train_speed.train_config(args.step_config, settings, output_dir="unused")
        with common.LoadWindow() as step_load:
            step_s, _, _, _ = train_speed.bare_step(config, (images, targets), args.step_seconds)
        step_img_s, step_source = args.batch_size / step_s, f"measured here (bare train_on_batch, batch {args.batch_size})"
    for row in rows:
        row.update(step_config=args.step_config, step_img_s=step_img_s, headroom=row["pipeline_img_s"] / step_img_s)
        row["enough"] = "yes" if row["headroom"] >= REQUIRED_HEADROOM else "NO"
    print("\n" + common.format_table(COLUMNS, rows))
    print(f"training step: {args.step_config}, {step_img_s:.1f} images/s, {step_source}"
          + (f", load {step_load.text()}" if step_load else ""))
    common.write_report(args.out, "pipeline_speed", common.command_line("benchmarks/pipeline_speed.py", argv),
                        rows, {"step": {"config": args.step_config, "img_s": step_img_s, "source": step_source,
                                        **(step_load.as_dict() if step_load else {})}})
    return rows


if __name__ == "__main__":
    run_cli(main)
