"""Training-time augmentation of 48x48 grayscale faces with albumentations 2.x.

Augmentation runs on the raw uint8 faces, before the model's own in-graph preprocessing, and only
on the training split. Recipes:

- **none**: faces pass through unchanged.
- **crop_flip** (default): a random crop of 80-100% of the face area with an aspect ratio close to 1,
  resized back to 48x48, and a horizontal flip half of the time. Expressions are left-right
  symmetric enough that a mirrored face keeps its label.
- **ferplus**: crop_flip plus the extras of Microsoft's FERPlus training recipe: a small random
  affine warp (shift up to 10%, scale 0.9-1.1, rotation up to 10 degrees) and random brightness /
  contrast changes of up to 20%.

Determinism: an augmenter called with a numpy Generator reseeds its albumentations pipeline from
that generator once per batch, so the same generator state always gives the same batch, whatever
was augmented before. The pipeline's RNG state is shared, so a lock makes concurrent calls (e.g.
from a PyDataset with several worker threads) take turns rather than mix their random streams.
"""
import os
import threading

# albumentations checks PyPI for a newer version when imported; tests and offline machines must
# not touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ferkeras import FACE_SIZE  # noqa: E402
from ferkeras.errors import UserError  # noqa: E402

RECIPES = ("none", "crop_flip", "ferplus")


def build_augmenter(recipe="crop_flip", seed=None, erasing=0.0):
    """Return `augment(images, rng=None)` mapping uint8 (B, 48, 48) faces to augmented ones.

    With `rng` (a numpy Generator) the batch is reproducible from the generator's state; without
    it the pipeline continues its own random stream, started from `seed`. `erasing` > 0 adds random
    erasing (a rectangle of 2-25% of the face filled with noise, with that probability) after the recipe.
    """
    if recipe not in RECIPES:
        raise UserError(f"unknown augmentation recipe {recipe!r}; expected one of: {', '.join(RECIPES)}")
    if not 0.0 <= erasing <= 1.0:
        raise UserError(f"--erasing must be a probability in [0, 1], got {erasing}")
    transforms = _transforms(recipe) if recipe != "none" else []
    if erasing:
        # Noise rather than a constant: a black patch is a feature the model could learn to look for.
        transforms.append(A.Erasing(scale=(0.02, 0.25), ratio=(0.3, 3.3), fill="random", p=erasing))
    if not transforms:
        return _identity
    pipeline = A.Compose(transforms, seed=seed)
    lock = threading.Lock()

    def augment(images, rng=None):
        _check_faces(images)
        out = np.empty_like(images)
        with lock:
            if rng is not None:
                pipeline.set_random_seed(int(rng.integers(2**31 - 1)))
            for i, face in enumerate(images):
                out[i] = pipeline(image=face)["image"]
        return out

    return augment


def _transforms(recipe):
    crop_flip = [
        A.RandomResizedCrop(size=(FACE_SIZE, FACE_SIZE), scale=(0.8, 1.0), ratio=(0.9, 1.1), p=1.0),
        A.HorizontalFlip(p=0.5),
    ]
    if recipe == "crop_flip":
        return crop_flip
    return crop_flip + [
        # Reflecting the border keeps warped faces free of black wedges the model could latch onto.
        A.Affine(
            translate_percent=(-0.1, 0.1),
            scale=(0.9, 1.1),
            rotate=(-10, 10),
            border_mode=cv2.BORDER_REFLECT_101,
            p=1.0,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]


def _identity(images, rng=None):
    """The "none" recipe: return the faces themselves, untouched."""
    _check_faces(images)
    return images


def _check_faces(images):
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            "augmenters take a uint8 numpy array of shape (batch, 48, 48), got "
            f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        )
