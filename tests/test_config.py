"""Option table, YAML recipes and their precedence; the typed Config and its checks."""
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferkeras.data.batches import PUBLISHED_CLASS_WEIGHTS
from ferkeras.train import distribute, frozen_cache
from ferkeras.train.config import (CACHE_KEY_FIELDS, OPTION_BY_NAME, OPTIONS, RESUMABLE, Config, load_recipe,
                                   read_config, read_saved_config, resolve, resumed_config, save_config)
from ferkeras.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_published_setup():
    config, explicit = resolve([])
    assert config.model_name == "ResNet50" and config.image_size == 0 and config.weights == "imagenet"
    assert config.training_mode == "majority" and config.dropout_rate == 0.3
    assert config.class_weights == "published" and len(PUBLISHED_CLASS_WEIGHTS) == 8
    assert explicit == set()


def test_flags_override_recipe_which_overrides_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("init_lr: 0.01\nbatch_size: 16\nlr_policy: cosine\n")
    config, explicit = resolve(["--config", str(recipe), "--batch_size", "8", "--freeze_before", "-51"])
    assert config.init_lr == 0.01          # from the recipe
    assert config.batch_size == 8          # the flag beats the recipe
    assert config.lr_policy == "cosine"
    assert config.freeze_before == -51
    assert config.nepochs == 30            # untouched default
    assert explicit == {"init_lr", "batch_size", "lr_policy", "freeze_before"}


def test_class_weights_forms():
    assert resolve(["--class_weights", "balanced"])[0].class_weights == "balanced"
    numbers = resolve(["--class_weights", "1,2,3,4,5,6,7,8"])[0].class_weights
    assert numbers == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
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
    # Each default said once, and never as "None" (such options say in words what stands in for them).
    text = " ".join(out.stdout.split())
    assert "(default: None)" not in text and "(default: 30)" in text
    assert text.count("(default: <model_name>-<timestamp>)") == 1 and "<timestamp>) (default:" not in text


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


# ----------------------------------------------------------------------------- the typed Config

# /work/trainclone/runs/fernet_s/config.yaml, written by ferkeras before erasing, mix, teacher, detector,
# label_smoothing and ema existed (the paths are only text here: nothing is read from them).
OLD_RUN_CONFIG = """\
name: fernet_s
output_dir: /work/trainclone/runs
overwrite: false
resume: false
seed: 42
data_dir: /work/shared/data/ferplus
training_mode: crossentropy
augment: ferplus
finetune_from: null
holdout: 0.2
mix_ferplus: 0.0
ferplus_dir: null
no_detect: false
min_face: 48
train_limit: 0
valid_limit: 0
model_name: FerNetS
weights: none
allow_partial_weights: false
image_size: 0
dropout_rate: 0.3
freeze_before: 0
cache_frozen: false
cache_views: 4
cache_ram_gb: 4.0
optimizer: AdamW
init_lr: 0.002
momentum: 0.9
weight_decay: 0.05
warmup_epochs: 2
batch_size: 64
nepochs: 50
lr_policy: cosine
plateau_factor: 0.5
plateau_patience: 3
lr_decay_epochs: 10
lr_decay_factor: 0.1
early_stopping_patience: 0
class_weights: none
strategy: auto
mixed_precision: none
jit_compile: false
"""


def test_config_has_one_typed_field_per_option_in_table_order():
    fields = dataclasses.fields(Config)
    assert [f.name for f in fields] == [opt.name for opt in OPTIONS]
    for field, opt in zip(fields, OPTIONS):
        assert field.default == opt.default, opt.name
    types = {f.name: f.type for f in fields}
    assert types["init_lr"] is float and types["batch_size"] is int and types["cache_frozen"] is bool
    assert types["model_name"] is str and types["name"] == str | None and types["teacher"] == tuple[str, ...] | None
    assert Config() == resolve([])[0]  # the defaults are the table's


