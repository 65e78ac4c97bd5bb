"""ONNX export: a briefly trained model round-trips within the parity tolerances, carries its
metadata, and a failed check leaves no file behind."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from ferkeras import CLASSES
from ferkeras.deploy.contract import INPUT_NAME, OUTPUT_NAME, check_onnx_contract, to_contract_input
from ferkeras.errors import UserError
from ferkeras.deploy.contract import softmax

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_ferplus):
    """A run folder with a small VGG13 fitted for two steps on real faces (synthetic without ../shared)."""
    import keras

    from ferkeras.data.ferplus import load_labelled
    from ferkeras.models.registry import build_model

    faces, targets, _ = load_labelled(small_ferplus, "train", "majority")
    keras.utils.set_random_seed(1)
    model = build_model("VGG13", weights="none", image_size=16, dropout_rate=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    before = model.get_weights()[-1].copy()
    model.fit(faces[:64, ..., None].astype(np.float32), targets[:64], batch_size=32, epochs=1, verbose=0)
    assert not np.allclose(before, model.get_weights()[-1])  # the two steps did change the model
    run = tmp_path_factory.mktemp("runs") / "vgg-tiny"
    (run / "checkpoints").mkdir(parents=True)
    model.save(run / "checkpoints" / "best_acc.keras")
    config = {"name": "vgg-tiny", "model_name": "VGG13", "weights": "none", "image_size": 16,
              "training_mode": "majority", "freeze_before": 0, "data_dir": str(small_ferplus)}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run, model


@pytest.fixture(scope="module")
def exported(trained_run):
    from ferkeras.export.onnx import export_command

    run, _ = trained_run
    return export_command(run=run, saved_model=True)


def test_export_round_trips_within_tolerance(trained_run, exported, small_ferplus):
    run, model = trained_run
    assert exported["onnx"] == str(run / "model.onnx")
    parity = exported["parity"]
    assert parity["faces"] == 96 and parity["source"] == "96 validation faces"
    assert parity["max_softmax_diff"] < 1e-4 and parity["top1_agreement"] == 1.0

    info = check_onnx_contract(run / "model.onnx", expect_names=True)
    assert info["batch"] is None and info["opset"] == 17
    # Any batch size runs, and matches the Keras model on the same pixels.
    from ferkeras.data.ferplus import load_split
    faces = load_split(small_ferplus, "valid").images[:7]
    x = to_contract_input(faces)
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (x[:1], x):
        ours = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        reference = model.predict(batch.transpose(0, 2, 3, 1), verbose=0)
        assert ours.shape == (len(batch), 8)
        np.testing.assert_allclose(softmax(ours), softmax(reference), atol=1e-5)
        assert not np.allclose(ours, ours.mean(axis=1, keepdims=True))  # real scores, not a constant


def test_metadata_carries_classes_contract_and_config(trained_run, exported):
    run, _ = trained_run
    metadata = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert metadata["classes"].split(",") == list(CLASSES)
    assert metadata["input_layout"] == "NCHW" and metadata["pixel_range"] == "0..255"
    assert metadata["input_size"] == "64"
    assert metadata["config.model_name"] == "VGG13" and metadata["config.image_size"] == "16"
    assert metadata["config.training_mode"] == "majority"
    assert metadata["source_checkpoint"] == "best_acc.keras"
    assert metadata["ferkeras_version"]


def test_export_writes_keras_copy_and_saved_model(trained_run, exported):
    run, _ = trained_run
    assert (run / "model.keras").read_bytes() == (run / "checkpoints" / "best_acc.keras").read_bytes()
    assert (run / "saved_model" / "saved_model.pb").is_file()
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_failed_parity_leaves_no_file(trained_run, tmp_path, monkeypatch):
    import ferkeras.export.onnx as export

    class CorruptSession(export.ContractSession):
        """onnxruntime scores with class 0 pushed up: what a broken conversion would look like."""

        def logits(self, contract_input, batch_size=64):
            scores = super().logits(contract_input, batch_size)
            scores[:, 0] += 5.0
            return scores

    monkeypatch.setattr(export, "ContractSession", CorruptSession)
    _, model = trained_run
    out = tmp_path / "broken" / "model.onnx"
    with pytest.raises(UserError, match="ONNX and Keras outputs differ on 5 faces") as caught:
        export.export_onnx(model, out, faces=np.random.default_rng(0).integers(0, 256, (5, 48, 48), np.uint8))
    assert "\n" not in str(caught.value)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_export_refuses_what_breaks_the_contract(tmp_path):
    import keras

    from ferkeras.export.onnx import check_keras_model, convert_to_onnx

    inputs = keras.Input((None, None, 1))
    seven = keras.Model(inputs, keras.layers.Dense(7)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(UserError, match="scores 7 classes, expected 8"):
        check_keras_model(seven)
    fixed = keras.Input((48, 48, 1))
    small = keras.Model(fixed, keras.layers.Dense(8)(keras.layers.GlobalAveragePooling2D()(fixed)))
    with pytest.raises(UserError, match="fixed to 48x48"):
        check_keras_model(small)
    with pytest.raises(UserError, match="--opset: expected 7..18"):
        convert_to_onnx(small, opset=19)


def test_cli_export_errors_are_one_line(tmp_path):
    for args, fragment in ((["--run", tmp_path / "absent"], "no such run folder"),
                           ([], "nothing to do"),
                           (["--model", tmp_path / "missing.keras"], "no such model file")):
        done = subprocess.run([sys.executable, "export.py", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and fragment in done.stderr
        assert "Traceback" not in done.stderr
