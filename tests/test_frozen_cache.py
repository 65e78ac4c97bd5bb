"""--cache_frozen: the cut, the cached views, and training that matches the uncached path."""
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from ferkeras.config import resolve
from ferkeras.data import load_labelled
from ferkeras.errors import UserError
from ferkeras.frozen_cache import (CachedViewBatches, compute_views, cut_tensors, split_model,
                                   valid_features)
from ferkeras.models import apply_freeze, build_model
from ferkeras.training import train

# ResNet50 (Keras applications layout) at 32 px: -51 cuts inside a residual block, so the suffix has
# two inputs (the block's shortcut and its branch): the harder case for the cut.
SMALL = ["--model_name", "ResNet50", "--weights", "none", "--image_size", "32", "--batch_size", "32",
         "--class_weights", "none", "--augment", "none", "--init_lr", "0.0001", "--lr_policy", "constant",
         "--early_stopping_patience", "0", "--dropout_rate", "0.0", "--freeze_before", "-51",
         "--train_limit", "128", "--valid_limit", "64"]


@pytest.fixture(scope="module")
def resnet():
    model = build_model("ResNet50", weights="none", image_size=32, dropout_rate=0.0)
    apply_freeze(model, -51)
    return model


@pytest.fixture(scope="module")
def faces(small_ferplus):
    images, _, _ = load_labelled(small_ferplus, "valid", "majority")
    return images[:12]


def test_prefix_then_suffix_equals_the_whole_model(resnet, faces):
    prefix, suffix = split_model(resnet)
    assert len(prefix.outputs) == 2
    x = faces.astype(np.float32)[..., None]
    whole = keras.ops.convert_to_numpy(resnet(x, training=False))
    split = keras.ops.convert_to_numpy(suffix(prefix(x, training=False), training=False))
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    # The suffix trains exactly the model's trainable variables, in the same order.
    assert [id(v) for v in suffix.trainable_variables] == [id(v) for v in resnet.trainable_variables]
    assert not any(layer.trainable_weights for layer in prefix.layers)


def test_views_are_the_face_its_mirror_and_random_crops(resnet, faces):
    prefix, _ = split_model(resnet)
    shapes = [(len(faces), 3) + tuple(t.shape[1:]) for t in prefix.outputs]
    store = compute_views(prefix, faces, 3, seed=1, store=[np.zeros(s, np.float16) for s in shapes])
    original = prefix.predict_on_batch(faces.astype(np.float32)[..., None])
    mirror = prefix.predict_on_batch(faces[:, :, ::-1].astype(np.float32)[..., None])
    for cached, a, b in zip(store, original, mirror):
        np.testing.assert_allclose(cached[:, 0], np.asarray(a, np.float16), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(cached[:, 1], np.asarray(b, np.float16), rtol=2e-3, atol=2e-3)
        assert not np.allclose(cached[:, 2], cached[:, 0], atol=1e-2)  # a crop is another view


def test_each_epoch_draws_one_view_per_face():
    features = [np.arange(10 * 4, dtype=np.float16).reshape(10, 4, 1)]  # value = 4 * face + view
    targets = np.eye(8, dtype=np.float32)[np.arange(10) % 8]
    batches = CachedViewBatches(features, targets, batch_size=5, seed=3)
    seen = []
    for epoch in range(3):
        x = np.concatenate([batches.batch(epoch, i)[0] for i in range(len(batches))])[:, 0]
        faces, views = np.divmod(x.astype(int), 4)
        assert sorted(faces) == list(range(10))
        y = np.concatenate([batches.batch(epoch, i)[1] for i in range(len(batches))])
        np.testing.assert_array_equal(y, targets[faces])  # inputs and targets stay paired
        seen.append(views[np.argsort(faces)])
    assert len({tuple(v) for v in seen}) > 1  # views change from epoch to epoch


def test_a_model_with_nothing_frozen_is_refused():
    model = build_model("VGG13", weights="none", image_size=32)
    apply_freeze(model, 0)
    with pytest.raises(UserError, match="--cache_frozen needs a frozen prefix"):
        cut_tensors(model)


def test_cached_run_follows_the_uncached_run_checkpoints_the_whole_model_and_resumes(
        small_ferplus, tmp_path, capsys):
    """With one view and no augmentation both paths see the same batches: the same losses up to
    float16 rounding, even across a --resume that reuses a memory-mapped cache."""
    common = ["--data_dir", str(small_ferplus), "--output_dir", str(tmp_path), *SMALL]
    cached_flags = common + ["--name", "cached", "--cache_frozen", "--cache_views", "1", "--cache_ram_gb", "0"]
    config, explicit = resolve(cached_flags + ["--nepochs", "1"])
    train(config, explicit)
    run = tmp_path / "cached"
    meta = json.loads((run / "cache" / "meta.json").read_text())
    assert meta["cache_views"] == 1 and len(list((run / "cache").glob("train_views_*.npy"))) == 2

    # The checkpoint is the whole model, scoring raw faces, and it reproduces the logged val_accuracy.
    model = keras.saving.load_model(run / "checkpoints" / "last.keras")
    assert model.input_shape == (None, None, None, 1) and model.output_shape == (None, 8)
    valid_x, valid_t = _valid_subset(config)
    logits = model.predict(valid_x.astype(np.float32)[..., None], verbose=0)
    accuracy = float(np.mean(logits.argmax(1) == valid_t.argmax(1)))
    assert abs(accuracy - pd.read_csv(run / "training.csv")["val_accuracy"].iloc[0]) <= 1 / len(valid_x)

    capsys.readouterr()
    config, explicit = resolve(cached_flags + ["--nepochs", "2", "--resume"])
    assert train(config, explicit)["epochs"] == 2
    assert "cache: reusing" in capsys.readouterr().out
    resumed = keras.saving.load_model(run / "checkpoints" / "last.keras")
    assert int(resumed.optimizer.iterations) == 2 * 4  # 128 faces / 32 per step, two epochs

    config, explicit = resolve(common + ["--name", "plain", "--nepochs", "2"])
    train(config, explicit)
    plain = pd.read_csv(tmp_path / "plain" / "training.csv")
    cached = pd.read_csv(run / "training.csv")
    np.testing.assert_allclose(cached["loss"], plain["loss"], rtol=0.02)
    np.testing.assert_allclose(cached["val_loss"], plain["val_loss"], rtol=0.02)
    assert abs(cached["val_accuracy"].iloc[-1] - plain["val_accuracy"].iloc[-1]) <= 2 / len(valid_x)


def _valid_subset(config):
    """The validation faces train() used (its seeded subset)."""
    from ferkeras.training import load_data
    _, valid = load_data(config)
    return valid


def test_valid_features_are_the_prefix_outputs(resnet, faces):
    prefix, suffix = split_model(resnet)
    features = valid_features(prefix, faces)
    assert isinstance(features, tuple) and len(features) == 2 and features[0].dtype == np.float16
    logits = suffix.predict(tuple(f.astype(np.float32) for f in features), verbose=0)
    whole = resnet.predict(faces.astype(np.float32)[..., None], verbose=0)
    assert (logits.argmax(1) == whole.argmax(1)).mean() >= 0.9
