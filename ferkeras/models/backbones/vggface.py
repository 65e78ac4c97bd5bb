"""keras-vggface's ResNet50 and SENet50 (pretrained on VGGFace2), rebuilt in Keras 3.

The published FER+ ResNet50 recipe fine-tunes rcmalli's keras-vggface ResNet50 (Cao et al. 2018,
VGGFace2), a Keras 2 port of the Caffe model: bottleneck blocks whose convolutions have no bias, layer
names from the Caffe prototxt ("conv2_1_1x1_reduce", "conv2_1_1x1_reduce/bn"), and everything else
named automatically by Keras 2 ("activation_1", "add_1", ...). SENet50 adds a squeeze-and-excitation
gate to every block (Hu et al. 2018) and uses BatchNormalization epsilon 1e-4 instead of 1e-3.

The builders here reproduce those graphs layer for layer, on a tensor the caller provides, so that:

- the release weights files (`rcmalli_vggface_tf_notop_*.h5`, keras-vggface v2.0) load by layer name
  through `ferkeras.models.legacy_h5` ("/" in a Keras-2 name becomes "__" here, since Keras 3 forbids "/");
- the full FER+ model stays one flat Functional whose `model.layers` line up with the recipe's Keras 2
  summary, so `--freeze_before -51` freezes exactly what it froze there (all up to activation_36).

Inputs are what keras-vggface's `preprocess_input(version=2)` produces: BGR pixels minus
`ferkeras.models.preprocess.VGGFACE2_BGR_MEANS`, which ferkeras' FacePreprocess layer ("vggface2" mode) computes inside the graph.
"""
import collections
from pathlib import Path

import keras
from keras import layers

from ferkeras.errors import UserError
from ferkeras.models.legacy_h5 import keras_layer_name
from ferkeras.models.backbones import WEIGHTS_DIR_ENV, find_weights_file, given_weights_file, keras_home, shown_dirs

PREPROCESSING = "vggface2"

_RELEASE_URL = "https://github.com/rcmalli/keras-vggface/releases/download/v2.0/"
# model name -> (download URL, file name, sha256 or None). The release publishes no checksums and none
# could be taken offline, so the files are not hash-checked.
WEIGHTS = {
    "ResNet50": (_RELEASE_URL + "rcmalli_vggface_tf_notop_resnet50.h5", "rcmalli_vggface_tf_notop_resnet50.h5",
                 None),
    "SeNet50": (_RELEASE_URL + "rcmalli_vggface_tf_notop_senet50.h5", "rcmalli_vggface_tf_notop_senet50.h5",
                None),
}
CACHE_SUBDIR = "models/vggface"  # where keras-vggface itself keeps them, under ~/.keras

# (stage, (reduce, 3x3, increase) filters, blocks): the ResNet-50 layout shared by both models.
_STAGES = ((2, (64, 64, 256), 3), (3, (128, 128, 512), 4), (4, (256, 256, 1024), 6), (5, (512, 512, 2048), 3))
_RESNET50_BN_EPSILON = 1e-3  # Keras' default, which keras-vggface's ResNet50 kept
_SENET50_BN_EPSILON = 1e-4
_SE_REDUCTION = 16  # squeeze-and-excitation bottleneck: channels // 16


def build_resnet50(inputs):
    """keras-vggface's ResNet50 on `inputs` (None, S, S, 3); returns the flattened 2048-d features.

    The tensor is taken after keras-vggface's `avg_pool` (an AveragePooling2D over the whole final
    feature map, 7x7 at S=224) and a Flatten named "flatten_1", as in the FER+ recipe's model.
    """
    return _build(inputs, squeeze_excite=False, epsilon=_RESNET50_BN_EPSILON)


def build_senet50(inputs):
    """keras-vggface's SENet50 on `inputs` (None, S, S, 3); returns the flattened 2048-d features."""
    return _build(inputs, squeeze_excite=True, epsilon=_SENET50_BN_EPSILON)


class _Keras2AutoNames:
    """Keras 2's automatic layer names ("activation_1", "add_1", ...) for the layers keras-vggface left
    unnamed: numbered per layer type in creation order, as in a fresh Keras 2 session. Explicit names
    keep the numbering independent of how many models this process has built before."""

    def __init__(self):
        self._counts = collections.Counter()

    def __call__(self, prefix):
        self._counts[prefix] += 1
        return f"{prefix}_{self._counts[prefix]}"


def _build(inputs, squeeze_excite, epsilon):
    auto = _Keras2AutoNames()
    x = _conv_bn(inputs, 64, 7, "conv1/7x7_s2", epsilon, strides=2, padding="same")
    x = layers.Activation("relu", name=auto("activation"))(x)
    x = layers.MaxPooling2D(3, strides=2, name=auto("max_pooling2d"))(x)
    for stage, filters, blocks in _STAGES:
        for block in range(1, blocks + 1):
            # The first block of a stage projects the shortcut; from stage 3 on it also halves the size.
            strides = 2 if block == 1 and stage > 2 else 1
            x = _bottleneck(x, filters, f"conv{stage}_{block}", auto, epsilon, strides,
                            project_shortcut=block == 1, squeeze_excite=squeeze_excite)
    return _pool_and_flatten(x)


