"""Loading Keras-2 HDF5 weights by layer name: every array arrives, partial loads are refused, bad files
are named; and an rcmalli-format VGGFace2 notop file loads into every layer of our ResNet50."""
import re
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import ferkeras  # noqa: F401  (sets TensorFlow's environment before Keras is imported)
from ferkeras.models.backbones import vggface
from ferkeras.errors import UserError
from ferkeras.models.legacy_h5 import keras_layer_name, legacy_layer_name, load_legacy_h5
from tests.helpers import write_keras2_h5

RESNET50_TABLE = Path(__file__).resolve().parents[2] / "shared/reference/vggface2_resnet50_layers.txt"


# ----------------------------------------------------------------------------- Keras-2 files, by hand


def keras2_weights_of(model, rng, skip=()):
    """Random arrays shaped like `model`'s weights, named the Keras-2 way, for every layer (weightless
    layers included, as Keras 2 listed them) except those in `skip`."""
    layers = []
    for layer in model.layers:
        if layer.name in skip:
            continue
        name = legacy_layer_name(layer.name)
        layers.append((name, [(f"{name}/{variable.name}:0",
                               rng.standard_normal(tuple(variable.shape)).astype("float32"))
                              for variable in layer.weights]))
    return layers


def small_model():
    """Conv -> BN -> pool -> Dense, with Keras-2-style "/" names mapped the ferkeras way."""
    faces = keras.Input((12, 12, 3), name="input_1")
    x = keras.layers.Conv2D(4, 3, name=keras_layer_name("block1/conv"))(faces)
    x = keras.layers.BatchNormalization(name=keras_layer_name("block1/conv/bn"))(x)
    x = keras.layers.Activation("relu", name="activation_1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(5, name="fc")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    return keras.Model(faces, keras.layers.Dense(8, name="logits")(x))


def model_arrays(model):
    return {layer.name: [np.asarray(w) for w in layer.weights] for layer in model.layers if layer.weights}


def assert_loaded(model, file_layers):
    """Every array the file has for a layer of `model` is now that layer's value, in order."""
    arrays = model_arrays(model)
    checked = 0
    for name, weights in file_layers:
        for actual, (_, expected) in zip(arrays.get(keras_layer_name(name), []), weights):
            np.testing.assert_array_equal(actual, expected)
            checked += 1
    return checked


# ----------------------------------------------------------------------------- the loader


def test_name_mapping_is_reversible_and_keras3_legal():
    for name in ("conv1/7x7_s2/bn", "conv2_1_1x1_reduce", "activation_36", "Block35_1_ScaleSum"):
        mapped = keras_layer_name(name)
        assert "/" not in mapped and legacy_layer_name(mapped) == name
        keras.layers.Activation("relu", name=mapped)  # Keras 3 refuses "/" in names, not this


@pytest.mark.parametrize("model_file", [False, True], ids=["weights_file", "model_file"])
@pytest.mark.parametrize("split_layer_names", [False, True], ids=["one_attr", "split_attr"])
def test_every_weight_of_a_keras2_file_arrives(tmp_path, model_file, split_layer_names):
    model = small_model()
    layers = keras2_weights_of(model, np.random.default_rng(0), skip=("logits",))
    write_keras2_h5(tmp_path / "w.h5", layers, model_file=model_file, split_layer_names=split_layer_names)
    logits_before = [np.asarray(w) for w in model.get_layer("logits").weights]

    report = load_legacy_h5(model, tmp_path / "w.h5")

    assert sorted(report.loaded) == ["block1/conv", "block1/conv/bn", "fc"]
    assert report.complete and report.missing == [] and report.mismatched == [] and report.unexpected == []
    assert report.head_missing == ["logits"]  # a notop file: the head keeps its initial values
    assert assert_loaded(model, layers) == 2 + 4 + 2  # conv kernel+bias, BN's four, dense kernel+bias
    for before, after in zip(logits_before, model.get_layer("logits").weights):
        np.testing.assert_array_equal(before, np.asarray(after))
    assert "loaded 3 layers" in report.summary() and "logits" in str(report)


def test_arrays_are_matched_by_variable_name_when_stored_in_another_order(tmp_path):
    model = small_model()
    layers = dict(keras2_weights_of(model, np.random.default_rng(1)))
    bn = layers["block1/conv/bn"]
    layers["block1/conv/bn"] = [bn[2], bn[3], bn[0], bn[1]]  # moving stats first, same names
    write_keras2_h5(tmp_path / "w.h5", list(layers.items()))
    load_legacy_h5(model, tmp_path / "w.h5")
    gamma, beta, mean, variance = (np.asarray(w) for w in model.get_layer("block1__conv__bn").weights)
    np.testing.assert_array_equal(gamma, bn[0][1])
    np.testing.assert_array_equal(mean, bn[2][1])
    np.testing.assert_array_equal(variance, bn[3][1])


def test_a_missing_layer_is_refused_unless_partial_is_allowed(tmp_path):
    model = small_model()
    layers = keras2_weights_of(model, np.random.default_rng(2), skip=("fc", "logits"))
    write_keras2_h5(tmp_path / "w.h5", layers)
    before = model_arrays(model)

    with pytest.raises(UserError) as refused:
        load_legacy_h5(model, tmp_path / "w.h5")
    message = str(refused.value)
    assert str(tmp_path / "w.h5") in message and "fc" in message and "--allow_partial_weights" in message
    for name, arrays in model_arrays(model).items():  # a refused load changes nothing
        for after, original in zip(arrays, before[name]):
            np.testing.assert_array_equal(after, original)

    report = load_legacy_h5(model, tmp_path / "w.h5", allow_partial=True)
    assert report.missing == ["fc"] and not report.complete
    assert sorted(report.loaded) == ["block1/conv", "block1/conv/bn"]
    assert assert_loaded(model, layers) == 6
    np.testing.assert_array_equal(np.asarray(model.get_layer("fc").weights[0]), before["fc"][0])


def test_a_shape_mismatch_is_reported_and_refused(tmp_path):
    model = small_model()
    layers = dict(keras2_weights_of(model, np.random.default_rng(3), skip=("logits",)))
    layers["fc"] = [("fc/kernel:0", np.ones((7, 5), "float32")), ("fc/bias:0", np.ones(5, "float32"))]
    write_keras2_h5(tmp_path / "w.h5", list(layers.items()))
    fc_before = [np.asarray(w) for w in model.get_layer("fc").weights]

    with pytest.raises(UserError, match=r"shape mismatch: fc \(kernel: file \(7, 5\), model \(4, 5\)\)"):
        load_legacy_h5(model, tmp_path / "w.h5")
    report = load_legacy_h5(model, tmp_path / "w.h5", allow_partial=True)
    assert [name for name, _ in report.mismatched] == ["fc"]
    assert "fc" not in report.loaded and "block1/conv" in report.loaded
    for before, after in zip(fc_before, model.get_layer("fc").weights):  # left at its initial values
        np.testing.assert_array_equal(before, np.asarray(after))


def test_layers_only_in_the_file_are_listed_as_unexpected(tmp_path):
    model = small_model()
    layers = keras2_weights_of(model, np.random.default_rng(4))
    layers.append(("classifier", [("classifier/kernel:0", np.zeros((5, 3), "float32"))]))
    write_keras2_h5(tmp_path / "w.h5", layers)
    report = load_legacy_h5(model, tmp_path / "w.h5")
    assert report.unexpected == ["classifier"] and report.head_missing == []
    assert "logits" in report.loaded and report.complete


def test_files_that_are_not_keras2_weights_are_user_errors(tmp_path):
    model = small_model()
    (tmp_path / "notes.h5").write_text("not hdf5 at all\n")
    with pytest.raises(UserError, match=r"notes\.h5: not an HDF5 file"):
        load_legacy_h5(model, tmp_path / "notes.h5")
    with pytest.raises(UserError, match=r"absent\.h5: no such file"):
        load_legacy_h5(model, tmp_path / "absent.h5")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5.create_dataset("x", data=np.zeros(3))
    with pytest.raises(UserError, match=r"other\.h5: no 'layer_names' attribute"):
        load_legacy_h5(model, tmp_path / "other.h5")
    write_keras2_h5(tmp_path / "unrelated.h5", [("dense_9", [("dense_9/kernel:0", np.zeros((2, 2), "float32"))])])
    with pytest.raises(UserError, match=r"unrelated\.h5: none of the .* layers"):
        load_legacy_h5(model, tmp_path / "unrelated.h5", allow_partial=True)


# ----------------------------------------------------------------------------- the VGGFace2 notop file


def table_layer_names(path):
    """Layer names of a Keras-2 summary table, in order (rows start "name (Type)   (None, ...")."""
    rows = (re.match(r"^(\S+) \(\w*\)?\s+\(None", line) for line in path.read_text().splitlines())
    return [row[1] for row in rows if row]


@pytest.fixture(scope="module")
def resnet50():
    """Our vggface ResNet50 with the ferkeras head; 64x64 input: the weights do not depend on it."""
    x = keras.Input((64, 64, 3), name="input_1")
    features = vggface.build_resnet50(x)
    logits = keras.layers.Dense(8, name="logits")(keras.layers.Dropout(0.5, name="head_dropout")(features))
    return keras.Model(x, logits)


def test_an_rcmalli_notop_file_loads_into_every_layer_of_resnet50(resnet50, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    # The notop file holds the backbone only: no dropout_layer / dense head.
    layers = keras2_weights_of(resnet50, rng, skip=("head_dropout", "logits"))
    if RESNET50_TABLE.is_file():  # name the file's layers by the published table, not by our model
        table = [name for name in table_layer_names(RESNET50_TABLE) if name not in ("dropout_layer", "dense")]
        assert [name for name, _ in layers] == table
    file_name = vggface.WEIGHTS["ResNet50"][1]
    write_keras2_h5(tmp_path / file_name, layers)
    monkeypatch.delenv("FERKERAS_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))

    path = vggface.vggface2_weights_path("ResNet50", tmp_path / file_name)
    report = load_legacy_h5(resnet50, path)

    with_weights = [legacy_layer_name(layer.name) for layer in resnet50.layers if layer.weights]
    assert len(report.loaded) == len(with_weights) - 1 == 53 + 53  # 53 convolutions, 53 BatchNorms
    assert sorted(report.loaded + report.head_missing) == sorted(with_weights)
    assert report.complete and report.unexpected == [] and report.head_missing == ["logits"]
    assert assert_loaded(resnet50, layers) == 53 + 4 * 53


def test_vggface2_weights_are_found_in_the_cache_folders(tmp_path, monkeypatch):
    file_name = vggface.WEIGHTS["SeNet50"][1]
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("FERKERAS_WEIGHTS", raising=False)
    cached = tmp_path / "keras" / "models" / "vggface" / file_name  # where keras-vggface caches it
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert vggface.vggface2_weights_path("SeNet50", download=False) == cached

    own = tmp_path / "mine" / file_name
    own.parent.mkdir()
    own.write_bytes(b"")
    monkeypatch.setenv("FERKERAS_WEIGHTS", str(own.parent))
    assert vggface.vggface2_weights_path("SeNet50", download=False) == own


def test_absent_vggface2_weights_say_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("FERKERAS_WEIGHTS", raising=False)
    url, file_name, _ = vggface.WEIGHTS["ResNet50"]
    assert url == "https://github.com/rcmalli/keras-vggface/releases/download/v2.0/" + file_name
    with pytest.raises(UserError) as absent:
        vggface.vggface2_weights_path("ResNet50", download=False)
    message = str(absent.value)
    assert file_name in message and url in message and str(tmp_path / "keras/models/vggface") in message
    assert "--weights PATH" in message and "\n" not in message
    with pytest.raises(UserError, match=r"nowhere\.h5: no such file"):
        vggface.vggface2_weights_path("ResNet50", tmp_path / "nowhere.h5")
    with pytest.raises(UserError, match="ResNet50, SeNet50"):
        vggface.vggface2_weights_path("VGG13")
