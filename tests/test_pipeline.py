"""The training input pipeline: determinism, PLD sampling, class-weight sample weights."""
import numpy as np
import pytest

from ferkeras.data.batches import PUBLISHED_CLASS_WEIGHTS
from ferkeras.errors import UserError
from ferkeras.data.batches import FaceBatches, class_weight_vector


def faces_and_targets(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
    targets = np.eye(8, dtype=np.float32)[rng.integers(0, 8, size=n)]
    return images, targets


def flip_all(images, rng):
    return images[:, :, ::-1]


def test_batches_are_a_function_of_seed_epoch_and_index():
    images, targets = faces_and_targets()
    a = FaceBatches(images, targets, 16, seed=3)
    b = FaceBatches(images, targets, 16, seed=3)
    np.testing.assert_array_equal(a[2][0], b[2][0])
    assert len(a) == 4 and a[3][0].shape == (2, 48, 48, 1) and a[0][0].dtype == np.float32
    first_epoch = a[0][0].copy()
    next_epoch = a[len(a)][0]                                 # Keras sees one endless stream of batches
    assert not np.array_equal(next_epoch, first_epoch)        # reshuffled
    np.testing.assert_array_equal(a.batch(1, 0)[0], next_epoch)
    resumed = FaceBatches(images, targets, 16, seed=3, epoch=1)
    np.testing.assert_array_equal(resumed[0][0], next_epoch)  # a resumed run sees the same epoch
    a.on_epoch_end()                                          # Keras' calls change nothing
    np.testing.assert_array_equal(a[0][0], first_epoch)
    assert a.num_batches is None


def test_every_face_is_seen_once_per_epoch_with_its_own_target():
    images, targets = faces_and_targets()
    batches = FaceBatches(images, targets, 16, seed=0)
    seen = np.concatenate([batches[i][0][..., 0] for i in range(len(batches))]).astype(np.uint8)
    seen_targets = np.concatenate([batches[i][1] for i in range(len(batches))])
    order = [int(np.flatnonzero((images == face).all(axis=(1, 2)))[0]) for face in seen]
    assert sorted(order) == list(range(len(images)))
    np.testing.assert_array_equal(seen_targets, targets[order])


def test_augmenter_applies_to_training_batches_only_when_given():
    images, targets = faces_and_targets()
    plain = FaceBatches(images, targets, 10, shuffle=False)
    flipped = FaceBatches(images, targets, 10, shuffle=False, augmenter=flip_all)
    np.testing.assert_array_equal(plain[0][0][..., 0], images[:10])
    np.testing.assert_array_equal(flipped[0][0][..., 0], images[:10, :, ::-1])


def test_sample_weights_are_the_target_class_weight():
    images, targets = faces_and_targets()
    weights = np.asarray(PUBLISHED_CLASS_WEIGHTS, dtype=np.float32)
    x, y, sw = FaceBatches(images, targets, 50, shuffle=False, class_weights=weights)[0]
    np.testing.assert_allclose(sw, weights[targets.argmax(1)], rtol=1e-6)
    soft = np.zeros((2, 8), np.float32)
    soft[0, [0, 1]] = 0.5
    soft[1, 7] = 1.0
    _, _, sw = FaceBatches(images[:2], soft, 2, shuffle=False, class_weights=weights)[0]
    np.testing.assert_allclose(sw, [(weights[0] + weights[1]) / 2, weights[7]], rtol=1e-6)


def test_pld_sampling_draws_one_hot_targets_from_the_distribution():
    images = np.zeros((4000, 48, 48), np.uint8)
    dist = np.tile(np.array([0.7, 0.3, 0, 0, 0, 0, 0, 0], np.float32), (4000, 1))
    batches = FaceBatches(images, dist, 4000, sample_targets=True, seed=1)
    y = batches[0][1]
    assert set(np.unique(y)) == {0.0, 1.0} and (y.sum(1) == 1).all()
    assert y[:, 2:].sum() == 0                                # never outside the support
    assert abs(y[:, 0].mean() - 0.7) < 0.03                   # frequencies follow the votes
    assert not np.array_equal(batches[1][1], y)               # redrawn every epoch


def test_class_weight_vector_specs():
    targets = np.eye(8, dtype=np.float32)[[0, 0, 0, 1, 2, 3, 4, 5, 6, 7]]
    assert class_weight_vector("none", targets) is None
    np.testing.assert_allclose(class_weight_vector("published", targets), PUBLISHED_CLASS_WEIGHTS, rtol=1e-6)
    balanced = class_weight_vector("balanced", targets)
    np.testing.assert_allclose(balanced, [10 / 24] + [10 / 8] * 7, rtol=1e-6)
    with pytest.raises(UserError, match="no training faces"):
        class_weight_vector("balanced", targets[:3])
