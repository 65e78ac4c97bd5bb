"""Option table, YAML recipes and their precedence."""
import subprocess
import sys
from pathlib import Path

import pytest

from ferkeras.data.batches import PUBLISHED_CLASS_WEIGHTS
from ferkeras.train.config import OPTIONS, load_recipe, resolve
from ferkeras.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_published_setup():
    config, explicit = resolve([])
    assert config["model_name"] == "ResNet50" and config["image_size"] == 0 and config["weights"] == "imagenet"
    assert config["training_mode"] == "majority" and config["dropout_rate"] == 0.3
    assert config["class_weights"] == "published" and len(PUBLISHED_CLASS_WEIGHTS) == 8
    assert explicit == set()


def test_flags_override_recipe_which_overrides_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("init_lr: 0.01\nbatch_size: 16\nlr_policy: cosine\n")
    config, explicit = resolve(["--config", str(recipe), "--batch_size", "8", "--freeze_before", "-51"])
    assert config["init_lr"] == 0.01          # from the recipe
    assert config["batch_size"] == 8          # the flag beats the recipe
    assert config["lr_policy"] == "cosine"
    assert config["freeze_before"] == -51
    assert config["nepochs"] == 30            # untouched default
    assert explicit == {"init_lr", "batch_size", "lr_policy", "freeze_before"}


def test_class_weights_forms():
    assert resolve(["--class_weights", "balanced"])[0]["class_weights"] == "balanced"
    numbers = resolve(["--class_weights", "1,2,3,4,5,6,7,8"])[0]["class_weights"]
    assert numbers == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    with pytest.raises(UserError, match="8 positive numbers"):
        resolve(["--class_weights", "1 2 3"])


@pytest.mark.parametrize("text, message", [
    ("learning_rate: 0.1\n", "unknown option 'learning_rate'"),
    ("lr_policy: linear\n", "must be one of plateau, step, cosine, constant"),
    ("batch_size: lots\n", "expects int"),
    ("[1, 2]\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_recipes_name_the_file_and_the_problem(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        load_recipe(recipe)
    assert str(recipe) in str(err.value)


def test_shipped_recipes_load():
    for recipe in sorted((ROOT / "configs").glob("*.yaml")):
        assert load_recipe(recipe), recipe


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for opt in OPTIONS:
        assert f"--{opt.name}" in out.stdout


def test_missing_recipe_is_one_line_error_without_traceback():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "nope.yaml"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: nope.yaml: config file not found")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_the_training_docs_document_every_flag():
    docs = (ROOT / "docs" / "training.md").read_text()
    for opt in OPTIONS:
        assert f"`--{opt.name}`" in docs, opt.name
