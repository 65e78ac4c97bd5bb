"""`--weights model.onnx` and `--finetune_from model.onnx`: a FerNet exported by ferkeras (BatchNorm folded
into its convolutions) back into Keras, computing the file's function, its BatchNorm statistics restored
for training."""
import keras
import numpy as np
import pytest

from ferkeras.deploy.contract import ContractSession, to_contract_input
from ferkeras.errors import UserError
from ferkeras.export.onnx import contract_wrapper, export_onnx
from ferkeras.models.onnx_weights import conv_batchnorm_pairs, restore_batchnorm_statistics
from ferkeras.models.registry import build_model
from ferkeras.train.config import resolve
from ferkeras.train.run import train
from tests.helpers import REPO, linear_model, run_in_process

SHIPPED = REPO / "models" / "ferplus-small.onnx"


def faces(count, seed=0):
    """Face-like inputs: smooth random blobs 0..255 (what the statistics are measured on matters little)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 6, 6)).astype("float32")
    return np.stack([np.kron(face, np.ones((8, 8), "float32")) for face in coarse]).astype("uint8")


def randomised_fernet(name="FerNetS", seed=1):
    """A FerNet whose BatchNorm layers hold unlike statistics, gammas and betas: folding them must matter."""
    keras.utils.set_random_seed(seed)
    model = build_model(name, weights="none", dropout_rate=0.0)
    rng = np.random.default_rng(seed)
    for _, norm in conv_batchnorm_pairs(model, "test")[0]:
        width = norm.gamma.shape[0]
        norm.gamma.assign(rng.uniform(0.5, 2.0, width).astype("float32"))
        norm.beta.assign(rng.normal(0, 0.5, width).astype("float32"))
        norm.moving_mean.assign(rng.normal(0, 0.5, width).astype("float32"))
        norm.moving_variance.assign(rng.uniform(0.2, 3.0, width).astype("float32"))
    logits = model.get_layer("logits")
    logits.bias.assign(rng.normal(0, 0.5, logits.bias.shape[0]).astype("float32"))
    return model


@pytest.fixture(scope="module")
def exported_fernet(tmp_path_factory):
    model = randomised_fernet()
    path = tmp_path_factory.mktemp("onnx_weights") / "fernet_s.onnx"
    export_onnx(model, path, faces=faces(8))
    return model, path


def pooled(model, inputs, training):
    """The pooled features (before the classifier and its dropout), in training or inference mode.
    A call in training mode updates BatchNorm's moving statistics, so they are put back afterwards."""
    features = keras.Model(model.inputs, model.get_layer("pool").output)
    before = [variable.numpy() for variable in model.non_trainable_variables]
    out = keras.ops.convert_to_numpy(features([inputs], training=training))
    for variable, value in zip(model.non_trainable_variables, before):
        variable.assign(value)
    return out


def test_an_exported_fernet_loads_back_into_keras_with_the_files_function(exported_fernet):
    original, path = exported_fernet
    assert np.abs(original.get_layer("logits").bias.numpy()).min() > 0  # the file has the classifier's Add
    rebuilt = build_model("FerNetS", weights=str(path), dropout_rate=0.0)
    contract = to_contract_input(faces(16, seed=2))
    file_logits = ContractSession(path).logits(contract)
    keras_logits = contract_wrapper(rebuilt).predict(contract, verbose=0)
    np.testing.assert_allclose(keras_logits, file_logits, atol=1e-4 * np.abs(file_logits).max())
    # The folded file cannot give back the original layers: the kernels differ, the function does not.
    assert not np.allclose(rebuilt.get_layer("stage2_conv1").kernel.numpy(),
                           original.get_layer("stage2_conv1").kernel.numpy())


def test_restored_statistics_keep_inference_and_make_training_mode_agree_with_it(exported_fernet):
    _, path = exported_fernet
    model = build_model("FerNetS", weights=str(path), dropout_rate=0.0)
    batch = faces(64, seed=3)[..., None].astype("float32")
    inference = model.predict(batch, verbose=0)

    def training_gap():
        inferred = pooled(model, batch, training=False)
        return np.abs(pooled(model, batch, training=True) - inferred).max() / np.abs(inferred).max()

    folded_gap = training_gap()  # identity statistics: a training step would see another network
    change = restore_batchnorm_statistics(model, faces(512, seed=4))
    assert change < 1e-4
    np.testing.assert_allclose(model.predict(batch, verbose=0), inference, atol=1e-4 * np.abs(inference).max())
    assert training_gap() < 0.2 < folded_gap
    for conv, norm in conv_batchnorm_pairs(model, "test")[0]:
        np.testing.assert_allclose(norm.moving_variance.numpy()[norm.moving_variance.numpy() > 0], 1.0, rtol=1e-4)


