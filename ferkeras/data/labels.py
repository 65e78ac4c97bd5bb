"""Turn FER+ crowd votes into training targets.

Every FER+ face was labelled by 10 annotators, giving 10 vote counts per image: the 8 emotions,
"unknown" and "NF" (not a face). Barsoum et al. 2016, "Training Deep Networks for Facial Expression
Recognition with Crowd-Sourced Label Distribution" (arXiv:1608.01041), compare four ways of turning
those votes into a target, and Microsoft's FERPlus training code fixes the details. This module
implements those rules over whole vote matrices at once with numpy:

- A single vote for a column is treated as annotator noise and removed before anything else.
- **majority**: one-hot of the column holding more than half of the remaining votes.
- **probability**: the vote distribution over the top (at most 3) emotions; the training pipeline
  draws a fresh one-hot from it every epoch (`sample_onehot`).
- **crossentropy**: the same distribution, used directly as a soft target.
- **multi_target**: every emotion holding at least 30% of the votes, weighted by its votes. (The
  paper's multi-target loss only needs to know which classes are accepted: `targets > 0`.)

A face whose votes point to "unknown" or "not a face", or that no rule can settle, is dropped.

Thresholds are compared in integer arithmetic (`10 * votes >= 3 * total` for 30%, `2 * votes >
total` for half) so that no rounding question arises; for every vote total up to 200 this agrees
with the floating-point comparisons of Microsoft's code.
"""
import numpy as np

from ferkeras import CLASSES, NUM_CLASSES, VOTE_COLUMNS
from ferkeras.errors import UserError

MODES = ("majority", "probability", "crossentropy", "multi_target")

# Columns past the emotions: "unknown" (8) and "not a face" (9).
_FIRST_NON_EMOTION = NUM_CLASSES
# The probability/crossentropy rule stops taking classes at this many, and discards a row that
# ends with more (a tie group can overshoot it).
_MAX_CLASSES = 3


def check_mode(mode):
    """Return `mode` if it is a known label mode, else raise a UserError listing the modes."""
    if mode not in MODES:
        raise UserError(f"unknown label mode {mode!r}; expected one of: {', '.join(MODES)}")
    return mode


def remove_stray_votes(votes):
    """Return the votes as int64 with single votes (one annotator's outlier) set to zero."""
    votes = _as_vote_matrix(votes)
    return np.where(votes <= 1, 0, votes)


def vote_targets(votes, mode):
    """Turn an (N, 10) vote matrix into (N, 8) float32 targets and an (N,) keep mask.

    Kept rows of `targets` sum to 1: a one-hot for "majority", the integrated vote distribution for
    the other modes. Dropped rows are all zeros, so `targets[keep]` is what training uses.
    """
    check_mode(mode)
    votes = remove_stray_votes(votes)
    total = votes.sum(axis=1)
    if mode == "majority":
        integrated = _majority_votes(votes, total)
    elif mode == "multi_target":
        integrated = _multi_target_votes(votes, total)
    else:
        integrated = _integrated_top_votes(votes, total)
    return _emotion_distribution(integrated, total)


def sample_onehot(targets, rng):
    """Draw one class per row from the distributions in `targets`; return (N, 8) float32 one-hots.

    This is the "probability" mode of Barsoum et al.: each epoch sees one label per face, drawn from
    its vote distribution. All-zero rows (dropped faces) stay all zero.
    """
    targets = np.asarray(targets, dtype=np.float64)
    cumulative = np.cumsum(targets, axis=1)
    row_total = cumulative[:, -1]
    # Scale the uniform draw by the row total so rows that do not sum to exactly 1 (float32
    # rounding) still pick a class; the first column whose cumulative mass passes the draw wins,
    # and a zero-probability column never can.
    threshold = rng.random(len(targets)) * row_total
    picked = np.argmax(cumulative > threshold[:, None], axis=1)
    onehot = np.zeros(targets.shape, dtype=np.float32)
    has_mass = row_total > 0
    onehot[np.flatnonzero(has_mass), picked[has_mass]] = 1.0
    return onehot


def majority_labels(votes):
    """Return (labels int64 (N,), keep bool (N,)): the majority-vote class, -1 where dropped.

    This is the FER+ evaluation protocol: a test face counts only if more than half of its votes
    (after removing single stray votes) agree on one emotion.
    """
    targets, keep = vote_targets(votes, "majority")
    labels = np.where(keep, np.argmax(targets, axis=1), -1)
    return labels, keep


