"""Load FER+ faces and votes from either of the two forms the data comes in.

FER+ (github.com/microsoft/FERPlus) re-labels the FER2013 faces with 10 crowd votes each. Its images
are the FER2013 ones, which reach users in one of two forms, detected from the data directory:

- **Folder layout** (what FERPlus's `generate_training_data.py` writes): `FER2013Train/`,
  `FER2013Valid/`, `FER2013Test/`, each holding 48x48 grayscale PNGs and a header-less `label.csv`
  with one row per face: image name, face box, 10 vote counts. The box is "(0, 0, 48, 48)" (the
  whole image) for every FER2013 face, so it is not used.
- **Kaggle CSV pair**: `fer2013.csv` from Kaggle ("Challenges in Representation Learning: Facial
  Expression Recognition Challenge"; header `emotion,pixels,Usage`, pixels are 2304 space-separated
  integers) read row by row alongside Microsoft's `fer2013new.csv` (header `Usage,Image name,neutral,
  ...,contempt,unknown,NF`). Rows with an empty FER+ image name are not faces and are skipped; Usage
  Training / PublicTest / PrivateTest become the train / valid / test splits.

When a directory holds both forms, the folder layout wins: it is what FERPlus itself trains on, and
its `label.csv` files are the votes the FERPlus results were reported with.

Both forms give the same `Split` for the same faces: rows sorted by image name, one row per name.
(FER2013 contains exact duplicate images, which FER+ gave the same name; in the CSV pair such a name
can appear on several rows, and the first one is kept, as the folder layout has one file per name.)

Decoding 28k PNGs or parsing the 300 MB CSV takes seconds, so the first load of a split writes a
compact `.npz` cache (uint8 images, int32 votes, names) under `$FERKERAS_CACHE`, else
`~/.cache/ferkeras/`. The data directory itself may be read-only. The cache is keyed by the source
files' paths, sizes and modification times, so editing the data rebuilds it.
"""
import concurrent.futures
import csv
import hashlib
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ferkeras import CLASSES, FACE_SIZE, VOTE_COLUMNS
from ferkeras.deploy.downloads import cache_dir
from ferkeras.errors import UserError, atomic_path, open_text
from ferkeras.data.labels import check_mode, mode_summary, vote_targets

SPLITS = ("train", "valid", "test")
SPLIT_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
LABEL_FILE = "label.csv"
KAGGLE_PIXELS_FILE = "fer2013.csv"
FERPLUS_VOTES_FILE = "fer2013new.csv"
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
SPLIT_TO_USAGE = {split: usage for usage, split in USAGE_TO_SPLIT.items()}

FERPLUS_HEADER = ("Usage", "Image name") + VOTE_COLUMNS
KAGGLE_COLUMNS = ("emotion", "pixels", "Usage")
PIXELS_PER_FACE = FACE_SIZE * FACE_SIZE
LABEL_FIELDS = 2 + len(VOTE_COLUMNS)  # image name, face box, votes

# Bump when the cached arrays change meaning, so old caches are not trusted.
CACHE_FORMAT = 1

HOW_TO_GET_DATA = (
    "put either fer2013.csv (Kaggle, 'Challenges in Representation Learning: Facial Expression "
    "Recognition Challenge') and fer2013new.csv (github.com/microsoft/FERPlus) in it, or the "
    "FER2013Train/FER2013Valid/FER2013Test folders made by FERPlus's generate_training_data.py"
)


@dataclass
class Split:
    """One split of FER+: faces, their 10 vote counts and their FER+ image names, row-aligned."""

    name: str
    images: np.ndarray  # uint8 (N, 48, 48), raw grayscale pixels
    votes: np.ndarray  # int32 (N, 10), columns in VOTE_COLUMNS order
    names: np.ndarray  # str (N,), e.g. "fer0000000.png", sorted

    def __len__(self):
        return len(self.names)


# ----------------------------------------------------------------------------------------------
# Finding the data


