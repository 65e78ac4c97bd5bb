"""Which ensemble to ship: every subset of the given models scored on Valid, each member inferred once.

    python benchmarks/ensemble_search.py --data_dir ../shared/data/ferplus \
        --run runs/fernet_s --run runs/fernet_s_kd --run runs/facenet_full --tta crops

`evaluate.py --run a --run b ...` scores one ensemble; trying every combination of n models that way
would infer each model 2^(n-1) times, and a FaceNet member takes minutes per pass. Here each member's
probabilities (without TTA and with --tta) are computed once and kept in --probs_dir, keyed by the
model file's path, size and modification time, so a later call with one more model infers only that
one. An ensemble's probabilities are the mean of its members' (what `evaluate.py` and an exported
ensemble compute, TTA included: the mean over views and the mean over members commute), so every
subset is scored from the stored arrays.

Prints the --show best rows as a Markdown table, best TTA accuracy first: members, parameters, Valid
accuracy without and with TTA, balanced accuracy, and the recall of each class; then the best subset
without TTA. Writes every row to --out (JSON). `--split_check N` says how much of the winner's figure
is the choice itself: the best subset is chosen on half the faces and scored on the other half. The
figure to publish is then checked with `evaluate.py` on the chosen members, and the file built with
`export.py` (`--run` or `--model` per member; .onnx members are merged as they are).
"""
import argparse
import hashlib
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (imports ferkeras first, which sets TensorFlow's environment)
from ferkeras import CLASSES  # noqa: E402
from ferkeras.errors import UserError, run_cli  # noqa: E402

MAX_MEMBERS = 12  # 4,095 subsets, scored in seconds from the stored probabilities


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--run", action="append", default=[], help="a run folder (its --checkpoint); repeat")
    parser.add_argument("--model", action="append", default=[], help="a .keras, .onnx or .tflite file; repeat")
    parser.add_argument("--checkpoint", default="best_acc", help="with --run: which checkpoint (default: best_acc)")
    parser.add_argument("--data_dir", required=True, help="FER+ data, e.g. ../shared/data/ferplus")
    parser.add_argument("--tta", default="crops", choices=("flip", "crops"), help="test-time augmentation scored "
                        "beside none (default: crops)")
    parser.add_argument("--probs_dir", default="benchmarks/results/ensemble_probs",
                        help="where each member's Valid probabilities are kept between calls (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/ensemble_search.json", help="JSON report of every "
                        "subset (default: %(default)s)")
    parser.add_argument("--split_check", type=int, default=0, metavar="N",
                        help="how optimistic the best subset's figure is: N times, choose the best subset on a random "
                        "half of Valid and score it on the other half, beside all the members together (default: "
                        "%(default)s, off)")
    parser.add_argument("--show", type=int, default=40, help="how many of the best rows to print (default: "
                        "%(default)s); --out has them all")
    args = parser.parse_args(argv)
    count = len(args.run) + len(args.model)
    if not 2 <= count <= MAX_MEMBERS:
        raise UserError(f"--run / --model: expected 2 to {MAX_MEMBERS} models, got {count}")
    if args.split_check < 0:
        raise UserError(f"--split_check: expected a number of random halves (0 for none), got {args.split_check}")
    if args.show < 1:
        raise UserError(f"--show: expected a number of rows of at least 1, got {args.show}")
    return args


def member_files(args):
    """(names, model files): a run by its folder's name, a file by its name, or by folder/name where two
    files share one (several runs' model.onnx)."""
    from ferkeras.evaluate.ensemble import ensemble_members

    paths = ensemble_members(args.run, args.model, args.checkpoint)  # a UserError names a missing file
    files = [Path(m) for m in args.model]
    names = [Path(r).name for r in args.run] + [f.name for f in files]
    names[len(args.run):] = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in files]
    if len(set(names)) != len(names):
        raise UserError(f"--run / --model: two models go by the same name ({', '.join(names)}); the table tells "
                        "them apart by name, so give each once")
    return names, paths


def stored_probabilities(name, path, faces, tta, probs_dir):
    """(probabilities without TTA, with TTA, parameters) of one model: from probs_dir when the file is the
    one scored then, else inferred and stored."""
    from ferkeras.errors import atomic_path
    from ferkeras.evaluate.tta import predict_probabilities
    from ferkeras.models.predictor import load_predictor

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{tta}|{len(faces)}"
    store = Path(probs_dir) / f"{name.replace('/', '_')}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if store.is_file():
        with np.load(store) as saved:
            if str(saved["key"]) == key and len(saved["plain"]) == len(faces):
                return saved["plain"], saved["tta"], int(saved["parameters"])
    print(f"[ensemble_search] {name}: inferring {path} without TTA and with {tta} TTA", flush=True)
    predictor = load_predictor(path, 256)
    plain, averaged, _ = predict_probabilities(predictor, faces, tta)
    parameters = int(predictor.describe().get("parameters") or 0)
    with atomic_path(store) as tmp:
        np.savez(tmp, key=key, plain=plain, tta=averaged, parameters=parameters)
    return plain, averaged, parameters


