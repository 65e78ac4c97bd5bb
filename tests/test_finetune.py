"""train.py --finetune_from: your own labelled faces, detected and cropped, held out, mixed with FER+."""
import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from ferkeras import CLASSES
from ferkeras.train.config import resolve
from ferkeras.data.ferplus import load_labelled
from ferkeras.errors import UserError
from ferkeras.train.finetune import load_finetune_data
from ferkeras.train.run import train
from ferkeras.data.user_faces import load_user_faces, read_user_labels
from tests.helpers import FACE_SIDE, faint_noise

TINY = ["--image_size", "32", "--batch_size", "16", "--class_weights", "none", "--augment", "none",
        "--init_lr", "0.001", "--lr_policy", "constant", "--early_stopping_patience", "0", "--dropout_rate", "0.0"]


def write_labels(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "label.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    return folder / "label.csv"


def test_label_rows_take_an_emotion_name_or_eight_votes_and_a_header(tmp_path):
    path = write_labels(tmp_path / "faces", [("image", "emotion"), ("a.jpg", "happiness"),
                                             ("b.png", 0, 0, 6, 0, 0, 0, 0, 4), ("c.png", "Fear")])
    rows = read_user_labels(path)
    assert [name for name, _ in rows] == ["a.jpg", "b.png", "c.png"]
    np.testing.assert_array_equal(rows[0][1][:8], 10 * np.eye(8)[CLASSES.index("happiness")])
    np.testing.assert_array_equal(rows[1][1][:8], [0, 0, 6, 0, 0, 0, 0, 4])
    assert rows[2][1][CLASSES.index("fear")] == 10


@pytest.mark.parametrize("row, field", [(("a.jpg", "joy"), "'a.jpg,joy'"), (("a.jpg", 1, 2, 3), "'a.jpg,1,2,3'"),
                                        (("a.jpg", *[0] * 8), "'a.jpg,0,0,0,0,0,0,0,0'")])
def test_a_label_row_that_cannot_be_read_names_its_row(tmp_path, row, field):
    path = write_labels(tmp_path / "faces", [("x.jpg", "neutral"), row])
    with pytest.raises(UserError, match=f"label.csv, row 2: expected .*got {field}"):
        read_user_labels(path)


def test_missing_label_file_says_what_to_add(tmp_path):
    with pytest.raises(UserError, match="needs --data_dir holding your images and a label.csv"):
        read_user_labels(tmp_path / "label.csv")


@pytest.mark.parametrize("detector", ["yunet", "haar"])
def test_faces_are_found_in_photos_and_unusable_images_are_skipped(real_faces, tmp_path, capsys, detector,
                                                                   request):
    if detector == "yunet":
        request.getfixturevalue("yunet_model")
    folder = tmp_path / "photos"
    rows = []
    for i, face in enumerate(real_faces[:3]):
        photo = faint_noise(2 * FACE_SIDE, 3 * FACE_SIDE, seed=i)
        photo[40:40 + FACE_SIDE, 90:90 + FACE_SIDE] = face
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR))
        rows.append((f"p{i}.jpg", CLASSES[i]))
    cv2.imwrite(str(folder / "empty.png"), faint_noise(200, 200, seed=9))
    rows += [("empty.png", "anger"), ("gone.jpg", "fear")]
    write_labels(folder, rows)
    faces, targets, names = load_user_faces(folder, detector=detector)
    out = capsys.readouterr().out
    assert names == ["p0.jpg", "p1.jpg", "p2.jpg"] and faces.shape == (3, 48, 48)
    np.testing.assert_array_equal(targets.argmax(1), [0, 1, 2])
    assert "empty.png: no face found" in out and "gone.jpg: no such file" in out
    # Each crop is its placed face: it correlates with that face shrunk to 48x48 more than with the others.
    placed = [cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA).ravel() for face in real_faces[:3]]
    corr = np.corrcoef(np.stack([f.ravel() for f in faces] + placed).astype(float))[:3, 3:]
    assert (corr.argmax(1) == [0, 1, 2]).all() and (corr.argmax(0) == [0, 1, 2]).all(), corr


