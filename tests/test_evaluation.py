"""Evaluation metrics on hand-built cases, evaluate.py on a run folder and an ONNX file, --compare,
and the command-line errors."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ferkeras import CLASSES
from ferkeras.errors import UserError
from ferkeras.evaluate.metrics import classification_metrics, mean_kl_divergence, vote_distribution
from ferkeras.evaluate.compare import compare_runs
from ferkeras.evaluate.report import evaluate, evaluate_command, load_eval_split
from ferkeras.deploy.contract import softmax

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- metrics

def one_hot_probabilities(predicted):
    probabilities = np.full((len(predicted), 8), 0.01)
    probabilities[np.arange(len(predicted)), predicted] = 0.93
    return probabilities


def test_metrics_of_a_hand_built_case():
    labels = np.array([0, 0, 0, 1, 1, 2, 7])
    predicted = np.array([0, 0, 1, 1, 1, 0, 2])
    metrics = classification_metrics(labels, one_hot_probabilities(predicted))
    assert metrics["n"] == 7
    assert metrics["accuracy"] == pytest.approx(4 / 7)
    neutral, happiness, surprise, contempt = (metrics["per_class"][c] for c in
                                              ("neutral", "happiness", "surprise", "contempt"))
    # neutral: 2 of 3 found, 2 of 3 "neutral" predictions right
    assert neutral["precision"] == pytest.approx(2 / 3) and neutral["recall"] == pytest.approx(2 / 3)
    assert neutral["support"] == 3 and neutral["f1"] == pytest.approx(2 / 3)
    # happiness: both found, 2 of 3 "happiness" predictions right
    assert happiness["recall"] == 1.0 and happiness["precision"] == pytest.approx(2 / 3)
    assert happiness["f1"] == pytest.approx(0.8)
    assert surprise["recall"] == 0.0 and surprise["precision"] == 0.0 and surprise["f1"] == 0.0
    assert contempt["recall"] == 0.0 and contempt["precision"] == 0.0 and contempt["support"] == 1
    # classes with no faces: recall and F1 undefined, left out of the balanced accuracy and macro F1
    assert metrics["per_class"]["sadness"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0 + 0) / 4)
    confusion = np.array(metrics["confusion"])
    assert confusion.sum() == 7 and confusion[0, 0] == 2 and confusion[0, 1] == 1 and confusion[2, 0] == 1
    assert confusion[7, 2] == 1 and np.trace(confusion) == 4
    assert metrics["mean_kl"] is None


def test_kl_is_votes_against_prediction():
    votes = np.array([[5, 5, 0, 0, 0, 0, 0, 0, 3, 2]])  # unknown / NF votes are not emotions
    p = vote_distribution(votes)
    np.testing.assert_allclose(p, [[0.5, 0.5, 0, 0, 0, 0, 0, 0]])
    q = np.array([[0.25, 0.75, 0, 0, 0, 0, 0, 0]])
    assert mean_kl_divergence(p, q) == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert mean_kl_divergence(p, p) == pytest.approx(0.0)
    # KL(P||Q), not KL(Q||P): mass the model puts where nobody voted costs only through Q's shrinkage
    spread = np.array([[0.4, 0.4, 0.2, 0, 0, 0, 0, 0]])
    assert mean_kl_divergence(p, spread) == pytest.approx(math.log(0.5 / 0.4))
    metrics = classification_metrics([0], q, p)
    assert metrics["mean_kl"] == pytest.approx(mean_kl_divergence(p, q))


def test_softmax_is_stable_for_large_logits():
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000, 0, 0, 0, 0, 0]]))
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities[0, :2], [0.5, 0.5])


class MirrorSensitivePredictor:
    """A fake model: "happiness" when the left half of a face is brighter, else "neutral"."""

    def logits(self, faces):
        faces = np.asarray(faces, dtype=np.float64)
        half = faces.shape[2] // 2
        difference = (faces[:, :, :half].mean(axis=(1, 2)) - faces[:, :, half:].mean(axis=(1, 2))) / 50
        logits = np.zeros((len(faces), 8))
        logits[:, 1], logits[:, 0] = difference, -difference
        return logits


def test_flip_tta_averages_a_face_and_its_mirror():
    faces = np.zeros((4, 48, 48), np.uint8)
    faces[0, :, :24] = 200  # left bright: happiness, mirror says neutral
    faces[1, :, 24:] = 200  # right bright: neutral
    faces[2, :, :24], faces[2, :, 24:] = 200, 100  # left brighter
    labels = np.array([1, 0, 1, 0])
    report = evaluate(MirrorSensitivePredictor(), faces, labels, np.eye(8)[labels], tta="flip")
    plain = report["metrics_without_tta"]
    assert plain["accuracy"] == pytest.approx(1.0)  # face 3 (all dark) ties: argmax picks neutral
    # With the mirror averaged in, the two halves cancel: every face becomes a neutral/happiness tie.
    assert report["metrics"]["accuracy"] == pytest.approx(0.5)
    assert report["tta"] == "flip" and report["images_per_second"] > 0
    assert evaluate(MirrorSensitivePredictor(), faces, labels, None)["metrics"]["accuracy"] == 1.0


# ----------------------------------------------------------------------------- evaluate.py on models

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, small_ferplus):
    """A run folder as train.py leaves it, holding an (untrained) small VGG13."""
    from ferkeras.models.registry import build_model

    run = tmp_path_factory.mktemp("runs") / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    model = build_model("VGG13", weights="none", image_size=16, dropout_rate=0.1)
    model.save(run / "checkpoints" / "best_acc.keras")
    (run / "config.yaml").write_text(yaml.safe_dump({"model_name": "VGG13", "weights": "none", "image_size": 16,
                                                     "data_dir": str(small_ferplus)}))
    return run, model


def test_evaluate_a_run_writes_json_and_confusion_png(run_folder, small_ferplus):
    run, model = run_folder
    report = evaluate_command(run=run, split="valid", batch_size=32, tta="flip")
    faces, labels, votes = load_eval_split(small_ferplus, "valid")
    plain = softmax(model.predict(faces[..., None].astype(np.float32), verbose=0))
    mirrored = softmax(model.predict(faces[:, :, ::-1, None].astype(np.float32), verbose=0))
    expected = classification_metrics(labels, (plain + mirrored) / 2, vote_distribution(votes))
    assert report["n_faces"] == len(labels) < 96  # the unsettled faces are left out
    assert report["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["metrics"]["mean_kl"] == pytest.approx(expected["mean_kl"], rel=1e-4)
    assert report["metrics_without_tta"]["accuracy"] == pytest.approx(
        classification_metrics(labels, plain)["accuracy"])
    written = json.loads((run / "eval_valid.json").read_text())
    assert written["metrics"]["confusion"] == report["metrics"]["confusion"]
    assert written["checkpoint"] == "best_acc" and written["model"]["format"] == "keras"
    assert (run / "confusion_valid.png").stat().st_size > 10_000


def test_evaluate_an_onnx_export(run_folder, small_ferplus, tmp_path):
    from ferkeras.export.onnx import export_onnx

    run, model = run_folder
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, faces=np.zeros((4, 48, 48), np.uint8))
    report = evaluate_command(model=onnx_path, data_dir=small_ferplus, out=tmp_path / "eval")
    assert report["model"]["format"] == "onnx" and report["images_per_second"] > 0
    assert (tmp_path / "eval" / "eval_valid.json").is_file()
    assert (tmp_path / "eval" / "confusion_valid.png").is_file()
    assert sum(report["metrics"]["per_class"][c]["support"] for c in CLASSES) == report["n_faces"]


def test_a_model_without_8_classes_is_refused(tmp_path):
    import keras

    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Dense(7)(keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path / "seven.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(UserError, match="scores 7 classes, expected 8"):
        evaluate_command(model=path, data_dir=tmp_path)


# ----------------------------------------------------------------------------- --compare

def fake_run(root, name, model_name, val_curve, test_accuracy=None):
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model_name": model_name, "weights": "imagenet", "freeze_before": -51, "lr_policy": "plateau",
        "training_mode": "majority"}))
    rows = ["epoch,accuracy,learning_rate,loss,val_accuracy,val_loss"]
    rows += [f"{i},0.5,0.001,1.0,{acc},1.0" for i, acc in enumerate(val_curve)]
    (run / "training.csv").write_text("\n".join(rows) + "\n")
    (run / "state.json").write_text(json.dumps({"epoch": len(val_curve), "best_val_accuracy": max(val_curve),
                                                "best_val_loss": 1.0, "finished": True}))
    if test_accuracy is not None:
        (run / "eval_test.json").write_text(json.dumps({"metrics": {"accuracy": test_accuracy}}))
    return run


def test_compare_tabulates_runs_by_validation_accuracy(tmp_path, capsys):
    runs = [fake_run(tmp_path, "resnet", "ResNet50", [0.6, 0.8, 0.75], test_accuracy=0.79),
            fake_run(tmp_path, "vgg", "VGG13", [0.7, 0.85]),
            fake_run(tmp_path, "senet", "SeNet50", [0.5])]
    (tmp_path / "notes.txt").write_text("not a run")
    rows = compare_runs(runs + [tmp_path / "notes.txt"], tmp_path / "compare.png")
    assert [r["name"] for r in rows] == ["vgg", "resnet", "senet"]
    assert [r["epochs"] for r in rows] == [2, 3, 1]
    assert rows[1]["test_accuracy"] == 0.79 and rows[0]["test_accuracy"] is None
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["skipping", str(tmp_path / "notes.txt") + ":", "not"]
    assert table[1].split()[:2] == ["run", "model"]
    assert table[2].split() == ["vgg", "VGG13", "imagenet", "-51", "plateau", "majority", "2", "85.00%", "-"]
    assert table[3].split()[-2:] == ["80.00%", "79.00%"]
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    with pytest.raises(UserError, match="no such run folder"):
        compare_runs([tmp_path / "absent"], tmp_path / "c.png")


# ----------------------------------------------------------------------------- command-line errors

def run_evaluate(*args):
    return subprocess.run([sys.executable, "evaluate.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(done, *fragments):
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr


def test_cli_errors_are_one_line(tmp_path, small_ferplus):
    # One in a fresh process, as a user runs it (TensorFlow loads before this error, and must stay
    # quiet); the others in the session's one interpreter (tests/helpers.py `batch`), stderr
    # captured at its file descriptor all the same.
    assert_one_line_error(run_evaluate("--run", tmp_path / "no-such-run"), "no such run folder")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    fake = tmp_path / "fake.onnx"
    fake.write_text("definitely not protobuf " * 20)
    # a valid contract model, asked for a split the data folder does not have
    from tests.helpers import batch, linear_onnx, linear_weights
    model = linear_onnx(tmp_path / "linear.onnx", *linear_weights(0), batch=None)
    last, not_onnx, no_split = batch(tmp_path, [
        ("evaluate.py", ["--run", tmp_path / "run", "--checkpoint", "last"]),
        ("evaluate.py", ["--model", fake]),
        ("evaluate.py", ["--model", model, "--data_dir", small_ferplus, "--split", "test"])])
    assert_one_line_error(last, "last.keras: checkpoint not found")
    assert_one_line_error(not_onnx, "not an ONNX model")
    assert_one_line_error(no_split, "split 'test' is absent")
