"""Ensembles of ONNX files (`export.py --model a.onnx --model b.onnx [--run c] [--tta ...]`): one contract file
whose scores are the members' probabilities averaged over the TTA views, as evaluate.py averages them."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from ferkeras.commands.export import main as export_main
from ferkeras.deploy.contract import OnnxPredictor, check_onnx_contract, softmax, to_contract_input
from ferkeras.errors import UserError
from ferkeras.evaluate.ensemble import EnsemblePredictor
from ferkeras.evaluate.report import load_eval_split
from ferkeras.evaluate.tta import predict_probabilities
from ferkeras.export.onnx_ensemble import export_onnx_ensemble, merge_members

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "ferplus-small.onnx"
SHIPPED_INT8 = REPO / "models" / "ferplus-small.int8.onnx"


@pytest.fixture(scope="module")
def valid_faces(small_ferplus):
    return load_eval_split(str(small_ferplus), "valid")[0][:48]


def evaluate_average(paths, faces, tta):
    """The members' probabilities averaged over evaluate.py's TTA views of the faces as the contract sees
    them (64 px): what the merged file must return, computed without it."""
    contract_faces = to_contract_input(faces)[:, 0]
    per_member = [predict_probabilities(OnnxPredictor(path), contract_faces, tta) for path in paths]
    return np.mean([plain if averaged is None else averaged for plain, averaged, _ in per_member], axis=0)


@pytest.mark.parametrize("tta", ["none", "flip", "crops"])
def test_merged_file_averages_its_members_over_the_views_evaluate_uses(small_ferplus, valid_faces, models, tmp_path,
                                                                       tta):
    members = [SHIPPED, models["dynamic"]]
    report = export_onnx_ensemble(members, tmp_path / "ensemble.onnx", tta, data_dir=str(small_ferplus))
    info = check_onnx_contract(tmp_path / "ensemble.onnx", expect_names=True)
    assert info["batch"] is None and info["metadata"]["config.tta"] == tta
    assert info["metadata"]["config.members"] == ",".join(map(str, members))
    # Each member's weights are in the file once, however many views run through them.
    weights = sum(check_onnx_contract(path)["parameters"] for path in members)
    assert weights <= info["parameters"] <= weights + 64
    merged = softmax(OnnxPredictor(tmp_path / "ensemble.onnx").logits(valid_faces))
    np.testing.assert_allclose(merged, evaluate_average(members, valid_faces, tta), atol=1e-4)
    assert report["parity"]["max_softmax_diff"] < 1e-4 and report["parity"]["faces"] > len(valid_faces)


def test_an_int8_member_and_a_fixed_batch_old_opset_member_merge(valid_faces, models, tmp_path):
    # The reference's layout (batch 1, opset 8, IR 3) is converted up to the int8 file's opset; the batch stays 1.
    members = [SHIPPED_INT8, models["fixed"]]
    merged = merge_members(members, "flip")
    onnx.checker.check_model(merged)
    path = tmp_path / "mixed.onnx"
    onnx.save(merged, str(path))
    info = check_onnx_contract(path)
    assert info["batch"] == 1 and info["opset"] == check_onnx_contract(SHIPPED_INT8)["opset"]
    got = softmax(OnnxPredictor(path).logits(valid_faces[:6]))
    # Scored one by one, the int8 member can round a mirrored pixel into the next quantization step:
    # close, not equal (the export's own parity check scores the members on the graph's views instead).
    np.testing.assert_allclose(got, evaluate_average(members, valid_faces[:6], "flip"), atol=5e-3)


def test_export_cli_mixes_a_keras_run_with_onnx_files(small_ferplus, valid_faces, tmp_path, capsys):
    import keras

    from ferkeras.models.predictor import KerasPredictor
    from ferkeras.models.registry import build_model

    keras.utils.set_random_seed(5)
    keras_member = tmp_path / "fresh.keras"
    build_model("FerNetS", weights="none").save(keras_member)
    out = tmp_path / "three.onnx"
    export_main(["--model", str(SHIPPED), "--model", str(keras_member), "--model", str(SHIPPED_INT8),
                 "--out", str(out), "--data_dir", str(small_ferplus)])
    assert "3 member(s) x 1 view(s)" in capsys.readouterr().out
    members = [OnnxPredictor(SHIPPED), KerasPredictor(keras.saving.load_model(keras_member)), OnnxPredictor(SHIPPED_INT8)]
    contract_faces = to_contract_input(valid_faces)[:, 0]  # the Keras member sees what its export sees
    np.testing.assert_allclose(softmax(OnnxPredictor(out).logits(valid_faces)),
                               softmax(EnsemblePredictor(members).logits(contract_faces)), atol=1e-4)
    assert not list(tmp_path.glob("member*.onnx")) and not list(tmp_path.glob(".*tmp*"))


def test_members_that_fix_different_batches_are_refused_and_nothing_is_written(models, tmp_path):
    from tests.helpers import linear_onnx, linear_weights

    two = linear_onnx(tmp_path / "batch2.onnx", *linear_weights(1), batch=2)
    out = tmp_path / "ensemble.onnx"
    with pytest.raises(UserError, match="batch sizes must agree"):
        export_onnx_ensemble([models["fixed"], two], out)
    assert not out.exists()


def test_a_member_that_is_not_a_contract_file_is_named_in_a_one_line_error(models, tmp_path, capsys):
    from ferkeras.errors import run_cli

    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"not a model")
    out = tmp_path / "ensemble.onnx"
    with pytest.raises(SystemExit) as exit_:
        run_cli(export_main, ["--model", str(models["dynamic"]), "--model", str(wrong), "--out", str(out)])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert str(wrong) in err and "not an ONNX model" in err and "Traceback" not in err
    assert not out.exists()


def test_one_onnx_file_with_tta_is_written_beside_it(small_ferplus, models, tmp_path, capsys):
    import shutil

    member = tmp_path / "linear.onnx"
    shutil.copyfile(models["dynamic"], member)
    export_main(["--model", str(member), "--tta", "flip", "--data_dir", str(small_ferplus)])
    assert "1 member(s) x 2 view(s)" in capsys.readouterr().out
    info = check_onnx_contract(tmp_path / "linear.tta-flip.onnx", expect_names=True)
    assert info["metadata"]["config.tta"] == "flip"