def test_config_is_frozen_and_changes_by_replace():
    config, _ = resolve(["--teacher", "a", "--teacher", "b", "--class_weights", "1,2,3,4,5,6,7,8"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.init_lr = 0.1
    assert config.teacher == ("a", "b")  # repeated flags and number lists are tuples: nothing mutable inside
    changed = config.replace(init_lr=0.1, nepochs=3)
    assert (changed.init_lr, changed.nepochs, config.init_lr, config.nepochs) == (0.1, 3, 1e-4, 30)
    assert changed.replace(init_lr=1e-4, nepochs=30) == config
    assert hash(changed) != hash(config)
    with pytest.raises(TypeError, match="learning_rate"):
        config.replace(learning_rate=0.1)


def test_config_yaml_round_trip_keeps_every_value_and_the_file_format(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher: [runs/a, runs/b]\nclass_weights: [1, 2, 3, 4, 5, 6, 7, 8.5]\ninit_lr: 1e-3\n")
    config, _ = resolve(["--config", str(recipe), "--name", "x", "--freeze_before", "-5", "--ema", "0.5",
                         "--jit_compile"])
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert read_config(path) == config
    text = path.read_text()
    # The format config.yaml has always had: every option, in table order, as plain YAML (lists, not tuples).
    assert text == yaml.safe_dump(config.to_dict(), sort_keys=False)
    assert list(yaml.safe_load(text)) == [opt.name for opt in OPTIONS]
    assert "teacher:\n- runs/a\n- runs/b\n" in text and "!!python" not in text
    save_config(read_config(path), path)
    assert path.read_text() == text


def test_an_old_run_config_reads_into_a_config_with_defaults_for_newer_options(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_RUN_CONFIG + "option_of_another_version: 7\n")
    config, unknown = read_saved_config(path)
    assert isinstance(config, Config) and read_config(path) == config
    assert (config.name, config.model_name, config.optimizer, config.init_lr, config.batch_size) == \
        ("fernet_s", "FerNetS", "AdamW", 0.002, 64)
    assert config.class_weights == "none" and config.cache_ram_gb == 4.0 and config.warmup_epochs == 2
    # Options added since that run get their defaults; a key this version does not know is kept apart.
    assert (config.ema, config.mix, config.teacher, config.label_smoothing, config.detector) == \
        (0.0, "none", None, 0.0, "yunet")
    assert unknown == {"option_of_another_version": 7}
    save_config(config, path, unknown)  # what --resume writes back: ours in table order, theirs after
    saved = yaml.safe_load(path.read_text())
    assert list(saved) == [opt.name for opt in OPTIONS] + ["option_of_another_version"]
    old = yaml.safe_load(OLD_RUN_CONFIG)
    assert {key: saved[key] for key in old} == old


@pytest.mark.parametrize("line, message", [
    ("nepochs: lots", "option 'nepochs' expects int"),
    ("cache_frozen: 1", "option 'cache_frozen' expects bool"),
    ("class_weights: [1, 2]", "--class_weights: expected 8 positive numbers"),
])
def test_a_damaged_run_config_value_is_a_one_line_error(tmp_path, line, message):
    path = tmp_path / "config.yaml"
    path.write_text(f"name: r\n{line}\n")
    with pytest.raises(UserError, match=message) as err:
        read_config(path)
    assert "restore it from a copy of the run folder" in str(err.value)


def test_resume_rules_and_cache_keys_come_from_the_option_table():
    assert set(RESUMABLE) == {"nepochs", "early_stopping_patience", "output_dir", "data_dir", "strategy"}
    assert RESUMABLE == tuple(opt.name for opt in OPTIONS if opt.resumable)
    assert set(CACHE_KEY_FIELDS) == {"model_name", "weights", "image_size", "freeze_before", "cache_views",
                                     "seed", "data_dir", "train_limit", "contract_round_trip"}
    assert frozen_cache.CACHE_KEY_FIELDS == tuple(opt.name for opt in OPTIONS if opt.cache_key)
    assert distribute.STRATEGIES == OPTION_BY_NAME["strategy"].choices


def test_resumed_config_takes_the_resumable_flags_and_refuses_the_others(tmp_path):
    saved = Config(name="r", output_dir="old", nepochs=5, init_lr=0.01)
    given, explicit = resolve(["--name", "r", "--resume", "--output_dir", "new", "--nepochs", "9"])
    resumed = resumed_config(saved, given, explicit, tmp_path)
    assert resumed == saved.replace(output_dir="new", nepochs=9, resume=True)
    given, explicit = resolve(["--name", "r", "--resume", "--init_lr", "0.01", "--batch_size", "8"])
    with pytest.raises(UserError, match=r"differ from its config.yaml: batch_size\. Only output_dir, data_dir"):
        resumed_config(saved, given, explicit, tmp_path)  # init_lr equals the saved one: not a change


def numbers_out_of_range():
    """(option, a value outside its interval) for every numeric option with one."""
    for opt in OPTIONS:
        if opt.interval is None:
            continue
        low, high = opt.interval.low, opt.interval.high
        value = (low if opt.interval.low_open else low - 1) if low is not None else high + 1
        yield opt.name, opt.type(value)


def test_every_numeric_option_has_a_range():
    numeric = {opt.name for opt in OPTIONS if opt.type in (int, float)}
    assert numeric - {name for name, _ in numbers_out_of_range()} == {"freeze_before"}  # any N means something


@pytest.mark.parametrize("name, value", list(numbers_out_of_range()))
def test_every_numeric_flag_out_of_range_is_refused_by_resolve(name, value):
    interval = OPTION_BY_NAME[name].interval
    with pytest.raises(UserError, match=re.escape(f"--{name} must be {interval}, got ")):
        resolve([f"--{name}", str(value)])


@pytest.mark.parametrize("name", [opt.name for opt in OPTIONS if opt.type is float])
def test_every_float_flag_must_be_finite(name):
    with pytest.raises(UserError, match=f"--{name} must be a finite number, got inf"):
        resolve([f"--{name}", "inf"])


@pytest.mark.parametrize("args, message", [
    (["--mix", "cutmix", "--training_mode", "multi_target"], "--mix cutmix: multi_target targets"),
    (["--label_smoothing", "0.1", "--training_mode", "multi_target"], "the multi_target loss has no smoothing"),
    (["--teacher", "runs/a", "--training_mode", "multi_target"], "--teacher: multi_target targets"),
    (["--cache_frozen", "--ema", "0.99"], "--cache_frozen trains on fixed cached views, so --ema"),
    (["--cache_frozen", "--mix", "mixup", "--erasing", "0.5"], "so --mix, --erasing would have no effect"),
])
def test_combinations_that_defeat_an_option_are_refused_by_resolve(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        resolve(args)


def test_options_a_setting_ignores_are_warned_about_by_resolve(capsys):
    resolve(["--mix_alpha", "0.4", "--distill_views", "2", "--detector", "haar"])
    assert capsys.readouterr().err.splitlines() == [
        "warning: --mix_alpha is ignored: it applies only with --mix mixup or cutmix",
        "warning: --distill_views is ignored: it applies only with --teacher",
        "warning: --detector is ignored: it applies only with --finetune_from"]
    resolve(["--mix", "mixup", "--mix_alpha", "0.4", "--teacher", "runs/a", "--distill_views", "2"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args, message", [
    (["--holdout", "1.5"], "--holdout must be in (0, 1), got 1.5"),
    (["--mix_ferplus", "1"], "--mix_ferplus must be in [0, 1), got 1"),
    (["--distill_views", "0"], "--distill_views must be >= 1, got 0"),
])
def test_finetune_and_distillation_ranges_fail_in_the_real_cli_before_anything_loads(tmp_path, args, message):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--output_dir", str(tmp_path / "runs"),
                          "--data_dir", str(tmp_path / "absent"), "--finetune_from", str(tmp_path / "absent"),
                          "--teacher", str(tmp_path / "absent.keras"), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not (tmp_path / "runs").exists()
