"""Test-time augmentation (`--tta`): a face's probabilities averaged over a few views of it."""
import numpy as np

from ferkeras.deploy.contract import softmax
from ferkeras.errors import UserError
from ferkeras.timing import time_calls


def timed_logits(predictor, faces):
    """(logits, images per second). A warm-up batch first keeps tracing and session set-up out of the timing."""
    timed = time_calls(lambda: predictor.logits(faces),
                       warmup_call=lambda: predictor.logits(faces[:getattr(predictor, "batch_size", 8)]))
    return timed.result, timed.per_second(len(faces))


# Test-time augmentation: the views whose probabilities are averaged. "crops" adds five crops of 90% of
# the side (the four corners and the centre) to the face and its mirror; training's random resized crops
# keep 80-100% of the area, so such crops are faces the model has learnt from.
TTA_CHOICES = ("none", "flip", "crops")
TTA_CROP_SIDE = 0.9


def crop_boxes(height, width, side_fraction=TTA_CROP_SIDE):
    """(top, left, side) of the five TTA crops of an image of height x width."""
    side = int(round(min(height, width) * side_fraction))
    bottom, right = height - side, width - side
    return [(top, left, side) for top, left in ((0, 0), (0, right), (bottom, 0), (bottom, right),
                                                (bottom // 2, right // 2))]


def tta_views(faces, tta):
    """The views of uint8 faces (N, H, W) that `tta` averages over, the faces themselves first."""
    if tta not in TTA_CHOICES:
        raise UserError(f"--tta: expected one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    views = [faces]
    if tta != "none":
        views.append(faces[:, :, ::-1])
    if tta == "crops":
        views += [faces[:, top:top + side, left:left + side] for top, left, side in crop_boxes(*faces.shape[1:3])]
    return [np.ascontiguousarray(view) for view in views]


def predict_probabilities(predictor, faces, tta="none"):
    """Return (probabilities (N, 8), TTA-averaged probabilities or None, images per second)."""
    logits, speed = timed_logits(predictor, faces)
    plain = softmax(logits)
    if tta == "none":
        return plain, None, speed
    others = [softmax(predictor.logits(view)) for view in tta_views(faces, tta)[1:]]
    return plain, np.mean([plain] + others, axis=0), speed
