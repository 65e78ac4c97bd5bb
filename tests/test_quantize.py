"""int8 quantization: a small trained model exported to ONNX is quantized on real faces, keeps the
contract and the metadata, shrinks, agrees with the float model, and a collapsed quantization or a
bad flag writes nothing and says so in one line."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ferkeras.deploy.contract import ContractSession, check_onnx_contract, to_contract_input
from ferkeras.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def small_cnn(keras):
    """A few-layer CNN on raw 0..255 faces of any size, big enough that int8 has weights to shrink."""
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Resizing(32, 32)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.8)(x)  # settles within the few steps it gets
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(8)(x))


@pytest.fixture(scope="module")
def trained_cnn(small_ferplus):
    """A small CNN fitted for a few epochs on real training faces."""
    import keras

    from ferkeras.data.ferplus import load_labelled

    faces, targets, _ = load_labelled(small_ferplus, "train", "majority")
    keras.utils.set_random_seed(3)
    model = small_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(faces[..., None].astype(np.float32), targets, batch_size=32, epochs=4, verbose=0)
    return model


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory, trained_cnn, small_ferplus):
    """model.onnx of `trained_cnn`, exported and parity-checked by ferkeras.export.onnx."""
    from ferkeras.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("float") / "model.onnx"
    export_onnx(trained_cnn, path, config={"model_name": "small_cnn"}, source="best_acc.keras",
                data_dir=small_ferplus)
    return path


@pytest.fixture(scope="module")
def quantized(float_onnx, small_ferplus):
    from ferkeras.export.int8 import quantize_command

    return quantize_command(float_onnx, data_dir=small_ferplus, calibration_faces_count=100)


@pytest.fixture(scope="module")
def valid_input(small_ferplus):
    from ferkeras.evaluate.report import load_eval_split

    faces, labels, _ = load_eval_split(small_ferplus, "valid")
    return to_contract_input(faces), labels


def test_int8_file_keeps_the_contract_and_shrinks(float_onnx, quantized):
    int8 = float_onnx.with_name("model.int8.onnx")
    assert quantized["int8"]["path"] == str(int8)
    info = check_onnx_contract(int8, expect_names=True)
    assert info["batch"] is None
    proto = onnx.load(str(int8))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [init for init in proto.graph.initializer if len(init.dims) == 4]
    assert weights and all(init.data_type == onnx.TensorProto.INT8 for init in weights)
    # The three convolutions hold nearly all weights: int8 stores them in a quarter of the bytes.
    assert int8.stat().st_size < 0.4 * float_onnx.stat().st_size
    assert not [p for p in int8.parent.iterdir() if ".tmp-" in p.name]


def test_int8_metadata_is_the_float_files_plus_a_note(float_onnx, quantized):
    float_meta = {p.key: p.value for p in onnx.load(str(float_onnx)).metadata_props}
    int8_meta = {p.key: p.value for p in onnx.load(str(float_onnx.with_name("model.int8.onnx"))).metadata_props}
    assert {key: int8_meta[key] for key in float_meta} == float_meta
    assert float_meta["config.model_name"] == "small_cnn"
    assert int8_meta["quantization"].startswith("int8 static quantization")
    assert "100 FER+ training faces" in int8_meta["quantization"]
    assert int8_meta["quantized_from"] == "model.onnx"


def test_int8_predictions_agree_with_float(float_onnx, quantized, valid_input):
    x, labels = valid_input
    float_logits = ContractSession(float_onnx).logits(x)
    int8_logits = ContractSession(float_onnx.with_name("model.int8.onnx")).logits(x)
    float_top, int8_top = float_logits.argmax(1), int8_logits.argmax(1)
    assert len(set(float_top)) >= 3  # the model tells faces apart, so agreement means something
    assert not np.allclose(float_logits, int8_logits)  # really quantized, not a copy
    agreement = (float_top == int8_top).mean()
    assert agreement >= 0.9 and quantized["top1_agreement"] == pytest.approx(agreement)
    accuracy = {name: quantized[name]["valid"]["accuracy"] for name in ("float", "int8")}
    assert accuracy["float"] == pytest.approx((float_top == labels).mean())
    assert accuracy["int8"] == pytest.approx((int8_top == labels).mean())


def test_report_json_has_both_rows(float_onnx, quantized):
    report = json.loads(float_onnx.with_name("quantization.json").read_text())
    for name in ("float", "int8"):
        row = report[name]
        assert row["size_bytes"] == Path(row["path"]).stat().st_size
        assert row["latency_ms_batch1"] > 0 and row["throughput_batch64"] > 0 and row["latency_runs"] == 50
        assert 0 <= row["valid"]["accuracy"] <= 1 and row["valid"]["n"] == quantized["float"]["valid"]["n"]
    assert report["calibration_faces"] == 100 and report["calibration_method"] == "minmax"


def test_calibration_faces_come_from_train_seeded(small_ferplus):
    from ferkeras.data.ferplus import load_split
    from ferkeras.export.int8 import calibration_faces

    picked = calibration_faces(small_ferplus, 50)
    assert picked.shape == (50, 48, 48) and picked.dtype == np.uint8
    np.testing.assert_array_equal(picked, calibration_faces(small_ferplus, 50))
    assert not np.array_equal(picked, calibration_faces(small_ferplus, 50, seed=1))
    # Training faces only (FER2013 repeats a few images across splits, so no test against Valid).
    train = {row.tobytes() for row in load_split(small_ferplus, "train").images.reshape(-1, 48 * 48)}
    assert {row.tobytes() for row in picked.reshape(-1, 48 * 48)} <= train
    with pytest.raises(UserError, match="the training split has"):
        calibration_faces(small_ferplus, 10_000)


def test_collapsed_calibration_is_refused_and_writes_nothing(float_onnx, valid_input, tmp_path):
    from ferkeras.export.int8 import quantize_int8

    # Black calibration faces give every activation a near-zero range, so real faces saturate.
    out = tmp_path / "refused" / "model.int8.onnx"
    blank = np.zeros((20, 48, 48), np.uint8)
    with pytest.raises(UserError, match=r"agrees with the float one on only .*nothing was written") as caught:
        quantize_int8(float_onnx, out, blank, valid_input[0])
    assert "\n" not in str(caught.value) and "--calibration_method percentile" in str(caught.value)
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


def test_percentile_per_channel_calibration(float_onnx, small_ferplus, valid_input, tmp_path):
    from ferkeras.export.int8 import calibration_batch_size, calibration_faces, quantize_int8

    # The histogram calibrators need equal batches: 60 faces go in two calls of 30.
    assert [calibration_batch_size(n) for n in (500, 60, 97)] == [50, 30, 1]
    assert calibration_batch_size(60, fixed_batch=1) == 1
    out = tmp_path / "model.int8.onnx"
    result = quantize_int8(float_onnx, out, calibration_faces(small_ferplus, 60), valid_input[0],
                           method="percentile", per_channel=True)
    assert result["agreement"] >= 0.9
    note = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["quantization"]
    assert "per-channel 7-bit" in note and "percentile calibration on 60" in note
    # Per-channel: the first convolution's weights carry one scale per output channel (32).
    scales = [init for init in onnx.load(str(out)).graph.initializer
              if init.name.endswith("_scale") and list(init.dims) == [32]]
    assert scales


def test_export_run_then_quantize(trained_cnn, small_ferplus, tmp_path):
    import importlib.util

    import yaml

    run = tmp_path / "runs" / "cnn"
    (run / "checkpoints").mkdir(parents=True)
    trained_cnn.save(run / "checkpoints" / "best_acc.keras")
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "cnn", "model_name": "small_cnn",
                                                     "data_dir": str(small_ferplus)}))
    # In-process, so that TensorFlow (already loaded by the fixture) is not started again.
    spec = importlib.util.spec_from_file_location("export_script", REPO / "export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--run", str(run), "--quantize", "int8", "--calibration_faces", "40"])
    assert {"model.onnx", "model.keras", "model.int8.onnx", "quantization.json"} <= {p.name for p in run.iterdir()}
    metadata = {p.key: p.value for p in onnx.load(str(run / "model.int8.onnx")).metadata_props}
    assert metadata["config.name"] == "cnn" and metadata["source_checkpoint"] == "best_acc.keras"
    assert json.loads((run / "quantization.json").read_text())["calibration_faces"] == 40


def test_cli_quantizes_an_existing_onnx(float_onnx, small_ferplus, tmp_path):
    out = tmp_path / "deploy" / "fer-int8.onnx"
    done = subprocess.run([sys.executable, "export.py", "--model", str(float_onnx), "--quantize", "int8",
                           "--data_dir", str(small_ferplus), "--calibration_faces", "40", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "latency batch 1 (ms)" in done.stdout and "valid accuracy" in done.stdout
    check_onnx_contract(out, expect_names=True)
    assert json.loads((out.parent / "quantization.json").read_text())["calibration_faces"] == 40


def test_cli_errors_are_one_line_and_write_nothing(float_onnx, small_ferplus, tmp_path):
    helper = onnx.helper
    # A valid ONNX file that breaks the contract: three colour channels in.
    colour = helper.make_model(helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["y"])], "colour",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])]))
    onnx.save(colour, str(tmp_path / "colour.onnx"))
    cases = ((["--model", tmp_path / "colour.onnx", "--quantize", "int8"], "expected one float32 input [N,1,64,64]"),
             (["--model", float_onnx, "--quantize", "fp16"], "--quantize: expected one of int8, got 'fp16'"),
             (["--model", float_onnx, "--quantize", "int8", "--calibration_faces", "0"], "--calibration_faces"),
             (["--model", float_onnx, "--quantize", "int8", "--calibration_method", "entropy"],
              "--calibration_method: expected one of minmax, percentile"),
             (["--model", tmp_path / "absent.onnx", "--quantize", "int8"], "no such ONNX file"),
             (["--quantize", "int8", "--check_reference", tmp_path / "colour.onnx"], "nothing to quantize"))
    for args, fragment in cases:
        done = subprocess.run([sys.executable, "export.py", *map(str, args), "--data_dir", str(small_ferplus)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and fragment in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.int8.onnx"))
