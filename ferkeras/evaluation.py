"""Evaluate a trained model on a FER+ split under the majority protocol, and compare runs.

The FER+ majority protocol (Barsoum et al. 2016) scores a face only if more than half of its votes,
after removing single stray votes, agree on one emotion; the other faces are left out. Metrics are
computed by pure numpy functions from (labels, probabilities), so they can be checked by hand, and
the models are hidden behind predictors with one method, `logits(faces)`.
"""
import json
import time
from pathlib import Path

import numpy as np

from . import CLASSES, NUM_CLASSES
from .errors import UserError, check_output_folder, write_text_atomic

CHECKPOINT_NAMES = ("best_acc", "best_loss", "last")


# ----------------------------------------------------------------------------- metrics (pure numpy)

def softmax(logits):
    """Row-wise softmax in float64, stable for large logits."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def confusion_matrix(labels, predicted, num_classes=NUM_CLASSES):
    """Counts (num_classes, num_classes): rows are the true classes, columns the predicted ones."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def vote_distribution(votes):
    """The 8 emotion votes of each face normalised to sum to 1 ("unknown" and "not a face" left out)."""
    emotions = np.asarray(votes, dtype=np.float64)[:, :NUM_CLASSES]
    totals = emotions.sum(axis=1, keepdims=True)
    return np.divide(emotions, totals, out=np.zeros_like(emotions), where=totals > 0)


def mean_kl_divergence(vote_dist, probabilities, eps=1e-12):
    """Mean KL(P || Q) = sum_c P_c log(P_c / Q_c), with P the annotators' vote distribution and Q the
    model's predicted distribution.

    This direction asks how well the model's distribution explains the crowd's: it grows without
    bound when the model gives ~0 probability to an emotion that annotators chose, and it ignores
    classes nobody voted for (0 log 0 = 0). Q is clipped at `eps` so a hard 0 stays finite.
    """
    p = np.asarray(vote_dist, dtype=np.float64)
    q = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0)
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return float(terms.sum(axis=1).mean()) if len(p) else None


