"""The ONNX contract checks and the reference comparison, on stand-ins built with onnx.helper.

The stand-ins are linear classifiers over the 64x64 pixels, so every score they produce can be
recomputed with numpy and the reported numbers checked exactly.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from ferkeras import CLASSES
from ferkeras.deploy.contract import (INPUT_NAME, OUTPUT_NAME, ContractSession, check_onnx_contract,
                               to_contract_input)
from ferkeras.errors import UserError
from ferkeras.evaluate.metrics import classification_metrics
from ferkeras.export.reference import check_reference, disagreement_matrix, identify_reference
from tests.helpers import PIXELS, linear_onnx, linear_weights

REPO = Path(__file__).resolve().parents[1]


def linear_logits(contract_input, weight, bias):
    return contract_input.reshape(len(contract_input), -1) @ weight + bias


@pytest.fixture(scope="module")
def faces(small_ferplus):
    """Majority-labelled validation faces of the small FER+ copy (real faces when ../shared has them)."""
    from ferkeras.evaluate.report import load_eval_split

    images, labels, votes = load_eval_split(small_ferplus, "valid")
    return images[:40], labels[:40], votes[:40]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    weight, bias = linear_weights(0)
    path = linear_onnx(tmp_path_factory.mktemp("ref") / "emotion-ferplus-8.onnx", weight, bias)
    return path, weight, bias


def test_stand_in_passes_the_contract_with_an_unknown_file_warning(standin):
    path = standin[0]
    identity = identify_reference(path)
    assert identity["version"] is None
    assert identity["size_bytes"] == path.stat().st_size
    assert len(identity["sha256"]) == 64
    assert "not a published reference file" in identity["warning"] and "35,040,571" in identity["warning"]
    info = check_onnx_contract(path, expect_names=True)
    assert (info["input_name"], info["output_name"]) == (INPUT_NAME, OUTPUT_NAME)
    assert info["batch"] == 1 and info["opset"] == 8
    assert info["parameters"] == PIXELS * 8 + 8 + 2  # W, B and the reshape target


def test_to_contract_input_resizes_to_64_nchw_raw_pixels():
    faces = np.zeros((2, 48, 48), np.uint8)
    faces[1] = 200
    x = to_contract_input(faces)
    assert x.shape == (2, 1, 64, 64) and x.dtype == np.float32
    assert x[0].max() == 0 and np.allclose(x[1], 200.0)
    assert to_contract_input(np.zeros((3, 64, 64, 1), np.uint8)).shape == (3, 1, 64, 64)
    with pytest.raises(UserError, match="grayscale"):
        to_contract_input(np.zeros((2, 48, 48, 3), np.uint8))


@pytest.mark.parametrize("batch", [1, 4, None])
def test_session_feeds_fixed_and_dynamic_batches(tmp_path, batch, faces):
    weight, bias = linear_weights(1)
    path = linear_onnx(tmp_path / "m.onnx", weight, bias, batch=batch)
    x = to_contract_input(faces[0][:10])  # 10 faces: not a multiple of a fixed batch of 4
    session = ContractSession(path)
    assert session.fixed_batch == batch
    got = session.logits(x, batch_size=3)
    assert got.shape == (10, 8)
    np.testing.assert_allclose(got, linear_logits(x, weight, bias), rtol=1e-4, atol=1e-4)


def test_check_reference_scores_both_models_side_by_side(tmp_path, standin, faces):
    ref_path, ref_w, ref_b = standin
    # "Ours": the same classifier with dynamic batch and "happiness" pushed up by the median margin it
    # lacks, so that about half of the faces switch to it.
    images, labels, votes = faces
    x = to_contract_input(images)
    ref_logits = linear_logits(x, ref_w, ref_b)
    our_b = ref_b.copy()
    our_b[0, 1] += np.median(ref_logits.max(axis=1) - ref_logits[:, 1]) + 1e-3
    ours = linear_onnx(tmp_path / "model.onnx", ref_w, our_b, batch=None)
    report = check_reference(ref_path, ours, faces=faces, out_dir=tmp_path)

    ref_pred = linear_logits(x, ref_w, ref_b).argmax(1)
    our_pred = linear_logits(x, ref_w, our_b).argmax(1)
    assert report["faces"] == len(labels)
    assert report["reference"]["metrics"]["accuracy"] == pytest.approx((ref_pred == labels).mean())
    assert report["ours"]["metrics"]["accuracy"] == pytest.approx((our_pred == labels).mean())
    assert report["agreement"] == pytest.approx((ref_pred == our_pred).mean())
    assert 0 < report["agreement"] < 1
    disagreement = np.asarray(report["disagreement"])
    assert disagreement.sum() == (ref_pred != our_pred).sum()
    assert np.trace(disagreement) == 0
    assert disagreement[:, 1].sum() == ((our_pred == 1) & (ref_pred != 1)).sum()
    expected_f1 = classification_metrics(labels, np.eye(8)[ref_pred])["per_class"]["happiness"]["f1"]
    assert report["reference"]["metrics"]["per_class"]["happiness"]["f1"] == pytest.approx(expected_f1)
    assert report["reference"]["fixed_batch"] == 1 and report["ours"]["fixed_batch"] is None
    assert report["reference"]["latency_ms_batch1"] > 0 and report["ours"]["throughput_batch64"] > 0
    assert report["reference"]["parameters"] == PIXELS * 8 + 10
    assert report["reference"]["warning"]

    written = json.loads((tmp_path / "reference_check.json").read_text())
    assert written["agreement"] == report["agreement"]
    assert (tmp_path / "reference_check.png").stat().st_size > 10_000


def test_disagreement_matrix_counts_only_differing_faces():
    ref = np.array([0, 0, 1, 2, 2, 7])
    ours = np.array([0, 1, 1, 0, 0, 2])
    matrix = disagreement_matrix(ref, ours)
    assert matrix.sum() == 4 and matrix[0, 1] == 1 and matrix[2, 0] == 2 and matrix[7, 2] == 1


@pytest.mark.parametrize("variant, message", [
    ({"in_shape": [1, 3, 64, 64]},
     "expected one float32 input \\[N,1,64,64\\], got input Input3 float32 \\[1,3,64,64\\]"),
    ({"in_shape": [1, 1, 48, 48]}, "got input Input3 float32 \\[1,1,48,48\\]"),
    ({"elem_type": TensorProto.UINT8}, "got input Input3 uint8 \\[1,1,64,64\\]"),
    ({"out_classes": 7}, "expected one float32 output \\[N,8\\].*got output Plus692_Output_0 float32 \\[1,7\\]"),
])
def test_wrong_contracts_are_rejected_in_one_line(tmp_path, variant, message):
    weight, bias = linear_weights(2)
    if variant.get("out_classes") == 7:
        weight, bias = weight[:, :7], bias[:, :7]
    path = linear_onnx(tmp_path / "bad.onnx", weight, bias, **variant)
    with pytest.raises(UserError, match=message) as caught:
        check_onnx_contract(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_names_are_checked_only_when_asked(tmp_path):
    weight, bias = linear_weights(3)
    path = linear_onnx(tmp_path / "renamed.onnx", weight, bias, input_name="faces", output_name="logits")
    assert check_onnx_contract(path)["input_name"] == "faces"
    with pytest.raises(UserError, match="expected tensor names Input3 -> Plus692_Output_0.*got faces -> logits"):
        check_onnx_contract(path, expect_names=True)


@pytest.mark.parametrize("content", [b"this is not a model\n" * 50, b""])
def test_non_onnx_files_are_rejected(tmp_path, content):
    path = tmp_path / "fake.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not an ONNX model") as caught:
        check_onnx_contract(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="no such ONNX file"):
        check_onnx_contract(tmp_path / "absent.onnx")


def test_cli_check_reference_against_an_onnx_model(tmp_path, standin, small_ferplus):
    ref_path, weight, bias = standin
    (tmp_path / "ours").mkdir()
    ours = linear_onnx(tmp_path / "ours" / "model.onnx", weight, bias, batch=None)
    done = subprocess.run([sys.executable, "export.py", "--check_reference", str(ref_path), "--model", str(ours),
                           "--data_dir", str(small_ferplus)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stdout and "top-1 agreement: 100.00%" in done.stdout
    for name in CLASSES:
        assert f"F1 {name}" in done.stdout
    report = json.loads((tmp_path / "ours" / "reference_check.json").read_text())
    assert report["agreement"] == 1.0 and report["split"] == "valid"
    assert report["reference"]["metrics"] == report["ours"]["metrics"]

    wrong = linear_onnx(tmp_path / "wrong.onnx", weight[:, :7], bias[:, :7], out_classes=7)
    done = subprocess.run([sys.executable, "export.py", "--check_reference", str(wrong)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and "[1,7]" in done.stderr
