"""Models: in-graph preprocessing, the backbone registry, pretrained-weights loading and freezing.

Every model built here follows one contract, so that training, evaluation and ONNX export never need to
know which backbone they hold:

- input: raw grayscale pixels 0..255, float32, channels-last, shape (None, None, None, 1), any spatial
  size (training feeds the 48x48 FER faces, the ONNX export feeds 64x64);
- everything the backbone expects (resize, gray to 3 channels, its normalisation) happens inside the
  graph, in the `FacePreprocess` layer;
- output: 8 logits (no softmax) in FER+ class order, from a Dense layer named "logits".

The model is one flat Functional: the backbone's layers sit directly in `model.layers`, so that
`--freeze_before` counts layers exactly as the published FER+ recipe did, and so that the exported graph
has no nested models.
"""
import dataclasses
import importlib
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import ops

from . import NUM_CLASSES
from .errors import UserError

# ----------------------------------------------------------------------------- preprocessing in the graph

# Per-channel means subtracted in BGR order by the two caffe-style backbones. The faces are gray, so the
# three channels are equal before subtraction and the channel order only decides which mean goes where.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)  # keras.applications ResNet50 (ImageNet)
VGGFACE2_BGR_MEANS = (91.4953, 103.8827, 131.0912)  # keras-vggface ResNet50 / SENet50 (VGGFace2)
_MEANS_BY_MODE = {"caffe": CAFFE_BGR_MEANS, "vggface2": VGGFACE2_BGR_MEANS}
PREPROCESS_MODES = ("caffe", "vggface2", "facenet", "scale01")


@keras.saving.register_keras_serializable(package="ferkeras")
class FacePreprocess(keras.layers.Layer):
    """Raw grayscale faces (0..255) -> what a backbone expects, inside the graph.

    Resizes to (image_size, image_size) with bilinear interpolation (no antialiasing, so that it exports
    to a plain ONNX Resize), then normalises per `mode`:

    - "caffe": gray -> 3 channels (BGR), minus the ImageNet channel means (keras.applications ResNet50);
    - "vggface2": gray -> 3 channels (BGR), minus the VGGFace2 channel means (keras-vggface);
    - "facenet": gray -> 3 channels, per-image standardisation (x - mean) / max(std, 1/sqrt(n)) with n
      the number of values in the resized 3-channel image, as FaceNet was trained;
    - "scale01": x / 255, one channel (the from-scratch VGG13).

    Plain arithmetic on `keras.ops` rather than `keras.layers.Resizing` / `Normalization`: Resizing
    makes exported graphs run BatchNormalization in training mode, and Normalization carries state that
    the exporters handle poorly.
    """

    def __init__(self, image_size, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"FacePreprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
        self.image_size = int(image_size)
        self.mode = mode

    @property
    def channels(self):
        return 1 if self.mode == "scale01" else 3

    def call(self, faces):
        x = ops.cast(faces, self.compute_dtype)
        x = ops.image.resize(x, (self.image_size, self.image_size), interpolation="bilinear",
                             antialias=False, data_format="channels_last")
        if self.mode == "scale01":
            return x / 255.0
        x = ops.concatenate([x, x, x], axis=-1)
        if self.mode == "facenet":
            return self._standardise_per_image(x)
        return x - ops.convert_to_tensor(_MEANS_BY_MODE[self.mode], dtype=x.dtype)

    def _standardise_per_image(self, x):
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.std(x, axis=(1, 2, 3), keepdims=True)
        # The floor keeps a flat (constant) image from dividing by zero.
        floor = (self.image_size * self.image_size * self.channels) ** -0.5
        return (x - mean) / ops.maximum(std, floor)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, self.channels)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "mode": self.mode}


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    image_size: int  # default side the graph resizes faces to
    min_image_size: int  # below this the backbone's strided stages run out of pixels
    named_weights: tuple  # pretrained weights this backbone accepts by name (besides "none" and PATH)


