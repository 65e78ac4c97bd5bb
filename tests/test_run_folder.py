"""The run folder's layout: `RunFolder` names every file that train.py and evaluate.py write into a run
folder, nothing else writes one it does not name, and no other module of ferkeras spells a name out.

The names are written out literally here, on purpose: run folders made before must still resume, evaluate
and export, so a renamed file is a changed file format, not a refactoring.
"""
import ast
import json
import shutil
from pathlib import Path

import cv2
import pytest

from ferkeras import CLASSES
from ferkeras.data.ferplus import load_labelled
from ferkeras.errors import UserError
from ferkeras.evaluate.report import evaluate_command
from ferkeras.train.config import resolve
from ferkeras.train.run import create_run_dir, train
from ferkeras.train.run_folder import CHECKPOINT_NAMES, RunFolder, model_file, run_config

PACKAGE = Path(__file__).resolve().parents[1] / "ferkeras"
LAYOUT = {
    "config_file": "config.yaml", "state_file": "state.json", "history_file": "training.csv",
    "curves_file": "curves.png", "owner_file": ".started_by.json", "finetune_report": "finetune.json",
    "checkpoints_dir": "checkpoints", "tensorboard_dir": "tensorboard", "distill_dir": "distill",
    "teacher_probs_file": "distill/teacher_probs.npy", "distill_meta_file": "distill/meta.json",
    "cache_dir": "cache", "cache_meta_file": "cache/meta.json",
}
CALLED = {
    ("checkpoint", "best_acc"): "checkpoints/best_acc.keras", ("checkpoint", "best_loss"): "checkpoints/best_loss.keras",
    ("checkpoint", "last"): "checkpoints/last.keras", ("cache_views_file", 1): "cache/train_views_1.npy",
    ("eval_report", "test"): "eval_test.json", ("confusion_picture", "valid"): "confusion_valid.png",
}
# What may not appear in a path-like string (no spaces) of ferkeras outside run_folder.py; prose (docstrings,
# comments, messages) may say them.
FILE_NAMES = ("config.yaml", "state.json", "training.csv", "curves.png", ".started_by.json", "finetune.json",
              "teacher_probs.npy", "meta.json", "train_views_", "best_acc.keras", "best_loss.keras", "last.keras",
              "checkpoints/", "eval_test.json", "eval_valid.json")
# ... nor be joined onto a path (`run_dir / "checkpoints"`), nor begin a formatted name (f"eval_{split}.json").
JOINED_NAMES = ("checkpoints", "tensorboard", "distill", "cache")
FORMATTED_PREFIXES = ("eval_", "confusion_", "train_views_")
TINY = ["--batch_size", "32", "--class_weights", "none", "--init_lr", "0.001", "--lr_policy", "constant",
        "--early_stopping_patience", "0", "--nepochs", "1"]
FERNET = ["--model_name", "FerNetS", "--weights", "none", "--dropout_rate", "0.0", "--train_limit", "64",
          "--valid_limit", "32"]


def test_every_name_is_the_format_s_own_and_inside_the_folder(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "x")
    for attribute, name in LAYOUT.items():
        assert folder.relative(getattr(folder, attribute)) == name, attribute
    for (method, argument), name in CALLED.items():
        assert folder.relative(getattr(folder, method)(argument)) == name, (method, argument)
    assert [folder.relative(p) for p in folder.resume_files()] == [
        "config.yaml", "state.json", "training.csv", "checkpoints/last.keras"]
    assert CHECKPOINT_NAMES == ("best_acc", "best_loss", "last")


def named_files(folder):
    """Every file a RunFolder names (the evaluation reports for the valid and test splits)."""
    return {folder.config_file, folder.state_file, folder.history_file, folder.curves_file, folder.owner_file,
            folder.finetune_report, folder.teacher_probs_file, folder.distill_meta_file, folder.cache_meta_file,
            folder.cache_views_file(0), *(folder.checkpoint(name) for name in CHECKPOINT_NAMES),
            *(f(split) for split in ("valid", "test") for f in (folder.eval_report, folder.confusion_picture))}


def run(data_dir, out, name, *flags):
    config, explicit = resolve(["--data_dir", str(data_dir), "--output_dir", str(out), "--name", name, *TINY, *flags])
    return RunFolder(train(config, explicit)["run_dir"])


def your_faces(small_ferplus, folder):
    """Eight FER+ faces as a folder of your own labelled images (for --finetune_from)."""
    faces, _, _ = load_labelled(small_ferplus, "valid", "majority")
    folder.mkdir()
    for i, face in enumerate(faces[:8]):
        cv2.imwrite(str(folder / f"{i}.png"), face)
    (folder / "label.csv").write_text("".join(f"{i}.png,{CLASSES[i]}\n" for i in range(8)))
    return folder