def test_the_shipped_model_loads_into_a_fernet_sd_with_its_scores():
    model = build_model("FerNetSD", weights=str(SHIPPED), contract_round_trip=True)
    contract = to_contract_input(faces(32, seed=5))
    file_logits = ContractSession(SHIPPED).logits(contract)
    np.testing.assert_allclose(contract_wrapper(model).predict(contract, verbose=0), file_logits,
                               atol=1e-4 * np.abs(file_logits).max())


def test_a_file_of_another_architecture_is_refused_in_one_line(exported_fernet):
    _, path = exported_fernet  # a FerNetS file
    with pytest.raises(UserError, match=r"8 convolution kernels.*FerNetSD|model_name the file was trained"):
        build_model("FerNetSD", weights=str(path))
    with pytest.raises(UserError, match="bias-free Conv2D followed by a BatchNormalization"):
        build_model("VGG13", weights=str(path))
    with pytest.raises(UserError, match="does not apply to ONNX"):
        build_model("FerNetS", weights=str(path), allow_partial_weights=True)


def test_train_py_refuses_an_onnx_file_that_is_no_fernet_in_one_line(small_ferplus, tmp_path, capsys):
    from ferkeras.commands.train import main

    other = linear_model(tmp_path / "linear.onnx")  # the contract, but no convolutions
    code, _, err = run_in_process(main, ["--data_dir", small_ferplus, "--output_dir", tmp_path, "--name", "x",
                                         "--model_name", "FerNetS", "--weights", other, "--nepochs", "1"], capsys)
    assert code == 2
    assert [line for line in err.splitlines() if "error" in line] == [
        f"error: --weights {other}: it has no Conv node; expected a file exported by ferkeras (export.py) from "
        "a FerNet model"]
    assert not (tmp_path / "x").exists()


def test_training_from_an_onnx_file_starts_from_its_network(small_ferplus, exported_fernet, tmp_path, capsys):
    _, path = exported_fernet
    config, explicit = resolve(["--data_dir", str(small_ferplus), "--output_dir", str(tmp_path), "--name", "ft",
                                "--model_name", "FerNetS", "--weights", str(path), "--batch_size", "32",
                                "--class_weights", "none", "--augment", "none", "--init_lr", "1e-9",
                                "--lr_policy", "constant", "--warmup_epochs", "0", "--dropout_rate", "0.0",
                                "--nepochs", "1", "--train_limit", "64", "--valid_limit", "32"])
    train(config, explicit)
    assert "BatchNorm statistics measured on 64 training faces" in capsys.readouterr().out
    contract = to_contract_input(faces(16, seed=6))
    file_logits = ContractSession(path).logits(contract)
    # The run keeps the network it started from (for a weight average with its checkpoints): the file's.
    start = keras.saving.load_model(tmp_path / "ft" / "start.keras")
    np.testing.assert_allclose(contract_wrapper(start).predict(contract, verbose=0), file_logits,
                               atol=1e-4 * np.abs(file_logits).max())
    # At a learning rate of 1e-9 the trained checkpoint is that network too, its moving statistics nudged
    # by two training steps' batches.
    checkpoint = keras.saving.load_model(tmp_path / "ft" / "checkpoints" / "last.keras")
    np.testing.assert_allclose(contract_wrapper(checkpoint).predict(contract, verbose=0), file_logits,
                               atol=0.05 * np.abs(file_logits).max())


def test_finetune_from_the_shipped_file_starts_from_its_answers(small_ferplus, tmp_path):
    import json

    import cv2

    from ferkeras import CLASSES
    from ferkeras.data.ferplus import load_labelled

    # Your faces, labelled with the file's own answers: the model the run starts from must give them all.
    faces = load_labelled(small_ferplus, "valid", "majority")[0][:40]
    answers = ContractSession(SHIPPED).logits(to_contract_input(faces)).argmax(1)
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, face in enumerate(faces):
        cv2.imwrite(str(folder / f"{i}.png"), face)
    (folder / "label.csv").write_text("".join(f"{i}.png,{CLASSES[a]}\n" for i, a in enumerate(answers)))
    config, explicit = resolve(["--finetune_from", str(SHIPPED), "--data_dir", str(folder), "--no_detect",
                                "--holdout", "0.25", "--output_dir", str(tmp_path / "runs"), "--name", "mine",
                                "--nepochs", "2", "--batch_size", "16", "--class_weights", "none", "--augment",
                                "none", "--init_lr", "0.001", "--lr_policy", "constant", "--warmup_epochs", "0"])
    result = train(config, explicit)
    report = json.loads((tmp_path / "runs" / "mine" / "finetune.json").read_text())
    assert report["holdout_accuracy_before"] == 1.0
    # Training steps normalise by batch statistics: restored ones keep the network the file's.
    assert report["holdout_accuracy_after"] >= 0.8, report
    tuned = keras.saving.load_model(tmp_path / "runs" / "mine" / "checkpoints" / "last.keras")
    assert tuned.count_params() == build_model("FerNetSD", weights="none").count_params()
    assert result["finetune"] == report