def classification_metrics(labels, probabilities, vote_dist=None):
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix, mean KL.

    `labels` are the majority classes (N,), `probabilities` the model's (N, 8) distributions and
    `vote_dist` (optional) the (N, 8) vote distributions for the KL term. Conventions: precision of
    a class that is never predicted is 0; recall and F1 of a class with no faces are None, and such
    a class is left out of the balanced accuracy (the mean recall over the classes present).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        raise UserError("no faces to score: every face of the split was dropped by the majority protocol")
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted)
    correct = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    per_class, recalls = {}, []
    for k, name in enumerate(CLASSES):
        precision = correct[k] / predicted_count[k] if predicted_count[k] else 0.0
        if support[k]:
            recall = correct[k] / support[k]
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            recalls.append(recall)
        else:
            recall = f1 = None
        per_class[name] = {"precision": float(precision), "recall": _float_or_none(recall),
                           "f1": _float_or_none(f1), "support": int(support[k])}
    f1s = [c["f1"] for c in per_class.values() if c["f1"] is not None]
    return {
        "n": int(len(labels)),
        "accuracy": float(correct.sum() / len(labels)),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(np.mean(f1s)),
        "mean_kl": mean_kl_divergence(vote_dist, probabilities) if vote_dist is not None else None,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _float_or_none(value):
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- models as predictors

class KerasPredictor:
    """A ferkeras Keras model: raw faces 0..255 (N, H, W, 1) in, 8 logits out."""

    kind = "keras"

    def __init__(self, model, batch_size=64, path=None):
        self.model, self.batch_size, self.path = model, batch_size, path
        check_class_count(model.output_shape[-1], path or model.name)

    def logits(self, faces):
        # model.predict runs a compiled (tf.function / jit) step over fixed-size batches.
        from .contract import check_finite_scores

        x = np.asarray(faces, dtype=np.float32)[..., None]
        logits = np.asarray(self.model.predict(x, batch_size=self.batch_size, verbose=0), dtype=np.float32)
        return check_finite_scores(logits, self.path or self.model.name)

    def describe(self):
        return {"format": "keras", "path": str(self.path) if self.path else None,
                "parameters": int(self.model.count_params())}


class OnnxPredictor:
    """An ONNX contract model scored with onnxruntime on `to_contract_input(faces)`."""

    kind = "onnx"

    def __init__(self, path, batch_size=64):
        from .contract import ContractSession, check_onnx_contract

        self.path, self.batch_size = Path(path), batch_size
        self.info = check_onnx_contract(path)
        self.session = ContractSession(path, self.info)

    def logits(self, faces):
        from .contract import to_contract_input

        return self.session.logits(to_contract_input(faces), batch_size=self.batch_size)

    def describe(self):
        return {"format": "onnx", "path": str(self.path), "parameters": self.info["parameters"],
                "opset": self.info["opset"], "fixed_batch": self.info["batch"]}


def check_class_count(count, source):
    if count != NUM_CLASSES:
        raise UserError(f"{source}: the model scores {count} classes, expected {NUM_CLASSES} (the FER+ "
                        f"classes {', '.join(CLASSES)}); train it with train.py or pick another file")


def load_predictor(path, batch_size=64):
    """A predictor for a .keras, .onnx or .tflite file, checked to score the 8 FER+ classes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxPredictor(path, batch_size)
    if suffix == ".tflite":
        from .tflite import TflitePredictor

        return TflitePredictor(path, batch_size)
    if suffix == ".keras":
        from .models import load_model_file  # Keras loads only when a Keras model is scored

        return KerasPredictor(load_model_file(path), batch_size, path)
    raise UserError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected a .keras, .onnx or "
                    ".tflite file")


def timed_logits(predictor, faces):
    """(logits, images per second). A warm-up batch first keeps tracing and session set-up out of the timing."""
    predictor.logits(faces[:getattr(predictor, "batch_size", 8)])
    start = time.perf_counter()
    logits = predictor.logits(faces)
    elapsed = time.perf_counter() - start
    return logits, len(faces) / elapsed if elapsed > 0 else float("inf")


class EnsemblePredictor:
    """Several predictors as one: scores are log of the members' mean softmax, so that a softmax of them
    (what every reader of scores does) is the average of the members' probabilities."""

    kind = "ensemble"

    def __init__(self, members):
        self.members = list(members)
        self.batch_size = max(getattr(m, "batch_size", 64) for m in self.members)

    def logits(self, faces):
        mean = np.mean([softmax(member.logits(faces)) for member in self.members], axis=0)
        return np.log(np.maximum(mean, 1e-12)).astype(np.float32)

    def describe(self):
        members = [member.describe() for member in self.members]
        return {"format": "ensemble", "members": members,
                "parameters": sum(int(m.get("parameters") or 0) for m in members)}


# Test-time augmentation: the views whose probabilities are averaged. "crops" adds five crops of 90% of
# the side (the four corners and the centre) to the face and its mirror; training's random resized crops
# keep 80-100% of the area, so such crops are faces the model has learnt from.
TTA_CHOICES = ("none", "flip", "crops")
TTA_CROP_SIDE = 0.9


def crop_boxes(height, width, side_fraction=TTA_CROP_SIDE):
    """(top, left, side) of the five TTA crops of an image of height x width."""
    side = int(round(min(height, width) * side_fraction))
    bottom, right = height - side, width - side
    return [(top, left, side) for top, left in ((0, 0), (0, right), (bottom, 0), (bottom, right),
                                                (bottom // 2, right // 2))]


def tta_views(faces, tta):
    """The views of uint8 faces (N, H, W) that `tta` averages over, the faces themselves first."""
    if tta not in TTA_CHOICES:
        raise UserError(f"--tta: expected one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    views = [faces]
    if tta != "none":
        views.append(faces[:, :, ::-1])
    if tta == "crops":
        views += [faces[:, top:top + side, left:left + side] for top, left, side in crop_boxes(*faces.shape[1:3])]
    return [np.ascontiguousarray(view) for view in views]


def predict_probabilities(predictor, faces, tta="none"):
    """Return (probabilities (N, 8), TTA-averaged probabilities or None, images per second)."""
    logits, speed = timed_logits(predictor, faces)
    plain = softmax(logits)
    if tta == "none":
        return plain, None, speed
    others = [softmax(predictor.logits(view)) for view in tta_views(faces, tta)[1:]]
    return plain, np.mean([plain] + others, axis=0), speed


# ----------------------------------------------------------------------------- data

def load_eval_split(data_dir, split):
    """Faces kept by the majority protocol: (faces uint8 (M, 48, 48), labels (M,), vote dists (M, 8))."""
    from .data import load_split, resolve_data_dir
    from .labels import majority_labels

    loaded = load_split(resolve_data_dir(data_dir), split)  # a UserError names an absent split
    labels, keep = majority_labels(loaded.votes)
    return loaded.images[keep], labels[keep], vote_distribution(loaded.votes[keep])


# ----------------------------------------------------------------------------- evaluate a run or a file

def resolve_model_path(run=None, model=None, checkpoint="best_acc"):
    """The model file to evaluate or export: --model as given, or a checkpoint of --run (one of the two)."""
    if model and run:
        raise UserError("give either --run or --model, not both")
    if model:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"{path}: no such model file; give a .keras checkpoint or a .onnx export")
        return path
    if not run:
        raise UserError("give --run runs/<name> or --model FILE (.keras or .onnx)")
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run folder; give a folder made by train.py (runs/<name>)")
    if checkpoint in CHECKPOINT_NAMES:
        path = run / "checkpoints" / f"{checkpoint}.keras"
    else:
        path = Path(checkpoint)
    if not path.is_file():
        found = sorted(p.stem for p in (run / "checkpoints").glob("*.keras"))
        raise UserError(f"{path}: checkpoint not found (this run has: {', '.join(found) or 'none'}); pick "
                        f"--checkpoint from {', '.join(CHECKPOINT_NAMES)} or a file path")
    return path


def run_config(run):
    """The run's config.yaml as a dict, or {} without a run."""
    from .config import read_config

    if not run:
        return {}
    if not Path(run).is_dir():
        raise UserError(f"{run}: no such run folder; give a folder made by train.py (runs/<name>)")
    return read_config(Path(run) / "config.yaml")


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
    model_path = resolve_model_path(run, model, checkpoint)
    config = run_config(run)
    predictor = load_predictor(model_path, batch_size)
    faces, labels, vote_dist = load_eval_split(data_dir or config.get("data_dir"), split)
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


def ensemble_members(runs, models, checkpoint="best_acc"):
    """The model files of an ensemble: each --run's checkpoint, then each --model."""
    return [resolve_model_path(run=r, checkpoint=checkpoint) for r in runs] + \
        [resolve_model_path(model=m) for m in models]


def evaluate_ensemble(runs, models, checkpoint, data_dir, split, batch_size, tta, out):
    """Score the average of several models' probabilities (`evaluate.py --run a --run b ...`), and each
    member alone, so that the report says what the ensemble adds."""
    paths = ensemble_members(runs, models, checkpoint)
    configs = [run_config(r) for r in runs]
    members = [load_predictor(p, batch_size) for p in paths]
    data_dir = data_dir or next((c.get("data_dir") for c in configs if c.get("data_dir")), None)
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
    from .plots_eval import plot_confusion

    json_path, png_path = out_dir / f"eval_{split}.json", out_dir / f"confusion_{split}.png"
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
    lines.append(f"{'class':<10} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}")
    for name, row in metrics["per_class"].items():
        recall = f"{row['recall']:.3f}" if row["recall"] is not None else "-"
        f1 = f"{row['f1']:.3f}" if row["f1"] is not None else "-"
        lines.append(f"{name:<10} {row['precision']:>9.3f} {recall:>7} {f1:>6} {row['support']:>8}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- compare runs

def run_summary(run_dir):
    """One row of the comparison table from a run folder's config.yaml, state.json, training.csv and
    eval_test.json (missing pieces become None)."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    state = _read_json(run_dir / "state.json")
    history = _read_history(run_dir / "training.csv")
    if history is not None and "val_accuracy" not in history:
        history = None
    best_val = state.get("best_val_accuracy")
    if best_val is None and history is not None and len(history):
        best_val = float(history["val_accuracy"].max())
    epochs = state.get("epoch", len(history) if history is not None else None)
    test = _read_json(run_dir / "eval_test.json").get("metrics", {}).get("accuracy")
    return {
        "name": run_dir.name, "model": config.get("model_name"), "weights": config.get("weights"),
        "freeze": config.get("freeze_before"), "lr_policy": config.get("lr_policy"),
        "training_mode": config.get("training_mode"), "epochs": epochs,
        "best_val_accuracy": best_val, "test_accuracy": test,
        "val_curve": None if history is None else (history["epoch"].to_numpy() + 1,
                                                    history["val_accuracy"].to_numpy()),
    }


def _read_history(path):
    """training.csv as a DataFrame (None when absent); a one-line UserError when it is damaged."""
    import pandas as pd

    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: the training history is damaged ({_first_line(exc)}); restore it from a "
                        "copy of the run folder, or delete it to compare the run without its curve") from None


def _first_line(exc):
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_json(path):
    from .errors import read_json

    found = read_json(path)
    return found if isinstance(found, dict) else {}


def compare_runs(run_dirs, out="compare.png"):
    """Print one table of runs sorted by best validation accuracy; plot their validation curves."""
    from .plots_eval import plot_val_curves

    rows = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.exists():
            raise UserError(f"{run_dir}: no such run folder; give folders made by train.py (runs/*)")
        if not (run_dir / "config.yaml").is_file():
            print(f"skipping {run_dir}: not a run folder (no config.yaml)")
            continue
        rows.append(run_summary(run_dir))
    if not rows:
        raise UserError(f"--compare: none of the {len(run_dirs)} paths is a run folder with a config.yaml; "
                        "give folders made by train.py (runs/*)")
    rows.sort(key=lambda r: -1 if r["best_val_accuracy"] is None else r["best_val_accuracy"], reverse=True)
    print(format_comparison(rows))
    plot_val_curves([(r["name"], r["val_curve"]) for r in rows if r["val_curve"] is not None], out)
    print(f"wrote {out}")
    return rows


def format_comparison(rows):
    header = ("run", "model", "weights", "freeze", "lr policy", "mode", "epochs", "best val", "test")
    table = [header] + [(
        r["name"], _text(r["model"]), _text(r["weights"]), _text(r["freeze"]), _text(r["lr_policy"]),
        _text(r["training_mode"]), _text(r["epochs"]), _percent(r["best_val_accuracy"]),
        _percent(r["test_accuracy"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in table)


def _text(value):
    return "-" if value is None else str(value)


def _percent(value):
    return "-" if value is None else f"{value:.2%}"
