"""The model registry: `--model_name` choices and `build_model`, which gives every model one contract.

Every model built here follows one contract, so that training, evaluation and ONNX export never need to
know which backbone they hold:

- input: raw grayscale pixels 0..255, float32, channels-last, shape (None, None, None, 1), any spatial
  size (training feeds the 48x48 FER faces, the ONNX export feeds 64x64);
- everything the backbone expects (resize, gray to 3 channels, its normalisation) happens inside the
  graph, in the `FacePreprocess` layer (preprocess.py);
- output: 8 logits (no softmax) in FER+ class order, from a Dense layer named "logits".

The model is one flat Functional: the backbone's layers sit directly in `model.layers`, so that
`--freeze_before` counts layers exactly as the published FER+ recipe did (freezing.py), and so that the
exported graph has no nested models.
"""
import dataclasses
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import keras

from ferkeras import NUM_CLASSES
from ferkeras.deploy.contract import INPUT_SIZE as CONTRACT_INPUT_SIZE
from ferkeras.errors import UserError, first_line
from ferkeras.models.backbones import import_backbone, import_face_backbones
from ferkeras.models.preprocess import FacePreprocess
from ferkeras.models.weights import imagenet_weights_path, load_weights_file

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
    "FerNetSD": ModelSpec(48, 16, ()),
    "FerNetM": ModelSpec(48, 16, ()),
}
MODEL_NAMES = tuple(MODEL_SPECS)
WEIGHT_NAMES = ("imagenet", "vggface2", "facenet", "none")
WEIGHTS_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5", ".onnx")


def model_spec(model_name):
    if model_name not in MODEL_SPECS:
        raise UserError(f"--model_name: unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return MODEL_SPECS[model_name]


def default_image_size(model_name):
    """The side `build_model` resizes faces to when no image size is given."""
    return model_spec(model_name).image_size


def build_model(model_name="ResNet50", weights="imagenet", image_size=None, dropout_rate=0.3,
                allow_partial_weights=False, contract_round_trip=False):
    """Build a FER+ classifier: faces 0..255 -> FacePreprocess -> backbone -> Dropout -> Dense(8) logits.

    Args:
        model_name: one of MODEL_NAMES.
        weights: "imagenet" (ResNet50), "vggface2" (ResNet50, SeNet50), "facenet" (FaceNet), "none",
            or the path of a `.weights.h5`, `.keras` or Keras-2 `.h5` file, or of a FerNet `.onnx` file
            exported by ferkeras (its BatchNorm folded: see models/onnx_weights.py).
        image_size: side the graph resizes faces to; None or 0 for the backbone's default.
        dropout_rate: dropout before the final Dense(8).
        allow_partial_weights: accept a weights file that covers only part of the model.
        contract_round_trip: resize faces to the ONNX contract's 64 px before image_size, as an exported
            file's input is (`FacePreprocess`'s via_size).
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
    via_size = CONTRACT_INPUT_SIZE if contract_round_trip else None
    x = FacePreprocess(image_size, backbone.preprocess, via_size=via_size, name="preprocess",
                       dtype="float32")(faces)
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
        compact = import_backbone("compact")
        return Backbone(compact.PREPROCESSING, compact.fernet_builder(model_name), weights_file)
    if model_name == "FaceNet":
        facenet = import_backbone("facenet")
        if weights == "facenet":
            weights_file = facenet.facenet_weights_path()
        return Backbone(facenet.PREPROCESSING, facenet.build_facenet, weights_file)
    if model_name == "SeNet50" or _resnet50_variant(weights) == "vggface2":
        vggface = import_backbone("vggface")
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
                        f"({first_line(exc)[:160]}); {fix}, or use --weights PATH / none") from None
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
    if name.endswith(".onnx"):
        return "keras"  # onnx_weights refuses it with its own message: ONNX weights are for FerNet
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
        raise UserError(f"--weights {weights}: cannot read the file ({first_line(exc)}); give a "
                        "weights file saved by Keras") from None


def _keras_file_layers(path):
    """Layer configs of the model stored in a .keras archive, read without building the model."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    return config.get("config", {}).get("layers", [])


# Importing this module registers every layer a ferkeras checkpoint holds (FaceNet's ScaledResidual lives
# in its backbone module), so that keras.saving.load_model reads any run's checkpoint.
import_face_backbones()
