"""Ablation of the compact recipe: each training option measured against the same recipe without it.

    python benchmarks/ablation.py --data_dir ../shared/data/ferplus                  # every row, in order
    python benchmarks/ablation.py --data_dir ../shared/data/ferplus --rows recipe,mixup
    python benchmarks/ablation.py --data_dir ../shared/data/ferplus --report_only    # the table so far
    python benchmarks/ablation.py --data_dir ../shared/data/ferplus --rows distill \
        --teacher runs/facenet_ce --teacher models/ferplus-small.onnx                # + a distillation row

Every row is `train.py --config configs/fernet_small.yaml --nepochs N` plus the row's flags (ROWS), in
its own run folder, <output_dir>/ablation-<row>. A short schedule (8 epochs, cosine over them) keeps a
row to minutes rather than the recipe's 85: the rows rank options at a short budget, and options that
regularise (mixup, erasing, EMA) tend to pay off only in longer runs, so read a loss here as "not at 8
epochs". The "recipe, seed 1" row is the recipe again with another seed: the gap between the two recipe
rows is the noise any other row's difference has to clear.

Re-running the command continues: a finished run folder is only scored, an unfinished one resumes
(`--resume`), so rows survive a stopped session. Each run's best_acc checkpoint is scored on Valid
(majority protocol) without TTA, with flip and with crops TTA; it is also exported (`export.py --run`)
and the ONNX file scored: the deployed figure, on faces enlarged to the contract's 64 px. The report
(--out, JSON) keeps every row with its command, minutes of training (summed over sessions) and the
load average beside them; the Markdown table is printed.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras import CLASSES  # noqa: E402
from ferkeras.errors import UserError, run_cli  # noqa: E402
from ferkeras.timing import load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = "configs/fernet_small.yaml"

# (row, what it changes, train.py flags added to the recipe). The recipe itself: crossentropy targets
# (vote distributions), the ferplus augmentation, AdamW 2e-3 with 2 warm-up epochs then cosine, no
# label smoothing, mixing, erasing or EMA (configs/fernet_small.yaml).
ROWS = (
    ("recipe", "the recipe (crossentropy targets, ferplus augmentation, warm-up + cosine)", ()),
    ("seed1", "the recipe, seed 1 (the noise between two seeds)", ("--seed", "1")),
    ("majority", "majority targets instead of vote distributions", ("--training_mode", "majority")),
    ("probability", "targets sampled from the votes (probability mode)", ("--training_mode", "probability")),
    ("mixup", "+ mixup (alpha 0.2)", ("--mix", "mixup")),
    ("label_smoothing", "+ label smoothing 0.1", ("--label_smoothing", "0.1")),
    ("erasing", "+ random erasing, p 0.25", ("--erasing", "0.25")),
    ("ema", "+ EMA of the weights, decay 0.999", ("--ema", "0.999")),
    ("cutmix", "+ cutmix (alpha 0.2)", ("--mix", "cutmix")),
    ("no_warmup", "no warm-up (cosine from the first step)", ("--warmup_epochs", "0")),
    ("crop_flip", "crop/flip augmentation instead of ferplus", ("--augment", "crop_flip")),
    ("contract_round_trip", "+ faces resized through the ONNX contract's 64 px in the graph, as deployed",
     ("--contract_round_trip",)),
    # The network at the contract's own 64 px: the exported file then resizes nothing (a 48 px model's file
    # resizes 48 -> 64 -> 48), for about 1.8x the arithmetic of a step.
    ("image_size64", "the network at the ONNX contract's 64 px (the file resizes nothing)", ("--image_size", "64")),
    # Only where bfloat16 has hardware (AMX): on an AVX2-only CPU it trains several times slower.
    ("bfloat16", "bfloat16 mixed precision (CPUs with AMX)", ("--mixed_precision", "bfloat16")),
    # Its flags are the --teacher runs given to this script: each training face scored once by them, the
    # student's views augmented again every epoch (what a teacher as slow as FaceNet allows).
    ("distill", "+ distillation from the --teacher runs (each face scored once, views re-augmented)", None),
)
ROW_NAMES = tuple(name for name, _, _ in ROWS)
TEACHER_ROWS = ("distill",)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="FER+ data (Microsoft's layout)")
    parser.add_argument("--rows", default="all",
                        help=f"comma-separated rows to run, in this order; known: {', '.join(ROW_NAMES)}; all = "
                        "every row, the distill row only with --teacher")
    parser.add_argument("--teacher", action="append", default=[],
                        help="the distill row's teacher: a run folder or .keras / .onnx file; repeat for several")
    parser.add_argument("--nepochs", type=int, default=8, help="epochs per row (cosine over them)")
    parser.add_argument("--output_dir", default="runs", help="folder of the rows' run folders")
    parser.add_argument("--out", default="benchmarks/results/ablation.json", help="JSON report")
    parser.add_argument("--train_limit", type=int, default=0,
                        help="train each row on this many faces only (0 = all): a quick check of the script")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: score the finished rows and print the table")
    args = parser.parse_args(argv)
    if args.rows == "all":
        args.rows = [row for row in ROW_NAMES if args.teacher or row not in TEACHER_ROWS]
    else:
        args.rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in args.rows if row not in ROW_NAMES]
    if unknown:
        raise UserError(f"--rows: unknown row(s) {', '.join(unknown)}; expected some of {', '.join(ROW_NAMES)}")
    if not args.teacher and set(args.rows) & set(TEACHER_ROWS):
        raise UserError("--rows distill needs its teachers: add --teacher runs/<name> (a run folder or a "
                        ".keras / .onnx file; repeat for several)")
    if args.nepochs < 3:
        raise UserError(f"--nepochs must be >= 3 (the recipe warms up for 2 epochs), got {args.nepochs}")
    return args


def row_flags(row, args):
    """The train.py flags a row adds to the recipe."""
    if row == "distill":
        teachers = [flag for teacher in args.teacher for flag in ("--teacher", teacher)]
        return (*teachers, "--distill_views", "1", "--distill_reaugment")
    return dict((name, flags) for name, _, flags in ROWS)[row]


def train_command(row, args):
    """The train.py command line of a row (without --resume), as run from the repository's root."""
    flags = row_flags(row, args)
    return ["python", "train.py", "--config", RECIPE, "--data_dir", args.data_dir, "--output_dir",
            args.output_dir, "--name", f"ablation-{row}", "--nepochs", str(args.nepochs), *flags,
            *(["--train_limit", str(args.train_limit)] if args.train_limit else [])]


