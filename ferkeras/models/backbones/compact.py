"""FerNet: compact networks designed here for 48x48 grayscale FER+ faces, trained from scratch.

Why plain 3x3 convolutions and no depthwise ones: on TensorFlow's CPU kernels a 0.2 M-parameter
depthwise-separable network trained no faster than a plain network with ~5x its arithmetic (85 vs 98
faces/s, same load), so arithmetic is not what a small model pays for on a CPU; memory traffic and
kernel launches are. FerNet keeps few, dense layers:

    stage s (s = 1..4): [Conv3x3(width_s) - BatchNorm - ReLU] x convs_s, then 2x2 max-pooling
    (none after the last stage), global average pooling, then the model's Dropout + Dense(8) head.

FerNetS has one convolution in its first (48x48) stage: the second one there cost a quarter of the
step time (329 vs 437 faces/s, batch 64, on an AMX Xeon) for 1% of the parameters.
The faces are read at their own 48x48 (no upscaling), scaled to 0..1 in the graph. Sizes (FERNET_SIZES):
FerNetS at most 1 M parameters (float ONNX under 4 MB), FerNetSD the same with a third convolution in
stage 3 (0.98 M), FerNetM about 3x that. Their BatchNormalization is `FusedBatchNormalization` (models/batchnorm.py):
the same layer, whose training step runs TensorFlow's fused kernel.
"""
import keras

from ferkeras.models.batchnorm import FusedBatchNormalization

PREPROCESSING = "scale01"

# widths per stage, convolutions per stage
FERNET_SIZES = {
    "FerNetS": ((32, 64, 128, 192), (1, 2, 2, 2)),
    # FerNetS deeper: a third convolution at 12x12, the most the 1 M-parameter budget allows at these widths
    "FerNetSD": ((32, 64, 128, 192), (1, 2, 3, 2)),
    "FerNetM": ((48, 96, 192, 320), (2, 2, 3, 2)),
}


def fernet_builder(model_name):
    """The builder of a FerNet size: preprocessed KerasTensor (None, S, S, 1) -> pooled features."""
    widths, convs = FERNET_SIZES[model_name]
    return lambda x: build_fernet(x, widths, convs)


def build_fernet(x, widths, convs):
    for stage, (width, count) in enumerate(zip(widths, convs), start=1):
        for conv in range(1, count + 1):
            name = f"stage{stage}_conv{conv}"
            # No bias: the BatchNorm right after has its own shift.
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                                    name=name)(x)
            # Keras' BatchNormalization, its training step fused: about 15% of FerNetS's step time saved.
            x = FusedBatchNormalization(name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        if stage < len(widths):
            x = keras.layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)
