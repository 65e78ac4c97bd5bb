"""Models: in-graph preprocessing numerics, shapes, flatness, freezing, and every way weights get in.

ResNet50 is built at 32x32 (its smallest size) and VGG13 at 32x32 to keep the file fast on 2 cores.
"""

import ferkeras  # noqa: F401  (sets TensorFlow's environment before it is imported)
import cv2
import h5py
import keras
import numpy as np
import pytest

from ferkeras.errors import UserError
from ferkeras.models.weights import IMAGENET_FILE
from ferkeras.models.registry import MODEL_NAMES, build_model, default_image_size
from ferkeras.models.preprocess import FacePreprocess
from ferkeras.models.freezing import apply_freeze, count_params, freeze_summary
from tests.helpers import some_faces, write_keras2_weights_h5



def randomise_weights(model, seed=0):
    """Give every variable distinctive values, so that loading can be told apart from initialisation."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.uniform(0.5, 1.5, size=variable.shape)  # positive: valid as BN variances too
        variable.assign(values.astype(np.float32))


def assert_same_weights(expected_layers, layers):
    """Every one of `layers` equals, variable by variable, the expected layer of the same name."""
    checked = 0
    for layer in layers:
        for mine, theirs in zip(layer.weights, expected_layers[layer.name].weights, strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=f"{layer.name}/{mine.name}")
            checked += 1
    assert checked > 0


@pytest.fixture(scope="module")
def resnet50():
    return build_model("ResNet50", weights="none", image_size=32)


@pytest.fixture(scope="module")
def vgg13():
    return build_model("VGG13", weights="none", image_size=32)


# ----------------------------------------------------------------------------- preprocessing


def numpy_bilinear(images, size):
    """Bilinear resize with half-pixel centres and no antialiasing, written out in numpy."""
    def axis_taps(n_in):
        centres = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        low = np.floor(centres).astype(int)
        return low, np.minimum(low + 1, n_in - 1), centres - low

    y0, y1, wy = axis_taps(images.shape[1])
    x0, x1, wx = axis_taps(images.shape[2])
    rows = images[:, y0] * (1 - wy)[None, :, None, None] + images[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def numpy_preprocess(faces, size, mode):
    x = numpy_bilinear(faces.astype(np.float64), size)
    if mode == "scale01":
        return x / 255.0
    x = np.repeat(x, 3, axis=-1)
    if mode == "caffe":
        return x - np.array([103.939, 116.779, 123.68])
    if mode == "vggface2":
        return x - np.array([91.4953, 103.8827, 131.0912])
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / np.maximum(std, 1 / np.sqrt(x[0].size))


@pytest.mark.parametrize("mode", ["caffe", "vggface2", "facenet", "scale01"])
@pytest.mark.parametrize("size", [64, 40])  # up- and downsampling from 48
def test_face_preprocess_matches_numpy(mode, size):
    faces = some_faces()
    faces[-1] = 77.0  # a flat face: facenet's std floor must keep it finite
    got = keras.ops.convert_to_numpy(FacePreprocess(size, mode)(faces))
    expected = numpy_preprocess(faces, size, mode)
    assert got.shape == expected.shape == (4, size, size, 1 if mode == "scale01" else 3)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 if mode != "facenet" else 1e-4)


def test_face_preprocess_resizes_non_square_faces_and_keeps_its_config():
    layer = FacePreprocess(24, "caffe", name="preprocess")
    out = layer(np.zeros((1, 30, 50, 1), np.float32))
    assert tuple(out.shape) == (1, 24, 24, 3)
    clone = FacePreprocess.from_config(layer.get_config())
    assert (clone.image_size, clone.mode, clone.name) == (24, "caffe", "preprocess")
    with pytest.raises(ValueError, match="mode"):
        FacePreprocess(24, "imagenet")


# ----------------------------------------------------------------------------- building


@pytest.mark.parametrize("model_fixture, image_size, channels", [("resnet50", 32, 3), ("vgg13", 32, 1)])
def test_model_is_flat_and_takes_any_face_size(model_fixture, image_size, channels, request):
    model = request.getfixturevalue(model_fixture)
    assert tuple(model.inputs[0].shape) == (None, None, None, 1)
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert isinstance(model.layers[0], keras.layers.InputLayer)
    preprocess = model.layers[1]
    assert isinstance(preprocess, FacePreprocess) and preprocess.image_size == image_size
    assert preprocess.compute_output_shape((None, 48, 48, 1))[-1] == channels
    logits = model.layers[-1]
    assert logits.name == "logits" and logits.units == 8 and logits.activation is keras.activations.linear
    faces = some_faces()
    for size in (48, 64):
        resized = np.stack([cv2.resize(face, (size, size))[..., None] for face in faces])
        out = keras.ops.convert_to_numpy(model(resized, training=False))
        assert out.shape == (4, 8) and np.isfinite(out).all()


def test_vgg13_is_the_papers_network():
    model = build_model("VGG13", weights="none")
    assert model.get_layer("preprocess").image_size == 64 == default_image_size("VGG13")
    convs = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == [64, 64, 128, 128, 256, 256, 256, 256, 256, 256]
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [1024, 1024, 8]
    assert model.get_layer("flatten").output.shape[-1] == 4 * 4 * 256  # 64 px after four 2x2 pools
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.25, 0.25, 0.25, 0.25, 0.5, 0.3]  # the last one is the head's dropout_rate


def test_untrained_vgg13_passes_its_signal_through(vgg13):
    """He initialisation keeps the untrained network's scale: with Glorot its logits had std 2e-3 on faces
    (the signal shrank at each of the 12 ReLU layers) and full-split training stayed at the class prior."""
    faces = np.random.default_rng(0).integers(0, 256, (16, 48, 48, 1)).astype(np.float32)
    logits_model = keras.Model(vgg13.input, vgg13.get_layer("logits").output)
    logits = keras.ops.convert_to_numpy(logits_model(faces, training=False))
    assert 0.1 < logits.std() < 10, logits.std()


def test_default_image_sizes():
    assert MODEL_NAMES == ("ResNet50", "SeNet50", "FaceNet", "VGG13", "FerNetS", "FerNetSD", "FerNetM")
    assert [default_image_size(name) for name in MODEL_NAMES] == [224, 224, 160, 64, 48, 48, 48]


@pytest.mark.parametrize("kwargs, message", [
    ({"model_name": "ResNet18"}, "ResNet50, SeNet50, FaceNet, VGG13, FerNetS, FerNetSD, FerNetM"),
    ({"model_name": "VGG13", "weights": "imagenet"}, "no imagenet weights for VGG13"),
    ({"model_name": "VGG13", "weights": "vggface2"}, "no vggface2 weights for VGG13"),
    ({"model_name": "ResNet50", "weights": "facenet"}, "imagenet / vggface2 / none / PATH"),
    ({"model_name": "VGG13", "weights": "missing/run.weights.h5"}, "no such file"),
    ({"model_name": "VGG13", "weights": "weights.pt"}, "imagenet, vggface2, facenet, none or the path"),
    ({"model_name": "ResNet50", "image_size": 16, "weights": "none"}, "needs a whole number >= 32"),
    ({"model_name": "VGG13", "dropout_rate": 1.0, "weights": "none"}, "--dropout_rate"),
])
def test_user_mistakes_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message) as caught:
        build_model(**kwargs)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- freezing


def trainable_names(model):
    return [layer.name for layer in model.layers if layer.trainable]


def test_freeze_negative_positive_and_zero(vgg13):
    names = [layer.name for layer in vgg13.layers]
    assert names[:3] == ["faces", "preprocess", "block1_conv1"] and names[-3:] == ["fc2", "head_dropout", "logits"]

    info = apply_freeze(vgg13, -3)
    assert trainable_names(vgg13) == ["fc2", "head_dropout", "logits"]
    assert info == {"first_trainable": "fc2", "first_trainable_index": len(names) - 3,
                    "trainable_params": 1024 * 1024 + 1024 + 1024 * 8 + 8,
                    "frozen_layers": len(names) - 3, "total_layers": len(names)}
    assert count_params(vgg13.trainable_weights) == info["trainable_params"]
    assert "fc2" in freeze_summary(info) and "1,057,800" in freeze_summary(info)

    info = apply_freeze(vgg13, 3)  # the input and preprocessing layers count, as in the published recipe
    assert trainable_names(vgg13) == names[3:]
    assert (info["first_trainable"], info["first_trainable_index"], info["frozen_layers"]) == ("block1_conv2", 3, 3)
    assert not vgg13.get_layer("block1_conv1").trainable

    info = apply_freeze(vgg13, 0)
    assert trainable_names(vgg13) == names and info["frozen_layers"] == 0 and info["first_trainable"] == "faces"
    assert info["trainable_params"] == vgg13.count_params()

    for too_far in (-len(names) - 1, len(names)):
        with pytest.raises(UserError, match=f"has {len(names)} layers"):
            apply_freeze(vgg13, too_far)


def test_freeze_counts_the_full_resnet50(resnet50):
    info = apply_freeze(resnet50, -51)
    layers = resnet50.layers
    assert [layer.trainable for layer in layers] == [False] * (len(layers) - 51) + [True] * 51
    assert info["first_trainable"] == layers[-51].name and info["first_trainable_index"] == len(layers) - 51
    apply_freeze(resnet50, 0)


def test_frozen_batchnorm_keeps_its_statistics_during_fit():
    model = build_model("ResNet50", weights="none", image_size=32)
    info = apply_freeze(model, -20)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    frozen = [bn for bn in bns if not bn.trainable]
    trained = [bn for bn in bns if bn.trainable]
    assert frozen and trained and all(model.layers.index(bn) >= info["first_trainable_index"] for bn in trained)
    before = {bn.name: (bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()) for bn in bns}
    frozen_kernel = model.get_layer("conv1_conv").kernel.numpy().copy()

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    faces = some_faces()
    model.fit(faces, np.eye(8, dtype=np.float32)[[0, 1, 2, 3]], batch_size=4, epochs=1, verbose=0)

    for bn in frozen:
        np.testing.assert_array_equal(bn.moving_mean.numpy(), before[bn.name][0], err_msg=bn.name)
        np.testing.assert_array_equal(bn.moving_variance.numpy(), before[bn.name][1], err_msg=bn.name)
    for bn in trained:
        assert not np.array_equal(bn.moving_mean.numpy(), before[bn.name][0]), bn.name
    np.testing.assert_array_equal(model.get_layer("conv1_conv").kernel.numpy(), frozen_kernel)


# ----------------------------------------------------------------------------- weights from a file


def test_weights_h5_path_loads_every_layer(tmp_path, capsys):
    source = build_model("VGG13", weights="none", image_size=32)
    randomise_weights(source)
    path = tmp_path / "run.weights.h5"
    source.save_weights(path)

    model = build_model("VGG13", weights=str(path), image_size=32)
    assert_same_weights({layer.name: layer for layer in source.layers}, model.layers)
    assert "loaded all layers" in capsys.readouterr().out

    with pytest.raises(UserError, match="same --model_name and --image_size"):
        build_model("VGG13", weights=str(path), image_size=48)  # fc1 has another shape at 48 px


def test_keras_file_of_a_whole_model_loads_by_layer_name(tmp_path, capsys):
    source = build_model("ResNet50", weights="none", image_size=32, dropout_rate=0.5)
    randomise_weights(source, seed=1)
    path = tmp_path / "best.keras"
    source.save(path)

    model = build_model("ResNet50", weights=path, image_size=48)  # weights do not depend on the image size
    assert model.get_layer("preprocess").mode == "caffe"
    assert_same_weights({layer.name: layer for layer in source.layers}, model.layers)
    assert "loaded 107 of 107 layers by layer name" in capsys.readouterr().out


def test_keras_file_of_another_shape_needs_allow_partial(tmp_path, capsys):
    source = build_model("VGG13", weights="none", image_size=32)
    randomise_weights(source, seed=2)
    path = tmp_path / "vgg13_32.keras"
    source.save(path)
    with pytest.raises(UserError, match="1 of 13 layers with weights have no match .*first: fc1"):
        build_model("VGG13", weights=path, image_size=48)

    model = build_model("VGG13", weights=path, image_size=48, allow_partial_weights=True)
    assert "loaded 12 of 13 layers" in capsys.readouterr().out
    source_layers = {layer.name: layer for layer in source.layers}
    assert_same_weights(source_layers, [layer for layer in model.layers if layer.name != "fc1"])
    assert model.get_layer("fc1").kernel.shape != source.get_layer("fc1").kernel.shape  # kept its initial weights


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    model = build_model("VGG13", weights="none", image_size=32)
    randomise_weights(model, seed=3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.get_layer("preprocess").get_config() == model.get_layer("preprocess").get_config()
    faces = some_faces()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(faces, training=False)),
                                  keras.ops.convert_to_numpy(model(faces, training=False)))


# ----------------------------------------------------------------------------- ImageNet weights, no network


@pytest.fixture
def offline_keras_home(tmp_path, monkeypatch):
    """An empty Keras cache, and a get_file that fails the way an offline download does."""
    def no_network(fname, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("FERKERAS_WEIGHTS", raising=False)
    monkeypatch.setattr(keras.utils, "get_file", no_network)
    return tmp_path / "keras_home"


def test_imagenet_offline_says_where_to_put_the_file(offline_keras_home):
    with pytest.raises(UserError) as caught:
        build_model("ResNet50", weights="imagenet", image_size=32)
    message = str(caught.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert f"{offline_keras_home / 'models'}/" in message and "--weights PATH / none" in message
    assert "Temporary failure in name resolution" in message and "\n" not in message


def test_keras2_resnet50_file_from_the_cache_or_a_path(offline_keras_home, capsys):
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    randomise_weights(source, seed=4)
    cached = offline_keras_home / "models" / IMAGENET_FILE
    cached.parent.mkdir(parents=True)
    write_keras2_weights_h5(source, cached)
    source_layers = {layer.name: layer for layer in source.layers}

    # get_file would raise: "imagenet" takes the file from the cache without any download.
    for weights in ("imagenet", cached):
        model = build_model("ResNet50", weights=weights, image_size=32)
        backbone = [layer for layer in model.layers if layer.name in source_layers]
        assert len(backbone) == len(source.layers) - 1  # all but keras.applications' own input layer
        assert_same_weights(source_layers, backbone)
        assert model.get_layer("preprocess").mode == "caffe"
    out = capsys.readouterr().out
    assert f"ImageNet ResNet50 from {cached}" in out and "loaded by keras.applications" in out


def test_resnet50_variant_is_read_from_the_weights_file(tmp_path):
    """keras-vggface's ResNet50 (VGGFace2) and keras.applications' differ; the file says which it needs."""
    from ferkeras.models.registry import _resnet50_variant

    keras2 = tmp_path / "rcmalli_vggface_tf_notop_resnet50.h5"
    with h5py.File(keras2, "w") as h5:
        h5.create_group("conv1/7x7_s2/bn")
    keras3 = tmp_path / "vggface.weights.h5"
    with h5py.File(keras3, "w") as h5:
        h5.create_dataset("layers/conv2d/vars/0", data=np.zeros((7, 7, 3, 64), np.float32))  # no bias
    assert _resnet50_variant(keras2) == _resnet50_variant(keras3) == _resnet50_variant("vggface2") == "vggface2"

    with h5py.File(keras2, "w") as h5:
        h5.create_group("model_weights/conv1_conv")  # a Keras-2 full-model file of keras.applications'
    with h5py.File(keras3, "a") as h5:
        h5.create_dataset("layers/conv2d/vars/1", data=np.zeros(64, np.float32))
    assert _resnet50_variant(keras2) == _resnet50_variant(keras3) == _resnet50_variant("none") == "keras"


def test_a_keras_vggface_file_builds_the_vggface2_resnet50(tmp_path, capsys):
    from ferkeras.models.backbones.vggface import build_resnet50
    from ferkeras.models.legacy_h5 import legacy_layer_name

    inputs = keras.Input((32, 32, 3))
    source = keras.Model(inputs, build_resnet50(inputs))
    randomise_weights(source, seed=5)
    path = tmp_path / "rcmalli_vggface_tf_notop_resnet50.h5"
    write_keras2_weights_h5(source, path, keras2_name=legacy_layer_name)

    model = build_model("ResNet50", weights=path, image_size=32)
    assert model.get_layer("preprocess").mode == "vggface2"
    source_layers = {layer.name: layer for layer in source.layers}
    assert_same_weights(source_layers, [layer for layer in model.layers if layer.name in source_layers])
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert "loaded 106 layers by name" in capsys.readouterr().out


@pytest.mark.parametrize("model_name, image_size, mode", [("SeNet50", 32, "vggface2"), ("FaceNet", 75, "facenet")])
def test_face_backbones_come_through_the_registry(model_name, image_size, mode):
    model = build_model(model_name, weights="none", image_size=image_size)
    assert model.get_layer("preprocess").mode == mode and model.layers[-1].name == "logits"
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    out = keras.ops.convert_to_numpy(model(some_faces(2), training=False))
    assert out.shape == (2, 8) and np.isfinite(out).all()


@pytest.mark.parametrize("model_name, weights, file_name", [
    ("SeNet50", "vggface2", "rcmalli_vggface_tf_notop_senet50.h5"),
    ("FaceNet", "facenet", "facenet_keras.h5"),
])
def test_named_face_weights_offline_say_where_to_put_the_file(offline_keras_home, model_name, weights, file_name):
    with pytest.raises(UserError, match=f"{file_name} is not in {offline_keras_home}"):
        build_model(model_name, weights=weights)


def test_a_broken_imagenet_file_in_the_cache_is_a_user_error(offline_keras_home):
    cached = offline_keras_home / "models" / IMAGENET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="is not the Keras ResNet50 notop weights file.*delete it"):
        build_model("ResNet50", weights="imagenet", image_size=32)
