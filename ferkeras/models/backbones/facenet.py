"""FaceNet's Inception-ResNet-v1, rebuilt in Keras 3 to load the Keras-2 `facenet_keras.h5`.

`facenet_keras.h5` is a widely used Keras 2.1.2 conversion of David Sandberg's TensorFlow FaceNet
(Inception-ResNet-v1, Szegedy et al. 2016, trained for face recognition with 128-d embeddings). It
cannot be used from Keras 3 as it is: its 21 residual scalings are Lambda layers holding Python 3.6
bytecode. The graph is defined here instead, with the same layer names, so the file's weights load by
name through `ferkeras.models.legacy_h5`, and the scaled residual sum is a small registered layer.

Inputs: (None, S, S, 3) faces standardised per image, (x - mean) / max(std, 1/sqrt(n)), as FaceNet was
trained (ferkeras' FacePreprocess "facenet" mode); S = 160 by default, at least 75.
"""
import keras
from keras import layers

from ferkeras.errors import UserError
from ferkeras.models.backbones import WEIGHTS_DIR_ENV, find_weights_file, given_weights_file, keras_home, shown_dirs

PREPROCESSING = "facenet"
WEIGHTS_FILE = "facenet_keras.h5"
CACHE_SUBDIR = "models"
FEATURES = 1792  # channels of the last block, i.e. the pooled feature vector
EMBEDDING_SIZE = 128

# The original's BatchNormalization: no scale (a ReLU follows), momentum 0.995, epsilon 0.001.
_BN = dict(momentum=0.995, epsilon=0.001, scale=False)
# (block type, repeats, residual scale), with the reductions between them.
_BLOCK35 = ("Block35", 5, 0.17)
_BLOCK17 = ("Block17", 10, 0.1)
_BLOCK8 = ("Block8", 5, 0.2)


@keras.saving.register_keras_serializable(package="ferkeras")
class ScaledResidual(keras.layers.Layer):
    """`inputs[0] + inputs[1] * scale`: a residual branch added at a fixed scale to its block's input.

    Inception-ResNet scales residuals down (0.1-0.3) to keep training stable; this replaces the
    original's Lambda layers, which stored the same expression as non-portable bytecode.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        return shortcut + residual * self.scale

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def build_facenet(inputs, include_embedding=False):
    """Inception-ResNet-v1 on `inputs` (None, S, S, 3), with facenet_keras.h5's layer names.

    Returns the globally averaged 1792-d features ("AvgPool"), or with `include_embedding` the
    original's 128-d embedding head after them (Dropout 0.2, a bias-free Dense "Bottleneck" and
    "Bottleneck_BatchNorm"; not L2-normalised), whose weights the file also holds.
    """
    x = _stem(inputs)
    x = _repeat_blocks(x, _block35, *_BLOCK35)
    x = _reduction_a(x)
    x = _repeat_blocks(x, _block17, *_BLOCK17)
    x = _reduction_b(x)
    x = _repeat_blocks(x, _block8, *_BLOCK8)
    # The last Block8 adds its residual unscaled and has no ReLU after it.
    x = _block8(x, "Block8_6", scale=1.0, activation=False)
    x = layers.GlobalAveragePooling2D(name="AvgPool")(x)
    if not include_embedding:
        return x
    x = layers.Dropout(0.2, name="Dropout")(x)
    x = layers.Dense(EMBEDDING_SIZE, use_bias=False, name="Bottleneck")(x)
    return layers.BatchNormalization(name="Bottleneck_BatchNorm", **_BN)(x)


def _conv_bn_relu(x, filters, kernel_size, name, strides=1, padding="same"):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_BatchNorm", **_BN)(x)
    return layers.Activation("relu", name=f"{name}_Activation")(x)


def _stem(x):
    """160 -> 17: plain convolutions and one max-pool, 256 channels out."""
    x = _conv_bn_relu(x, 32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")
    x = _conv_bn_relu(x, 32, 3, "Conv2d_2a_3x3", padding="valid")
    x = _conv_bn_relu(x, 64, 3, "Conv2d_2b_3x3")
    x = layers.MaxPooling2D(3, strides=2, name="MaxPool_3a_3x3")(x)
    x = _conv_bn_relu(x, 80, 1, "Conv2d_3b_1x1", padding="valid")
    x = _conv_bn_relu(x, 192, 3, "Conv2d_4a_3x3", padding="valid")
    return _conv_bn_relu(x, 256, 3, "Conv2d_4b_3x3", strides=2, padding="valid")


def _repeat_blocks(x, block, block_name, repeats, scale):
    for index in range(1, repeats + 1):
        x = block(x, f"{block_name}_{index}", scale)
    return x


def _residual(x, branches, name, scale, activation=True):
    """Concatenate the branches, project back to x's channels with a biased 1x1, add at `scale`."""
    mixed = layers.Concatenate(name=f"{name}_Concatenate")(branches)
    residual = layers.Conv2D(x.shape[-1], 1, padding="same", use_bias=True, name=f"{name}_Conv2d_1x1")(mixed)
    x = ScaledResidual(scale, name=f"{name}_ScaleSum")([x, residual])
    return layers.Activation("relu", name=f"{name}_Activation")(x) if activation else x


