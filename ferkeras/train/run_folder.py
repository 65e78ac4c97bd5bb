"""`RunFolder`: the layout of a run folder, and the only code that knows its file names.

    runs/<name>/
        config.yaml            the resolved options (train.config), read back by --resume, evaluate, export
        state.json             epochs done, best scores, early-stopping and RNG state (written each epoch)
        training.csv           one row of metrics per epoch
        training_curves.png    loss / accuracy / learning rate per epoch
        checkpoints/           best_acc.keras, best_loss.keras, last.keras (+ last.weights.h5 for EMA runs)
        tensorboard/           TensorBoard event files
        distill/               --teacher: teacher_probs.npy and meta.json
        frozen_cache/          --cache_frozen: the frozen prefix's outputs
        finetune/              --finetune_from: the user faces' split
        eval_<split>.json      evaluate.py's report, and confusion_<split>.png
        .started_by.json       which process holds the run (a second start is refused)
"""
from pathlib import Path

from ferkeras.errors import UserError

CHECKPOINT_NAMES = ("best_acc", "best_loss", "last")


def model_file(run=None, model=None, checkpoint="best_acc"):
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
    """The run's config.yaml as a `train.config.Config`, or None without a run."""
    from ferkeras.train.config import read_config

    if not run:
        return None
    if not Path(run).is_dir():
        raise UserError(f"{run}: no such run folder; give a folder made by train.py (runs/<name>)")
    return read_config(Path(run) / "config.yaml")
