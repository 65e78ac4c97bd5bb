"""`FacePreprocess`: the layer that turns raw 0..255 gray faces into what each backbone expects.

It is the first layer of every ferkeras model, so the preprocessing travels inside the graph: the
.keras checkpoint, the ONNX file and the TFLite file all take raw pixels.
"""
import keras
from keras import ops

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

    With `via_size` (ONNX contract's 64, from `--contract_round_trip`) faces are first resized to
    via_size x via_size and only then to image_size, the path an exported file's input takes (the
    contract enlarges FER+'s 48 px faces to 64 before the graph shrinks them to the model's 48). The
    Keras model then sees what the exported file sees: training, validation and the checkpoint's
    figures are the deployed ones. A 64 px input makes the first resize an identity.

    Plain arithmetic on `keras.ops` rather than `keras.layers.Resizing` / `Normalization`: Resizing
    makes exported graphs run BatchNormalization in training mode, and Normalization carries state that
    the exporters handle poorly.
    """

    def __init__(self, image_size, mode, via_size=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"FacePreprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
        self.image_size = int(image_size)
        self.mode = mode
        self.via_size = int(via_size) if via_size else None

    @property
    def channels(self):
        return 1 if self.mode == "scale01" else 3

    def call(self, faces):
        x = ops.cast(faces, self.compute_dtype)
        if self.via_size:
            x = _bilinear(x, self.via_size)
        x = _bilinear(x, self.image_size)
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
        return {**super().get_config(), "image_size": self.image_size, "mode": self.mode,
                "via_size": self.via_size}


def _bilinear(x, size):
    return ops.image.resize(x, (size, size), interpolation="bilinear", antialias=False,
                            data_format="channels_last")


