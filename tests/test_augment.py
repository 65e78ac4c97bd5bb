"""Augmentation recipes: shapes, determinism under a seed, and that flips and crops happen."""
import numpy as np
import pytest

from ferkeras.data.augment import RECIPES, build_augmenter
from ferkeras.errors import UserError


def textured_faces(count=32, seed=0):
    """Noise faces: any crop, flip or warp of them changes pixels."""
    return np.random.default_rng(seed).integers(0, 256, (count, 48, 48), dtype=np.uint8)


def half_dark_faces(count):
    """Faces dark on the left half and bright on the right, so a flip is easy to see."""
    faces = np.full((count, 48, 48), 230, dtype=np.uint8)
    faces[:, :, :24] = 20
    return faces


def test_unknown_recipe_is_a_user_error_listing_recipes():
    with pytest.raises(UserError, match="none, crop_flip, ferplus"):
        build_augmenter("mixup")


@pytest.mark.parametrize("recipe", RECIPES)
def test_shape_and_dtype_are_preserved(recipe):
    faces = textured_faces(16)
    out = build_augmenter(recipe)(faces, np.random.default_rng(0))
    assert out.shape == faces.shape and out.dtype == np.uint8


def test_none_is_the_identity():
    faces = textured_faces(8)
    np.testing.assert_array_equal(build_augmenter("none")(faces, np.random.default_rng(0)), faces)


@pytest.mark.parametrize("recipe", ["crop_flip", "ferplus"])
def test_same_generator_state_gives_the_same_batch(recipe):
    faces = textured_faces()
    augment = build_augmenter(recipe)
    first = augment(faces, np.random.default_rng(42))
    augment(faces, np.random.default_rng(1))  # whatever ran in between does not matter
    again = augment(faces, np.random.default_rng(42))
    other_augmenter = build_augmenter(recipe)(faces, np.random.default_rng(42))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other_augmenter)


@pytest.mark.parametrize("recipe", ["crop_flip", "ferplus"])
def test_different_seeds_give_different_batches(recipe):
    faces = textured_faces()
    augment = build_augmenter(recipe)
    first = augment(faces, np.random.default_rng(0))
    second = augment(faces, np.random.default_rng(1))
    assert (first != second).any(axis=(1, 2)).mean() > 0.9


def test_batches_from_one_generator_differ():
    faces = textured_faces()
    augment, rng = build_augmenter("crop_flip"), np.random.default_rng(0)
    assert not np.array_equal(augment(faces, rng), augment(faces, rng))


def test_seeded_augmenter_without_generator_is_reproducible():
    faces = textured_faces()
    first = build_augmenter("crop_flip", seed=3)(faces)
    np.testing.assert_array_equal(first, build_augmenter("crop_flip", seed=3)(faces))


def test_flip_happens_about_half_the_time():
    out = build_augmenter("crop_flip")(half_dark_faces(200), np.random.default_rng(0)).astype(int)
    # A crop keeps at least 80% of the area, so the dark half stays on its side unless flipped.
    flipped = out[:, :, :12].mean(axis=(1, 2)) > out[:, :, -12:].mean(axis=(1, 2))
    assert 0.3 < flipped.mean() < 0.7


def test_crop_changes_pixels_beyond_a_flip():
    faces = textured_faces(64)
    out = build_augmenter("crop_flip")(faces, np.random.default_rng(0))
    unchanged = (out == faces).all(axis=(1, 2)) | (out == faces[:, :, ::-1]).all(axis=(1, 2))
    assert unchanged.mean() < 0.1


def test_ferplus_recipe_changes_brightness_sometimes():
    faces = np.full((64, 48, 48), 128, dtype=np.uint8)
    out = build_augmenter("ferplus")(faces, np.random.default_rng(0))
    means = out.mean(axis=(1, 2))
    assert (np.abs(means - 128) > 5).mean() > 0.2  # brightness/contrast moved a good share
    assert (np.abs(means - 128) < 1).mean() > 0.2  # and left the rest (p = 0.5)


def test_non_uint8_input_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        build_augmenter("crop_flip")(np.zeros((2, 48, 48), dtype=np.float32), np.random.default_rng(0))


def test_concurrent_calls_stay_deterministic():
    from concurrent.futures import ThreadPoolExecutor

    faces = textured_faces(16)
    augment = build_augmenter("ferplus")
    expected = [augment(faces, np.random.default_rng(seed)) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda seed: augment(faces, np.random.default_rng(seed)), range(8)))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