def resolve_data_dir(path=None):
    """Return the data directory: `path`, else $FERKERAS_DATA, else "data/"; check it holds FER+."""
    chosen = path or os.environ.get("FERKERAS_DATA") or "data"
    data_dir = Path(chosen).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} is a file, not a folder; give the folder that holds "
                        f"{KAGGLE_PIXELS_FILE} + {FERPLUS_VOTES_FILE} or the FER2013Train/Valid/Test folders")
    if not data_dir.is_dir():
        raise UserError(
            f"data directory {data_dir} does not exist; create it and {HOW_TO_GET_DATA}, "
            "then pass it with --data_dir or set FERKERAS_DATA"
        )
    detect_form(data_dir)
    return data_dir


def detect_form(data_dir):
    """Return "folder" or "kaggle" for the form the data in `data_dir` takes (folders preferred)."""
    data_dir = Path(data_dir)
    if any((data_dir / folder).is_dir() for folder in SPLIT_FOLDERS.values()):
        return "folder"
    pixels, votes = data_dir / KAGGLE_PIXELS_FILE, data_dir / FERPLUS_VOTES_FILE
    if pixels.is_file() and votes.is_file():
        return "kaggle"
    if votes.is_file():
        raise UserError(
            f"{data_dir} has {FERPLUS_VOTES_FILE} (the FER+ votes) but not {KAGGLE_PIXELS_FILE} "
            "(the faces); download fer2013.csv from Kaggle's 'Challenges in Representation Learning: "
            "Facial Expression Recognition Challenge' into it"
        )
    if pixels.is_file():
        raise UserError(
            f"{data_dir} has {KAGGLE_PIXELS_FILE} but not {FERPLUS_VOTES_FILE} (the FER+ votes); "
            "download fer2013new.csv from github.com/microsoft/FERPlus into it"
        )
    raise UserError(f"{data_dir} holds no FER+ data; {HOW_TO_GET_DATA}")


def available_splits(data_dir):
    """Map "train", "valid", "test" to whether `data_dir` has that split (absent is not an error)."""
    data_dir = Path(data_dir)
    if detect_form(data_dir) == "folder":
        return {split: (data_dir / folder).is_dir() for split, folder in SPLIT_FOLDERS.items()}
    named_usages = {usage for usage, name, _, _ in _read_ferplus_rows(data_dir / FERPLUS_VOTES_FILE) if name}
    return {split: usage in named_usages for split, usage in SPLIT_TO_USAGE.items()}


def _check_split_name(split):
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")


def _absent_split_error(data_dir, split, form):
    if form == "folder":
        return UserError(
            f"split {split!r} is absent: {data_dir / SPLIT_FOLDERS[split]} does not exist; make it with "
            f"FERPlus's generate_training_data.py (PNGs + {LABEL_FILE}) or choose another split"
        )
    return UserError(
        f"split {split!r} is absent: {data_dir / FERPLUS_VOTES_FILE} has no {SPLIT_TO_USAGE[split]} rows "
        "with an image name; use the complete fer2013new.csv from github.com/microsoft/FERPlus"
    )


# ----------------------------------------------------------------------------------------------
# Public loading API


def load_split(data_dir, split, cache=True):
    """Load one split as a `Split`, from the cache when the sources have not changed since."""
    _check_split_name(split)
    data_dir = Path(data_dir)
    form = detect_form(data_dir)
    if not available_splits(data_dir)[split]:
        raise _absent_split_error(data_dir, split, form)
    if not cache:
        return _read_split(data_dir, split, form)[split]

    cache_file = _cache_file(data_dir, split, form)
    cached = _read_cache(cache_file, split)
    if cached is not None:
        return cached
    splits = _read_split(data_dir, split, form)
    for loaded in splits.values():
        _write_cache(_cache_file(data_dir, loaded.name, form), loaded)
    return splits[split]


