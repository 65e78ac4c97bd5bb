"""Model files as predictors: `logits(faces)`, `probabilities(faces)`, `describe()` and `batch_size`
(`ferkeras.deploy.contract.Predictor`), whatever runs the file.

`load_predictor(path)` picks the runtime by suffix: Keras for .keras (here), onnxruntime for .onnx
(`ferkeras.deploy.contract.OnnxPredictor`), a TFLite interpreter for .tflite
(`ferkeras.deploy.tflite.TflitePredictor`). Evaluation, distillation teachers and ensembles all score
models through it. Faces are uint8 or float (N, H, W) gray, 0..255, any size.
"""
from pathlib import Path

import numpy as np

from ferkeras.deploy.contract import OnnxPredictor, Predictor, check_class_count, check_finite_scores
from ferkeras.errors import UserError


class KerasPredictor(Predictor):
    """A ferkeras Keras model: raw faces 0..255 (N, H, W, 1) in, 8 logits out."""

    kind = "keras"

    def __init__(self, model, batch_size=64, path=None):
        self.model, self.batch_size, self.path = model, batch_size, path
        check_class_count(model.output_shape[-1], path or model.name)

    def logits(self, faces):
        # model.predict runs a compiled (tf.function / jit) step over fixed-size batches.
        x = np.asarray(faces, dtype=np.float32)[..., None]
        logits = np.asarray(self.model.predict(x, batch_size=self.batch_size, verbose=0), dtype=np.float32)
        return check_finite_scores(logits, self.path or self.model.name)

    def describe(self):
        return {"format": "keras", "path": str(self.path) if self.path else None,
                "parameters": int(self.model.count_params())}


def load_predictor(path, batch_size=64):
    """A predictor for a .keras, .onnx or .tflite file, checked to score the 8 FER+ classes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxPredictor(path, batch_size)
    if suffix == ".tflite":
        from ferkeras.deploy.tflite import TflitePredictor

        return TflitePredictor(path, batch_size)
    if suffix == ".keras":
        from ferkeras.models.weights import load_model_file  # Keras loads only when a Keras model is scored

        return KerasPredictor(load_model_file(path), batch_size, path)
    raise UserError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected a .keras, .onnx or "
                    ".tflite file")
