"""`pip install .`: the package metadata, and a real install into a fresh virtual environment.

The install test builds a wheel from a copy of the checkout (with a stand-in as models/ferplus-small.onnx),
installs it with `--no-deps --no-index` into a fresh venv without system site-packages, and lets that venv
see only the deployment dependencies the wheel declares (and theirs), resolved against this environment
and linked into one folder named by a .pth file: nothing is downloaded, and a dependency the package
forgets to declare is missing there. It then runs the installed `ferkeras predict` on a picture of real
faces from a folder outside the checkout, with the default (shipped) model.
"""
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from packaging.requirements import Requirement

from ferkeras import CLASSES
from ferkeras.deploy.faces import YUNET_MARGIN, YuNetDetector
from tests.helpers import compose, linear_probabilities

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_and_the_shipped_models_are_package_data():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ferkeras").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert listed == on_disk | {"ferkeras.shipped"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"ferkeras.shipped": "models"}
    assert PYPROJECT["project"]["scripts"] == {"ferkeras": "ferkeras.cli:run"}


def source_tree(destination, shipped_model):
    """The files git would ship (tracked, or new and not ignored) copied to `destination`, with
    `shipped_model` as models/ferplus-small.onnx."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file() and not name.startswith("models/"):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, destination / name)
    (destination / "models").mkdir(exist_ok=True)
    shutil.copyfile(shipped_model, destination / "models" / "ferplus-small.onnx")
    return destination


def dependency_closure(requirements):
    """The installed distributions that `requirements` (and theirs, recursively) need, no extras;
    each must satisfy the declared version range."""
    found, queue = {}, list(requirements)
    while queue:
        requirement = Requirement(queue.pop())
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = requirement.name.lower().replace("_", "-")
        if key in found:
            continue
        dist = importlib.metadata.distribution(requirement.name)
        assert requirement.specifier.contains(dist.version, prereleases=True), (str(requirement), dist.version)
        found[key] = dist
        queue.extend(dist.requires or [])
    return found


def link_distributions(dists, folder):
    """Symlink each distribution's top-level entries (packages, modules, .dist-info, .libs) into `folder`."""
    folder.mkdir()
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)


def run(command, **kwargs):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.skipif(shutil.which("git") is None, reason="copies the checkout's files with git ls-files")
def test_pip_install_gives_a_ferkeras_command_that_predicts_with_the_shipped_model(
        real_faces, models, yunet_model, tmp_path):
    source = source_tree(tmp_path / "source", models["dynamic"])
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "--wheel-dir", tmp_path / "wheels", source])
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp_path / "wheels").glob("ferkeras-*.whl"))

    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python = venv / "bin" / "python"
    installed = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                     "--quiet", wheel])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    declared = importlib.metadata.Distribution.at(
        next((venv / "lib").glob("python*/site-packages/ferkeras-*.dist-info"))).requires
    link_distributions(dependency_closure(declared), tmp_path / "deploy-deps")
    site_packages = next((venv / "lib").glob("python*/site-packages"))
    (site_packages / "deploy-deps.pth").write_text(f"{tmp_path / 'deploy-deps'}\n")
    checked = run([sys.executable, "-m", "pip", "--python", python, "check"])
    assert checked.returncode == 0, checked.stdout + checked.stderr

    picture = compose(real_faces)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cv2.imwrite(str(elsewhere / "group.png"), picture)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "FERKERAS_NO_DOWNLOAD": "1",
           "FERKERAS_CACHE": os.environ["FERKERAS_CACHE"]}  # where the session's YuNet copy is
    where = run([python, "-c", "import ferkeras, importlib.util as u; print(ferkeras.__file__, "
                               "u.find_spec('tensorflow'), u.find_spec('yaml'))"], cwd=elsewhere, env=env)
    assert where.stdout.split() == [str(site_packages / "ferkeras" / "__init__.py"), "None", "None"], where.stderr

    done = run(["ferkeras", "predict", "group.png", "--quiet"], cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr
    assert "1 images, 6 faces" in done.stdout
    rows = [json.loads(line) for line in (elsewhere / "predictions" / "predictions.jsonl").read_text().splitlines()]
    assert [row["box"] for row in rows] == [list(box) for box in YuNetDetector(yunet_model).detect(picture)]
    for row in rows:  # the stand-in installed as ferkeras/shipped/ferplus-small.onnx scored them
        np.testing.assert_allclose([row["probabilities"][c] for c in CLASSES],
                                   linear_probabilities(picture, row["box"], YUNET_MARGIN), atol=1e-5)
    assert (elsewhere / "predictions" / "annotated" / "group.png").is_file()

    training = run(["ferkeras", "train", "--help"], cwd=elsewhere, env=env)
    assert training.returncode == 2
    assert training.stderr == "error: ferkeras train: needs the training packages (yaml is not installed); " \
                              "pip install 'ferkeras[train]' (or -r requirements.txt in a checkout)\n"
