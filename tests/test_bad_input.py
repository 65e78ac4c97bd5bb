"""Bad input and faults against the four scripts, family by family, through their real command lines.

Each case asserts what the README promises: exit status 2, one `error:` line naming the file or the
flag and the fix, no traceback, and nothing half-written or left behind. Cases that fail before
TensorFlow loads run as plain subprocesses (a fraction of a second each); the others are grouped per
family and run by the session's one `tests/cli_batch.py` interpreter (each case still runs the script
file as `__main__`, its stdout and stderr captured at the file descriptors), so TensorFlow loads once.
What needs a process of its own (Ctrl-C, kill -9, the sweep of what a killed process left) gets one.
Training cases use FerNetS at 48 px on a few hundred real faces.
"""
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ferkeras.train.config import resolve
from ferkeras.errors import UserError, read_text, sweep_stale_temporaries, write_text_atomic
from tests.helpers import batch, linear_model

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model_name", "FerNetS", "--weights", "none", "--batch_size", "16", "--class_weights", "none",
        "--lr_policy", "constant", "--init_lr", "0.003", "--early_stopping_patience", "0"]


# ----------------------------------------------------------------------------- running the scripts

def cli(script, *args, timeout=300):
    """One script in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def assert_user_error(result, *fragments):
    """Exit 2, no traceback, and one `error:` line (the last one) holding every fragment."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def dead_pid():
    """The id of a process that has just exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def no_temporaries(folder):
    return not [p for p in Path(folder).rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- shared runs

def train_args(data, runs, name, *extra):
    return ["--data_dir", data, "--output_dir", runs, "--name", name, *TINY, *extra]


RESUMED = ["--train_limit", "160", "--valid_limit", "64", "--dropout_rate", "0.5", "--nepochs", "3"]


@pytest.fixture(scope="module")
def two_runs(small_ferplus, tmp_path_factory):
    """The same 3-epoch run twice, side by side: 'whole' uninterrupted, 'killed' killed -9 in epoch 2.

    Returns (runs folder, the killed run's stdout up to the kill)."""
    runs = tmp_path_factory.mktemp("runs")
    logs = runs / "logs"
    logs.mkdir()

    def start(name, stdout):
        return subprocess.Popen([sys.executable, str(REPO / "train.py"),
                                 *map(str, train_args(small_ferplus, runs, name, *RESUMED))],
                                cwd=REPO, stdout=stdout, stderr=open(logs / f"{name}.err", "w"))

    whole, killed = start("whole", open(logs / "whole.out", "w")), start("killed", subprocess.PIPE)
    seen, deadline = b"", time.time() + 300
    # Kill once a training step of epoch 2 has been reported (Keras' progress bar: "Epoch 2/3" then " 1/10").
    while time.time() < deadline and killed.poll() is None:
        seen += os.read(killed.stdout.fileno(), 65536)
        tail = seen.partition(b"Epoch 2/3")[2]
        if b"/10" in tail:
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, seen.decode(errors="replace")[-2000:]
    whole.communicate(timeout=600)
    assert whole.returncode == 0, (logs / "whole.err").read_text()[-3000:]
    return runs, seen.decode(errors="replace")


def copy_run(source, target):
    """A copy of a run folder whose files can be damaged without touching the original."""
    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------- 1. numbers

@pytest.mark.parametrize("args, message", [
    (["--init_lr", "-1"], "--init_lr must be > 0, got -1"),
    (["--init_lr", "nan"], "--init_lr must be a finite number, got nan"),
    (["--class_weights", "1 1 1 1 1 1 1 nan"], "--class_weights: expected 8 positive numbers"),
    (["--lr_policy", "step", "--lr_decay_epochs", "0"], "--lr_decay_epochs must be >= 1, got 0"),
    (["--plateau_factor", "2"], "--plateau_factor must be in (0, 1), got 2"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["--train_limit", "-5"], "--train_limit must be >= 0, got -5"),
    (["--holdout", "nan"], "--holdout must be a finite number, got nan"),
    (["--cache_frozen", "--cache_views", "0"], "--cache_views must be >= 1, got 0"),
    (["--nepochs", "0"], "--nepochs must be >= 1, got 0"),
    (["--weight_decay", "-0.1"], "--weight_decay must be >= 0, got -0.1"),
    (["--warmup_epochs", "5", "--nepochs", "5"], "--warmup_epochs must be < --nepochs (5), got 5"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
])
def test_numbers_out_of_range_are_refused_before_anything_loads(tmp_path, args, message):
    result = cli("train.py", "--output_dir", tmp_path / "runs", "--name", "r", *args, timeout=60)
    assert_user_error(result, message)
    assert not (tmp_path / "runs").exists()


def test_options_a_combination_ignores_are_warned_about(capsys):
    resolve(["--cache_frozen", "--augment", "ferplus", "--momentum", "0.5", "--freeze_before", "-5"])
    warned = capsys.readouterr().err.splitlines()
    assert warned == ["warning: --momentum is ignored: it applies only with --optimizer SGD",
                      "warning: --augment is ignored: it applies only without --cache_frozen (a cached run "
                      "trains on its fixed views: the face, its mirror and crop_flip crops)"]
    resolve(["--optimizer", "SGD", "--momentum", "0.5"])
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- 2. YAML types

@pytest.mark.parametrize("line, message", [
    ('jit_compile: "false"', "option 'jit_compile' expects bool (true or false, unquoted), got 'false'"),
    ("init_lr: true", "option 'init_lr' expects float"),
    ("nepochs: 1.9", "option 'nepochs' expects int (a whole number, e.g. 32), got 1.9"),
    ("nepochs:", "option 'nepochs' has no value"),
    ("name: 2024", "option 'name' expects str"),
    ("cache_views: 0", "cache_views must be >= 1, got 0"),
])
def test_recipe_values_of_another_type_are_refused(tmp_path, line, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(line + "\n")
    assert_user_error(cli("train.py", "--config", recipe, "--output_dir", tmp_path / "runs", timeout=60),
                      str(recipe), message)


def test_recipe_numbers_keep_their_value():
    """What YAML 1.1 reads as a string (1e-4 without a dot) is still the number meant."""
    config, _ = resolve([])
    assert config.init_lr == 1e-4
    from ferkeras.train.config import _coerce

    assert _coerce("init_lr", "1e-4", "r.yaml") == 1e-4 and _coerce("init_lr", 2, "r.yaml") == 2.0
    assert _coerce("jit_compile", False, "r.yaml") is False
    with pytest.raises(UserError, match="expects int"):
        _coerce("batch_size", True, "r.yaml")


# ----------------------------------------------------------------------------- 3. run folders

def test_a_run_that_cannot_start_leaves_no_folder_and_does_not_block_the_next(small_ferplus, tmp_path):
    runs = tmp_path / "runs"
    abandoned = runs / "abandoned"  # what kill -9 in epoch 1 leaves: config, no epoch
    (abandoned / "checkpoints").mkdir(parents=True)
    (abandoned / "config.yaml").write_text("name: abandoned\n")
    (abandoned / ".started_by.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    starting = runs / "starting"  # a run another live process is starting
    (starting / "checkpoints").mkdir(parents=True)
    (starting / "config.yaml").write_text("name: starting\n")
    (starting / ".started_by.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    results = batch(tmp_path, [
        ("train.py", train_args(small_ferplus, runs, "absent", "--class_weights", "balanced", "--train_limit", "4")),
        ("train.py", train_args(small_ferplus, runs, "cut", "--cache_frozen", "--freeze_before", "0")),
        ("train.py", train_args(small_ferplus, runs, "diverges", "--train_limit", "32", "--class_weights",
                                " ".join(["3e38"] * 8))),
        ("train.py", ["--output_dir", runs, "--name", "abandoned", "--resume"]),
        ("train.py", train_args(small_ferplus, runs, "abandoned", "--class_weights", "balanced",
                                "--train_limit", "4")),
        ("train.py", train_args(small_ferplus, runs, "starting")),
    ])
    assert_user_error(results[0], "--class_weights balanced: classes", "have no training faces")
    assert_user_error(results[1], "--cache_frozen needs a frozen prefix")
    line = assert_user_error(results[2], "training diverged: loss became inf at step 1 of epoch 1",
                             "is removed", "lower --init_lr")
    assert "done" not in results[2].stdout and "best" not in line
    assert sorted(p.name for p in runs.iterdir()) == ["abandoned", "starting"]
    assert_user_error(results[3], "stopped before its first epoch ended", "without --resume")
    assert_user_error(results[4], "--class_weights balanced")  # not "a run of that name exists"
    assert_user_error(results[5], f"process {os.getpid()} is starting this run right now")


@contextlib.contextmanager
def sigint_as_a_terminal_sends_it():
    """A suite started in the background (`cmd &`, nohup) has SIGINT ignored, its children inherit that,
    and Python then never raises KeyboardInterrupt. While a handler is installed here, a child starts with
    the default action instead (exec resets handlers; only "ignored" is inherited). Not preexec_fn: it
    runs Python in the forked child of a threaded process. (The "free(): invalid next size" aborts first
    blamed on preexec_fn came back without it: they were train.py's own shutdown after the interrupt,
    which `errors.run_cli` now skips with os._exit(130).)"""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_the_first_epoch_removes_the_run_and_says_what_works(small_ferplus, tmp_path):
    runs = tmp_path / "runs"
    # An epoch of some seconds (160 px faces, 40 steps), and output unbuffered: the interrupt must land
    # inside epoch 1 on a fast machine too (at 48 px a whole 2-epoch run took under a second on one).
    with sigint_as_a_terminal_sends_it():
        child = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                                  *map(str, train_args(small_ferplus, runs, "r", "--batch_size", "8",
                                                       "--image_size", "160", "--nepochs", "2"))],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, deadline = b"", time.time() + 300
    while time.time() < deadline and b"Epoch 1/2" not in seen and child.poll() is None:
        seen += os.read(child.stdout.fileno(), 65536)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    out = (seen + out).decode(errors="replace")
    assert child.returncode == 130, err.decode(errors="replace")[-2000:]
    assert "interrupted before the first epoch ended: nothing was saved" in out
    assert "--resume" not in out and "Traceback" not in err.decode(errors="replace")
    assert not (runs / "r").exists()


def test_ctrl_c_during_fit_waits_for_the_step_to_end_and_a_second_one_does_not():
    import signal

    from ferkeras.train.run import StopAtStepEnd, ctrl_c_between_steps

    stopper = StopAtStepEnd()
    with ctrl_c_between_steps(stopper):
        assert signal.getsignal(signal.SIGINT) == stopper.request
        stopper.request()  # the first Ctrl-C only asks
        with pytest.raises(KeyboardInterrupt):
            stopper.on_train_batch_end(0)  # ... and the step's end stops the run
        with pytest.raises(KeyboardInterrupt):
            stopper.request()  # a second one stops at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ----------------------------------------------------------------------------- 4, 5. damaged files, NaN scores

def nan_keras(source, target):
    """A copy of a .keras checkpoint with every layer weight NaN (what a diverged run saves)."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    weights = io.BytesIO(entries["model.weights.h5"])
    with h5py.File(weights, "r+") as h5:
        h5["layers"].visititems(lambda name, item: item.__setitem__(..., np.nan)
                                if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" else None)
    entries["model.weights.h5"] = weights.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def nan_onnx(path):
    """The contract's linear stand-in model with NaN weights."""
    linear_model(path)
    model = onnx.load(str(path))
    weight = next(init for init in model.graph.initializer if init.name == "W")
    weight.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(weight).shape, np.nan, np.float32), "W"))
    onnx.save(model, str(path))
    return path


