"""`evaluate.py --compare runs/*`: runs side by side, one table row each, and their validation curves."""
from pathlib import Path

from ferkeras.errors import UserError, first_line, read_json
from ferkeras.tables import text_table
from ferkeras.train.run_folder import RunFolder, run_config


def run_summary(run_dir):
    """One row of the comparison table from a run folder's config.yaml, state.json, training.csv and
    eval_test.json (missing pieces become None)."""
    run_dir, folder = Path(run_dir), RunFolder(run_dir)
    config = run_config(run_dir)
    state = _read_json(folder.state_file)
    history = _read_history(folder.history_file)
    if history is not None and "val_accuracy" not in history:
        history = None
    best_val = state.get("best_val_accuracy")
    if best_val is None and history is not None and len(history):
        best_val = float(history["val_accuracy"].max())
    epochs = state.get("epoch", len(history) if history is not None else None)
    test = _read_json(folder.eval_report("test")).get("metrics", {}).get("accuracy")
    return {
        "name": run_dir.name, "model": config.model_name, "weights": config.weights,
        "freeze": config.freeze_before, "lr_policy": config.lr_policy,
        "training_mode": config.training_mode, "epochs": epochs,
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
        raise UserError(f"{path}: the training history is damaged ({first_line(exc)}); restore it from a "
                        "copy of the run folder, or delete it to compare the run without its curve") from None


def _read_json(path):
    found = read_json(path)
    return found if isinstance(found, dict) else {}


def compare_runs(run_dirs, out="compare.png"):
    """Print one table of runs sorted by best validation accuracy; plot their validation curves."""
    from ferkeras.evaluate.plots import plot_val_curves

    rows = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.exists():
            raise UserError(f"{run_dir}: no such run folder; give folders made by train.py (runs/*)")
        config_file = RunFolder(run_dir).config_file
        if not config_file.is_file():
            print(f"skipping {run_dir}: not a run folder (no {config_file.name})")
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
    return text_table(table)


def _text(value):
    return "-" if value is None else str(value)


def _percent(value):
    return "-" if value is None else f"{value:.2%}"