def load_labelled(data_dir, split, mode, cache=True):
    """Load a split and turn its votes into targets for `mode`, dropping faces the mode rejects.

    Returns (images uint8 (M, 48, 48), targets float32 (M, 8), summary dict from `mode_summary`).
    """
    check_mode(mode)
    loaded = load_split(data_dir, split, cache=cache)
    targets, keep = vote_targets(loaded.votes, mode)
    summary = mode_summary(loaded.votes, mode)
    return loaded.images[keep], targets[keep], summary


def summary_line(split_name, summary):
    """One line for the CLI: kept / dropped faces and kept faces per class."""
    counts = "  ".join(f"{name} {summary['class_counts'][name]:,}" for name in CLASSES)
    return (
        f"{split_name} ({summary['mode']}): kept {summary['kept']:,}, dropped {summary['dropped']:,}"
        f" | {counts}"
    )


def _read_split(data_dir, split, form):
    """Read `split` from the sources; the CSV pair yields every split in one pass, so keep them all."""
    if form == "folder":
        return {split: _read_folder_split(data_dir, split)}
    return _read_kaggle_splits(data_dir)


# ----------------------------------------------------------------------------------------------
# Folder layout


def _read_folder_split(data_dir, split):
    folder = data_dir / SPLIT_FOLDERS[split]
    label_file = folder / LABEL_FILE
    if not label_file.is_file():
        raise UserError(
            f"{label_file} is missing; every split folder needs the {LABEL_FILE} from "
            "github.com/microsoft/FERPlus (data/<split folder>/label.csv)"
        )
    names, votes, lines = _read_label_csv(label_file)
    present = set(os.listdir(folder))
    for name, line in zip(names, lines):
        if name not in present:
            raise UserError(
                f"{label_file} line {line}: names {name}, which is not in {folder}; "
                "re-run FERPlus's generate_training_data.py or remove the row"
            )
    order = np.argsort(names, kind="stable")
    paths = [folder / names[i] for i in order]
    images = _decode_pngs(paths, [lines[i] for i in order], label_file, split)
    return Split(split, images, votes[order], np.asarray(names)[order])


def _read_label_csv(label_file):
    """Return (names, int32 votes (N, 10), 1-based line numbers) of a header-less label.csv."""
    names, vote_rows, lines = [], [], []
    seen = {}
    with open_text(label_file) as handle:
        reader = csv.reader(handle)
        for fields in reader:
            line = reader.line_num
            if not fields or fields == [""]:
                continue
            if len(fields) != LABEL_FIELDS:
                raise UserError(
                    f"{label_file} line {line}: expected {LABEL_FIELDS} fields (image name, face box, "
                    f"{len(VOTE_COLUMNS)} vote counts {VOTE_COLUMNS[0]}..{VOTE_COLUMNS[-1]}), "
                    f"got {len(fields)}; "
                    "use the label.csv from github.com/microsoft/FERPlus"
                )
            name = fields[0].strip()
            if not name:
                raise UserError(f"{label_file} line {line}: the image name is empty; remove the row")
            if name in seen:
                raise UserError(
                    f"{label_file} line {line}: {name} is listed again (first on line {seen[name]}); "
                    "remove the duplicate row"
                )
            seen[name] = line
            names.append(name)
            vote_rows.append(_parse_votes(fields[2:], label_file, line))
            lines.append(line)
    if not names:
        raise UserError(f"{label_file} has no rows; use the label.csv from github.com/microsoft/FERPlus")
    return names, np.asarray(vote_rows, dtype=np.int32), lines


def _parse_votes(fields, path, line):
    """Parse 10 vote counts, naming the file, line and column of the first bad one."""
    votes = []
    for column, text in zip(VOTE_COLUMNS, fields):
        text = text.strip()
        if not (text.isascii() and text.isdigit()):  # rejects negatives, fractions and words alike
            raise UserError(
                f"{path} line {line}: vote count for {column!r} is {text!r}, expected a non-negative "
                "integer; fix or remove the row"
            )
        votes.append(int(text))
    return votes