MODEL_SPECS = {
    "ResNet50": ModelSpec(224, 32, ("imagenet", "vggface2")),  # 224: the published FER+ recipe
    "SeNet50": ModelSpec(224, 32, ("vggface2",)),
    "FaceNet": ModelSpec(160, 75, ("facenet",)),
    "VGG13": ModelSpec(64, 16, ()),  # Barsoum et al. 2016 trained it from scratch on 64x64 faces
    # Our compact family (backbones/compact.py), from scratch at the faces' own 48x48.
    "FerNetS": ModelSpec(48, 16, ()),
    "FerNetM": ModelSpec(48, 16, ()),
}
MODEL_NAMES = tuple(MODEL_SPECS)
WEIGHT_NAMES = ("imagenet", "vggface2", "facenet", "none")
WEIGHTS_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")


def model_spec(model_name):
    if model_name not in MODEL_SPECS:
        raise UserError(f"--model_name: unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return MODEL_SPECS[model_name]


def default_image_size(model_name):
    """The side `build_model` resizes faces to when no image size is given."""
    return model_spec(model_name).image_size


# keras.applications.ResNet50(weights="imagenet")'s file, address and checksum: a copy Keras downloaded
# once serves us too, and vice versa. (The face backbones' files are found by their own modules.)
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_FILE
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


def build_model(model_name="ResNet50", weights="imagenet", image_size=None, dropout_rate=0.3,
                allow_partial_weights=False):
    """Build a FER+ classifier: faces 0..255 -> FacePreprocess -> backbone -> Dropout -> Dense(8) logits.

    Args:
        model_name: one of MODEL_NAMES.
        weights: "imagenet" (ResNet50), "vggface2" (ResNet50, SeNet50), "facenet" (FaceNet), "none",
            or the path of a `.weights.h5`, `.keras` or Keras-2 `.h5` file.
        image_size: side the graph resizes faces to; None or 0 for the backbone's default.
        dropout_rate: dropout before the final Dense(8).
        allow_partial_weights: accept a weights file that covers only part of the model.
    """
    spec = model_spec(model_name)
    image_size = _checked_image_size(model_name, spec, image_size)
    if not 0.0 <= dropout_rate < 1.0:
        raise UserError(f"--dropout_rate: expected a number in [0, 1), got {dropout_rate}")
    weights = _checked_weights(model_name, spec, weights)

    backbone = _choose_backbone(model_name, weights)
    faces = keras.Input(shape=(None, None, 1), dtype="float32", name="faces")
    # Preprocessing and logits compute in float32 under --mixed_precision too: FaceNet's per-image
    # standardisation sums ~77k values (beyond float16's range), and losses and exports want float32 logits.
    x = FacePreprocess(image_size, backbone.preprocess, name="preprocess", dtype="float32")(faces)
    features = backbone.build(x)
    x = keras.layers.Dropout(dropout_rate, name="head_dropout")(features)
    logits = keras.layers.Dense(NUM_CLASSES, name="logits", dtype="float32")(x)
    model = keras.Model(faces, logits, name=f"ferkeras_{model_name.lower()}")

    report = backbone.loaded
    if backbone.weights_file is not None:
        report = load_weights_file(model, backbone.weights_file, allow_partial_weights)
    if report:
        print(f"weights: {report}")
    return model


def _checked_image_size(model_name, spec, image_size):
    if not image_size:
        return spec.image_size
    if int(image_size) != image_size or image_size < spec.min_image_size:
        raise UserError(f"--image_size: {model_name} needs a whole number >= {spec.min_image_size}, got "
                        f"{image_size}; use 0 for its default ({spec.image_size})")
    return int(image_size)


def _checked_weights(model_name, spec, weights):
    """The weights spec, normalised: a lower-case name from WEIGHT_NAMES or a Path to an existing file."""
    name = "none" if weights is None else str(weights)
    if name.lower() in WEIGHT_NAMES:
        name = name.lower()
        if name != "none" and name not in spec.named_weights:
            accepted = " / ".join(spec.named_weights + ("none", "PATH"))
            raise UserError(f"--weights {name}: there are no {name} weights for {model_name}; use "
                            f"--weights {accepted}")
        return name
    path = Path(name).expanduser()
    if not path.name.lower().endswith(WEIGHTS_SUFFIXES):
        raise UserError(f"--weights {name}: expected {', '.join(WEIGHT_NAMES)} or the path of a "
                        f"{', '.join(WEIGHTS_SUFFIXES)} file")
    if not path.is_file():
        raise UserError(f"--weights {name}: no such file; give an existing {', '.join(WEIGHTS_SUFFIXES)} "
                        f"file or one of {', '.join(WEIGHT_NAMES)}")
    return path


# ----------------------------------------------------------------------------- backbones


@dataclasses.dataclass(frozen=True)
class Backbone:
    preprocess: str  # FacePreprocess mode
    build: Callable  # preprocessed KerasTensor (None, S, S, C) -> pooled features (None, D)
    weights_file: Path = None  # to load into the whole model once it is built
    loaded: str = None  # report of the weights the builder itself loads, if it does


def _choose_backbone(model_name, weights):
    """The backbone a model name and weights spec need, with its weights file found (or downloaded)
    before anything is built, so that a missing file fails fast."""
    weights_file = weights if isinstance(weights, Path) else None
    if model_name == "VGG13":
        return Backbone("scale01", build_vgg13, weights_file)
    if model_name.startswith("FerNet"):
        compact = _face_backbone_module("compact")
        return Backbone(compact.PREPROCESSING, compact.fernet_builder(model_name), weights_file)
    if model_name == "FaceNet":
        facenet = _face_backbone_module("facenet")
        if weights == "facenet":
            weights_file = facenet.facenet_weights_path()
        return Backbone(facenet.PREPROCESSING, facenet.build_facenet, weights_file)
    if model_name == "SeNet50" or _resnet50_variant(weights) == "vggface2":
        vggface = _face_backbone_module("vggface")
        if weights == "vggface2":
            weights_file = vggface.vggface2_weights_path(model_name)
        build = vggface.build_senet50 if model_name == "SeNet50" else vggface.build_resnet50
        return Backbone(vggface.PREPROCESSING, build, weights_file)
    # keras.applications' ResNet50 loads Keras-2 files itself (by layer order) while it is built.
    if weights == "imagenet":
        weights_file = imagenet_weights_path()
        loaded = f"ImageNet ResNet50 from {weights_file}"
    elif weights_file is not None and _is_legacy_h5(weights_file):
        loaded = f"{weights_file}: Keras ResNet50 notop weights, loaded by keras.applications"
    else:
        return Backbone("caffe", lambda x: _keras_resnet50(x, None, weights), weights_file)
    return Backbone("caffe", lambda x: _keras_resnet50(x, weights_file, weights), loaded=loaded)


def _face_backbone_module(name):
    """The face-pretrained backbones live in their own modules, imported only when asked for."""
    return importlib.import_module(f"ferkeras.backbones.{name}")


def _keras_resnet50(x, weights_file, flag):
    """keras.applications' ResNet50 built on `x`, with a Keras-2 notop weights file or none.

    Given `input_tensor`, Keras wires its layers onto our tensor and returns a Functional whose inputs
    are our model's inputs; we keep only its output, so its layers join our model's flat layer list.
    """
    try:
        backbone = keras.applications.ResNet50(include_top=False, pooling="avg", input_tensor=x,
                                               weights=None if weights_file is None else str(weights_file))
    except (ValueError, OSError) as exc:
        fix = "delete it so that it is downloaded again" if flag == "imagenet" else "give the notop file"
        raise UserError(f"--weights {flag}: {weights_file} is not the Keras ResNet50 notop weights file "
                        f"({_first_line(exc)[:160]}); {fix}, or use --weights PATH / none") from None
    return backbone.output


def _is_legacy_h5(path):
    name = path.name.lower()
    return name.endswith((".h5", ".hdf5")) and not name.endswith(".weights.h5")


def build_vgg13(x):
    """The VGG13 variant Barsoum et al. 2016 trained from scratch on FER+ (64x64 grayscale faces).

    Four blocks of 3x3 ReLU convolutions (64,64 / 128,128 / 256,256,256 / 256,256,256), each followed by
    2x2 max-pooling and dropout 0.25, then two fully connected layers of 1024 with dropout 0.5 between
    them. The paper's last dropout (0.5) is the model head's `dropout_rate`.

    Weights start from He initialisation (He et al. 2015, made for ReLU networks), not Keras' Glorot
    default: with Glorot the signal shrinks by about a third at each of the 12 ReLU layers (logits std
    2e-3 at the start), and on the full FER+ split the network did not leave the class prior in 1-1.5
    epochs, where with He initialisation it left it in epoch 2.
    """
    for block, (filters, convs) in enumerate(((64, 2), (128, 2), (256, 3), (256, 3)), start=1):
        for conv in range(1, convs + 1):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                                    name=f"block{block}_conv{conv}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = keras.layers.Dropout(0.25, name=f"block{block}_dropout")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(1024, activation="relu", kernel_initializer="he_normal", name="fc1")(x)
    x = keras.layers.Dropout(0.5, name="fc1_dropout")(x)
    return keras.layers.Dense(1024, activation="relu", kernel_initializer="he_normal", name="fc2")(x)


def _resnet50_variant(weights):
    """Which ResNet50 a weights spec needs: "keras" (keras.applications) or "vggface2" (keras-vggface).

    The two differ (keras-vggface's convolutions have no bias, its layer names differ), so a weights
    file tells which one it was saved from: a ferkeras .keras file by its preprocessing mode, a Keras-2
    .h5 by its layer names, a .weights.h5 by whether its first convolution has a bias.
    """
    if weights == "vggface2":
        return "vggface2"
    if not isinstance(weights, Path):
        return "keras"
    name = weights.name.lower()
    try:
        if name.endswith(".keras"):
            modes = {layer["config"].get("mode") for layer in _keras_file_layers(weights)
                     if layer.get("class_name") == "FacePreprocess"}
            return "vggface2" if "vggface2" in modes else "keras"
        with h5py.File(weights, "r") as h5:
            if name.endswith(".weights.h5"):
                first_conv = h5.get("layers/conv2d/vars")
                return "vggface2" if first_conv is not None and len(first_conv) == 1 else "keras"
            # Keras 2 stores each layer's arrays in a group named after the layer.
            return "keras" if "conv1_conv" in h5 or "model_weights/conv1_conv" in h5 else "vggface2"
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"--weights {weights}: cannot read the file ({_first_line(exc)}); give a "
                        "weights file saved by Keras") from None


