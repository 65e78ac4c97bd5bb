"""Loading FER+ from the folder layout and the Kaggle CSV pair: agreement, cache, bad input."""
import csv
import io
import os
import shutil

import cv2
import numpy as np
import pytest

import ferkeras.data.ferplus as data
from ferkeras import CLASSES
from ferkeras.data.ferplus import (
    available_splits,
    detect_form,
    load_labelled,
    load_split,
    resolve_data_dir,
    summary_line,
)
from ferkeras.errors import UserError
from tests.helpers import SMALL_SIZES, read_label_rows, write_csv

ALL_BUT_TEST = {"train": True, "valid": True, "test": False}


# ------------------------------------------------------------------------------------------------
# Both forms


def test_folder_and_kaggle_forms_give_identical_splits(small_ferplus, small_kaggle):
    assert detect_form(small_ferplus) == "folder"
    assert detect_form(small_kaggle) == "kaggle"
    for split in ("train", "valid"):
        folder = load_split(small_ferplus, split)
        kaggle = load_split(small_kaggle, split)
        # One row per face: the non-face rows are skipped and the duplicated name counted once.
        assert len(folder) == len(kaggle) == SMALL_SIZES[split]
        assert folder.images.dtype == kaggle.images.dtype == np.uint8
        assert folder.votes.dtype == kaggle.votes.dtype == np.int32
        np.testing.assert_array_equal(folder.names, kaggle.names)
        np.testing.assert_array_equal(folder.images, kaggle.images)
        np.testing.assert_array_equal(folder.votes, kaggle.votes)
        assert list(folder.names) == sorted(folder.names)


