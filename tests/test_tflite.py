"""TFLite export: a small FerNetS trained on real faces becomes model.tflite and model.int8.tflite with
the contract in NHWC, matches Keras (float) or agrees with it (int8), runs BatchNorm in inference mode,
is scored by evaluate.py like an ONNX file, and bad flags or a failed check write nothing."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ferkeras import CLASSES
from ferkeras.deploy.contract import INPUT_NAME, OUTPUT_NAME
from ferkeras.errors import UserError
from ferkeras.deploy.contract import softmax
from ferkeras.export.onnx import MAX_SOFTMAX_DIFF
from ferkeras.export.int8 import MIN_AGREEMENT
from ferkeras.deploy.tflite import TfliteSession, check_tflite_contract, make_interpreter, sidecar_path, to_tflite_input
from tests import helpers

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = 60


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_ferplus):
    """A run folder with FerNetS at 16x16 fitted for a few epochs on real training faces."""
    import keras

    from ferkeras.data.ferplus import load_labelled
    from ferkeras.models.registry import build_model

    faces, targets, _ = load_labelled(small_ferplus, "train", "majority")
    keras.utils.set_random_seed(5)
    model = build_model("FerNetS", weights="none", image_size=16, dropout_rate=0.1)
    for layer in model.layers:  # moving statistics that settle within the few steps they get
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(faces[..., None].astype(np.float32), targets, batch_size=32, epochs=4, verbose=0)
    run = tmp_path_factory.mktemp("runs") / "fernet-tiny"
    (run / "checkpoints").mkdir(parents=True)
    model.save(run / "checkpoints" / "best_acc.keras")
    config = {"name": "fernet-tiny", "model_name": "FerNetS", "weights": "none", "image_size": 16,
              "training_mode": "majority", "data_dir": str(small_ferplus)}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run, model


@pytest.fixture(scope="module")
def exported(trained_run):
    from ferkeras.export.tflite import export_tflite_command

    run, _ = trained_run
    return export_tflite_command(run=run, quantize="int8", calibration_faces_count=CALIBRATION)


@pytest.fixture(scope="module")
def valid_faces(small_ferplus):
    from ferkeras.data.ferplus import load_split

    return load_split(small_ferplus, "valid").images


def keras_softmax(model, faces):
    return softmax(model.predict(to_tflite_input(faces), batch_size=64, verbose=0))


def test_both_files_keep_the_contract_in_nhwc(trained_run, exported):
    run, _ = trained_run
    assert exported["tflite"] == str(run / "model.tflite") and exported["int8"] == str(run / "model.int8.tflite")
    for name in ("model.tflite", "model.int8.tflite"):
        info = check_tflite_contract(run / name)
        assert (info["input_name"], info["output_name"]) == (INPUT_NAME, OUTPUT_NAME)
        assert info["batch"] is None and info["input_layout"] == "NHWC"
        interpreter = make_interpreter(run / name)
        (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
        assert list(source["shape_signature"]) == [-1, 64, 64, 1] and source["dtype"] == np.float32
        assert list(target["shape_signature"]) == [-1, 8] and target["dtype"] == np.float32
    assert (run / "model.keras").read_bytes() == (run / "checkpoints" / "best_acc.keras").read_bytes()
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_float_file_matches_keras_at_any_batch(trained_run, exported, valid_faces):
    run, model = trained_run
    parity = exported["files"]["model.tflite"]["parity"]
    assert parity["faces"] == 96 and parity["source"] == "96 validation faces"
    assert parity["max_softmax_diff"] < MAX_SOFTMAX_DIFF and parity["top1_agreement"] == 1.0
    session = TfliteSession(run / "model.tflite")
    faces = valid_faces[:7]
    expected = keras_softmax(model, faces)
    for batch in (1, 7, 3):  # resized both ways; 3 leaves a short last chunk
        ours = softmax(session.logits(to_tflite_input(faces), batch_size=batch))
        assert np.abs(ours - expected).max() < MAX_SOFTMAX_DIFF
    # Real scores that tell faces apart, not a constant (which would agree with anything).
    assert len(set(keras_softmax(model, valid_faces).argmax(axis=1))) >= 3


def test_graph_runs_batchnorm_in_inference_mode(trained_run, exported, valid_faces):
    run, model = trained_run
    interpreter = make_interpreter(run / "model.tflite", delegate=False)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    # Training-mode BatchNorm needs the batch's moments: MEAN, SQUARED_DIFFERENCE, RSQRT per layer.
    # In inference mode it folds into the convolutions; the one MEAN left is the global average pool.
    assert ops.count("MEAN") == 1 and "SQUARED_DIFFERENCE" not in ops and "RSQRT" not in ops
    assert ops.count("CONV_2D") == 7
    # Behaviour: a face scores the same alone as among other faces (batch statistics would differ).
    session = TfliteSession(run / "model.tflite")
    batch = to_tflite_input(valid_faces[:16])
    alone = softmax(session.logits(batch[:1]))
    together = softmax(session.logits(batch))[:1]
    assert np.abs(alone - together).max() < MAX_SOFTMAX_DIFF


def test_int8_file_is_integer_and_agrees_with_keras(trained_run, exported, valid_faces):
    run, model = trained_run
    int8, float_file = run / "model.int8.tflite", run / "model.tflite"
    assert int8.stat().st_size < float_file.stat().st_size / 3  # int8 weights: under a third of float32's
    weights = [t for t in make_interpreter(int8, delegate=False).get_tensor_details()
               if t["dtype"] == np.int8 and len(t["shape"]) == 4]
    assert len(weights) >= 7  # the convolution kernels (and their int8 activations)
    parity = exported["files"]["model.int8.tflite"]["parity"]
    ours = softmax(TfliteSession(int8).logits(to_tflite_input(valid_faces)))
    expected = keras_softmax(model, valid_faces)
    agreement = float((ours.argmax(axis=1) == expected.argmax(axis=1)).mean())
    assert agreement >= MIN_AGREEMENT and parity["top1_agreement"] == pytest.approx(agreement)
    assert parity["max_softmax_diff"] > MAX_SOFTMAX_DIFF  # really quantized, not a float copy
    assert parity["max_softmax_diff"] == pytest.approx(float(np.abs(ours - expected).max()))


def test_sidecars_say_nhwc_and_carry_the_config(trained_run, exported):
    run, _ = trained_run
    float_meta = json.loads(sidecar_path(run / "model.tflite").read_text())
    int8_meta = json.loads(sidecar_path(run / "model.int8.tflite").read_text())
    for meta, name in ((float_meta, "model.tflite"), (int8_meta, "model.int8.tflite")):
        assert meta["format"] == "tflite" and meta["input_layout"] == "NHWC" and meta["pixel_range"] == "0..255"
        assert "[N,64,64,1]" in meta["input"] and meta["classes"].split(",") == list(CLASSES)
        assert meta["config.model_name"] == "FerNetS" and meta["config.image_size"] == "16"
        assert meta["source_checkpoint"] == "best_acc.keras" and meta["size_bytes"] == (run / name).stat().st_size
        assert meta == exported["files"][name]
    assert float_meta["quantization"] == "none (float32)" and "float_ops" not in float_meta
    assert int8_meta["quantization"].startswith("full-integer")
    assert f"calibrated (min/max) on {CALIBRATION} FER+ training faces" in int8_meta["quantization"]
    assert int8_meta["float_ops"] == []  # every op between the input's QUANTIZE and the output's DEQUANTIZE


def test_evaluate_cli_scores_the_tflite_file(trained_run, exported, small_ferplus, tmp_path):
    from ferkeras.evaluate.report import load_eval_split

    run, _ = trained_run
    # evaluate.py run as its own process runs it, in the session's one interpreter (TensorFlow loaded once).
    (done,) = helpers.batch(tmp_path, [("evaluate.py", ["--model", run / "model.int8.tflite",
                                                        "--data_dir", small_ferplus, "--out", tmp_path])])
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "eval_valid.json").read_text())
    assert report["model"]["format"] == "tflite" and report["model"]["quantization"].startswith("full-integer")
    faces, labels, _ = load_eval_split(small_ferplus, "valid")
    predicted = TfliteSession(run / "model.int8.tflite").logits(to_tflite_input(faces)).argmax(axis=1)
    assert report["n_faces"] == len(labels)
    # Integer kernels give the same scores in both processes; one face of slack for a tie at the top.
    assert report["metrics"]["accuracy"] == pytest.approx(float((predicted == labels).mean()), abs=1.5 / len(labels))


def test_failed_parity_leaves_no_file(trained_run, exported, valid_faces, tmp_path, monkeypatch):
    import ferkeras.export.tflite as tflite_export

    run, model = trained_run
    # A converter that went wrong: it hands back the int8 file when float was asked for.
    monkeypatch.setattr(tflite_export, "convert_to_tflite",
                        lambda *args, **kwargs: (run / "model.int8.tflite").read_bytes())
    out = tmp_path / "broken" / "model.tflite"
    with pytest.raises(UserError, match="TFLite and Keras outputs differ on 20 faces") as caught:
        tflite_export.export_tflite(model, out, faces=valid_faces[:20])
    assert "must be < 0.0001" in str(caught.value) and "\n" not in str(caught.value)
    assert list(out.parent.iterdir()) == []  # neither the file nor its sidecar


def test_contract_check_refuses_foreign_files(tmp_path):
    import tensorflow as tf

    (tmp_path / "text.tflite").write_text("not a flatbuffer")
    with pytest.raises(UserError, match="not a TFLite model"):
        check_tflite_contract(tmp_path / "text.tflite")
    with pytest.raises(UserError, match="no such TFLite file"):
        check_tflite_contract(tmp_path / "absent.tflite")
    # The ONNX layout, NCHW, in a TFLite file: refused, since these files take NHWC.
    nchw = tf.function(lambda x: tf.reduce_mean(x, axis=(2, 3)) @ tf.ones((1, 8)))
    concrete = nchw.get_concrete_function(tf.TensorSpec((None, 1, 64, 64), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module())
    (tmp_path / "nchw.tflite").write_bytes(converter.convert())
    with pytest.raises(UserError, match=r"expected one float32 input \[N,64,64,1\] \(NHWC\), got .*\[N,1,64,64\]"):
        check_tflite_contract(tmp_path / "nchw.tflite")


def test_cli_errors_are_one_line_and_write_nothing(trained_run, small_ferplus, tmp_path):
    run, _ = trained_run
    valid_only = tmp_path / "valid-only"
    shutil.copytree(small_ferplus / "FER2013Valid", valid_only / "FER2013Valid")
    target = tmp_path / "out" / "fer.tflite"
    cases = ((["--run", run, "--format", "tflitee"], "--format: expected one of onnx, tflite, got 'tflitee'"),
             (["--run", run, "--format", "tflite", "--quantize", "int8", "--data_dir", valid_only, "--out", target],
              "split 'train' is absent"),
             (["--run", run, "--format", "tflite", "--per_channel", "--out", target],
              "--per_channel: applies to --format onnx only"),
             (["--run", run, "--format", "tflite", "--out", tmp_path / "fer.onnx"],
              "expected a file name ending in .tflite"))
    for args, fragment in cases:
        done = subprocess.run([sys.executable, "export.py", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not target.parent.exists() and not list(tmp_path.glob("*.tflite"))


def test_speed_benchmark_tabulates_all_five_files(trained_run, small_ferplus, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tflite_speed", REPO / "benchmarks" / "tflite_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run, _ = trained_run
    rows = bench.main(["--run", str(run), "--calibration_faces", "40", "--rounds", "1", "--threads", "1",
                       "--out_dir", str(tmp_path)])
    by_file = {row["file"]: row for row in rows}
    assert sorted(by_file) == ["model.dynamic.tflite", "model.int8.onnx", "model.int8.tflite", "model.onnx",
                               "model.tflite"]
    for name, row in by_file.items():
        assert row["size_bytes"] == (tmp_path / name).stat().st_size
        assert row["latency_ms_batch1"] > 0 and row["throughput_batch64"] > 0 and row["latency_runs"] == 10
        assert 0 <= row["accuracy"] <= 1 and row["agreement"] >= MIN_AGREEMENT
    # The two float files are the same model: the same top-1 on every face, so the same accuracy.
    assert by_file["model.onnx"]["agreement"] == by_file["model.tflite"]["agreement"] == 1.0
    assert by_file["model.onnx"]["accuracy"] == by_file["model.tflite"]["accuracy"]
    assert by_file["model.int8.tflite"]["size_bytes"] < by_file["model.tflite"]["size_bytes"] / 3
    report = json.loads((tmp_path / "tflite_speed.json").read_text())
    assert report["threads"] == 1 and report["calibration_faces"] == 40 and len(report["results"]) == 5