def test_damaged_run_files_and_non_finite_scores_give_one_line(two_runs, small_ferplus, tmp_path):
    from ferkeras.data.ferplus import _cache_file, load_split

    runs, _ = two_runs
    empty = copy_run(runs / "whole", tmp_path / "empty")
    (empty / "config.yaml").write_text("")
    invalid = copy_run(runs / "whole", tmp_path / "invalid")
    (invalid / "config.yaml").write_text("name: [unclosed\n")
    truncated_state = copy_run(runs / "whole", tmp_path / "state" / "r")
    (truncated_state / "state.json").write_text((runs / "whole" / "state.json").read_text()[:40])
    truncated_last = copy_run(runs / "whole", tmp_path / "last" / "r")
    last = truncated_last / "checkpoints" / "last.keras"
    last.write_bytes(last.read_bytes()[:1000])
    configs_before = {run: (run / "config.yaml").read_bytes() for run in (truncated_state, truncated_last)}
    # A truncated data cache (of the split evaluate reads) in a cache folder of its own.
    load_split(small_ferplus, "valid")
    cached = _cache_file(Path(small_ferplus), "valid", "folder")
    private = tmp_path / "cache"
    private.mkdir()
    (private / cached.name).write_bytes(cached.read_bytes()[:5000])
    (tmp_path / "nan").mkdir()
    nan_model = nan_keras(runs / "whole" / "checkpoints" / "best_acc.keras", tmp_path / "nan" / "nan.keras")
    nan_file = nan_onnx(tmp_path / "nan" / "nan.onnx")
    results = batch(tmp_path, [
        ("evaluate.py", ["--run", empty]),
        ("evaluate.py", ["--run", invalid]),
        ("train.py", ["--output_dir", truncated_state.parent, "--name", "r", "--resume", "--nepochs", "5"]),
        ("train.py", ["--output_dir", truncated_last.parent, "--name", "r", "--resume", "--nepochs", "5"]),
        ("evaluate.py", ["--run", runs / "whole", "--data_dir", small_ferplus, "--out", tmp_path / "cached"],
         {"FERKERAS_CACHE": str(private)}),
        ("evaluate.py", ["--model", nan_file, "--data_dir", small_ferplus, "--out", tmp_path / "nan_eval"]),
        ("evaluate.py", ["--model", nan_model, "--data_dir", small_ferplus, "--out", tmp_path / "nan_eval"]),
        ("export.py", ["--model", nan_model, "--data_dir", small_ferplus]),
    ])
    assert_user_error(results[0], f"{empty / 'config.yaml'}: the run config is damaged")
    assert_user_error(results[1], f"{invalid / 'config.yaml'}: the run config is damaged, not valid YAML")
    assert_user_error(results[2], f"{truncated_state / 'state.json'}: the run state is damaged")
    assert_user_error(results[3], f"{last}: the last checkpoint is damaged", "--overwrite")
    for run, before in configs_before.items():
        assert (run / "config.yaml").read_bytes() == before  # --resume wrote nothing
    assert results[4].returncode == 0, results[4].stderr[-2000:]
    assert f"warning: data cache {private / cached.name} is damaged" in results[4].stderr
    assert (private / cached.name).stat().st_size > 5000  # rebuilt
    assert_user_error(results[5], f"{nan_file}: the model returned non-finite scores (NaN or infinity) for")
    assert_user_error(results[6], f"{nan_model}: the model returned non-finite scores")
    assert not (tmp_path / "nan_eval").exists()
    line = assert_user_error(results[7], "the Keras model returned non-finite scores", "nothing was written")
    assert "--opset" not in line and "agreement" not in line
    assert sorted(p.name for p in (tmp_path / "nan").iterdir()) == ["nan.keras", "nan.onnx"]


