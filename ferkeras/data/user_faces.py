"""A user's own labelled faces for `train.py --finetune_from`: a folder of images and a label.csv.

    my_faces/label.csv     one row per image: name,emotion   (e.g. "ann.jpg,happiness")
                           or                 name,v1,...,v8 (8 vote counts in FER+ class order)
    my_faces/ann.jpg ...   any size, colour or grayscale; the face is found and cropped as in predict.py

An optional header row is recognised (its label column is neither a class name nor a number). Each
image gives one face: the largest the detector finds (YuNet or the Haar cascade, cropped with that
detector's FER+ margin, as predict.py crops), or the whole image with `detect=False`.
Images without a face, or unreadable, are skipped with one line each; a label.csv row that cannot be
understood is an error naming the row.
"""
import csv
from pathlib import Path

import numpy as np

from ferkeras import CLASSES, FACE_SIZE, NUM_CLASSES
from ferkeras.errors import UserError, open_text
from ferkeras.deploy.faces import crop_face, read_image_color, to_gray
from ferkeras.data.labels import vote_targets
from ferkeras.deploy.predict import make_detector

LABEL_FILE = "label.csv"


def read_user_labels(label_file):
    """[(image name, 10 votes)] from a label.csv; an emotion name counts as all votes for that class."""
    label_file = Path(label_file)
    if not label_file.is_file():
        raise UserError(f"{label_file}: no label file; --finetune_from needs --data_dir holding your images "
                        f"and a {LABEL_FILE} with rows 'image,emotion' or 'image,' + 8 vote counts")
    with open_text(label_file) as handle:
        rows = [(line, row) for line, row in enumerate(csv.reader(handle), start=1) if any(f.strip() for f in row)]
    if rows and _is_header(rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise UserError(f"{label_file}: no labelled images; add rows 'image,emotion' (emotion one of "
                        f"{', '.join(CLASSES)})")
    return [(row[0].strip(), _row_votes(row, label_file, line)) for line, row in rows]


def _is_header(row):
    label = row[1].strip().lower() if len(row) > 1 else ""
    return label not in CLASSES and not label.replace(".", "", 1).isdigit()


def _row_votes(row, label_file, line):
    votes = np.zeros(NUM_CLASSES + 2, np.float32)  # the 8 classes, then FER+'s unknown and not-a-face
    fields = [f.strip() for f in row[1:]]
    if len(fields) == 1 and fields[0].lower() in CLASSES:
        # All of FER+'s 10 annotators' votes: a single vote would be dropped as stray by the label modes.
        votes[CLASSES.index(fields[0].lower())] = 10
        return votes
    if len(fields) == NUM_CLASSES:
        try:
            counts = [float(f) for f in fields]
        except ValueError:
            counts = None
        if counts is not None and min(counts) >= 0 and sum(counts) > 0:
            votes[:NUM_CLASSES] = counts
            return votes
    raise UserError(f"{label_file}, row {line}: expected 'image,emotion' with emotion one of "
                    f"{', '.join(CLASSES)}, or 'image,' + 8 non-negative vote counts; got {','.join(row)!r}")


def face_of(path, detector):
    """The 48x48 face of one image (the largest detected, or the whole image without a detector)."""
    bgr = read_image_color(path)
    gray = to_gray(bgr)
    if detector is None:
        return crop_face(gray, (0, 0, gray.shape[1], gray.shape[0]), margin=0.0, size=FACE_SIZE)
    boxes = detector.detect(bgr if detector.colour else gray)
    if not boxes:
        return None
    box = max(boxes, key=lambda b: b[2] * b[3])
    return crop_face(gray, box, margin=detector.ferplus_margin, size=FACE_SIZE)


def load_user_faces(data_dir, mode="majority", detect=True, min_face=48, detector="yunet"):
    """(faces uint8 (N, 48, 48), targets (N, 8), names) of a user's folder, skipping unusable images.
    `detector` is predict.py's: "yunet" or "haar"."""
    data_dir = Path(data_dir)
    labels = read_user_labels(data_dir / LABEL_FILE)
    detector = make_detector(min_face=min_face, detector=detector) if detect else None
    faces, votes, names, skipped = [], [], [], 0
    for name, row_votes in labels:
        path = data_dir / name
        try:
            face = face_of(path, detector) if path.is_file() else None
        except UserError as exc:
            print(f"skipped {path}: {exc}")
            skipped += 1
            continue
        if face is None:
            print(f"skipped {path}: " + ("no such file" if not path.is_file() else
                                        "no face found (try --no_detect for images that are face crops)"))
            skipped += 1
            continue
        faces.append(face), votes.append(row_votes), names.append(name)
    if not faces:
        raise UserError(f"{data_dir}: none of the {len(labels)} images in {LABEL_FILE} gave a face; check the "
                        "image names, or use --no_detect if they are already face crops")
    targets, keep = vote_targets(np.stack(votes), mode)
    print(f"your faces: {int(keep.sum())} of {len(labels)} labelled images used"
          + (f", {skipped} skipped" if skipped else ""))
    return np.stack(faces)[keep], targets[keep], [n for n, k in zip(names, keep) if k]
