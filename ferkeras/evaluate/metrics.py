"""Scores of predicted probabilities against FER+ labels: pure numpy, so each can be checked by hand.

The FER+ majority protocol (Barsoum et al. 2016) scores a face only if more than half of its votes,
after removing single stray votes, agree on one emotion; the other faces are left out
(`ferkeras.data.labels.majority_labels`).
"""
import numpy as np

from ferkeras import CLASSES, NUM_CLASSES
from ferkeras.errors import UserError


def confusion_matrix(labels, predicted, num_classes=NUM_CLASSES):
    """Counts (num_classes, num_classes): rows are the true classes, columns the predicted ones."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def vote_distribution(votes):
    """The 8 emotion votes of each face normalised to sum to 1 ("unknown" and "not a face" left out)."""
    emotions = np.asarray(votes, dtype=np.float64)[:, :NUM_CLASSES]
    totals = emotions.sum(axis=1, keepdims=True)
    return np.divide(emotions, totals, out=np.zeros_like(emotions), where=totals > 0)


def mean_kl_divergence(vote_dist, probabilities, eps=1e-12):
    """Mean KL(P || Q) = sum_c P_c log(P_c / Q_c), with P the annotators' vote distribution and Q the
    model's predicted distribution.

    This direction asks how well the model's distribution explains the crowd's: it grows without
    bound when the model gives ~0 probability to an emotion that annotators chose, and it ignores
    classes nobody voted for (0 log 0 = 0). Q is clipped at `eps` so a hard 0 stays finite.
    """
    p = np.asarray(vote_dist, dtype=np.float64)
    q = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0)
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return float(terms.sum(axis=1).mean()) if len(p) else None


def classification_metrics(labels, probabilities, vote_dist=None):
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix, mean KL.

    `labels` are the majority classes (N,), `probabilities` the model's (N, 8) distributions and
    `vote_dist` (optional) the (N, 8) vote distributions for the KL term. Conventions: precision of
    a class that is never predicted is 0; recall and F1 of a class with no faces are None, and such
    a class is left out of the balanced accuracy (the mean recall over the classes present).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(labels) == 0:
        raise UserError("no faces to score: every face of the split was dropped by the majority protocol")
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted)
    correct = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    per_class, recalls = {}, []
    for k, name in enumerate(CLASSES):
        precision = correct[k] / predicted_count[k] if predicted_count[k] else 0.0
        if support[k]:
            recall = correct[k] / support[k]
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            recalls.append(recall)
        else:
            recall = f1 = None
        per_class[name] = {"precision": float(precision), "recall": _float_or_none(recall),
                           "f1": _float_or_none(f1), "support": int(support[k])}
    f1s = [c["f1"] for c in per_class.values() if c["f1"] is not None]
    return {
        "n": int(len(labels)),
        "accuracy": float(correct.sum() / len(labels)),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(np.mean(f1s)),
        "mean_kl": mean_kl_divergence(vote_dist, probabilities) if vote_dist is not None else None,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _float_or_none(value):
    return None if value is None else float(value)
