"""FER+ label modes on hand-worked vote rows, and against a row-by-row reading of the rules."""
import csv

import numpy as np
import pytest

from ferkeras import VOTE_COLUMNS
from ferkeras.errors import UserError
from ferkeras.data.labels import MODES, majority_labels, mode_summary, sample_onehot, vote_targets

# Vote columns: neutral happiness surprise sadness anger disgust fear contempt | unknown NF.
# DROP means the row is dropped (keep False, all-zero target). Each case's arithmetic is written out
# with S = total votes after single stray votes are removed.
DROP = None
CASES = {
    # S = 9 (the stray surprise vote goes). Majority: 6 > 4.5. Probability: neutral (6 < 6.75 of
    # 75%) then happiness (9). Multi-target: 6 and 3 both reach 30% (2.7).
    "clear majority": (
        [6, 3, 1, 0, 0, 0, 0, 0, 0, 0],
        {"majority": [1, 0], "probability": [6 / 9, 3 / 9], "crossentropy": [6 / 9, 3 / 9],
         "multi_target": [6 / 9, 3 / 9]},
    ),
    # S = 10. Majority: the top is 4, not above 5. Probability: the tie group {neutral, happiness}
    # is taken at once (8 >= 7.5). Multi-target: 4 >= 3 twice, surprise's 2 is below.
    "tie": (
        [4, 4, 2, 0, 0, 0, 0, 0, 0, 0],
        {"majority": DROP, "probability": [0.5, 0.5], "crossentropy": [0.5, 0.5],
         "multi_target": [0.5, 0.5]},
    ),
    # Unknown holds 8 of 10: every mode settles on unknown, so the face is dropped.
    "unknown majority": (
        [2, 0, 0, 0, 0, 0, 0, 0, 8, 0],
        {mode: DROP for mode in MODES},
    ),
    "not-a-face majority": (
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
        {mode: DROP for mode in MODES},
    ),
    # The seven single votes are noise: S = 3, all contempt. Without the removal S would be 10 and
    # contempt's 3 no majority.
    "single stray votes removed": (
        [1, 1, 1, 1, 1, 1, 1, 3, 0, 0],
        {"majority": [0, 0, 0, 0, 0, 0, 0, 1], "probability": [0, 0, 0, 0, 0, 0, 0, 1],
         "crossentropy": [0, 0, 0, 0, 0, 0, 0, 1], "multi_target": [0, 0, 0, 0, 0, 0, 0, 1]},
    ),
    # S = 10. Probability: {neutral, happiness} (6 < 7.5), then {surprise, sadness}: 4 classes > 3.
    # Multi-target keeps exactly-30% columns: 3 + 3 = 6 > 5.
    "spread out": (
        [3, 3, 2, 2, 0, 0, 0, 0, 0, 0],
        {"majority": DROP, "probability": DROP, "crossentropy": DROP, "multi_target": [0.5, 0.5]},
    ),
    # Five classes with 2 votes each: too many for probability, none reaches 30%.
    "spread out everywhere": (
        [2, 2, 2, 2, 2, 0, 0, 0, 0, 0],
        {mode: DROP for mode in MODES},
    ),
    # S = 10. Probability: neutral (4 < 7.5), then the group {happiness, unknown} at 3: happiness is
    # taken, unknown ends the row and is left out since emotions came first: 7 > 5 kept.
    # Multi-target keeps neutral, happiness and unknown (all >= 3); neutral is the top (it comes
    # before unknown), so unknown is dropped with the other non-emotion columns.
    "unknown ties with an emotion": (
        [4, 3, 0, 0, 0, 0, 0, 0, 3, 0],
        {"majority": DROP, "probability": [4 / 7, 3 / 7], "crossentropy": [4 / 7, 3 / 7],
         "multi_target": [4 / 7, 3 / 7]},
    ),
    # S = 10. Probability: the group {neutral, unknown} at 4: neutral taken, unknown ends the row
    # (left out); 4 <= 5 integrated, dropped. Multi-target: 8 > 5 kept, neutral wins the tie with
    # unknown because emotions come first.
    "unknown ties with the top emotion": (
        [4, 0, 0, 0, 0, 0, 0, 0, 4, 2],
        {"majority": DROP, "probability": DROP, "crossentropy": DROP, "multi_target": [1]},
    ),
    # S = 10. Exactly half is no majority. Probability: neutral 5, then happiness 3 (8 >= 7.5).
    # Multi-target: happiness' 3 is exactly 30% and is kept; surprise's 2 is not.
    "multi-target threshold": (
        [5, 3, 2, 0, 0, 0, 0, 0, 0, 0],
        {"majority": DROP, "probability": [5 / 8, 3 / 8], "crossentropy": [5 / 8, 3 / 8],
         "multi_target": [5 / 8, 3 / 8]},
    ),
    # Multi-target: only neutral reaches 30%, and its 4 votes are not more than half of 10.
    "multi-target keeps too little": (
        [4, 0, 2, 2, 2, 0, 0, 0, 0, 0],
        {"majority": DROP, "probability": DROP, "crossentropy": DROP, "multi_target": DROP},
    ),
    # Probability: neutral 4, then {happiness, surprise, unknown} at 2: the emotions are taken and
    # unknown ends the row (3 classes, 8 of 10 votes).
    "unknown in a later tie group": (
        [4, 2, 2, 0, 0, 0, 0, 0, 2, 0],
        {"majority": DROP, "probability": [0.5, 0.25, 0.25], "crossentropy": [0.5, 0.25, 0.25],
         "multi_target": DROP},
    ),
    "all zero": ([0] * 10, {mode: DROP for mode in MODES}),
    "only single votes": ([1] * 10, {mode: DROP for mode in MODES}),
}
CASE_NAMES = list(CASES)
CASE_VOTES = np.array([CASES[name][0] for name in CASE_NAMES])


