"""`train.py --finetune_from runs/<name> --data_dir my_faces/`: adapt a trained model to your own faces.

Training starts from the run's best checkpoint (or a .keras file, or the shipped models/ferplus-small.onnx)
and uses your faces
(`ferkeras.data.user_faces`): a seeded `--holdout` share of them is kept out of training and serves as the
validation split, scored before and after. `--mix_ferplus F` makes F of the training faces FER+ ones
(a fixed seeded sample of the FER+ training split), which keeps the model from forgetting FER+ while
it learns your faces.
"""
import json
from pathlib import Path

import numpy as np

from ferkeras.data.ferplus import load_labelled, resolve_data_dir
from ferkeras.errors import UserError, read_json, write_text_atomic
from ferkeras.data.user_faces import load_user_faces
from ferkeras.train.run_folder import RunFolder


def finetune_source(spec):
    """The model to start from: a run folder's best_acc.keras, a .keras file itself, or a FerNet ONNX file
    exported by ferkeras (models/ferplus-small.onnx; models/onnx_weights.py reads it back)."""
    folder = RunFolder(spec)
    path = folder.checkpoint("best_acc") if folder.exists() else Path(spec)
    if not path.is_file() or path.suffix not in (".keras", ".onnx"):
        raise UserError(f"--finetune_from {spec}: expected a run folder made by train.py (with "
                        f"{folder.relative(folder.checkpoint('best_acc'))}), a .keras file or a FerNet .onnx "
                        "file exported by ferkeras (such as models/ferplus-small.onnx)")
    return path


def load_finetune_data(config):
    """((train faces, targets), (holdout faces, targets)): your faces split, FER+ mixed into training."""
    faces, targets, _ = load_user_faces(config.data_dir, config.training_mode,
                                        detect=not config.no_detect, min_face=config.min_face,
                                        detector=config.detector)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(faces))
    held = int(round(config.holdout * len(faces)))
    if not 0 < held < len(faces):
        raise UserError(f"--holdout {config.holdout}: with {len(faces)} usable faces this keeps {held} "
                        "for scoring; pick a share that leaves at least one face on each side")
    train_x, train_t = faces[order[held:]], targets[order[held:]]
    holdout = (faces[order[:held]], _majority(targets[order[:held]]))
    fraction = config.mix_ferplus  # in [0, 1): checked by config.resolve
    if fraction:
        extra = int(round(len(train_x) * fraction / (1 - fraction)))
        fer_x, fer_t, _ = load_labelled(resolve_data_dir(config.ferplus_dir), "train", config.training_mode)
        rows = rng.choice(len(fer_x), size=min(extra, len(fer_x)), replace=False)
        print(f"mixing {len(rows)} FER+ training faces with your {len(train_x)} ({fraction:.0%} FER+)")
        train_x, train_t = np.concatenate([train_x, fer_x[rows]]), np.concatenate([train_t, fer_t[rows]])
    print(f"fine-tuning on {len(train_x)} faces; scoring on {held} of yours held out")
    return (train_x, train_t), holdout


def _majority(targets):
    """Holdout targets under the majority protocol: one-hot of the most voted class."""
    return np.eye(targets.shape[1], dtype=np.float32)[targets.argmax(1)]


def holdout_accuracy(model, holdout):
    faces, targets = holdout
    logits = model.predict(faces.astype(np.float32)[..., None], verbose=0, batch_size=64)
    return float(np.mean(logits.argmax(1) == targets.argmax(1)))


def accuracy_before(model, holdout, run_dir):
    """The holdout accuracy of the starting model; kept in finetune.json so that --resume reports it too."""
    report = RunFolder(run_dir).finetune_report
    saved = read_json(report, "fine-tuning report")
    if saved is not None:
        if not isinstance(saved, dict) or not isinstance(saved.get("holdout_accuracy_before"), (int, float)):
            raise UserError(f"{report}: the fine-tuning report is damaged (no holdout_accuracy_before); "
                            "restore it from a copy, or start the run again with --overwrite")
        return saved["holdout_accuracy_before"]
    before = holdout_accuracy(model, holdout)
    write_text_atomic(report, json.dumps({"holdout_faces": len(holdout[0]), "holdout_accuracy_before": before}))
    return before


def record(run_dir, source, before, after, holdout):
    """Print and keep (finetune.json) the holdout accuracy before and after fine-tuning."""
    report = {"finetune_from": str(source), "holdout_faces": len(holdout[0]),
              "holdout_accuracy_before": before, "holdout_accuracy_after": after}
    write_text_atomic(RunFolder(run_dir).finetune_report, json.dumps(report, indent=2))
    print(f"your held-out faces ({len(holdout[0])}): accuracy {before:.1%} before, {after:.1%} after fine-tuning")
    return report