@pytest.fixture(scope="module")
def start_run(small_ferplus, tmp_path_factory):
    out = tmp_path_factory.mktemp("start")
    config, explicit = resolve(["--data_dir", str(small_ferplus), "--output_dir", str(out), "--name", "start",
                                "--model_name", "FerNetS", "--weights", "none", "--nepochs", "1", *TINY])
    return Path(train(config, explicit)["run_dir"])


def write_crops(folder, faces, label):
    """Face crops as colour PNGs of another size, all labelled `label`."""
    folder.mkdir(parents=True)
    for i, face in enumerate(faces):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(cv2.resize(face, (96, 96)), cv2.COLOR_GRAY2BGR))
    write_labels(folder, [(f"{i}.png", label) for i in range(len(faces))])


def test_finetuning_learns_your_labels_and_reports_before_and_after(small_ferplus, start_run, tmp_path):
    faces, _, _ = load_labelled(small_ferplus, "valid", "majority")
    faces = faces[:48]
    # Label your faces with the class the starting model predicts least for them: it must learn it.
    start = keras.saving.load_model(start_run / "checkpoints" / "best_acc.keras")
    predicted = start.predict(faces.astype(np.float32)[..., None], verbose=0).argmax(1)
    label = CLASSES[int(np.bincount(predicted, minlength=8).argmin())]
    write_crops(tmp_path / "mine", faces, label)
    config, explicit = resolve(["--finetune_from", str(start_run), "--data_dir", str(tmp_path / "mine"),
                                "--no_detect", "--holdout", "0.25", "--output_dir", str(tmp_path / "runs"),
                                "--name", "mine", "--nepochs", "4", *TINY,
                                # 1e-3 moves a start model confident on the synthetic stand-in faces too slowly
                                "--init_lr", "0.005"])
    result = train(config, explicit)
    report = json.loads((Path(result["run_dir"]) / "finetune.json").read_text())
    assert report["holdout_faces"] == 12
    assert report["holdout_accuracy_before"] <= 2 / 12
    assert report["holdout_accuracy_after"] >= 0.75, report
    assert result["finetune"] == report
    tuned = keras.saving.load_model(Path(result["run_dir"]) / "checkpoints" / "last.keras")
    assert tuned.count_params() == start.count_params()  # the same network, trained further


def test_mix_ferplus_adds_that_share_of_fer_faces(small_ferplus, tmp_path):
    faces, _, _ = load_labelled(small_ferplus, "valid", "majority")
    write_crops(tmp_path / "mine", faces[:30], "surprise")
    config, _ = resolve(["--finetune_from", "unused", "--data_dir", str(tmp_path / "mine"), "--no_detect",
                         "--holdout", "0.2", "--mix_ferplus", "0.75", "--ferplus_dir", str(small_ferplus)])
    (train_x, train_t), (held_x, held_t) = load_finetune_data(config)
    assert len(held_x) == 6 and len(train_x) == 24 + 72
    assert (held_t.argmax(1) == CLASSES.index("surprise")).all()
    assert (train_t[:24].argmax(1) == CLASSES.index("surprise")).all()
    assert (train_t[24:].argmax(1) != CLASSES.index("surprise")).sum() > 50  # FER+ faces of every class


def test_finetune_from_a_folder_that_is_not_a_run_is_refused(tmp_path):
    faces_dir = tmp_path / "mine"
    write_labels(faces_dir, [("a.png", "neutral")])
    config, explicit = resolve(["--finetune_from", str(tmp_path), "--data_dir", str(faces_dir),
                                "--output_dir", str(tmp_path / "runs")])
    with pytest.raises(UserError, match="expected a run folder made by train.py"):
        train(config, explicit)