def _keras_file_layers(path):
    """Layer configs of the model stored in a .keras archive, read without building the model."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    return config.get("config", {}).get("layers", [])


# ----------------------------------------------------------------------------- pretrained weights


def imagenet_weights_path():
    """The local path of Keras' ImageNet ResNet50 notop file: found in the weights folders the face
    backbones use too ($FERKERAS_WEIGHTS, then Keras' cache), else downloaded into Keras' cache.

    A file found is used as it is (it may have been placed there by hand on a machine without internet);
    one that is not the right file then fails, with a UserError, when keras.applications loads it.
    """
    from .backbones import find_weights_file, keras_home, shown_dirs

    found = find_weights_file(IMAGENET_FILE, "models")
    if found:
        return found
    try:
        return Path(keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL, cache_subdir="models",
                                         cache_dir=str(keras_home()), file_hash=IMAGENET_MD5))
    except Exception as exc:  # get_file raises a bare Exception for network failures
        # Its message is "URL fetch failure on <origin>: <code> -- <reason>"; the reason is what helps.
        reason = _first_line(exc).rpartition(" -- ")[2]
        raise UserError(f"--weights imagenet: {IMAGENET_FILE} is not in {shown_dirs()} and downloading it "
                        f"failed ({reason[:120]}); put the file in {keras_home() / 'models'}/ (Keras' cache), "
                        "or use --weights PATH / none") from None


def load_weights_file(model, path, allow_partial=False):
    """Load a `.weights.h5`, `.keras` or Keras-2 `.h5` file into `model`; returns a one-line report.

    - `.keras`: the stored model is loaded and its weights are copied layer by layer, matched by layer
      name and variable shapes, so a checkpoint of a whole ferkeras model initialises a fresh one.
    - `.weights.h5`: Keras' own loading; the file records layers by position, not by name, so it must
      come from the same architecture (same --model_name, and for VGG13 the same --image_size).
    - `.h5` / `.hdf5`: a Keras-2 file, loaded by layer name by the legacy loader.
    Without `allow_partial`, every layer of `model` that has weights must get them from the file.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".keras"):
        return _load_keras_file_by_name(model, path, allow_partial)
    if name.endswith(".weights.h5"):
        return _load_weights_h5(model, path, allow_partial)
    return load_legacy_weights(model, path, allow_partial)