def _bottleneck(x, filters, prefix, auto, epsilon, strides, project_shortcut, squeeze_excite):
    """1x1 reduce -> 3x3 -> 1x1 increase (+ SE gate), added to the shortcut, then ReLU."""
    reduce_filters, middle_filters, out_filters = filters
    y = _conv_bn(x, reduce_filters, 1, f"{prefix}_1x1_reduce", epsilon, strides=strides)
    y = layers.Activation("relu", name=auto("activation"))(y)
    y = _conv_bn(y, middle_filters, 3, f"{prefix}_3x3", epsilon, padding="same")
    y = layers.Activation("relu", name=auto("activation"))(y)
    y = _conv_bn(y, out_filters, 1, f"{prefix}_1x1_increase", epsilon)
    if squeeze_excite:
        y = _squeeze_excite(y, prefix, auto)
    shortcut = x
    if project_shortcut:
        shortcut = _conv_bn(x, out_filters, 1, f"{prefix}_1x1_proj", epsilon, strides=strides)
    y = layers.Add(name=auto("add"))([y, shortcut])
    return layers.Activation("relu", name=auto("activation"))(y)


def _squeeze_excite(x, prefix, auto):
    """Rescale channels by a gate computed from their global average (Hu et al. 2018).

    GlobalAveragePooling2D + Reshape rather than keepdims=True, to keep keras-vggface's layer list.
    """
    channels = x.shape[-1]
    gate = layers.GlobalAveragePooling2D(name=auto("global_average_pooling2d"))(x)
    gate = layers.Reshape((1, 1, channels), name=auto("reshape"))(gate)
    gate = layers.Conv2D(channels // _SE_REDUCTION, 1, name=keras_layer_name(f"{prefix}_1x1_down"))(gate)
    gate = layers.Activation("relu", name=auto("activation"))(gate)
    gate = layers.Conv2D(channels, 1, name=keras_layer_name(f"{prefix}_1x1_up"))(gate)
    gate = layers.Activation("sigmoid", name=auto("activation"))(gate)
    return layers.Multiply(name=auto("multiply"))([x, gate])


def _conv_bn(x, filters, kernel_size, legacy_name, epsilon, strides=1, padding="valid"):
    """A bias-free convolution and its BatchNormalization, named "<name>" and "<name>/bn" in Keras 2."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                      name=keras_layer_name(legacy_name))(x)
    return layers.BatchNormalization(epsilon=epsilon, name=keras_layer_name(f"{legacy_name}/bn"))(x)


def _pool_and_flatten(x):
    """keras-vggface's `AveragePooling2D((7, 7), name="avg_pool")`, sized to the actual feature map so
    that inputs other than 224x224 still pool to 1x1, then the recipe's Flatten."""
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError("the vggface backbones need a static spatial input size (resize before them); "
                         f"got a feature map of shape {x.shape}")
    x = layers.AveragePooling2D((height, width), name="avg_pool")(x)
    return layers.Flatten(name="flatten_1")(x)


# ----------------------------------------------------------------------------- weights files


def vggface2_weights_path(model_name, path=None, download=True):
    """The local path of keras-vggface's VGGFace2 "notop" weights for `model_name` (ResNet50 / SeNet50).

    In order: `path` when given; the file in $FERKERAS_WEIGHTS (a folder), ~/.keras/models/vggface/
    (keras-vggface's own cache; $KERAS_HOME replaces ~/.keras) or ~/.keras/models/; else a download
    of the v2.0 release file into ~/.keras/models/vggface/ when `download` is on and the network answers.

    Raises:
        UserError: unknown model name, a given path that does not exist, or no file and no download;
            the message names the file, its URL and where to put it.
    """
    if model_name not in WEIGHTS:
        raise UserError(f"vggface2 weights: there are none for model {model_name!r}; they exist for "
                        f"{', '.join(WEIGHTS)}")
    url, file_name, sha256 = WEIGHTS[model_name]
    if path is not None:
        return given_weights_file(path, f"{model_name} VGGFace2 weights file ({file_name})")
    found = find_weights_file(file_name, CACHE_SUBDIR)
    if found:
        return found
    place_it = (f"download {url} and put it in {keras_home() / CACHE_SUBDIR}/ (or in the folder named by "
                f"${WEIGHTS_DIR_ENV}), or pass --weights PATH")
    if not download:
        raise UserError(f"vggface2 weights: {file_name} is not in {shown_dirs(CACHE_SUBDIR)}; {place_it}")
    try:
        return Path(keras.utils.get_file(file_name, url, cache_subdir=CACHE_SUBDIR, cache_dir=str(keras_home()),
                                         file_hash=sha256))
    except Exception as exc:  # get_file raises a bare Exception for network failures
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"vggface2 weights: {file_name} is not in {shown_dirs(CACHE_SUBDIR)} and downloading it "
                        f"failed ({reason}); {place_it}") from None
