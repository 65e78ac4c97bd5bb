"""Training speed: images/s of the bare train step and of train.py's whole loop, and the arithmetic rate
each reaches as a fraction of this machine's float32 matrix-product rate.

    python benchmarks/train_speed.py --data_dir ../shared/data/ferplus                       # README table
    python benchmarks/train_speed.py --data_dir ../shared/data/ferplus --configs ResNet50@64 --epoch_seconds 600

A config is MODEL[@IMAGE_SIZE][:FREEZE_BEFORE], e.g. ResNet50@64:-51 (no size: the backbone's default).
Each is measured in three ways, with the model built by train.py's own `new_model` (weights none) and fed
by its own `FaceBatches` on real faces:

1. bare step: `train_on_batch` on one real batch, repeated (median after 2 warm-up steps);
2. end to end: `ferkeras.train.run.train` itself for 2 epochs (the first is the warm-up) on a subset
   sized to about --epoch_seconds of steps, with a validation subset in FER+'s own proportion (3,191
   validation faces per 25,045 training faces), all of train.py's callbacks (checkpoints, CSV, curves,
   TensorBoard) and a timing callback at each end of the list;
3. epoch wall: the second epoch's wall time, less validation, against steps x bare step time.

Arithmetic rate = FLOPs per image x images/s, as a fraction of the float32 matrix-product rate measured
in the same process before, between and after the two measurements (each measurement is set against
the mean of the two rates around it, so a neighbour's job starting midway skews it less; the 1-minute
load average before and after is in the table); FLOP conventions are in common.py.
End to end counts validation's forward FLOPs too. A full FER+ epoch (25,045 faces) is also projected:
its steps and validation at the measured per-step and per-face rates, plus the measured once-per-epoch
costs (checkpoints, curves, iterator start-up) once.
"""
import argparse
import contextlib
import functools
import gc
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.timing import clocks, time_calls  # noqa: E402

README_CONFIGS = ("ResNet50@64", "ResNet50@64:-51", "ResNet50@224", "ResNet50@224:-51", "VGG13", "FaceNet")
# FER+'s majority-protocol split sizes: one epoch trains on 25,045 faces and validates on 3,191.
FULL_TRAIN_FACES, FULL_VALID_FACES = 25045, 3191


# ----------------------------------------------------------------------------- configs

def parse_spec(spec):
    """'ResNet50@64:-51' -> (model_name, image_size or 0, freeze_before)."""
    name, _, freeze = spec.partition(":")
    name, _, size = name.partition("@")
    try:
        return name, int(size or 0), int(freeze or 0)
    except ValueError:
        raise UserError(f"--configs: {spec!r} is not MODEL[@IMAGE_SIZE][:FREEZE_BEFORE] (e.g. ResNet50@64:-51)")


def train_config(spec, args, output_dir, train_faces=0, valid_faces=0, nepochs=2):
    """The config train.py would resolve for this benchmark's flags (weights none: no downloads here)."""
    from ferkeras.train.config import resolve

    model_name, image_size, freeze_before = parse_spec(spec)
    flags = ["--model_name", model_name, "--image_size", str(image_size), "--freeze_before", str(freeze_before),
             "--weights", "none", "--batch_size", str(args.batch_size), "--augment", args.augment,
             "--data_dir", str(args.data_dir), "--output_dir", str(output_dir), "--name", _run_name(spec),
             "--nepochs", str(nepochs), "--train_limit", str(train_faces), "--valid_limit", str(valid_faces),
             "--mixed_precision", args.mixed_precision]
    config, _ = resolve(flags)
    return config


def _run_name(spec):
    return "bench-" + spec.replace("@", "-").replace(":", "_")


# ----------------------------------------------------------------------------- 1. the bare step

def bare_step(config, train, budget_s, min_steps=3, max_steps=50):
    """Build the model as train.py does and time `train_on_batch` on one real batch.

    Returns (median wall seconds per step, median CPU seconds per step, steps timed, the model's
    forward and training FLOPs per image and the dtype policy it was built under).
    """
    import keras

    from ferkeras.train.distribute import precision_policy
    from ferkeras.train.run import make_batches, new_model

    with precision_policy(config):  # as train.py builds it
        model = new_model(config)
    flops = {"forward": common.forward_flops(model), "training": common.training_flops(model),
             "policy": model.dtype_policy.name}
    batch = make_batches(config, train)[0]
    # Two warm-up steps: tracing and the allocator's first growth are not steps.
    timed = time_calls(functools.partial(model.train_on_batch, *batch), min_steps, warmup=2, budget_s=budget_s,
                       max_repeats=max_steps)
    del model
    keras.backend.clear_session()
    gc.collect()
    return timed.median, timed.median_cpu, len(timed.walls), flops