def mode_summary(votes, mode):
    """Count kept and dropped faces and the kept faces per class (argmax of their targets)."""
    targets, keep = vote_targets(votes, mode)
    winners = np.argmax(targets[keep], axis=1)
    per_class = np.bincount(winners, minlength=NUM_CLASSES)
    return {
        "mode": mode,
        "total": int(len(keep)),
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "class_counts": {name: int(count) for name, count in zip(CLASSES, per_class)},
    }


def _as_vote_matrix(votes):
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_COLUMNS):
        raise ValueError(f"votes must have shape (N, {len(VOTE_COLUMNS)}), got {votes.shape}")
    return votes.astype(np.int64)


def _majority_votes(votes, total):
    """Keep only the winning column's votes, where it holds more than half of all votes."""
    winner = np.argmax(votes, axis=1)
    winner_votes = votes[np.arange(len(votes)), winner]
    clear = 2 * winner_votes > total  # a tie for the top can never pass this, so argmax is safe
    integrated = np.zeros_like(votes)
    integrated[clear, winner[clear]] = winner_votes[clear]
    return integrated


def _multi_target_votes(votes, total):
    """Keep every column holding at least 30% of the votes, if together they hold over half."""
    integrated = np.where(10 * votes >= 3 * total[:, None], votes, 0)
    enough = 2 * integrated.sum(axis=1) > total
    return np.where(enough[:, None], integrated, 0)


def _integrated_top_votes(votes, total):
    """The probability/crossentropy rule: integrate the top classes, tied groups at a time.

    Per row, columns are taken in descending vote order, every column sharing the current top count
    at once, while less than 75% of the votes are integrated and fewer than 3 classes are taken.
    Reaching "unknown" or "not a face" ends the row; that column is dropped again if emotions were
    already taken. A row is discarded if it ends with at most half of the votes integrated or with
    more than 3 classes (a large tie). Each pass of the loop handles one tie group for all rows.
    """
    rows = np.arange(len(votes))
    remaining = votes.copy()
    integrated = np.zeros_like(votes)
    taken_count = np.zeros(len(votes), dtype=np.int64)
    still_open = np.ones(len(votes), dtype=bool)  # no unknown / NF column reached yet
    is_emotion = np.arange(votes.shape[1]) < _FIRST_NON_EMOTION

    while True:
        active = (4 * integrated.sum(axis=1) < 3 * total) & (taken_count < _MAX_CLASSES) & still_open
        if not active.any():
            break
        top = remaining.max(axis=1)
        # An active row always has a positive top: its untaken votes are over 25% of its total.
        group = (remaining == top[:, None]) & active[:, None]
        group_emotions = group & is_emotion
        group_non_emotion = group & ~is_emotion
        reaches_non_emotion = group_non_emotion.any(axis=1)
        # Columns are visited in index order, so every emotion of the group comes before the first
        # non-emotion column of the group, and the visit stops there (NF is not reached if it ties
        # with unknown).
        first_non_emotion = np.argmax(group_non_emotion, axis=1)
        had_emotions = (integrated.sum(axis=1) > 0) | group_emotions.any(axis=1)
        keep_non_emotion = reaches_non_emotion & ~had_emotions

        integrated = np.where(group_emotions, remaining, integrated)
        integrated[rows[keep_non_emotion], first_non_emotion[keep_non_emotion]] = top[keep_non_emotion]
        taken_count += group_emotions.sum(axis=1) + keep_non_emotion
        remaining = np.where(group, 0, remaining)
        still_open &= ~reaches_non_emotion

    discarded = (2 * integrated.sum(axis=1) <= total) | (taken_count > _MAX_CLASSES)
    return np.where(discarded[:, None], 0, integrated)


def _emotion_distribution(integrated, total):
    """Drop rows that settled on nothing, on "unknown" or on "not a face"; normalise the rest.

    The winner is the first column with the most integrated votes, so an emotion tied with
    "unknown" wins (emotions come first), as in Microsoft's code.
    """
    winner = np.argmax(integrated, axis=1)
    emotion_votes = integrated[:, :_FIRST_NON_EMOTION].astype(np.float64)
    emotion_total = emotion_votes.sum(axis=1)
    keep = (total > 0) & (winner < _FIRST_NON_EMOTION) & (emotion_total > 0)
    targets = np.zeros(emotion_votes.shape, dtype=np.float32)
    targets[keep] = (emotion_votes[keep] / emotion_total[keep, None]).astype(np.float32)
    return targets, keep
