"""The training input pipeline: batches of augmented faces, targets and class-weight sample weights.

A `keras.utils.PyDataset` rather than tf.data keeps the loop backend-neutral (the same code trains
with KERAS_BACKEND=torch). Randomness is keyed on (seed, epoch, batch index), not on call order, so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""
import math

import keras
import numpy as np

from . import NUM_CLASSES
from .errors import UserError
from .labels import sample_onehot


def class_weight_vector(spec, targets):
    """The 8 per-class loss weights for a `--class_weights` spec, or None for unweighted."""
    from .config import PUBLISHED_CLASS_WEIGHTS
    if spec == "none":
        return None
    if spec == "published":
        return np.asarray(PUBLISHED_CLASS_WEIGHTS, dtype=np.float32)
    if spec == "balanced":
        # n / (k * count_k), the usual "balanced" rule, with soft targets counted fractionally.
        counts = targets.sum(axis=0)
        if (counts == 0).any():
            missing = [i for i, c in enumerate(counts) if c == 0]
            raise UserError(f"--class_weights balanced: classes {missing} have no training faces; "
                            "give 8 numbers or use 'none'")
        return (len(targets) / (NUM_CLASSES * counts)).astype(np.float32)
    return np.asarray(spec, dtype=np.float32)


class FaceBatches(keras.utils.PyDataset):
    """Yields (faces float32 (B,48,48,1) in 0..255, targets (B,8), sample weights (B,)).

    With `sample_targets=True` (the PLD "probability" mode) each epoch draws a one-hot target per face
    from its vote distribution. Sample weights are target . class_weights, which equals the usual
    per-class weight for one-hot targets and its expectation for soft ones.
    """

    def __init__(self, images, targets, batch_size, augmenter=None, shuffle=True,
                 sample_targets=False, class_weights=None, seed=0, epoch=0, **kwargs):
        super().__init__(**kwargs)
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets.astype(np.float32)
        self.batch_size = batch_size
        self.augmenter, self.shuffle, self.sample_targets = augmenter, shuffle, sample_targets
        self.class_weights = class_weights
        self.seed, self.epoch = seed, epoch
        self._epoch_arrays()

    def _epoch_arrays(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(len(self.images)) if self.shuffle else np.arange(len(self.images))
        self.epoch_targets = sample_onehot(self.targets, rng) if self.sample_targets else self.targets

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.batch_inputs(rows, index)
        y = self.epoch_targets[rows]
        if self.class_weights is None:
            return x, y
        return x, y, y @ self.class_weights

    def batch_inputs(self, rows, index):
        """The model inputs of one batch: the faces of `rows`, augmented (subclasses feed other inputs)."""
        faces = self.images[rows]
        if self.augmenter is not None:
            faces = self.augmenter(faces, np.random.default_rng([self.seed, self.epoch, index]))
        return faces.astype(np.float32)[..., None]

    def on_epoch_end(self):
        self.epoch += 1
        self._epoch_arrays()
