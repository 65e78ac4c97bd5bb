"""The `ferkeras` command (ferkeras/cli.py), the scripts that share its parsers, and predict's default
model: the one shipped in models/ of a checkout (tests/test_install.py checks an installed copy)."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkeras import CLASSES, __version__
from ferkeras.cli import COMMANDS, main as ferkeras_main
from ferkeras.deploy.faces import FaceDetector
from tests.helpers import compose, expected_probabilities, faint_noise, run_in_process

REPO = Path(__file__).resolve().parents[1]
# A flag only that command has, to tell the help texts apart.
OWN_FLAG = {"train": "--model_name", "evaluate": "--tta", "export": "--quantize", "predict": "--detector"}
HAS_SERVICE = importlib.util.find_spec("ferkeras.service") is not None


def run_ferkeras(argv, capsys):
    """`ferkeras ARGV` in this process: (exit status, stdout, stderr)."""
    return run_in_process(ferkeras_main, argv, capsys)


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_lists_every_command_and_the_version(capsys):
    code, out, _ = run_ferkeras(["--help"], capsys)
    assert code == 0
    for name in COMMANDS:
        assert f"\n  {name} " in out
    assert run_ferkeras(["--version"], capsys)[:2] == (0, f"ferkeras {__version__}\n")
    code, _, err = run_ferkeras(["fly"], capsys)
    assert code == 2 and "invalid choice: 'fly'" in err


@pytest.mark.parametrize("name", list(OWN_FLAG))
def test_each_command_has_its_own_help_and_the_script_shares_its_parser(name, capsys):
    code, out, _ = run_ferkeras([name, "--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: ferkeras {name} ") and OWN_FLAG[name] in out
    script = load_script(name)  # the top-level script is a wrapper around the same main
    assert script.main is importlib.import_module(f"ferkeras.commands.{name}").main


@pytest.mark.skipif(HAS_SERVICE, reason="ferkeras.service is there: `serve --help` is its own")
def test_serve_without_the_service_module_is_one_line(capsys):
    code, out, err = run_ferkeras(["serve", "--port", "8000"], capsys)
    assert code == 2 and out == ""
    assert err == "error: ferkeras serve: not part of this ferkeras (ferkeras.service is missing); install a " \
                  "ferkeras that has it\n"


@pytest.mark.skipif(not HAS_SERVICE, reason="ferkeras.service is not in this branch")
def test_serve_help_comes_from_the_service(capsys):
    code, out, _ = run_ferkeras(["serve", "--help"], capsys)
    assert code == 0 and out.startswith("usage: ferkeras serve")


def test_python_dash_m_ferkeras_runs_a_command_in_a_fresh_process(models, tmp_path):
    cv2.imwrite(str(tmp_path / "crop.png"), faint_noise(48, 48, seed=4))
    done = subprocess.run([sys.executable, "-m", "ferkeras", "predict", "--model", str(models["dynamic"]),
                           "crop.png", "--no_detect", "--format", "jsonl"], cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 images, 1 faces" in done.stdout
    row = json.loads((tmp_path / "predictions" / "predictions.jsonl").read_text())
    expected = expected_probabilities(cv2.imread(str(tmp_path / "crop.png"), cv2.IMREAD_GRAYSCALE), (0, 0, 48, 48))
    np.testing.assert_allclose([row["probabilities"][c] for c in CLASSES], expected, atol=2e-6)
    usage = subprocess.run([sys.executable, "-m", "ferkeras", "predict", "--bogus"], cwd=tmp_path,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: python -m ferkeras predict ")


# ----------------------------------------------------------------------------- the default model

@pytest.fixture
def checkout(models, tmp_path):
    """A checkout's layout (the package, predict.py, models/) with a stand-in as the shipped model."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "ferkeras", root / "ferkeras", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "predict.py", root / "predict.py")
    (root / "models").mkdir()
    shutil.copyfile(models["dynamic"], root / "models" / "ferplus-small.onnx")
    return root


def test_predict_without_model_uses_the_shipped_model_and_says_when_it_is_missing(checkout, real_faces, tmp_path):
    picture = compose(real_faces)
    cv2.imwrite(str(tmp_path / "group.png"), picture)
    command = [sys.executable, str(checkout / "predict.py"), str(tmp_path / "group.png"), "--detector", "haar",
               "--no_annotate", "--quiet", "--format", "jsonl"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "predictions" / "predictions.jsonl").read_text().splitlines()]
    assert [row["box"] for row in rows] == [list(box) for box in FaceDetector().detect(picture)]
    for row in rows:  # the stand-in's probabilities: models/ferplus-small.onnx was the model
        np.testing.assert_allclose([row["probabilities"][c] for c in CLASSES],
                                   expected_probabilities(picture, row["box"]), atol=1e-5)

    (checkout / "models" / "ferplus-small.onnx").unlink()
    missing = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: --model: not given, and the shipped model is missing (") \
        and str(checkout / "models" / "ferplus-small.onnx") in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
