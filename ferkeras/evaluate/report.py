"""`evaluate.py`: a run, a model file or an ensemble scored on a FER+ split under the majority protocol.

Writes eval_<split>.json (every figure) and confusion_<split>.png beside the run or model, and prints a
table; the figures come from `metrics`, the views from `tta`.
"""
import json
from pathlib import Path

import numpy as np

from ferkeras.errors import check_output_folder, write_text_atomic
from ferkeras.evaluate.ensemble import EnsemblePredictor, ensemble_members
from ferkeras.evaluate.metrics import classification_metrics, vote_distribution
from ferkeras.evaluate.tta import predict_probabilities
from ferkeras.models.predictor import load_predictor
from ferkeras.tables import text_table
from ferkeras.train.run_folder import RunFolder, model_file, run_config


def load_eval_split(data_dir, split):
    """Faces kept by the majority protocol: (faces uint8 (M, 48, 48), labels (M,), vote dists (M, 8))."""
    from ferkeras.data.ferplus import load_split, resolve_data_dir
    from ferkeras.data.labels import majority_labels

    loaded = load_split(resolve_data_dir(data_dir), split)  # a UserError names an absent split
    labels, keep = majority_labels(loaded.votes)
    return loaded.images[keep], labels[keep], vote_distribution(loaded.votes[keep])


def evaluate(predictor, faces, labels, vote_dist, tta="none"):
    """Score a predictor on prepared faces; return the report dict written to eval_<split>.json."""
    plain, flipped, speed = predict_probabilities(predictor, faces, tta)
    report = {"n_faces": int(len(faces)), "images_per_second": float(speed), "tta": tta,
              "metrics": classification_metrics(labels, plain if flipped is None else flipped, vote_dist)}
    if flipped is not None:
        report["metrics_without_tta"] = classification_metrics(labels, plain, vote_dist)
    return report


def evaluate_command(run=None, model=None, checkpoint="best_acc", data_dir=None, split="valid",
                     batch_size=64, tta="none", out=None):
    """What `evaluate.py` does: load, score, print, write eval_<split>.json and confusion_<split>.png.

    Several --run / --model give an ensemble (`evaluate_ensemble`)."""
    if out:
        check_output_folder(out, "--out")
    runs, models = _as_list(run), _as_list(model)
    if len(runs) + len(models) > 1:
        return evaluate_ensemble(runs, models, checkpoint, data_dir, split, batch_size, tta, out)
    run, model = (runs or [None])[0], (models or [None])[0]
    model_path = model_file(run, model, checkpoint)
    config = run_config(run)
    predictor = load_predictor(model_path, batch_size)
    faces, labels, vote_dist = load_eval_split(data_dir or (config.data_dir if config else None), split)
    report = evaluate(predictor, faces, labels, vote_dist, tta)
    report = {"split": split, "model": predictor.describe(), "run": str(run) if run else None,
              "checkpoint": checkpoint if run else None, "batch_size": batch_size, **report}
    out_dir = Path(out) if out else (Path(run) if run else model_path.parent)
    label = f"{Path(run).name} ({model_path.stem})" if run else model_path.name
    return _write_report(report, out_dir, split, label)


def _as_list(value):
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def evaluate_ensemble(runs, models, checkpoint, data_dir, split, batch_size, tta, out):
    """Score the average of several models' probabilities (`evaluate.py --run a --run b ...`), and each
    member alone, so that the report says what the ensemble adds."""
    paths = ensemble_members(runs, models, checkpoint)
    configs = [run_config(r) for r in runs]
    members = [load_predictor(p, batch_size) for p in paths]
    data_dir = data_dir or next((c.data_dir for c in configs if c.data_dir), None)
    faces, labels, vote_dist = load_eval_split(data_dir, split)
    scored = [predict_probabilities(m, faces, tta) for m in members]
    plain = np.mean([p for p, _, _ in scored], axis=0)
    averaged = None if tta == "none" else np.mean([t for _, t, _ in scored], axis=0)
    speed = 1 / sum(1 / s for _, _, s in scored)  # the members run one after the other
    report = {"split": split, "model": EnsemblePredictor(members).describe(), "members": [str(p) for p in paths],
              "runs": [str(r) for r in runs], "checkpoint": checkpoint if runs else None, "batch_size": batch_size,
              "n_faces": int(len(faces)), "images_per_second": float(speed), "tta": tta,
              "metrics": classification_metrics(labels, plain if averaged is None else averaged, vote_dist)}
    if averaged is not None:
        report["metrics_without_tta"] = classification_metrics(labels, plain, vote_dist)
    report["member_accuracy"] = [classification_metrics(labels, p if t is None else t, vote_dist)["accuracy"]
                                 for p, t, _ in scored]
    return _write_report(report, Path(out or "ensemble"), split, f"ensemble of {len(paths)}")


def _write_report(report, out_dir, split, label):
    """eval_<split>.json and confusion_<split>.png in out_dir, and the report printed."""
    from ferkeras.evaluate.plots import plot_confusion

    folder = RunFolder(out_dir)  # named as in a run folder wherever they go (beside --model, in --out)
    json_path, png_path = folder.eval_report(split), folder.confusion_picture(split)
    write_text_atomic(json_path, json.dumps(report, indent=2))
    tta = report["tta"]
    title = f"{label} on {split}: accuracy {report['metrics']['accuracy']:.2%}" + \
        (f" ({tta} TTA)" if tta != "none" else "")
    plot_confusion(np.asarray(report["metrics"]["confusion"]), png_path, title)
    print(format_report(report))
    print(f"wrote {json_path} and {png_path}")
    return report


def format_report(report):
    """A readable table of a report: headline numbers, then one row per class."""
    metrics = report["metrics"]
    what = report["model"].get("path") or f"ensemble of {len(report.get('members', []))}"
    lines = [f"{what} ({report['model']['format']}) on {report['split']}: "
             f"{report['n_faces']} faces (majority protocol), {report['images_per_second']:.0f} images/s"]
    for member, accuracy in zip(report.get("members", []), report.get("member_accuracy", [])):
        lines.append(f"  member {member}: accuracy {accuracy:.2%}")
    if "metrics_without_tta" in report:
        plain = report["metrics_without_tta"]
        lines.append(f"accuracy {plain['accuracy']:.2%} without TTA, {metrics['accuracy']:.2%} with "
                     f"{report['tta']} TTA "
                     f"(balanced {plain['balanced_accuracy']:.2%} -> {metrics['balanced_accuracy']:.2%})")
    lines.append(f"accuracy {metrics['accuracy']:.2%} | balanced accuracy {metrics['balanced_accuracy']:.2%} | "
                 f"macro F1 {metrics['macro_f1']:.3f} | mean KL(votes || predicted) "
                 + (f"{metrics['mean_kl']:.3f}" if metrics["mean_kl"] is not None else "n/a"))
    per_class = [("class", "precision", "recall", "F1", "support")]
    for name, row in metrics["per_class"].items():
        recall = f"{row['recall']:.3f}" if row["recall"] is not None else "-"
        f1 = f"{row['f1']:.3f}" if row["f1"] is not None else "-"
        per_class.append((name, f"{row['precision']:.3f}", recall, f1, row["support"]))
    lines.append(text_table(per_class, align="lrrrr", min_widths=(10, 9, 7, 6, 8), gap=" "))
    return "\n".join(lines)