# ----------------------------------------------------------------------------- 2. train.py end to end

def timing_callbacks(record):
    """Two callbacks that go first and last in fit's list, so each epoch's marks bracket every other
    callback: epoch begin, each batch end, validation begin and end, and the end of on_epoch_end.
    Each mark is a wall time with its CPU time beside it ("cpu_<mark>")."""
    import keras

    def mark(name):
        record[-1][name], record[-1]["cpu_" + name] = clocks()

    class Opening(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            record.append({"batch_ends": [], "cpu_batch_ends": []})
            mark("begin")

        def on_train_batch_end(self, batch, logs=None):
            wall, cpu = clocks()
            record[-1]["batch_ends"].append(wall)
            record[-1]["cpu_batch_ends"].append(cpu)

        def on_test_begin(self, logs=None):
            mark("test_begin")

        def on_test_end(self, logs=None):
            mark("test_end")

    class Closing(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            mark("end")

    return Opening(), Closing()


@contextlib.contextmanager
def timed_callbacks(record):
    """Run `ferkeras.train.run.train` unchanged but with the timing callbacks around its own list."""
    from ferkeras.train import run as training

    original = training.callbacks_for

    def callbacks_for(*args, **kwargs):
        callbacks, recorder = original(*args, **kwargs)
        opening, closing = timing_callbacks(record)
        return [opening, *callbacks, closing], recorder

    training.callbacks_for = callbacks_for
    try:
        yield
    finally:
        training.callbacks_for = original


def end_to_end(config):
    """Train as train.py does for 2 epochs; return the timeline of both epochs."""
    from ferkeras.train.run import train

    record = []
    with timed_callbacks(record):
        train(config)
    if len(record) != 2 or "test_begin" not in record[1]:
        raise RuntimeError(f"expected 2 epochs with validation, recorded {len(record)}")
    return record


def epoch_figures(record, batch_size):
    """Seconds (wall, and CPU where marked) spent on each part of the second (warm) epoch."""
    warm, previous = record[1], record[0]
    ends = warm["batch_ends"]
    steps = len(ends)
    step_gaps = [b - a for a, b in zip(ends, ends[1:])]
    cpu_ends = warm["cpu_batch_ends"]
    cpu_step_gaps = [b - a for a, b in zip(cpu_ends, cpu_ends[1:])]
    return {
        "steps": steps,
        "gap_before_epoch_s": warm["begin"] - previous["end"],
        "first_step_s": ends[0] - warm["begin"],  # iterator start-up + one step
        "step_median_s": statistics.median(step_gaps) if step_gaps else ends[0] - warm["begin"],
        "train_s": warm["test_begin"] - warm["begin"],
        "validation_s": warm["test_end"] - warm["test_begin"],
        "epoch_end_callbacks_s": warm["end"] - warm["test_end"],
        "epoch_wall_s": warm["end"] - warm["begin"],
        "train_images": steps * batch_size,
        "cpu_step_median_s": statistics.median(cpu_step_gaps) if cpu_step_gaps else cpu_ends[0] - warm["cpu_begin"],
        "cpu_train_s": warm["cpu_test_begin"] - warm["cpu_begin"],
        "cpu_validation_s": warm["cpu_test_end"] - warm["cpu_test_begin"],
        "cpu_epoch_s": warm["cpu_end"] - warm["cpu_begin"],
        "cpu_cycle_s": warm["cpu_end"] - previous["cpu_end"],
    }


# ----------------------------------------------------------------------------- one config

def measure_config(spec, args, train, work_dir):
    """Every figure of one config, as a flat dict (the JSON row and the table row)."""
    from ferkeras.train.run import new_model  # noqa: F401  (fail early if the training module breaks)

    row = {"config": spec, "batch_size": args.batch_size, "augment": args.augment,
           "mixed_precision": args.mixed_precision, "precision": "float32" if args.mixed_precision == "none"
           else args.mixed_precision}
    with common.LoadWindow() as load:
        # The reference rate is taken before, between and after the two measurements, and each is set
        # against the mean of the two around it, so a neighbour's job that starts or ends midway skews
        # the fraction less.
        matmul = [common.matmul_rate(args.matmul_size, repeats=args.matmul_repeats)]
        step_s, step_cpu_s, timed_steps, flops = bare_step(train_config(spec, args, work_dir), train,
                                                           args.step_seconds)
        matmul.append(common.matmul_rate(args.matmul_size, repeats=args.matmul_repeats))
        steps = epoch_steps(step_s, args, len(train[0]))
        train_faces = steps * args.batch_size
        valid_faces = max(1, round(train_faces * FULL_VALID_FACES / FULL_TRAIN_FACES))
        record = end_to_end(train_config(spec, args, work_dir, train_faces, valid_faces))
        matmul.append(common.matmul_rate(args.matmul_size, repeats=args.matmul_repeats))
    epoch = epoch_figures(record, args.batch_size)
    wall_rates, cpu_rates = [rate for rate, _ in matmul], [rate for _, rate in matmul]
    row.update(load.as_dict(), load=load.text(), matmul_gflops_before_between_after=wall_rates,
               matmul_gflop_per_cpu_s_before_between_after=cpu_rates,
               matmul_bare_gflops=(wall_rates[0] + wall_rates[1]) / 2,
               matmul_e2e_gflops=(wall_rates[1] + wall_rates[2]) / 2,
               matmul_bare_gflop_per_cpu_s=(cpu_rates[0] + cpu_rates[1]) / 2,
               matmul_e2e_gflop_per_cpu_s=(cpu_rates[1] + cpu_rates[2]) / 2,
               forward_gflop=flops["forward"] / 1e9, training_gflop=flops["training"] / 1e9,
               bare_step_s=step_s, bare_step_cpu_s=step_cpu_s, bare_steps_timed=timed_steps,
               bare_step_policy=flops["policy"],
               valid_images=valid_faces, **epoch)
    row["matmul_text"] = " / ".join(f"{rate:.0f}" for rate in wall_rates)
    row.update(rates(row))
    return row


def epoch_steps(step_s, args, available_faces):
    """Steps of the benchmark epoch: about --epoch_seconds of bare steps, at least --min_epoch_steps."""
    wanted = max(args.min_epoch_steps, round(args.epoch_seconds / step_s))
    return min(wanted, available_faces // args.batch_size)


def rates(row):
    """Images/s and fractions of the matrix-product rate, measured and projected to a full FER+ epoch."""
    train_gflop, forward_gflop = row["training_gflop"], row["forward_gflop"]
    bare_img_s = row["batch_size"] / row["bare_step_s"]
    cycle_s = row["gap_before_epoch_s"] + row["epoch_wall_s"]
    work_gflop = row["train_images"] * train_gflop + row["valid_images"] * forward_gflop
    # The once-per-epoch costs: what the warm epoch spent beyond its steps and its validation.
    fixed_s = cycle_s - row["steps"] * row["step_median_s"] - row["validation_s"]
    full_steps = -(-FULL_TRAIN_FACES // row["batch_size"])
    full_s = (full_steps * row["step_median_s"] + row["validation_s"] * FULL_VALID_FACES / row["valid_images"]
              + fixed_s)
    full_gflop = FULL_TRAIN_FACES * train_gflop + FULL_VALID_FACES * forward_gflop
    return {
        "bare_img_s": bare_img_s,
        "bare_fraction": bare_img_s * train_gflop / row["matmul_bare_gflops"],
        "train_img_s": row["train_images"] / row["train_s"],
        "e2e_img_s": row["train_images"] / cycle_s,
        "e2e_fraction": work_gflop / cycle_s / row["matmul_e2e_gflops"],
        "fixed_per_epoch_s": fixed_s,
        "full_epoch_projected_s": full_s,
        "full_epoch_fraction": full_gflop / full_s / row["matmul_e2e_gflops"],
        "epoch_vs_steps": (row["epoch_wall_s"] - row["validation_s"]) / (row["steps"] * row["bare_step_s"]),
        "full_epoch_vs_steps": (full_s - row["validation_s"] * FULL_VALID_FACES / row["valid_images"])
        / (full_steps * row["bare_step_s"]),
        # The same in CPU seconds: how much of the work bought was arithmetic, whoever else ran.
        "bare_cpu_fraction": row["batch_size"] * train_gflop / row["bare_step_cpu_s"]
        / row["matmul_bare_gflop_per_cpu_s"],
        "e2e_cpu_fraction": work_gflop / row["cpu_cycle_s"] / row["matmul_e2e_gflop_per_cpu_s"],
        "epoch_cpu_vs_steps": (row["cpu_epoch_s"] - row["cpu_validation_s"]) / (row["steps"] * row["bare_step_cpu_s"]),
        # What the loop adds to each step (pipeline thread, callbacks, progress bar), in CPU seconds, and
        # what it spends once per epoch beyond steps and validation (checkpoints, curves, logs).
        "loop_cpu_per_step_s": row["cpu_step_median_s"] - row["bare_step_cpu_s"],
        "cpu_fixed_per_epoch_s": row["cpu_cycle_s"] - row["steps"] * row["cpu_step_median_s"] - row["cpu_validation_s"],
    }


# ----------------------------------------------------------------------------- report

COLUMNS = (
    ("config", "config", None),
    ("precision", "precision", None),
    ("train GFLOP/img", "training_gflop", "{:.2f}"),
    ("bare step img/s", "bare_img_s", "{:.1f}"),
    ("bare step % matmul", "bare_fraction", "{:.0%}"),
    ("train.py img/s", "e2e_img_s", "{:.1f}"),
    ("train.py % matmul", "e2e_fraction", "{:.0%}"),
    ("full epoch % matmul (proj.)", "full_epoch_fraction", "{:.0%}"),
    ("epoch / (steps x step)", "epoch_vs_steps", "{:.3f}"),
    ("full epoch / (steps x step) (proj.)", "full_epoch_vs_steps", "{:.3f}"),
    ("CPU time: bare step % matmul", "bare_cpu_fraction", "{:.0%}"),
    ("CPU time: train.py % matmul", "e2e_cpu_fraction", "{:.0%}"),
    ("CPU time: epoch / (steps x step)", "epoch_cpu_vs_steps", "{:.3f}"),
    ("CPU time: loop cost per step", "loop_cpu_per_step_s", "{:+.3f} s"),
    ("CPU time: once per epoch", "cpu_fixed_per_epoch_s", "{:.1f} s"),
    ("steps", "steps", "{}"),
    ("matmul GFLOP/s before / between / after", "matmul_text", None),
    ("load 1-min before / after", "load", None),
)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data_dir", required=True, help="FER+ data (either form), e.g. ../shared/data/ferplus")
    parser.add_argument("--configs", nargs="+", default=list(README_CONFIGS),
                        help="MODEL[@IMAGE_SIZE][:FREEZE_BEFORE] ... (default: the README table: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per step (default: train.py's, 32)")
    parser.add_argument("--augment", default="crop_flip", choices=("none", "crop_flip", "ferplus"),
                        help="training augmentation (default: train.py's, crop_flip)")
    parser.add_argument("--mixed_precision", default="none", choices=("none", "float16", "bfloat16"),
                        help="train.py's --mixed_precision (bfloat16 pays on CPUs with AMX) (default: none)")
    parser.add_argument("--step_seconds", type=float, default=30,
                        help="time spent timing bare steps per config, at least 3 steps (default: 30)")
    parser.add_argument("--epoch_seconds", type=float, default=90,
                        help="length of each benchmark epoch in bare-step time, at least --min_epoch_steps "
                             "steps; a whole FER+ epoch is 783 steps of 32 (default: 90)")
    parser.add_argument("--min_epoch_steps", type=int, default=4, help="fewest steps per benchmark epoch (default: 4)")
    parser.add_argument("--matmul_size", type=int, default=common.MATMUL_SIZE,
                        help="n of the float32 n x n @ n x n reference product (default: %(default)s)")
    parser.add_argument("--matmul_repeats", type=int, default=3,
                        help="timed products (median) before, between and after each config's two measurements "
                             "(default: 3)")
    parser.add_argument("--out", default="benchmarks/results/train_speed.json", help="JSON report (default: %(default)s)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    specs = [(spec, parse_spec(spec)) for spec in args.configs]  # a malformed spec fails before TF loads
    common.ferkeras.import_keras_quietly()
    from ferkeras.data.ferplus import load_labelled

    train_images, train_targets, _ = load_labelled(args.data_dir, "train", "majority")
    train = (train_images, train_targets)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferkeras-train-speed-") as work_dir:
        for spec, _ in specs:
            print(f"\n=== {spec} ===", flush=True)
            rows.append(measure_config(spec, args, train, work_dir))
            print(common.format_table(COLUMNS, rows[-1:]), flush=True)
    return common.finish("train_speed", COLUMNS, rows, args.out, argv,
                         {"conventions": common.__doc__.split("\n\n", 1)[1]})


if __name__ == "__main__":
    run_cli(main)