def test_predict_refuses_a_model_with_non_finite_scores_before_any_work(small_ferplus, tmp_path):
    face = sorted((Path(small_ferplus) / "FER2013Valid").glob("*.png"))[0]
    result = cli("predict.py", "--model", nan_onnx(tmp_path / "nan.onnx"), face, "--no_detect",
                 "--out", tmp_path / "out", timeout=120)
    assert_user_error(result, "nan.onnx: the model returned non-finite scores")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 6. text encodings

def with_label_rows(source, target, edit):
    """A copy of a FER+ folder layout whose train label.csv goes through `edit(bytes) -> bytes`."""
    shutil.copytree(source, target)
    label = target / "FER2013Train" / "label.csv"
    label.write_bytes(edit(label.read_bytes()))
    return target


def test_text_files_with_a_byte_order_mark_read_as_without_one(small_ferplus, small_kaggle, tmp_path):
    from ferkeras.data.ferplus import load_split

    bom = with_label_rows(small_ferplus, tmp_path / "bom", lambda data: b"\xef\xbb\xbf" + data)
    for split in ("train", "valid"):
        assert np.array_equal(load_split(bom, split, cache=False).names, load_split(small_ferplus, split).names)
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    for name in ("fer2013.csv", "fer2013new.csv"):
        (kaggle / name).write_bytes(b"\xef\xbb\xbf" + (Path(small_kaggle) / name).read_bytes())
    assert np.array_equal(load_split(kaggle, "valid", cache=False).votes, load_split(small_kaggle, "valid").votes)