def load_legacy_weights(model, path, allow_partial=False):
    """A Keras-2 HDF5 weights or model file, through the legacy loader; returns a one-line report."""
    from .legacy_h5 import load_legacy_h5

    return f"{path}: {load_legacy_h5(model, path, allow_partial=allow_partial)}"


def load_model_file(path, compile=False):
    """keras.saving.load_model for a ferkeras .keras file (a checkpoint or an export), with one-line errors.

    Registers every ferkeras custom layer first (FaceNet's lives in its backbone module), so a
    checkpoint of any backbone loads; `compile=True` restores the optimiser state for --resume.
    """
    import_face_backbones()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file; give a .keras checkpoint or a .onnx export")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a .keras model (a .keras file is a zip archive; this one is another format, "
                        "or damaged or truncated); give a checkpoint saved by train.py")
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, OSError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: cannot load it as a Keras model ({_first_line(exc)[:160]}); give a "
                        ".keras file saved by train.py") from None


def _load_keras_file_by_name(model, path, allow_partial):
    saved = load_model_file(path)
    saved_layers = {layer.name: layer for layer in saved.layers}
    loaded, unmatched = 0, []
    for layer in _layers_with_weights(model):
        source = saved_layers.get(layer.name)
        if source is None or _weight_shapes(source) != _weight_shapes(layer):
            unmatched.append(layer.name)
            continue
        layer.set_weights(source.get_weights())
        loaded += 1
    return _matching_report(path, loaded, unmatched, allow_partial, "by layer name and shape")


