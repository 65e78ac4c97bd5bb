"""Stage 2, models: every network ferkeras trains, with the FER+ contract built into its graph.

- `preprocess`: the `FacePreprocess` layer (raw 0..255 gray in, each backbone's own input out).
- `registry`: `--model_name` choices, `build_model`, weights files and `load_model_file`.
- `freezing`: `--freeze_before` and its summary.
- `backbones/`: a module per family (compact FerNet, FaceNet, VGGFace2 ResNet50 / SENet50) and where
  their weights files are looked for; `legacy_h5`: Keras-2 .h5 weights read by layer name.
- `losses`: the loss of each label mode.
- `batchnorm`: `FusedBatchNormalization`, the BatchNorm FerNet trains through TensorFlow's fused kernel.
- `predictor`: a Keras model file run over faces in batches (the predictor of the Keras runtime).

Importing this package imports Keras and registers every layer ferkeras saves
(`keras.saving.load_model` then loads a run's checkpoint in your own code).
Imports: `ferkeras.deploy` and `ferkeras.data`.
"""
from ferkeras.models.registry import MODEL_NAMES, build_model  # noqa: F401
from ferkeras.models.weights import load_model_file  # noqa: F401