def test_an_undecodable_byte_names_its_line(tmp_path):
    text = tmp_path / "label.csv"
    text.write_bytes(b"a.png,happiness\nb\xe9.png,anger\n")
    with pytest.raises(UserError, match=r"label.csv line 2: byte 0xe9 \(column 2\) is not UTF-8 text"):
        read_text(text)


# ----------------------------------------------------------------------------- 6 and 9. messages

def test_messages_point_the_right_way(small_ferplus, tmp_path):
    runs = tmp_path / "runs"
    latin1 = with_label_rows(small_ferplus, tmp_path / "latin1",
                             lambda data: data.replace(b".png,", b"\xe9.png,", 1))
    text_weights = tmp_path / "text.weights.h5"
    text_weights.write_text("not weights")
    truncated_weights = tmp_path / "cut.weights.h5"
    truncated_weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 200)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    results = batch(tmp_path, [
        ("train.py", train_args(latin1, runs, "latin1")),
        ("train.py", ["--output_dir", runs, "--name", "nothing", "--resume"]),
        ("train.py", train_args(a_file, runs, "file")),
        ("train.py", train_args(small_ferplus, runs, "text", "--weights", text_weights)),
        ("train.py", train_args(small_ferplus, runs, "cut", "--weights", truncated_weights)),
        ("train.py", train_args(small_ferplus, a_file / "runs", "under_a_file")),
        ("evaluate.py", ["--model", tmp_path / "missing.onnx", "--out", a_file]),
    ])
    assert_user_error(results[0], "FER2013Train/label.csv line 1: byte 0xe9", "save the file as UTF-8")
    assert_user_error(results[1], f"{runs / 'nothing'}: no such run to resume", "--name and --output_dir")
    assert_user_error(results[2], f"data directory {a_file} is a file, not a folder")
    for result in results[3:5]:
        line = assert_user_error(result, "--weights")
        assert "allow_partial_weights" not in line and ("not an HDF5 file" in line or "truncated" in line)
    assert_user_error(results[5], f"--output_dir {a_file / 'runs'}: {a_file} is a file, not a folder")
    assert_user_error(results[6], f"--out {a_file}: {a_file} is a file, not a folder")
    assert not runs.exists()