def _load_weights_h5(model, path, allow_partial):
    _check_readable_hdf5(path)  # a damaged file is not a mismatch: --allow_partial_weights would not help
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path, skip_mismatch=allow_partial)
    except OSError as exc:  # h5py could open the file but not read its arrays
        raise UserError(f"--weights {path}: cannot read it ({_first_line(exc)[:120]}); the file is damaged or "
                        "truncated: copy or save it again") from None
    except (ValueError, KeyError) as exc:
        raise UserError(f"--weights {path}: does not fit {model.name} ({_first_line(exc)[:160]}); build the "
                        "model it was saved from (same --model_name and --image_size), or pass "
                        "--allow_partial_weights") from None
    skipped = [str(w.message) for w in caught if "could not be loaded" in str(w.message)]
    if skipped:
        return f"{path}: loaded by position, with mismatching layers skipped ({_first_line(skipped[0])})"
    return f"{path}: loaded all layers by position"


def _check_readable_hdf5(path):
    if not h5py.is_hdf5(path):
        raise UserError(f"--weights {path}: not an HDF5 file (a .weights.h5 file is HDF5, written by Keras' "
                        "model.save_weights); it may be damaged or another format: copy or save it again")
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as exc:
        raise UserError(f"--weights {path}: cannot read it ({_first_line(exc)[:120]}); the file is damaged or "
                        "truncated: copy or save it again") from None