def test_folder_layout_wins_when_both_forms_are_present(small_ferplus, small_kaggle, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(small_ferplus, both)
    # Votes that differ from the folders' label.csv show which form was read.
    rows = [["Usage", "Image name", *data.VOTE_COLUMNS], ["Training", "fer9999999.png", *[0] * 9, 10]]
    write_csv(both / "fer2013new.csv", rows)
    shutil.copyfile(small_kaggle / "fer2013.csv", both / "fer2013.csv")
    assert detect_form(both) == "folder"
    np.testing.assert_array_equal(load_split(both, "valid").votes, load_split(small_ferplus, "valid").votes)


def test_rows_hold_the_png_and_votes_their_name_gives(small_ferplus):
    loaded = load_split(small_ferplus, "valid")
    label_rows = read_label_rows(small_ferplus / "FER2013Valid" / "label.csv")
    rows = {row[0]: [int(v) for v in row[2:]] for row in label_rows}
    for index in (0, len(loaded) // 2, len(loaded) - 1):
        name = str(loaded.names[index])
        png = cv2.imread(str(small_ferplus / "FER2013Valid" / name), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(loaded.images[index], png)
        assert loaded.votes[index].tolist() == rows[name]


def test_absent_test_split_is_reported_absent(small_ferplus, small_kaggle):
    assert available_splits(small_ferplus) == ALL_BUT_TEST
    assert available_splits(small_kaggle) == ALL_BUT_TEST
    with pytest.raises(UserError, match="FER2013Test does not exist"):
        load_split(small_ferplus, "test")
    with pytest.raises(UserError, match="no PrivateTest rows"):
        load_split(small_kaggle, "test")


def test_full_valid_split_of_ferplus_dir(ferplus_dir):
    label_rows = read_label_rows(ferplus_dir / "FER2013Valid" / "label.csv")
    loaded = load_split(ferplus_dir, "valid")
    assert loaded.images.shape == (len(label_rows), 48, 48)
    assert sorted(loaded.names) == sorted(row[0] for row in label_rows)
    assert loaded.votes.sum() == sum(int(v) for row in label_rows for v in row[2:])
    assert loaded.images.std() > 20  # real pixels, not a blank array


def test_load_labelled_filters_and_summarises(small_ferplus):
    images, targets, summary = load_labelled(small_ferplus, "train", "majority")
    assert len(images) == len(targets) == summary["kept"]
    assert summary["kept"] + summary["dropped"] == SMALL_SIZES["train"]
    assert summary["dropped"] >= 16  # the subset holds at least 16 faces no majority settles
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    assert set(np.unique(targets)) == {0.0, 1.0}
    line = summary_line("train", summary)
    assert line.startswith(f"train (majority): kept {summary['kept']:,}, dropped {summary['dropped']:,} | ")
    assert all(f"{name} " in line for name in CLASSES)


def test_summary_line_format():
    counts = dict(zip(CLASSES, [10123, 7500, 3500, 3400, 2400, 170, 650, 160]))
    summary = {"mode": "majority", "kept": 24941, "dropped": 3617, "class_counts": counts}
    assert summary_line("train", summary) == (
        "train (majority): kept 24,941, dropped 3,617 | neutral 10,123  happiness 7,500  surprise 3,500"
        "  sadness 3,400  anger 2,400  disgust 170  fear 650  contempt 160"
    )


def test_resolve_data_dir_uses_argument_then_environment_then_data(tmp_path, monkeypatch, small_kaggle):
    monkeypatch.delenv("FERKERAS_DATA", raising=False)
    assert resolve_data_dir(small_kaggle) == small_kaggle
    monkeypatch.setenv("FERKERAS_DATA", str(small_kaggle))
    assert resolve_data_dir(None) == small_kaggle
    monkeypatch.delenv("FERKERAS_DATA")
    monkeypatch.chdir(tmp_path)
    how_to_get_data = r"data directory data does not exist.*fer2013\.csv.*fer2013new\.csv.*FER2013Train"
    with pytest.raises(UserError, match=how_to_get_data):
        resolve_data_dir(None)
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="holds no FER\\+ data"):
        resolve_data_dir(None)


# ------------------------------------------------------------------------------------------------
# Cache


def bump_mtime(path):
    """Move a just-edited file's mtime a second on: a coarse filesystem clock could otherwise give
    the edit the same timestamp as the copy made a moment before, and the edit may keep the size."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def cache_files(cache):
    return sorted(path.name for path in cache.glob("*.npz"))


def test_cache_is_used_then_rebuilt_when_a_source_changes(small_ferplus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FERKERAS_CACHE", str(cache))
    source = tmp_path / "ferplus"
    shutil.copytree(small_ferplus, source)
    first = load_split(source, "valid")
    assert [name.split("-")[0] for name in cache_files(cache)] == ["valid"]

    def no_reading(*args):
        raise AssertionError("the sources were read although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(data, "_read_split", no_reading)
        cached = load_split(source, "valid")
    np.testing.assert_array_equal(cached.images, first.images)
    np.testing.assert_array_equal(cached.votes, first.votes)
    np.testing.assert_array_equal(cached.names, first.names)

    # Change one face: the next load must see it, and only the new cache remains.
    name = str(first.names[0])
    cv2.imwrite(str(source / "FER2013Valid" / name), 255 - first.images[0])
    bump_mtime(source / "FER2013Valid" / name)
    before = cache_files(cache)
    rebuilt = load_split(source, "valid")
    np.testing.assert_array_equal(rebuilt.images[0], 255 - first.images[0])
    np.testing.assert_array_equal(rebuilt.images[1:], first.images[1:])
    after = cache_files(cache)
    assert len(after) == 1 and after != before


def test_kaggle_cache_is_rebuilt_when_votes_change(small_kaggle, tmp_path, monkeypatch):
    monkeypatch.setenv("FERKERAS_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "kaggle"
    shutil.copytree(small_kaggle, source)
    first = load_split(source, "train")
    # The pair is read in one pass, so every split present is cached at once.
    assert [name.split("-")[0] for name in cache_files(tmp_path / "cache")] == ["train", "valid"]
    votes_file = source / "fer2013new.csv"
    lines = votes_file.read_text().splitlines()
    usage, name, *votes = lines[2].split(",")  # a face listed once (file line 2 is repeated)
    new_votes = votes[1:] + votes[:1]  # the same votes, one column over
    assert new_votes != votes
    lines[2] = ",".join([usage, name, *new_votes])
    votes_file.write_text("\n".join(lines) + "\n")
    bump_mtime(votes_file)
    changed = load_split(source, "train")
    row = list(changed.names).index(name)
    assert changed.votes[row].tolist() == [int(v) for v in new_votes]
    assert first.votes[row].tolist() == [int(v) for v in votes]


def test_unreadable_cache_is_rebuilt_and_cache_false_writes_nothing(small_ferplus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FERKERAS_CACHE", str(cache))
    load_split(small_ferplus, "valid", cache=False)
    assert not cache.exists() or cache_files(cache) == []
    first = load_split(small_ferplus, "valid")
    (cache / cache_files(cache)[0]).write_bytes(b"not a zip file")
    again = load_split(small_ferplus, "valid")
    np.testing.assert_array_equal(again.images, first.images)


# ------------------------------------------------------------------------------------------------
# Bad input: every case is a UserError naming the file and (where there is one) the line.


def small_folder_copy(small_ferplus, out, rows=12):
    """A folder layout with the first `rows` valid faces of small_ferplus (train split only)."""
    label_rows = read_label_rows(small_ferplus / "FER2013Valid" / "label.csv")[:rows]
    (out / "FER2013Train").mkdir(parents=True)
    for row in label_rows:
        shutil.copyfile(small_ferplus / "FER2013Valid" / row[0], out / "FER2013Train" / row[0])
    write_csv(out / "FER2013Train" / "label.csv", label_rows)
    return out


def small_kaggle_copy(small_kaggle, out, rows=30):
    """The header and first `rows` data rows of both Kaggle files."""
    out.mkdir(parents=True)
    for name in ("fer2013.csv", "fer2013new.csv"):
        lines = (small_kaggle / name).read_text().splitlines()[: rows + 1]
        (out / name).write_text("\n".join(lines) + "\n")
    return out


def edit_line(path, line_number, edit):
    lines = path.read_text().splitlines()
    lines[line_number - 1] = edit(lines[line_number - 1])
    path.write_text("\n".join(lines) + "\n")


def line_edit(file_name, line_number, edit):
    """A breaker rewriting one line of a file of the copy with `edit(old line) -> new line`."""
    return lambda data_dir: edit_line(data_dir / file_name, line_number, edit)


def field_edit(file_name, line_number, index, value):
    """A breaker setting one CSV field (parsed properly: label.csv quotes its face box)."""

    def edit(line):
        fields = next(csv.reader([line]))
        fields[index] = value
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(fields)
        return out.getvalue()

    return line_edit(file_name, line_number, edit)


def pixels_edit(line_number, make_pixels):
    """A breaker replacing the pixels of a fer2013.csv line with `make_pixels(old pixel tokens)`."""

    def edit(line):
        emotion, pixels, usage = line.split(",")
        return ",".join([emotion, " ".join(make_pixels(pixels.split())), usage])

    return line_edit(PIXELS, line_number, edit)


def png_edit(row_index, write):
    """A breaker calling `write(path)` on the PNG named by a label.csv row (0-based)."""
    return lambda data_dir: write(data_dir / "FER2013Train" / read_label_rows(data_dir / LABEL)[row_index][0])


def write_png(pixels):
    return lambda path: cv2.imwrite(str(path), pixels)


LABEL = "FER2013Train/label.csv"
PIXELS, VOTES = "fer2013.csv", "fer2013new.csv"
PNG = "FER2013Train/fer"  # the start of every PNG path
FOLDER_CASES = {
    # name: (how to break the copy, file the message must name, line it must name, phrase)
    "negative vote": (field_edit(LABEL, 3, 3, "-1"), LABEL, 3, "'happiness' is '-1'"),
    "non-numeric vote": (field_edit(LABEL, 5, 11, "x"), LABEL, 5, "'NF' is 'x'"),
    "fractional vote": (field_edit(LABEL, 2, 2, "2.5"), LABEL, 2, "'neutral' is '2.5'"),
    "too few vote columns": (line_edit(LABEL, 4, lambda line: line.rsplit(",", 1)[0]), LABEL, 4, "got 11"),
    "too many vote columns": (line_edit(LABEL, 6, lambda line: line + ",0"), LABEL, 6, "got 13"),
    "duplicate row": (
        lambda data_dir: field_edit(LABEL, 10, 0, read_label_rows(data_dir / LABEL)[1][0])(data_dir),
        LABEL, 10, "listed again (first on line 2)",
    ),
    "missing PNG": (png_edit(6, os.remove), LABEL, 7, "which is not in"),
    "unreadable PNG": (png_edit(2, lambda path: path.write_bytes(b"\x89PNG broken")), PNG, 3, "not a readable"),
    "PNG of the wrong size": (
        png_edit(8, write_png(np.zeros((64, 64), np.uint8))), PNG, 9, "shape (64, 64), expected (48, 48)",
    ),
    "colour PNG": (
        png_edit(1, write_png(np.random.default_rng(0).integers(0, 256, (48, 48, 3)).astype(np.uint8))),
        PNG, 2, "shape (48, 48, 3)",
    ),
    "16-bit PNG": (png_edit(0, write_png(np.zeros((48, 48), np.uint16))), PNG, 1, "uint16 pixels"),
    "missing label.csv": (lambda data_dir: os.remove(data_dir / LABEL), LABEL, None, "is missing"),
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_bad_folder_input_names_file_and_line(case, small_ferplus, tmp_path):
    data_dir = small_folder_copy(small_ferplus, tmp_path / "ferplus")
    break_it, file_name, line, phrase = FOLDER_CASES[case]
    break_it(data_dir)
    with pytest.raises(UserError) as caught:
        load_split(data_dir, "train")
    message = str(caught.value)
    assert str(data_dir / file_name) in message
    assert phrase in message
    if line is not None:
        assert f"line {line}" in message
    assert "\n" not in message


def test_colour_png_with_equal_channels_is_accepted(small_ferplus, tmp_path):
    data_dir = small_folder_copy(small_ferplus, tmp_path / "ferplus")
    reference = load_split(data_dir, "train", cache=False)
    name = str(reference.names[4])
    cv2.imwrite(str(data_dir / "FER2013Train" / name), cv2.cvtColor(reference.images[4], cv2.COLOR_GRAY2BGR))
    again = load_split(data_dir, "train", cache=False)
    np.testing.assert_array_equal(again.images, reference.images)


KAGGLE_CASES = {
    "pixels too short": (pixels_edit(6, lambda px: px[:-1]), PIXELS, 6, "has 2303 values"),
    "pixels too long": (pixels_edit(7, lambda px: px + ["7"]), PIXELS, 7, "has 2305 values"),
    "pixel not a number": (pixels_edit(8, lambda px: ["abc"] + px[1:]), PIXELS, 8, "'abc'"),
    "pixel fractional": (pixels_edit(9, lambda px: px[:-1] + ["12.5"]), PIXELS, 9, "'12.5'"),
    "pixel above 255": (pixels_edit(10, lambda px: ["256"] + px[1:]), PIXELS, 10, "'256'"),
    "pixel negative": (pixels_edit(11, lambda px: ["-3"] + px[1:]), PIXELS, 11, "'-3'"),
    "wrong pixels header": (line_edit(PIXELS, 1, lambda line: "emotion,pixel,Usage"), PIXELS, 1, "header is"),
    "wrong votes header": (line_edit(VOTES, 1, lambda line: line.replace(",contempt", "")), VOTES, 1, "header"),
    "negative vote": (field_edit(VOTES, 12, 3, "-2"), VOTES, 12, "'happiness' is '-2'"),
    "non-numeric vote": (field_edit(VOTES, 13, 9, "many"), VOTES, 13, "'contempt' is 'many'"),
    "missing vote column": (line_edit(VOTES, 14, lambda line: line.rsplit(",", 1)[0]), VOTES, 14, "got 11"),
    "unknown usage": (field_edit(VOTES, 15, 0, "Testing"), VOTES, 15, "Usage is 'Testing'"),
    "usage out of step": (field_edit(PIXELS, 16, 2, "PublicTest"), PIXELS, 16, "out of step"),
    "row counts differ": (line_edit(VOTES, 31, lambda line: ""), VOTES, None, "has 30 data rows but"),
    "missing fer2013.csv": (lambda data_dir: os.remove(data_dir / PIXELS), VOTES, None, "but not " + PIXELS),
    "missing fer2013new.csv": (lambda data_dir: os.remove(data_dir / VOTES), PIXELS, None, "but not " + VOTES),
}


@pytest.mark.parametrize("case", list(KAGGLE_CASES))
def test_bad_kaggle_input_names_file_and_line(case, small_kaggle, tmp_path):
    data_dir = small_kaggle_copy(small_kaggle, tmp_path / "kaggle")
    assert len(load_split(data_dir, "train", cache=False)) > 20  # the unbroken copy loads
    break_it, file_name, line, phrase = KAGGLE_CASES[case]
    break_it(data_dir)
    with pytest.raises(UserError) as caught:
        load_split(data_dir, "train")
    message = str(caught.value)
    assert phrase in message
    assert str(data_dir / file_name) in message or f"{data_dir} has {file_name}" in message
    if line is not None:
        assert f"line {line}" in message
    assert "\n" not in message