def _decode_pngs(paths, lines, label_file, split):
    """Decode the PNGs in parallel (OpenCV releases the GIL) into a uint8 (N, 48, 48) array."""
    images = np.empty((len(paths), FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    chunk = 512
    starts = range(0, len(paths), chunk)

    def decode_chunk(start):
        for i in range(start, min(start + chunk, len(paths))):
            images[i] = _read_face_png(paths[i], label_file, lines[i])
        return min(chunk, len(paths) - start)

    workers = min(8, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(paths), desc=f"decoding {split} PNGs", unit="img", leave=False
    ) as progress:
        for done in pool.map(decode_chunk, starts):
            progress.update(done)
    return images


def _read_face_png(path, label_file, line):
    """Read one 48x48 grayscale face; a colour PNG is accepted only if its 3 channels are equal."""
    where = f"{path} (named on {label_file.name} line {line})"
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"cannot decode {where}: not a readable PNG; re-extract it or remove the row")
    if image.dtype != np.uint8:
        raise UserError(f"{where} has {image.dtype} pixels, expected 8-bit grayscale; re-save it as 8-bit")
    if image.ndim == 3 and image.shape[2] == 3 and (image == image[:, :, :1]).all():
        image = image[:, :, 0]  # a grayscale face saved as RGB: nothing is lost by keeping one channel
    if image.shape != (FACE_SIZE, FACE_SIZE):
        raise UserError(
            f"{where} has shape {image.shape}, expected ({FACE_SIZE}, {FACE_SIZE}) single-channel "
            "(or 3 identical channels); FER+ faces are 48x48 grayscale, re-extract it"
        )
    return image


# ----------------------------------------------------------------------------------------------
# Kaggle CSV pair


def _read_kaggle_splits(data_dir):
    """Read fer2013.csv and fer2013new.csv together into a Split per usage that has faces."""
    pixels_file, votes_file = data_dir / KAGGLE_PIXELS_FILE, data_dir / FERPLUS_VOTES_FILE
    ferplus_rows = _read_ferplus_rows(votes_file)
    kaggle_rows = _read_kaggle_rows(pixels_file, expected_rows=len(ferplus_rows))
    if len(kaggle_rows) != len(ferplus_rows):
        raise UserError(
            f"{pixels_file} has {len(kaggle_rows):,} data rows but {votes_file} has {len(ferplus_rows):,}; "
            "they are read row by row, so use the original, unedited files of both"
        )

    picked = {split: {} for split in SPLITS}  # split -> name -> row index, first occurrence wins
    for index, (ferplus_row, kaggle_row) in enumerate(zip(ferplus_rows, kaggle_rows)):
        usage, name, _, votes_line = ferplus_row
        kaggle_usage, _, pixels_line = kaggle_row
        if usage != kaggle_usage:
            raise UserError(
                f"{pixels_file} line {pixels_line} has Usage {kaggle_usage!r} but {votes_file} line {votes_line} "
                f"has {usage!r}; the two files are out of step, use the original files of both"
            )
        if name:
            picked[USAGE_TO_SPLIT[usage]].setdefault(name, index)

    splits = {}
    for split, rows_by_name in picked.items():
        if not rows_by_name:
            continue
        names = sorted(rows_by_name)
        rows = [rows_by_name[name] for name in names]
        images = _parse_pixel_rows(
            [kaggle_rows[i][1] for i in rows], [kaggle_rows[i][2] for i in rows], pixels_file
        )
        votes = np.asarray([ferplus_rows[i][2] for i in rows], dtype=np.int32)
        splits[split] = Split(split, images, votes, np.asarray(names))
    return splits


def _read_ferplus_rows(votes_file):
    """Return [(usage, image name or "", votes, line number)] for every data row of fer2013new.csv."""
    rows = []
    with open_text(votes_file) as handle:
        reader = csv.reader(handle)
        header = tuple(field.strip() for field in next(reader, []))
        if header != FERPLUS_HEADER:
            raise UserError(
                f"{votes_file} line 1: header is {','.join(header)!r}, "
                f"expected {','.join(FERPLUS_HEADER)!r}; "
                "use fer2013new.csv from github.com/microsoft/FERPlus"
            )
        for fields, line in _data_rows(reader, votes_file, len(FERPLUS_HEADER),
                                       f"Usage, Image name, {len(VOTE_COLUMNS)} vote counts",
                                       "use the original fer2013new.csv"):
            usage = _parse_usage(fields[0], votes_file, line)
            rows.append((usage, fields[1].strip(), _parse_votes(fields[2:], votes_file, line), line))
    return rows


def _data_rows(reader, path, count, fields, advice):
    """(fields, line number) of each non-empty row after the header of a csv reader over `path`; a
    row without `count` fields (named by `fields`) is a one-line error ending in `advice`."""
    for row in reader:
        if not row:
            continue
        if len(row) != count:
            raise UserError(f"{path} line {reader.line_num}: expected {count} fields ({fields}), got {len(row)}; "
                            f"{advice}")
        yield row, reader.line_num


def _read_kaggle_rows(pixels_file, expected_rows):
    """Return [(usage, pixels text, line number)] for every data row of fer2013.csv."""
    rows = []
    with open_text(pixels_file) as handle, tqdm(
        total=expected_rows, desc=f"reading {pixels_file.name}", unit="row", leave=False
    ) as progress:
        reader = csv.reader(handle)
        header = [field.strip() for field in next(reader, [])]
        if sorted(header) != sorted(KAGGLE_COLUMNS):
            raise UserError(
                f"{pixels_file} line 1: header is {','.join(header)!r}, "
                f"expected {','.join(KAGGLE_COLUMNS)!r}; "
                "use fer2013.csv from Kaggle's Facial Expression Recognition Challenge"
            )
        pixels_at, usage_at = header.index("pixels"), header.index("Usage")
        for fields, line in _data_rows(reader, pixels_file, len(KAGGLE_COLUMNS), ",".join(header),
                                       "the file is damaged, download it again"):
            rows.append((_parse_usage(fields[usage_at], pixels_file, line), fields[pixels_at], line))
            progress.update()
    return rows


def _parse_usage(text, path, line):
    usage = text.strip()
    if usage not in USAGE_TO_SPLIT:
        raise UserError(
            f"{path} line {line}: Usage is {usage!r}, expected one of {', '.join(USAGE_TO_SPLIT)}; "
            "use the original file"
        )
    return usage


def _parse_pixel_rows(texts, lines, pixels_file):
    """Parse rows of 2304 space-separated integers 0..255 into uint8 (N, 48, 48).

    The whole block goes through numpy's C parser at once; only rows that look wrong (a space count
    other than 2303, or a parse failure) are re-checked one by one to name the bad line.
    """
    for text, line in zip(texts, lines):
        if text.count(" ") != PIXELS_PER_FACE - 1:
            _check_pixel_text(text, line, pixels_file)  # raises unless only the spacing is unusual
    try:
        values = np.fromstring(" ".join(texts), dtype=np.int64, sep=" ")
    except ValueError:  # numpy stops at the first token that is not an integer
        values = None
    if values is None or values.size != len(texts) * PIXELS_PER_FACE:
        for text, line in zip(texts, lines):
            _check_pixel_text(text, line, pixels_file)
        raise AssertionError("the pixel block failed to parse but every row checks out")
    values = values.reshape(len(texts), PIXELS_PER_FACE)
    out_of_range = ((values < 0) | (values > 255)).any(axis=1)
    if out_of_range.any():
        row = int(np.argmax(out_of_range))
        _check_pixel_text(texts[row], lines[row], pixels_file)
    return values.astype(np.uint8).reshape(len(texts), FACE_SIZE, FACE_SIZE)


def _check_pixel_text(text, line, pixels_file):
    """Raise a UserError naming the line unless `text` is 2304 integers 0..255."""
    tokens = text.split()
    expected = f"expected {PIXELS_PER_FACE} integers 0..255 ({FACE_SIZE}x{FACE_SIZE}) separated by spaces"
    if len(tokens) != PIXELS_PER_FACE:
        raise UserError(
            f"{pixels_file} line {line}: pixels has {len(tokens)} values, {expected}; "
            "the file is damaged, download it again"
        )
    for token in tokens:
        if not (token.isascii() and token.isdigit()) or int(token) > 255:
            raise UserError(
                f"{pixels_file} line {line}: pixel value {token!r} is not allowed, {expected}; "
                "the file is damaged, download it again"
            )


# ----------------------------------------------------------------------------------------------
# Cache


def _source_stats(data_dir, split, form):
    """(path, size, mtime) of every file a split is read from: its folder's files, or the CSV pair.

    Plain strings and DirEntry stats keep this cheap for 28k PNGs: it runs on every cached load.
    """
    if form == "folder":
        with os.scandir(data_dir / SPLIT_FOLDERS[split]) as entries:
            stats = [(entry.path, entry.stat()) for entry in entries if entry.is_file()]
    else:
        pair = (data_dir / KAGGLE_PIXELS_FILE, data_dir / FERPLUS_VOTES_FILE)
        stats = [(str(path), path.stat()) for path in pair]
    return sorted((path, stat.st_size, stat.st_mtime_ns) for path, stat in stats)


def _cache_file(data_dir, split, form):
    """Cache path `<split>-<data dir key>-<sources key>.npz`.

    The first key tells which data directory a cache belongs to (so a rebuild can delete the stale
    one); the second changes whenever a source file is added, removed, resized or touched.
    """
    data_dir = data_dir.resolve()
    dir_key = hashlib.sha256(f"{data_dir}|{form}".encode()).hexdigest()[:10]
    sources = hashlib.sha256(f"{CACHE_FORMAT}|{form}|{split}".encode())
    for path, size, mtime_ns in _source_stats(data_dir, split, form):
        sources.update(f"|{path}|{size}|{mtime_ns}".encode())
    return cache_dir() / f"{split}-{dir_key}-{sources.hexdigest()[:20]}.npz"


def _read_cache(cache_file, split):
    """Return the cached Split, or None if there is none or it cannot be trusted."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as stored:
            images, votes, names = stored["images"], stored["votes"], stored["names"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # A full disk, a copy cut short or an older ferkeras can leave a truncated file under the final name.
        return _damaged_cache(cache_file, type(exc).__name__)
    well_formed = (
        images.dtype == np.uint8
        and images.shape[1:] == (FACE_SIZE, FACE_SIZE)
        and votes.shape == (len(images), len(VOTE_COLUMNS))
        and names.shape == (len(images),)
    )
    if not well_formed:
        return _damaged_cache(cache_file, "unexpected array shapes")
    return Split(split, images, votes.astype(np.int32), names.astype(str))


def _damaged_cache(cache_file, reason):
    print(f"warning: data cache {cache_file} is damaged ({reason}); rebuilding it from the sources",
          file=sys.stderr)
    return None


def _write_cache(cache_file, loaded):
    """Write the split's cache atomically and delete older caches of the same split and folder."""
    try:
        with atomic_path(cache_file) as tmp:
            np.savez(tmp, images=loaded.images, votes=loaded.votes, names=loaded.names.astype(str))
        stale_prefix = cache_file.name.rsplit("-", 1)[0] + "-"
        for old in cache_file.parent.glob(f"{stale_prefix}*.npz"):
            if old != cache_file:
                old.unlink(missing_ok=True)
    except (OSError, UserError) as exc:
        warnings.warn(
            f"could not write the data cache {cache_file} ({exc}); loading will be slow every time, "
            "set FERKERAS_CACHE to a writable folder",
            stacklevel=3,
        )