def subset_probabilities(scored):
    """(subset, probabilities without TTA, with TTA) for every non-empty subset of the members, smallest
    first, the whole set last: an ensemble's probabilities are the mean of its members'."""
    for size in range(1, len(scored) + 1):
        for subset in itertools.combinations(range(len(scored)), size):
            yield (subset, np.mean([scored[i][0] for i in subset], axis=0),
                   np.mean([scored[i][1] for i in subset], axis=0))


def score_subsets(names, scored, labels, vote_dist):
    """One row per non-empty subset of the members (each alone too), best TTA accuracy first."""
    from ferkeras.evaluate.metrics import classification_metrics

    rows = []
    for subset, plain, averaged in subset_probabilities(scored):
        with_tta = classification_metrics(labels, averaged, vote_dist)
        rows.append({"members": [names[i] for i in subset],
                     "parameters": sum(scored[i][2] for i in subset),
                     "accuracy": classification_metrics(labels, plain, vote_dist)["accuracy"],
                     "tta_accuracy": with_tta["accuracy"],
                     "tta_balanced_accuracy": with_tta["balanced_accuracy"],
                     "tta_recall": {c: with_tta["per_class"][c]["recall"] for c in CLASSES}})
    return sorted(rows, key=lambda row: (-row["tta_accuracy"], row["parameters"]))


def split_check(scored, labels, repeats, seed=0):
    """Choosing the best of thousands of subsets on Valid flatters the winner. Here the choice is made
    on a random half of the faces and scored on the other half, `repeats` times: if the held-out figure
    is no better than all the members averaged, the choice itself is noise."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    halves = [rng.permutation(len(labels)) < len(labels) // 2 for _ in range(repeats)]
    # correct[s, f]: is subset s right on face f
    pairs = [(plain.argmax(axis=1) == labels, averaged.argmax(axis=1) == labels)
             for _, plain, averaged in subset_probabilities(scored)]
    report = {"repeats": repeats}
    for which, correct in (("without_tta", np.stack([p for p, _ in pairs])), ("tta", np.stack([t for _, t in pairs]))):
        chosen = [correct[:, ~half].mean(axis=1)[correct[:, half].mean(axis=1).argmax()] for half in halves]
        together = [correct[-1, ~half].mean() for half in halves]
        report[which] = {"chosen_on_one_half": float(np.mean(chosen)), "chosen_sd": float(np.std(chosen)),
                         "all_members": float(np.mean(together))}
    return report


def markdown(rows, tta):
    columns = ["members", "parameters (M)", "Valid", f"{tta} TTA", "balanced (TTA)",
               "recall (TTA): " + " / ".join(c[:3] for c in CLASSES)]
    cells = [[" + ".join(row["members"]), f"{row['parameters'] / 1e6:.2f}", f"{row['accuracy']:.2%}",
              f"{row['tta_accuracy']:.2%}", f"{row['tta_balanced_accuracy']:.1%}",
              " / ".join(f"{100 * row['tta_recall'][c]:.0f}" for c in CLASSES)] for row in rows]
    return common.markdown_table(columns, cells)


def main(argv=None):
    args = parse_args(argv)
    names, paths = member_files(args)
    common.ferkeras.import_keras_quietly()
    from ferkeras.evaluate.report import load_eval_split

    faces, labels, vote_dist = load_eval_split(args.data_dir, "valid")
    scored = [stored_probabilities(name, path, faces, args.tta, args.probs_dir) for name, path in zip(names, paths)]
    rows = score_subsets(names, scored, labels, vote_dist)
    extra = {"tta": args.tta, "members": dict(zip(names, map(str, paths))), "n_faces": int(len(faces))}
    if args.split_check:
        extra["split_check"] = split_check(scored, labels, args.split_check)
    common.write_report(args.out, "ensemble_search", common.command_line("benchmarks/ensemble_search.py", argv),
                        rows, extra)
    print(markdown(rows[:args.show], args.tta))
    if len(rows) > args.show:
        print(f"({len(rows) - args.show} more rows in {args.out})")
    plain_best = max(rows, key=lambda row: (row["accuracy"], -row["parameters"]))
    print(f"best without TTA: {' + '.join(plain_best['members'])}: {plain_best['accuracy']:.2%}")
    if args.split_check:
        for which, label in (("without_tta", "without TTA"), ("tta", f"with {args.tta} TTA")):
            check = extra["split_check"][which]
            print(f"split check, {label}: the subset chosen on one half of Valid scores "
                  f"{check['chosen_on_one_half']:.2%} (sd {check['chosen_sd']:.2%}) on the other half, all "
                  f"{len(names)} members together {check['all_members']:.2%} ({args.split_check} random halves)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
