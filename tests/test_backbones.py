"""The face backbones are the published graphs: keras-vggface's ResNet50 / SENet50 layer for layer
against the FER+ recipe's Keras-2 summaries, and the FaceNet port giving the Keras-2 model's embeddings
on real faces."""
import re
import time
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

import ferkeras  # noqa: F401  (sets TensorFlow's environment before Keras is imported)
from ferkeras.models.backbones import facenet, vggface
from ferkeras.errors import UserError
from ferkeras.models.legacy_h5 import legacy_layer_name, load_legacy_h5

SHARED = Path(__file__).resolve().parents[2] / "shared"
TABLES = {"ResNet50": SHARED / "reference/vggface2_resnet50_layers.txt",
          "SeNet50": SHARED / "reference/vggface2_senet50_layers.txt"}
BUILDERS = {"ResNet50": vggface.build_resnet50, "SeNet50": vggface.build_senet50}
FACENET_H5 = SHARED / "weights/facenet_keras.h5"
FERPLUS_VALID = SHARED / "data/ferplus/FER2013Valid"

# From the recipe's summaries (layers, parameters with the 8-class head), so that the architecture is
# pinned even where ../shared/reference is absent.
PUBLISHED_TOTALS = {"ResNet50": (177, 23_577_544), "SeNet50": (289, 26_108_536)}


# ----------------------------------------------------------------------------- Keras-2 summary tables


def parse_summary_table(path):
    """Rows of a Keras-2 `model.summary()` table and the "name: -N" offsets listed after it.

    A row starts "name (Type)" (the type cut at the column width, e.g. "(BatchNormaliza"), then the
    output shape, the parameter count and the first inbound layer; a layer with several inputs
    continues on lines that hold only further "name[0][0]" entries.
    """
    row_start = re.compile(r"^(?P<name>\S+) \((?P<type>\w*)\)?\s+(?P<shape>\(None[^)]*\))\s+(?P<params>\d+)"
                           r"\s*(?P<inbound>\S*)")
    rows, offsets = [], {}
    for line in path.read_text().splitlines():
        row = row_start.match(line)
        if row:
            inbound = [row["inbound"]] if row["inbound"] else []
            rows.append({"name": row["name"], "type": row["type"], "shape": row["shape"],
                         "params": int(row["params"]), "inbound": inbound})
        elif rows and re.fullmatch(r"\s{40,}\S+\[\d+\]\[\d+\]\s*", line):
            rows[-1]["inbound"].append(line.strip())
        elif offset := re.fullmatch(r"(\w+): (-\d+)\s*", line):
            offsets[offset[1]] = int(offset[2])
    for row in rows:
        row["inbound"] = [entry.split("[")[0] for entry in row["inbound"]]
    return rows, offsets


def recipe_model(model_name, size=224):
    """The recipe's model around our builder: input_1 -> backbone -> dropout_layer -> dense (8)."""
    image = keras.Input((size, size, 3), name="input_1")
    features = BUILDERS[model_name](image)
    x = keras.layers.Dropout(0.5, name="dropout_layer")(features)
    return keras.Model(image, keras.layers.Dense(8, name="dense")(x))


def inbound_layer_names(layer):
    inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    return [legacy_layer_name(tensor._keras_history.operation.name) for tensor in inputs]


@pytest.mark.parametrize("model_name", ["ResNet50", "SeNet50"])
def test_vggface_backbone_matches_the_published_table_layer_by_layer(model_name):
    table = TABLES[model_name]
    if not table.is_file():
        pytest.skip(f"reference table {table} is absent")
    rows, offsets = parse_summary_table(table)
    assert len(rows) == PUBLISHED_TOTALS[model_name][0]
    model = recipe_model(model_name)
    assert len(model.layers) == len(rows)
    for index, (layer, row) in enumerate(zip(model.layers, rows)):
        ours = {"name": legacy_layer_name(layer.name), "shape": str(tuple(layer.output.shape)),
                "params": layer.count_params(), "type_ok": type(layer).__name__.startswith(row["type"]),
                "inbound": inbound_layer_names(layer) if row["inbound"] else []}
        published = {"name": row["name"], "shape": row["shape"], "params": row["params"], "type_ok": True,
                     "inbound": row["inbound"]}
        assert ours == published, f"layer {index}"
    names = [legacy_layer_name(layer.name) for layer in model.layers]
    listed = {name: offset for name, offset in offsets.items() if name in names}
    assert len(listed) >= len(offsets) - 1  # the ResNet50 list misspells one name ("acitvation_46")
    assert {name: names[offset] for name, offset in listed.items()} == {name: name for name in listed}
    if model_name == "ResNet50":
        assert names[-51] == "activation_36" and offsets["activation_36"] == -51


