"""The training input pipeline: batches of augmented faces, targets and class-weight sample weights.

A `keras.utils.PyDataset` rather than tf.data keeps the loop backend-neutral (the same code trains
with KERAS_BACKEND=torch). Randomness is keyed on (seed, epoch, batch index), not on call order, so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""
import math
import threading

import keras
import numpy as np

from ferkeras import NUM_CLASSES
from ferkeras.errors import UserError
from ferkeras.data.labels import sample_onehot

# The class weights of the published FER+ ResNet50 recipe, in FER+ class order.
PUBLISHED_CLASS_WEIGHTS = (2.74398525, 3.56296941, 7.9199129, 8.44722581,
                           12.27334083, 215.34868421, 50.51388889, 230.51408451)


def class_weight_vector(spec, targets):
    """The 8 per-class loss weights for a `--class_weights` spec, or None for unweighted."""
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

    Every batch is a pure function of (seed, epoch, batch index): `batch(epoch, index)`. Keras sees an
    endless dataset (`num_batches` is None; train.py passes steps_per_epoch = len(batches)) whose item
    `position` is batch `position % len` of epoch `epoch + position // len`. Why not Keras' usual
    finite PyDataset with the epoch advanced in `on_epoch_end`: Keras creates the next epoch's
    iterator, and tf.data starts prefetching from it, before it calls `on_epoch_end`, so the first
    batches of each epoch were drawn from the previous epoch's shuffle, by a timing a resumed run does
    not repeat.
    """

    def __init__(self, images, targets, batch_size, augmenter=None, shuffle=True,
                 sample_targets=False, class_weights=None, seed=0, epoch=0, mix="none", mix_alpha=0.2, **kwargs):
        super().__init__(**kwargs)
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets.astype(np.float32)
        self.batch_size = batch_size
        self.mix, self.mix_alpha = mix, mix_alpha
        self.augmenter, self.shuffle, self.sample_targets = augmenter, shuffle, sample_targets
        self.class_weights = class_weights
        self.seed, self.epoch = seed, epoch  # the epoch that position 0 belongs to
        self._arrays_by_epoch, self._lock = {}, threading.Lock()

    def epoch_arrays(self, epoch):
        """What an epoch draws once: the order of the faces and their targets (subclasses add more)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.images)) if self.shuffle else np.arange(len(self.images))
        targets = sample_onehot(self.targets, rng) if self.sample_targets else self.targets
        return {"order": order, "targets": targets}

    def arrays(self, epoch):
        with self._lock:
            if epoch not in self._arrays_by_epoch:
                # Prefetching reaches at most into the next epoch: keep two.
                self._arrays_by_epoch = {e: a for e, a in self._arrays_by_epoch.items() if e == epoch - 1}
                self._arrays_by_epoch[epoch] = self.epoch_arrays(epoch)
            return self._arrays_by_epoch[epoch]

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    @property
    def num_batches(self):
        return None  # endless for Keras; see the class docstring

    def __getitem__(self, position):
        return self.batch(self.epoch + position // len(self), position % len(self))

    def batch(self, epoch, index):
        arrays = self.arrays(epoch)
        rows = arrays["order"][index * self.batch_size:(index + 1) * self.batch_size]
        x = self.batch_inputs(rows, epoch, index, arrays)
        y = arrays["targets"][rows]
        if self.mix != "none":
            # Its own stream (the trailing 1), so mixing leaves the augmentation's draws as they were.
            x, y = mix_batch(x, y, self.mix, self.mix_alpha, np.random.default_rng([self.seed, epoch, index, 1]))
        if self.class_weights is None:
            return x, y
        return x, y, y @ self.class_weights

    def batch_inputs(self, rows, epoch, index, arrays):
        """The model inputs of one batch: the faces of `rows`, augmented (subclasses feed other inputs)."""
        faces = self.images[rows]
        if self.augmenter is not None:
            faces = self.augmenter(faces, np.random.default_rng([self.seed, epoch, index]))
        return faces.astype(np.float32)[..., None]


def mix_batch(x, y, kind, alpha, rng):
    """Mix each face of a batch with another face of the same batch (a random pairing).

    - mixup (Zhang et al. 2018): x = lam x_i + (1 - lam) x_j, and the targets alike;
    - cutmix (Yun et al. 2019): a rectangle of x_j, of area (1 - lam), pasted into x_i; the targets
      are mixed by the area actually pasted (the rectangle is clipped at the border).
    lam ~ Beta(alpha, alpha), one per batch. Targets stay distributions, so sample weights computed from
    them (target . class weights) mix too.
    """
    lam = float(rng.beta(alpha, alpha))
    pair = rng.permutation(len(x))
    if kind == "mixup":
        return lam * x + (1 - lam) * x[pair], lam * y + (1 - lam) * y[pair]
    height, width = x.shape[1:3]
    cut_h, cut_w = int(round(height * np.sqrt(1 - lam))), int(round(width * np.sqrt(1 - lam)))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    mixed = x.copy()
    mixed[:, top:bottom, left:right] = x[pair, top:bottom, left:right]
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept * y + (1 - kept) * y[pair]