def expected_target(name, mode):
    """The hand-worked target padded to 8 classes, or None when the row must be dropped."""
    target = CASES[name][1][mode]
    if target is DROP:
        return None
    return np.pad(np.asarray(target, dtype=np.float64), (0, 8 - len(target)))


@pytest.mark.parametrize("mode", MODES)
def test_hand_worked_rows(mode):
    targets, keep = vote_targets(CASE_VOTES, mode)
    assert targets.shape == (len(CASE_NAMES), 8) and targets.dtype == np.float32
    for row, name in enumerate(CASE_NAMES):
        expected = expected_target(name, mode)
        if expected is None:
            assert not keep[row], name
            assert not targets[row].any(), name
        else:
            assert keep[row], name
            np.testing.assert_allclose(targets[row], expected, atol=1e-6, err_msg=name)


def test_majority_labels_follow_the_evaluation_protocol():
    labels, keep = majority_labels(CASE_VOTES)
    expected = [
        -1 if expected_target(name, "majority") is None else int(np.argmax(expected_target(name, "majority")))
        for name in CASE_NAMES
    ]
    assert labels.tolist() == expected
    assert keep.tolist() == [label >= 0 for label in expected]


def test_mode_summary_counts_kept_dropped_and_classes():
    summary = mode_summary(CASE_VOTES, "probability")
    kept_names = [name for name in CASE_NAMES if expected_target(name, "probability") is not None]
    assert summary["total"] == len(CASE_NAMES)
    assert summary["kept"] == len(kept_names) == 6
    assert summary["dropped"] == len(CASE_NAMES) - 6
    # clear majority, tie (first of the tie), unknown ties with an emotion, multi-target threshold,
    # unknown in a later tie group -> neutral; single stray votes -> contempt.
    assert summary["class_counts"] == {
        "neutral": 5, "happiness": 0, "surprise": 0, "sadness": 0, "anger": 0,
        "disgust": 0, "fear": 0, "contempt": 1,
    }


def test_unknown_mode_is_a_user_error_listing_the_modes():
    with pytest.raises(UserError, match="majority, probability, crossentropy, multi_target"):
        vote_targets(CASE_VOTES, "soft")


def test_sample_onehot_draws_from_the_distribution():
    targets = np.array([[0.5, 0.5, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1], [0] * 8], dtype=np.float32)
    draws = np.stack([sample_onehot(targets, np.random.default_rng(seed)) for seed in range(400)])
    assert draws.dtype == np.float32
    assert (draws[:, :2].sum(axis=2) == 1).all()  # every kept row gets exactly one class
    assert (draws[:, 1, 7] == 1).all()  # a certain class is always drawn
    assert not draws[:, 2].any()  # dropped rows stay empty
    assert not draws[:, 0, 2:].any()  # zero-probability classes never come up
    assert 0.4 < draws[:, 0, 0].mean() < 0.6
    again = sample_onehot(targets, np.random.default_rng(3))
    np.testing.assert_array_equal(again, draws[3])


# ------------------------------------------------------------------------------------------------
# The vectorised rules against a plain row-by-row reading of them, on many real and random rows.


def rules_one_row(votes, mode):
    """The label rules for one row, step by step, in floating point; None when dropped."""
    votes = [0.0 if v <= 1 else float(v) for v in votes]
    total = sum(votes)
    taken = [0.0] * 10
    if mode == "majority":
        if max(votes) > 0.5 * total:
            taken[votes.index(max(votes))] = max(votes)
    elif mode == "multi_target":
        taken = [v if v >= 0.3 * total else 0.0 for v in votes]
        if sum(taken) <= 0.5 * total:
            taken = [0.0] * 10
    else:
        remaining, count, open_row = list(votes), 0, True
        while sum(taken) < 0.75 * total and count < 3 and open_row:
            top = max(remaining)
            for column in range(10):
                if remaining[column] != top:
                    continue
                taken[column], remaining[column] = top, 0.0
                count += 1
                if column >= 8:  # unknown / not a face ends the row
                    open_row = False
                    if sum(taken) > top:
                        taken[column] = 0.0
                        count -= 1
                    break
        if sum(taken) <= 0.5 * total or count > 3:
            taken = [0.0] * 10
    if sum(taken) == 0 or int(np.argmax(taken)) >= 8:
        return None
    emotions = np.array(taken[:8])
    return emotions / emotions.sum()


def vote_rows_to_check(ferplus_dir):
    with open(ferplus_dir / "FER2013Valid" / "label.csv", newline="") as handle:
        real = [[int(v) for v in row[2:]] for row in csv.reader(handle) if row]
    rng = np.random.default_rng(0)
    peaked = rng.multinomial(10, rng.dirichlet(np.full(len(VOTE_COLUMNS), 0.4)), size=3000)
    flat = rng.integers(0, 5, size=(3000, len(VOTE_COLUMNS)))
    return np.concatenate([np.array(real), peaked, flat])


@pytest.mark.parametrize("mode", MODES)
def test_vectorised_rules_match_row_by_row_rules(mode, ferplus_dir):
    votes = vote_rows_to_check(ferplus_dir)
    targets, keep = vote_targets(votes, mode)
    for row, target, kept in zip(votes, targets, keep):
        expected = rules_one_row(row, mode)
        assert kept == (expected is not None), row
        if expected is not None:
            np.testing.assert_allclose(target, expected, atol=1e-6, err_msg=str(row))