@pytest.mark.parametrize("model_name", ["ResNet50", "SeNet50"])
def test_vggface_backbone_has_the_published_size_and_freeze_point(model_name):
    model = recipe_model(model_name)
    layers, params = PUBLISHED_TOTALS[model_name]
    assert (len(model.layers), model.count_params()) == (layers, params)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # one flat Functional
    if model_name == "ResNet50":
        assert model.layers[-51].name == "activation_36"
    # keras-vggface kept Keras' BatchNormalization epsilon in ResNet50 and set 1e-4 in SENet50.
    epsilon = {1e-3 if model_name == "ResNet50" else 1e-4}
    assert {layer.epsilon for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == epsilon


def test_vggface_backbone_pools_whatever_the_input_size():
    rng = np.random.default_rng(0)
    for size, pooled in ((64, 2), (100, 3)):  # 100 -> 50 -> 24 -> 12 -> 6 -> 3
        image = keras.Input((size, size, 3))
        model = keras.Model(image, vggface.build_resnet50(image))
        assert model.get_layer("avg_pool").pool_size == (pooled, pooled)
        features = np.asarray(model(rng.normal(0, 40, (2, size, size, 3)).astype("float32"), training=False))
        assert features.shape == (2, 2048) and np.isfinite(features).all() and features.std() > 0


# ----------------------------------------------------------------------------- FaceNet


class KerasTwoScaleSumShim(keras.layers.Layer):
    """Stands in for facenet_keras.h5's Lambda layers (bytecode computing inputs[0] + inputs[1] * scale)
    so that Keras 3 can load the original file as the reference."""

    def __init__(self, function=None, function_type=None, output_shape=None, output_shape_type=None,
                 output_shape_module=None, arguments=None, module=None, mask=None, **kwargs):
        super().__init__(**kwargs)
        self.scale = arguments["scale"]

    def call(self, inputs):
        return inputs[0] + inputs[1] * self.scale


def standardised_faces(count, size=160):
    """`count` FER+ validation faces (synthetic ones without ../shared) as FaceNet takes them: upscaled
    bilinearly, gray -> 3 channels, standardised per image."""
    files = sorted(FERPLUS_VALID.glob("*.png"))[:count] if FERPLUS_VALID.is_dir() else []
    if files:
        faces = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in files]
    else:
        rng = np.random.default_rng(7)
        faces = [cv2.GaussianBlur(rng.integers(0, 256, (48, 48)).astype("uint8"), (7, 7), 2) for _ in range(count)]
    x = np.stack([cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR) for face in faces])
    x = np.repeat(x[..., None].astype("float32"), 3, axis=-1)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(x[0].size))
    return (x - mean) / std


@pytest.fixture(scope="module")
def facenet_reference():
    if not FACENET_H5.is_file():
        pytest.skip(f"{FACENET_H5} is absent: no FaceNet weights to compare the port against")
    original = keras.saving.load_model(FACENET_H5, custom_objects={"Lambda": KerasTwoScaleSumShim}, compile=False)
    return keras.Model(original.inputs, [original.get_layer("AvgPool").output, original.outputs[0]])