@pytest.fixture(scope="module")
def runs(small_ferplus, tmp_path_factory):
    """A tiny run of each kind, with the files each writes beyond every run's own."""
    out = tmp_path_factory.mktemp("layout")
    plain = run(small_ferplus, out, "plain", *FERNET)
    evaluate_command(run=str(plain), data_dir=str(small_ferplus), split="valid")
    student = run(small_ferplus, out, "student", *FERNET, "--teacher", str(plain), "--distill_views", "1")
    cached = run(small_ferplus, out, "cached", *FERNET, "--freeze_before", "-9", "--cache_frozen",
                 "--cache_views", "1", "--cache_ram_gb", "0")
    tuned = run(your_faces(small_ferplus, out / "mine"), out, "tuned", "--finetune_from", str(plain),
                "--no_detect", "--holdout", "0.25")
    return {plain: {plain.eval_report("valid"), plain.confusion_picture("valid")},
            student: {student.teacher_probs_file, student.distill_meta_file},
            cached: {cached.cache_meta_file, cached.cache_views_file(0)},
            tuned: {tuned.finetune_report}}


def test_a_run_writes_the_files_its_run_folder_names_and_no_other(runs):
    for folder, extra in runs.items():
        every_run = {folder.config_file, folder.state_file, folder.history_file, folder.curves_file,
                     *(folder.checkpoint(name) for name in CHECKPOINT_NAMES)}
        written = {p for p in folder.path.rglob("*") if p.is_file()}
        events = {p for p in written if folder.tensorboard_dir in p.parents}
        assert events, f"{folder}: no TensorBoard events"
        assert written - events == every_run | extra, folder
        assert written - events <= named_files(folder)
        assert not folder.owner_file.exists()  # removed once the first epoch is saved


def test_a_started_run_reads_back_through_its_run_folder(runs):
    plain = next(iter(runs))
    assert plain.started() and plain.read_state()["epoch"] == 1 and plain.read_state()["finished"] is True
    assert plain.read_config().name == "plain" == run_config(plain.path).name
    assert model_file(run=plain.path) == plain.checkpoint("best_acc")
    assert model_file(run=plain.path, checkpoint="last") == plain.checkpoint("last")
    assert json.loads(plain.eval_report("valid").read_text())["checkpoint"] == "best_acc"


def test_a_new_run_folder_holds_its_config_and_its_owner_until_the_first_epoch(small_ferplus, tmp_path):
    config, _ = resolve(["--data_dir", str(small_ferplus), "--output_dir", str(tmp_path), "--name", "new", *TINY])
    folder = RunFolder(tmp_path / "new")
    create_run_dir(config, folder.path)
    assert {p for p in folder.path.rglob("*")} == {folder.config_file, folder.owner_file, folder.checkpoints_dir}
    assert not folder.started() and json.loads(folder.owner_file.read_text())["pid"] > 0


def test_a_missing_folder_checkpoint_or_state_is_a_one_line_error(runs, tmp_path):
    missing = tmp_path / "absent"
    message = f"{missing}: no such run folder; give a folder made by train.py (runs/<name>)"
    for call in (lambda: RunFolder(missing).require(), lambda: model_file(run=missing), lambda: run_config(missing)):
        with pytest.raises(UserError) as error:
            call()
        assert str(error.value) == message
    copy = RunFolder(tmp_path / "copy")
    shutil.copytree(next(iter(runs)).path, copy.path)
    copy.checkpoint("best_loss").unlink()
    with pytest.raises(UserError, match=r"best_loss.keras: checkpoint not found \(this run has: best_acc, last\); "
                                        r"pick --checkpoint from best_acc, best_loss, last or a file path"):
        model_file(run=copy.path, checkpoint="best_loss")
    copy.state_file.write_text(json.dumps({"epoch": 0}))
    with pytest.raises(UserError, match=r"state.json: the run state is damaged \(no completed epoch count\)"):
        copy.read_state()
    with pytest.raises(ValueError, match="best_acc, best_loss, last"):
        copy.checkpoint("best")


# ----------------------------------------------------------------------------- the rule stays true


def strings_naming_run_files(tree):
    """(line, text) of the strings in `tree` that spell out a run folder's file name (not in prose)."""
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if not any(c.isspace() for c in node.value) and any(name in node.value for name in FILE_NAMES):
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
            if node.right.value in JOINED_NAMES:
                found.append((node.lineno, f'/ "{node.right.value}"'))
        elif isinstance(node, ast.JoinedStr):
            parts = [p.value for p in node.values if isinstance(p, ast.Constant)]
            if any(p.startswith(FORMATTED_PREFIXES) for p in parts):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_scan_finds_what_it_looks_for():
    source = '''"""docstring: config.yaml"""
a = run / "checkpoints" / "x"
b = f"eval_{split}.json"
c = ("checkpoints/last.keras", "a config.yaml in a message")
d = {"tensorboard"}
e = f"{run}/state.json"
'''
    assert sorted(line for line, _ in strings_naming_run_files(ast.parse(source))) == [2, 3, 4, 6]


def test_only_run_folder_py_spells_out_a_run_folder_s_file_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "run_folder.py" and path.parent.name == "train":
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
                  for line, text in strings_naming_run_files(ast.parse(path.read_text(), str(path)))]
    assert not found, "use ferkeras.train.run_folder.RunFolder instead:\n" + "\n".join(found)