def run_dir(row, args):
    return Path(args.output_dir) / f"ablation-{row}"


def run_state(path):
    """'absent', 'empty' (stopped before its first epoch ended), 'started' or 'finished'."""
    from ferkeras.train.run_folder import RunFolder

    folder = RunFolder(path)
    if not folder.started():
        return "empty" if folder.exists() else "absent"
    return "finished" if folder.read_state().get("finished") else "started"


def train_row(row, args):
    """Train (or resume) a row's run in a subprocess, as a user would; return its wall minutes."""
    command = train_command(row, args)
    state = run_state(run_dir(row, args))
    command += {"started": ["--resume"], "empty": ["--overwrite"]}.get(state, [])
    print(f"[ablation] {row}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    # The paths given are the user's (relative to where this runs); only train.py and the recipe are the repo's.
    executed = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / RECIPE), *command[4:]]
    if subprocess.run(executed).returncode != 0:
        raise UserError(f"row {row}: train.py failed (its output is above); fix it and run this command again "
                        "to resume")
    return (time.perf_counter() - start) / 60


def score_row(row, args, scores):
    """Valid metrics of the row's best_acc checkpoint (no TTA, flip and crops TTA) and of its ONNX export;
    `scores` holds those already measured, which are kept."""
    from ferkeras.evaluate.report import evaluate, load_eval_split
    from ferkeras.models.predictor import load_predictor
    from ferkeras.train.run_folder import model_file

    faces, labels, vote_dist = load_eval_split(args.data_dir, "valid")
    if "plain" not in scores:
        predictor = load_predictor(model_file(run_dir(row, args)), 256)
        flip = evaluate(predictor, faces, labels, vote_dist, "flip")
        crops = evaluate(predictor, faces, labels, vote_dist, "crops")
        scores.update(plain=flip["metrics_without_tta"], flip=flip["metrics"], crops=crops["metrics"])
    if "exported" not in scores:
        scores["exported"] = evaluate(load_predictor(export_row(row, args), 256), faces, labels, vote_dist)["metrics"]
    return scores


def export_row(row, args):
    """The row's best_acc checkpoint exported as a user would (`export.py --run`); the ONNX file's path."""
    folder = run_dir(row, args)
    executed = [sys.executable, str(REPO / "export.py"), "--run", str(folder), "--data_dir", args.data_dir]
    if subprocess.run(executed, stdout=subprocess.DEVNULL).returncode != 0:
        raise UserError(f"row {row}: export.py failed (its error is above); fix it and run this command again")
    return folder / "model.onnx"


def best_epoch(row, args):
    from ferkeras.train.run_folder import RunFolder

    return RunFolder(run_dir(row, args)).read_state().get("best_epoch")


def markdown(results):
    """The README's ablation table: one row per finished run, the difference to the recipe's."""
    base = results.get("recipe", {}).get("scores", {}).get("plain", {}).get("accuracy")
    columns = ["row", "Valid", "vs recipe", "flip TTA", "crops TTA", "exported ONNX", "balanced", "recall: " + " / ".join(
        c[:3] for c in CLASSES), "best epoch", "minutes", "flags"]
    cells = []
    for name, what, flags in ROWS:
        result = results.get(name)
        if not result or "scores" not in result:
            continue
        flags = result.get("flags", flags)
        plain = result["scores"]["plain"]
        recalls = " / ".join(f"{100 * plain['per_class'][c]['recall']:.0f}" for c in CLASSES)
        delta = "" if base is None or name == "recipe" else f"{100 * (plain['accuracy'] - base):+.2f}"
        exported = f"{result['scores']['exported']['accuracy']:.2%}" if "exported" in result["scores"] else ""
        cells.append([what, f"{plain['accuracy']:.2%}", delta, f"{result['scores']['flip']['accuracy']:.2%}",
                      f"{result['scores']['crops']['accuracy']:.2%}", exported, f"{plain['balanced_accuracy']:.1%}",
                      recalls, str(result.get("best_epoch")), f"{result.get('minutes', 0):.0f}",
                      " ".join(flags) or "(none)"])
    return common.markdown_table(columns, cells)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    results = previous.get("results", {})
    for row in args.rows:
        result = results.setdefault(row, {})
        result["command"] = " ".join(train_command(row, args))
        result["flags"] = list(row_flags(row, args))
        if not args.report_only and run_state(run_dir(row, args)) != "finished":
            result["load_before"] = load_average()
            result["minutes"] = result.get("minutes", 0) + train_row(row, args)
            result["load_after"] = load_average()
            result.pop("scores", None)
        if run_state(run_dir(row, args)) == "finished" and "exported" not in result.get("scores", {}):
            result["scores"] = score_row(row, args, result.get("scores", {}))
            result["best_epoch"] = best_epoch(row, args)
        common.write_report(out, "ablation", common.command_line("benchmarks/ablation.py", argv), results,
                            {"nepochs": args.nepochs, "recipe": RECIPE})
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