def test_predict_out_naming_a_file_and_links_that_loop(small_ferplus, tmp_path):
    model = linear_model(tmp_path / "linear.onnx")
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(sorted((Path(small_ferplus) / "FER2013Valid").glob("*.png"))[0], folder / "face.png")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "gone.jpg").symlink_to("missing.jpg")
    out_file = tmp_path / "out.txt"
    out_file.write_text("")
    assert_user_error(cli("predict.py", "--model", model, folder, "--out", out_file, timeout=120),
                      f"--out {out_file}: {out_file} is a file, not a folder")
    result = cli("predict.py", "--model", model, folder, "--no_detect", "--out", tmp_path / "out", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 images, 1 faces, 0 images without a face, 2 skipped (2 not a readable image)" in result.stdout
    assert "loop.png: not a readable image (Too many levels of symbolic links)" in result.stderr


# ----------------------------------------------------------------------------- 7. debris

# A process that gets killed -9 (or, with "wait", waits for its stdin to close) while it writes `path`
# atomically, or while it holds a staging folder beside it.
WRITER = """
import os, signal, sys
from pathlib import Path
from ferkeras.errors import atomic_path, temp_dir_beside
path, how = Path(sys.argv[1]), sys.argv[2]
if how == "folder":
    temp_dir_beside(path)
    os.kill(os.getpid(), signal.SIGKILL)
with atomic_path(path) as tmp:
    tmp.write_bytes(b"half of it")
    if how == "wait":
        print("writing", flush=True)
        sys.stdin.read()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_while_writing(path, how="file"):
    """The temporaries a process left beside `path` when it was killed -9 while writing it."""
    before = set(Path(path).parent.iterdir()) if Path(path).parent.is_dir() else set()
    done = subprocess.run([sys.executable, "-c", WRITER, str(path), how], cwd=REPO, timeout=60)
    assert done.returncode == -signal.SIGKILL
    left = sorted(set(Path(path).parent.iterdir()) - before)
    assert left and all(".tmp-" in p.name for p in left), left
    return left


def test_temporaries_of_killed_writers_are_swept_by_the_next_write(tmp_path):
    dead = killed_while_writing(tmp_path / "model.onnx") + killed_while_writing(tmp_path / "saved_model", "folder")
    old_style = tmp_path / ".curves.tmp-x1y2z3w4.png"  # named before temporaries named their process
    old_style.write_bytes(b"a day old")
    os.utime(old_style, (time.time() - 2 * 86400,) * 2)
    (tmp_path / "model.onnx.tmp-notours").write_bytes(b"not our naming")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "last.keras"), "wait"], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdout.readline() == b"writing\n"
    try:
        live = [p for p in tmp_path.iterdir() if p.name.startswith(".last.tmp-")]
        write_text_atomic(tmp_path / "eval_valid.json", "{}")
        assert sorted(tmp_path.iterdir()) == sorted([*live, tmp_path / "eval_valid.json",
                                                      tmp_path / "model.onnx.tmp-notours"])
        assert len(dead) == 2 and len(live) == 1
    finally:
        writer.communicate(timeout=60)
    assert sweep_stale_temporaries(tmp_path) == live  # its writer is gone now


# ----------------------------------------------------------------------------- 8. exact resume

def test_resume_after_kill_minus_9_continues_exactly_as_the_uninterrupted_run(two_runs):
    runs, seen = two_runs
    killed = runs / "killed"
    assert json.loads((killed / "state.json").read_text())["epoch"] == 1  # killed inside epoch 2
    assert len((killed / "training.csv").read_text().splitlines()) == 2
    killed_while_writing(killed / "checkpoints" / "last.keras")  # as a kill during a checkpoint leaves it
    resumed = cli("train.py", "--output_dir", runs, "--name", "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "done: 3 epochs" in resumed.stdout
    assert (killed / "training.csv").read_text() == (runs / "whole" / "training.csv").read_text()
    whole_state = json.loads((runs / "whole" / "state.json").read_text())
    assert json.loads((killed / "state.json").read_text()) == whole_state
    assert no_temporaries(killed) and not (killed / ".started_by.json").exists()