def _block35(x, name, scale):
    """Inception-ResNet-A (17x17x256): 1x1 | 1x1-3x3 | 1x1-3x3-3x3, 32 channels each."""
    branch_0 = _conv_bn_relu(x, 32, 1, f"{name}_Branch_0_Conv2d_1x1")
    branch_1 = _conv_bn_relu(x, 32, 1, f"{name}_Branch_1_Conv2d_0a_1x1")
    branch_1 = _conv_bn_relu(branch_1, 32, 3, f"{name}_Branch_1_Conv2d_0b_3x3")
    branch_2 = _conv_bn_relu(x, 32, 1, f"{name}_Branch_2_Conv2d_0a_1x1")
    branch_2 = _conv_bn_relu(branch_2, 32, 3, f"{name}_Branch_2_Conv2d_0b_3x3")
    branch_2 = _conv_bn_relu(branch_2, 32, 3, f"{name}_Branch_2_Conv2d_0c_3x3")
    return _residual(x, [branch_0, branch_1, branch_2], name, scale)


def _block17(x, name, scale):
    """Inception-ResNet-B (8x8x896): 1x1 | 1x1-1x7-7x1, 128 channels each."""
    branch_0 = _conv_bn_relu(x, 128, 1, f"{name}_Branch_0_Conv2d_1x1")
    branch_1 = _conv_bn_relu(x, 128, 1, f"{name}_Branch_1_Conv2d_0a_1x1")
    branch_1 = _conv_bn_relu(branch_1, 128, (1, 7), f"{name}_Branch_1_Conv2d_0b_1x7")
    branch_1 = _conv_bn_relu(branch_1, 128, (7, 1), f"{name}_Branch_1_Conv2d_0c_7x1")
    return _residual(x, [branch_0, branch_1], name, scale)


def _block8(x, name, scale, activation=True):
    """Inception-ResNet-C (3x3x1792): 1x1 | 1x1-1x3-3x1, 192 channels each."""
    branch_0 = _conv_bn_relu(x, 192, 1, f"{name}_Branch_0_Conv2d_1x1")
    branch_1 = _conv_bn_relu(x, 192, 1, f"{name}_Branch_1_Conv2d_0a_1x1")
    branch_1 = _conv_bn_relu(branch_1, 192, (1, 3), f"{name}_Branch_1_Conv2d_0b_1x3")
    branch_1 = _conv_bn_relu(branch_1, 192, (3, 1), f"{name}_Branch_1_Conv2d_0c_3x1")
    return _residual(x, [branch_0, branch_1], name, scale, activation)


def _reduction_a(x):
    """Mixed_6a, 17 -> 8: strided 3x3 (384) | 1x1-3x3-strided 3x3 (192, 192, 256) | max-pool."""
    branch_0 = _conv_bn_relu(x, 384, 3, "Mixed_6a_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    branch_1 = _conv_bn_relu(x, 192, 1, "Mixed_6a_Branch_1_Conv2d_0a_1x1")
    branch_1 = _conv_bn_relu(branch_1, 192, 3, "Mixed_6a_Branch_1_Conv2d_0b_3x3")
    branch_1 = _conv_bn_relu(branch_1, 256, 3, "Mixed_6a_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    branch_2 = layers.MaxPooling2D(3, strides=2, name="Mixed_6a_Branch_2_MaxPool_1a_3x3")(x)
    return layers.Concatenate(name="Mixed_6a")([branch_0, branch_1, branch_2])


def _reduction_b(x):
    """Mixed_7a, 8 -> 3: three 1x1-then-strided-3x3 branches (384, 256, 256) | max-pool."""
    branch_0 = _conv_bn_relu(x, 256, 1, "Mixed_7a_Branch_0_Conv2d_0a_1x1")
    branch_0 = _conv_bn_relu(branch_0, 384, 3, "Mixed_7a_Branch_0_Conv2d_1a_3x3", strides=2, padding="valid")
    branch_1 = _conv_bn_relu(x, 256, 1, "Mixed_7a_Branch_1_Conv2d_0a_1x1")
    branch_1 = _conv_bn_relu(branch_1, 256, 3, "Mixed_7a_Branch_1_Conv2d_1a_3x3", strides=2, padding="valid")
    branch_2 = _conv_bn_relu(x, 256, 1, "Mixed_7a_Branch_2_Conv2d_0a_1x1")
    branch_2 = _conv_bn_relu(branch_2, 256, 3, "Mixed_7a_Branch_2_Conv2d_0b_3x3")
    branch_2 = _conv_bn_relu(branch_2, 256, 3, "Mixed_7a_Branch_2_Conv2d_1a_3x3", strides=2, padding="valid")
    branch_3 = layers.MaxPooling2D(3, strides=2, name="Mixed_7a_Branch_3_MaxPool_1a_3x3")(x)
    return layers.Concatenate(name="Mixed_7a")([branch_0, branch_1, branch_2, branch_3])


# ----------------------------------------------------------------------------- weights file


def facenet_weights_path(path=None):
    """The local path of `facenet_keras.h5`: `path` when given, else the file in $FERKERAS_WEIGHTS (a
    folder) or ~/.keras/models/ ($KERAS_HOME replaces ~/.keras).

    The file has no official download address, so it is never downloaded.

    Raises:
        UserError: a given path that does not exist, or no file in those folders (saying where to put it).
    """
    if path is not None:
        return given_weights_file(path, f"FaceNet Keras-2 model file ({WEIGHTS_FILE})")
    found = find_weights_file(WEIGHTS_FILE, CACHE_SUBDIR)
    if found:
        return found
    raise UserError(f"facenet weights: {WEIGHTS_FILE} is not in {shown_dirs(CACHE_SUBDIR)}; it has no official "
                    f"download address: put your copy of the Keras 2 FaceNet model in "
                    f"{keras_home() / CACHE_SUBDIR}/ (or in the folder named by ${WEIGHTS_DIR_ENV}), or pass "
                    "--weights PATH")