def _matching_report(path, loaded, unmatched, allow_partial, how):
    total = loaded + len(unmatched)
    if unmatched and not allow_partial:
        raise UserError(f"--weights {path}: {len(unmatched)} of {total} layers with weights have no match "
                        f"{how} (first: {', '.join(unmatched[:3])}); build the model the file was saved "
                        "from, or pass --allow_partial_weights")
    if loaded == 0:
        raise UserError(f"--weights {path}: none of the model's {total} layers with weights match the file "
                        f"{how}; is it a weights file for {', '.join(MODEL_NAMES)}?")
    missing = f"; {len(unmatched)} kept their initial weights (first: {', '.join(unmatched[:3])})" \
        if unmatched else ""
    return f"{path}: loaded {loaded} of {total} layers {how}{missing}"


def import_face_backbones():
    """Import the face backbones' modules, so that their custom layers (FaceNet's ScaledResidual) are
    registered: needed before `keras.saving.load_model` of a SeNet50 or FaceNet model."""
    for name in ("vggface", "facenet"):
        _face_backbone_module(name)


def _layers_with_weights(model):
    return [layer for layer in model.layers if layer.weights]


def _weight_shapes(layer):
    return [tuple(w.shape) for w in layer.weights]


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- freezing


def apply_freeze(model, freeze_before):
    """Freeze layers of the full flat model, counted over `model.layers` as the published recipe did.

    The input layer and the preprocessing layer count like any other. freeze_before N < 0 freezes every
    layer except the last |N|; N > 0 freezes the first N; 0 freezes nothing. Frozen BatchNormalization
    layers run in inference mode (Keras 3 does this for `trainable = False`), so their moving statistics
    stay the pretrained ones. Compile the model after freezing.

    Returns a dict: first_trainable (layer name), first_trainable_index, trainable_params, frozen_layers,
    total_layers.
    """
    layers = model.layers
    total = len(layers)
    freeze_before = int(freeze_before)
    if freeze_before < -total or freeze_before >= total:
        raise UserError(f"--freeze_before: {model.name} has {total} layers, so expected a number from "
                        f"-{total} to {total - 1}, got {freeze_before}; 0 trains every layer")
    first_trainable = total + freeze_before if freeze_before < 0 else freeze_before
    for index, layer in enumerate(layers):
        layer.trainable = index >= first_trainable
    return {"first_trainable": layers[first_trainable].name, "first_trainable_index": first_trainable,
            "trainable_params": count_params(model.trainable_weights), "frozen_layers": first_trainable,
            "total_layers": total}


def freeze_summary(info):
    """One line for the CLI describing what `apply_freeze` did."""
    if info["frozen_layers"] == 0:
        return (f"freeze: none of {info['total_layers']} layers frozen; "
                f"{info['trainable_params']:,} trainable parameters")
    return (f"freeze: {info['frozen_layers']} of {info['total_layers']} layers frozen; training from layer "
            f"{info['first_trainable_index']} ({info['first_trainable']}) on, "
            f"{info['trainable_params']:,} trainable parameters")


def count_params(weights):
    """Number of scalars in a list of variables (e.g. model.trainable_weights)."""
    return int(sum(np.prod(w.shape) for w in weights))


# Importing this module registers every layer a ferkeras checkpoint holds (FaceNet's ScaledResidual lives
# in its backbone module), so that keras.saving.load_model reads any run's checkpoint.
import_face_backbones()
