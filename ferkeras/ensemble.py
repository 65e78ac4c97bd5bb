"""Ensembles and test-time augmentation as one Keras model, so that export.py writes them as one ONNX file.

    faces (N, 64, 64, 1) -> views (the faces; with TTA their mirror, then five 90% crops)
                         -> every member on every view -> softmax -> mean -> log

The output is the log of the averaged probabilities: the contract's "scores", whose softmax (what
predict.py and every other reader does) is the average itself. The views are the ones
`ferkeras.evaluation.tta_views` makes for `evaluate.py --tta`, on the contract's 64x64 input; each
member resizes them to its own side in its preprocessing layer, as it does any face.
"""
import keras
from keras import ops

from . import NUM_CLASSES
from .contract import INPUT_SIZE
from .errors import UserError
from .evaluation import TTA_CHOICES, crop_boxes


@keras.saving.register_keras_serializable(package="ferkeras")
class LogOfMean(keras.layers.Layer):
    """log(mean of the inputs), floored so that a zero probability stays finite."""

    def call(self, probabilities):
        return ops.log(ops.maximum(ops.mean(ops.stack(probabilities, axis=0), axis=0), 1e-12))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def tta_view_tensors(faces, tta):
    """The TTA views of a (N, 64, 64, 1) KerasTensor, as `evaluation.tta_views` makes them in numpy."""
    if tta not in TTA_CHOICES:
        raise UserError(f"--tta: expected one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    views = [faces]
    if tta != "none":
        views.append(ops.flip(faces, axis=2))
    if tta == "crops":
        views += [faces[:, top:top + side, left:left + side, :]
                  for top, left, side in crop_boxes(INPUT_SIZE, INPUT_SIZE)]
    return views


def averaged_model(members, tta="none"):
    """One Keras model averaging the probabilities of `members` (ferkeras models) over the TTA views."""
    if not members:
        raise UserError("an ensemble needs at least one model")
    faces = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), dtype="float32", name="faces")
    probabilities = []
    for index, member in enumerate(members):
        if member.output_shape[-1] != NUM_CLASSES:
            raise UserError(f"member {index + 1} ({member.name}) scores {member.output_shape[-1]} classes, "
                            f"expected {NUM_CLASSES}")
        # A fresh Functional over the member's own layers, so that members of one architecture (same
        # model name) can sit side by side in one graph.
        renamed = keras.Model(member.inputs[0], member.outputs[0], name=f"member{index + 1}_{member.name}")
        for view in tta_view_tensors(faces, tta):
            logits = renamed(view, training=False)
            probabilities.append(keras.layers.Activation("softmax", dtype="float32")(logits))
    if len(probabilities) == 1:
        return members[0]
    scores = LogOfMean(name="log_mean_probabilities", dtype="float32")(probabilities)
    return keras.Model(faces, scores, name=f"ferkeras_ensemble_{len(members)}x{len(probabilities) // len(members)}")