def test_facenet_port_gives_the_original_embeddings_on_real_faces(facenet_reference):
    faces = standardised_faces(6)
    reference_features, reference_embeddings = (np.asarray(y) for y in facenet_reference([faces], training=False))

    image = keras.Input((160, 160, 3))
    embedding = facenet.build_facenet(image, include_embedding=True)
    pooled = keras.Model(image, embedding).get_layer("AvgPool").output
    port = keras.Model(image, [pooled, embedding])
    untrained = np.asarray(port(faces, training=False)[1])
    assert np.abs(untrained - reference_embeddings).max() > 1e-2  # the comparison can fail

    report = load_legacy_h5(port, FACENET_H5)
    assert report.complete and report.unexpected == [] and len(report.loaded) == 245
    start = time.perf_counter()
    features, embeddings = (np.asarray(y) for y in port(faces, training=False))
    seconds = time.perf_counter() - start

    assert embeddings.shape == (6, facenet.EMBEDDING_SIZE) and features.shape == (6, facenet.FEATURES)
    np.testing.assert_allclose(embeddings, reference_embeddings, rtol=0, atol=1e-4)
    np.testing.assert_allclose(features, reference_features, rtol=0, atol=1e-4)
    assert np.abs(embeddings[0] - embeddings[1:]).max() > 0.1  # different faces, different embeddings
    print(f"FaceNet port: max |diff| {np.abs(embeddings - reference_embeddings).max():.2e} on 6 faces, "
          f"embedded in {seconds:.2f} s")


def test_facenet_port_has_the_size_of_the_original():
    """facenet_keras.h5 holds 426 layers and 22,808,144 parameters (with its embedding head); the
    smallest input the strided stages accept, 75, pools a 1x1 map."""
    image = keras.Input((160, 160, 3))
    model = keras.Model(image, facenet.build_facenet(image, include_embedding=True))
    assert (len(model.layers), model.count_params()) == (426, 22_808_144)
    assert model.get_layer("Block8_6_ScaleSum").output.shape == (None, 3, 3, facenet.FEATURES)
    assert sum(isinstance(layer, facenet.ScaledResidual) for layer in model.layers) == 21
    small = keras.Input((75, 75, 3))
    assert facenet.build_facenet(small).shape == (None, facenet.FEATURES)


def test_facenet_features_model_takes_the_backbone_weights_and_leaves_the_embedding_head():
    if not FACENET_H5.is_file():
        pytest.skip(f"{FACENET_H5} is absent")
    image = keras.Input((80, 80, 3), name="faces")
    features = facenet.build_facenet(image)
    assert features.shape == (None, facenet.FEATURES)
    head = keras.layers.Dense(8, name="logits")(keras.layers.Dropout(0.3, name="head_dropout")(features))
    model = keras.Model(image, head)
    report = load_legacy_h5(model, facenet.facenet_weights_path(FACENET_H5))
    assert report.complete and report.head_missing == ["logits"]
    assert report.unexpected == ["Bottleneck", "Bottleneck_BatchNorm"]


def test_scaled_residual_survives_a_keras_round_trip(tmp_path):
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], facenet.ScaledResidual(0.17, name="Block35_1_ScaleSum")([a, b]))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    x, y = np.ones((1, 3), "float32"), np.full((1, 3), 2.0, "float32")
    np.testing.assert_allclose(np.asarray(restored([x, y])), 1.34, rtol=1e-6)


def test_facenet_weights_are_looked_for_where_the_message_says(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("FERKERAS_WEIGHTS", raising=False)
    with pytest.raises(UserError) as absent:
        facenet.facenet_weights_path()
    assert "facenet_keras.h5" in str(absent.value) and str(tmp_path / "keras/models") in str(absent.value)
    cached = tmp_path / "keras/models/facenet_keras.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert facenet.facenet_weights_path() == cached
    monkeypatch.setenv("FERKERAS_WEIGHTS", str(tmp_path))
    (tmp_path / "facenet_keras.h5").write_bytes(b"")
    assert facenet.facenet_weights_path() == tmp_path / "facenet_keras.h5"
    with pytest.raises(UserError, match=r"gone\.h5: no such file"):
        facenet.facenet_weights_path(tmp_path / "gone.h5")
