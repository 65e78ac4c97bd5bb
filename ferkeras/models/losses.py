"""Losses for the FER+ label modes (Barsoum et al. 2016, section 3)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ferkeras")
class MultiTargetLoss(keras.losses.Loss):
    """Multi-target learning: -log of the probability mass the model puts on any of the target classes.

    A face whose votes split between, say, surprise and fear counts as right when the model predicts
    either; the target tensor marks those classes with a non-zero entry.
    """

    def __init__(self, from_logits=True, name="multi_target", **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        probs = ops.softmax(y_pred, axis=-1) if self.from_logits else y_pred
        mask = ops.cast(y_true > 0, probs.dtype)
        mass = ops.sum(probs * mask, axis=-1)
        return -ops.log(ops.maximum(mass, keras.config.epsilon()))

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


def loss_for_mode(training_mode, label_smoothing=0.0):
    """Majority and PLD train on one-hot targets, crossentropy on the vote distribution: all three
    are categorical cross-entropy, optionally label-smoothed. Multi-target needs its own loss (its
    targets are a mask of accepted classes, which smoothing would blur into "every class")."""
    if training_mode == "multi_target":
        return MultiTargetLoss()
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
