"""The training options of the compact recipes: FerNet, AdamW, warm-up, label smoothing, mixup / cutmix,
random erasing, EMA, distillation; and test-time augmentation and ensembles at evaluation and export."""
import json

import keras
import numpy as np
import pandas as pd
import pytest

from ferkeras.data.augment import build_augmenter
from ferkeras.train.config import Config, resolve
from ferkeras.errors import UserError
from ferkeras.evaluate.ensemble import EnsemblePredictor
from ferkeras.models.predictor import KerasPredictor
from ferkeras.evaluate.tta import crop_boxes, predict_probabilities, tta_views
from ferkeras.evaluate.report import evaluate_command
from ferkeras.deploy.contract import softmax
from ferkeras.models.losses import loss_for_mode
from ferkeras.models.registry import build_model
from ferkeras.models.weights import load_model_file
from ferkeras.data.batches import mix_batch
from ferkeras.train.run import scheduled_lr, train

# FerNetS learns a few hundred faces in seconds per epoch on 2 cores.
FAST = ["--model_name", "FerNetS", "--weights", "none", "--batch_size", "32", "--class_weights", "none",
        "--augment", "none", "--optimizer", "AdamW", "--init_lr", "0.002", "--lr_policy", "constant",
        "--early_stopping_patience", "0", "--dropout_rate", "0.0", "--train_limit", "128", "--valid_limit", "64"]


def fast_run(small_ferplus, tmp_path, name, *flags):
    config, explicit = resolve(["--data_dir", str(small_ferplus), "--output_dir", str(tmp_path), *FAST,
                                "--name", name, *flags])
    return train(config, explicit)


@pytest.mark.parametrize("small", ["FerNetS", "FerNetSD"])
def test_fernet_small_fits_the_size_budget_and_the_contract(small):
    model = build_model(small, weights="none")
    assert model.count_params() <= 1_000_000  # the "small": at most 1 M parameters (4 MB as float32)
    assert model.input_shape == (None, None, None, 1) and model.output_shape == (None, 8)
    faces = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 1)).astype(np.float32)
    assert keras.ops.convert_to_numpy(model(faces, training=False)).shape == (4, 8)
    assert build_model("FerNetM", weights="none").count_params() > 2 * model.count_params()


def test_label_smoothing_mixes_the_target_with_the_uniform_distribution():
    logits = np.array([[2.0, 0.5, -1.0, 0, 0, 0, 0, 0.3]], np.float32)
    target = np.eye(8, dtype=np.float32)[[0]]
    smoothed = float(loss_for_mode("majority", 0.1)(target, logits))
    expected = -np.sum((0.9 * target + 0.1 / 8) * np.log(softmax(logits)))
    assert smoothed == pytest.approx(expected, rel=1e-5)
    assert float(loss_for_mode("majority")(target, logits)) == pytest.approx(-np.log(softmax(logits)[0, 0]), rel=1e-5)


def test_mixup_and_cutmix_mix_faces_and_targets_alike():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (6, 48, 48, 1)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[[0, 1, 2, 3, 4, 5]]
    mixed_x, mixed_y = mix_batch(x, y, "mixup", 0.4, np.random.default_rng(1))
    lam = float(np.random.default_rng(1).beta(0.4, 0.4))
    pair = np.random.default_rng(1)
    pair.beta(0.4, 0.4)
    pair = pair.permutation(6)
    np.testing.assert_allclose(mixed_x, lam * x + (1 - lam) * x[pair], rtol=1e-6)
    np.testing.assert_allclose(mixed_y, lam * y + (1 - lam) * y[pair], rtol=1e-6)
    # cutmix: every pixel comes from the face or its partner, and the targets weigh them by area.
    cut_x, cut_y = mix_batch(x, y, "cutmix", 1.0, np.random.default_rng(2))
    from_partner = (cut_x != x)
    share = from_partner[..., 0].mean(axis=(1, 2))
    np.testing.assert_allclose(cut_y.sum(axis=1), 1.0, rtol=1e-6)
    for i in range(6):
        assert np.all((cut_x[i] == x[i]) | from_partner[i])
        if share[i] > 0:
            partner = int(np.argmax(cut_y[i] * (np.arange(8) != i)))
            assert cut_y[i, partner] == pytest.approx(share[i], abs=1e-6)


def test_random_erasing_blanks_a_rectangle_and_checks_its_probability():
    faces = np.full((8, 48, 48), 128, np.uint8)
    erased = build_augmenter("none", erasing=1.0)(faces, np.random.default_rng(0))
    changed = (erased != faces)
    assert changed.any(axis=(1, 2)).all()  # p = 1: every face has its rectangle
    rows, cols = np.nonzero(changed[0])
    area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.02 * 48 * 48 * 0.5 <= area <= 0.25 * 48 * 48 * 1.1
    with pytest.raises(UserError, match="--erasing"):
        build_augmenter("crop_flip", erasing=1.5)


def test_warmup_then_cosine_over_the_remaining_epochs():
    config = Config(init_lr=0.01, lr_policy="cosine", nepochs=12, warmup_epochs=2)
    assert scheduled_lr(config, 2) == pytest.approx(0.01)
    assert scheduled_lr(config, 7) == pytest.approx(0.005)  # halfway through the 10 cosine epochs
    assert scheduled_lr(config.replace(warmup_epochs=0), 6) == pytest.approx(0.005)


def test_warmup_ramps_the_learning_rate_step_by_step(small_ferplus, tmp_path):
    fast_run(small_ferplus, tmp_path, "warm", "--nepochs", "2", "--warmup_epochs", "1", "--lr_policy", "cosine")
    history = pd.read_csv(tmp_path / "warm" / "training.csv")
    # The rate logged at the end of epoch 1 is the last warm-up step's, init_lr; then cosine over 1 epoch.
    assert history["learning_rate"].iloc[0] == pytest.approx(0.002, rel=1e-5)
    model = load_model_file(tmp_path / "warm" / "checkpoints" / "last.keras", compile=True)
    assert int(model.optimizer.iterations) == 2 * 4


def test_ema_weights_are_validated_checkpointed_and_resumed_exactly(small_ferplus, tmp_path):
    flags = ["--ema", "0.9", "--dropout_rate", "0.0"]
    # 2 epochs, resumed after the first: the average then differs from the raw weights (asserted below).
    fast_run(small_ferplus, tmp_path, "straight", "--nepochs", "2", *flags)
    fast_run(small_ferplus, tmp_path, "resumed", "--nepochs", "1", *flags)
    config, explicit = resolve(["--output_dir", str(tmp_path), "--name", "resumed", "--resume", "--nepochs", "2"])
    train(config, explicit)
    straight = pd.read_csv(tmp_path / "straight" / "training.csv")
    resumed = pd.read_csv(tmp_path / "resumed" / "training.csv")
    # Same process kind, same machine, same seeds: a resume that restored the raw weights and the average
    # continues bit for bit (a resume from the averaged weights would not).
    np.testing.assert_array_equal(straight[["loss", "val_loss"]].to_numpy(), resumed[["loss", "val_loss"]].to_numpy())

    # The checkpoint's model weights are the average: they reproduce the logged validation accuracy,
    # and they are not the raw weights the optimizer keeps beside them.
    model = load_model_file(tmp_path / "straight" / "checkpoints" / "last.keras", compile=True)
    from ferkeras.train.run import load_data
    config, _ = resolve(["--data_dir", str(small_ferplus), *FAST])
    _, (valid_x, valid_t) = load_data(config)
    logits = model.predict(valid_x.astype(np.float32)[..., None], verbose=0)
    accuracy = float(np.mean(logits.argmax(1) == valid_t.argmax(1)))
    assert accuracy == pytest.approx(straight["val_accuracy"].iloc[-1], abs=1 / len(valid_x))
    raw = model.optimizer._model_variables_moving_average
    assert any(not np.allclose(keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(r))
               for v, r in zip(model.optimizer._trainable_variables, raw))


def test_mix_with_multi_target_and_augmentation_under_the_cache_are_refused(small_ferplus, tmp_path):
    with pytest.raises(UserError, match="--mix cutmix"):
        fast_run(small_ferplus, tmp_path, "a", "--mix", "cutmix", "--training_mode", "multi_target")
    with pytest.raises(UserError, match="--cache_frozen"):
        fast_run(small_ferplus, tmp_path, "b", "--cache_frozen", "--freeze_before", "-5", "--ema", "0.99")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def two_runs(small_ferplus, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("members")
    fast_run(small_ferplus, tmp_path, "one", "--nepochs", "2", "--training_mode", "crossentropy")
    fast_run(small_ferplus, tmp_path, "two", "--nepochs", "2", "--seed", "7", "--mix", "mixup")
    return tmp_path


def test_distillation_blends_the_teachers_probabilities_and_reuses_them_on_resume(small_ferplus, two_runs, capsys):
    teachers = ["--teacher", str(two_runs / "one"), "--teacher", str(two_runs / "two"),
                "--distill_alpha", "1.0", "--distill_temperature", "2", "--distill_views", "2"]
    fast_run(small_ferplus, two_runs, "student", "--nepochs", "1", *teachers)
    run = two_runs / "student"
    probs = np.load(run / "distill" / "teacher_probs.npy")
    assert probs.shape == (2, 128, 8)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)

    # View 0 is the faces themselves: the stored probabilities are the teachers' mean softmax(scores / T).
    from ferkeras.train.run import load_data
    config, _ = resolve(["--data_dir", str(small_ferplus), *FAST])
    (train_x, _), _ = load_data(config)
    teacher_logits = [KerasPredictor(load_model_file(two_runs / r / "checkpoints" / "best_acc.keras")).logits(train_x)
                      for r in ("one", "two")]
    expected = np.mean([softmax(l / 2) for l in teacher_logits], axis=0)
    np.testing.assert_allclose(probs[0], expected, atol=1e-5)

    capsys.readouterr()
    config, explicit = resolve(["--output_dir", str(two_runs), "--name", "student", "--resume", "--nepochs", "2"])
    train(config, explicit)
    assert "reusing the teachers' probabilities" in capsys.readouterr().out


def test_distill_reaugment_gives_fresh_faces_each_epoch_with_the_teachers_targets_of_the_face(small_ferplus, two_runs):
    from ferkeras.train.distill import distilled_batches
    from ferkeras.train.run import load_data
    flags = ["--data_dir", str(small_ferplus), *FAST, "--augment", "ferplus", "--teacher", str(two_runs / "one"),
             "--distill_views", "1"]
    fast_run(small_ferplus, two_runs, "reaugmented", *flags[2:], "--distill_reaugment", "--nepochs", "1")
    run_dir = two_runs / "reaugmented"
    probs = np.load(run_dir / "distill" / "teacher_probs.npy")
    assert probs.shape == (1, 128, 8)  # one teacher pass: the faces themselves

    def first_batches(*extra):
        config, _ = resolve([*flags, *extra])
        train_set, _ = load_data(config)
        batches = distilled_batches(config, train_set, run_dir, 0, None)
        return train_set[0], [batches.batch(epoch, 0) for epoch in (0, 1)]

    faces, fixed = first_batches()
    _, fresh = first_batches("--distill_reaugment")
    for (x_fixed, y_fixed), (x_fresh, y_fresh) in zip(fixed, fresh):
        np.testing.assert_array_equal(y_fresh, y_fixed)  # the same blended targets, from the one scored view
        assert not np.array_equal(x_fresh, x_fixed)
    # Without it the student sees exactly the scored faces; with it, new draws of the recipe.
    def stored(x):
        return np.array([(faces == face[..., 0]).all(axis=(1, 2)).any() for face in x])
    assert all(stored(x).all() for x, _ in fixed)
    assert all(stored(x).mean() < 0.5 for x, _ in fresh)


def test_a_second_student_of_the_same_teachers_reuses_their_probabilities_and_a_changed_teacher_does_not(
        small_ferplus, two_runs, tmp_path, monkeypatch, capsys):
    from ferkeras.train import distill

    monkeypatch.setenv("FERKERAS_CACHE", str(tmp_path / "cache"))
    teacher = tmp_path / "teacher.keras"  # one path, two contents: the key must follow the bytes
    teacher.write_bytes((two_runs / "one" / "checkpoints" / "best_acc.keras").read_bytes())
    flags = ["--teacher", str(teacher), "--distill_views", "2", "--nepochs", "1"]
    fast_run(small_ferplus, tmp_path, "first", *flags)
    first = np.load(tmp_path / "first" / "distill" / "teacher_probs.npy")
    assert len(list((tmp_path / "cache" / "teachers").glob("*.npy"))) == 1

    def no_teacher(path, **_):
        raise AssertionError(f"the teacher {path} was run again")

    with monkeypatch.context() as patch:
        patch.setattr(distill, "load_predictor", no_teacher)
        capsys.readouterr()
        fast_run(small_ferplus, tmp_path, "second", *flags, "--init_lr", "0.001")  # another student recipe
    assert "teachers' probabilities of an earlier run" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "second" / "distill" / "teacher_probs.npy"), first)

    teacher.write_bytes((two_runs / "two" / "checkpoints" / "best_acc.keras").read_bytes())
    fast_run(small_ferplus, tmp_path, "third", *flags)
    third = np.load(tmp_path / "third" / "distill" / "teacher_probs.npy")
    assert np.abs(third - first).max() > 1e-3  # scored again by the new teacher, not read back
    assert len(list((tmp_path / "cache" / "teachers").glob("*.npy"))) == 2


def test_a_missing_teacher_is_refused_before_anything_loads(small_ferplus, tmp_path):
    with pytest.raises(UserError, match="no such run folder|no such model file"):
        fast_run(small_ferplus, tmp_path, "s", "--teacher", str(tmp_path / "absent.keras"))
    assert not (tmp_path / "s").exists()


def test_tta_views_are_the_face_its_mirror_and_five_crops():
    faces = np.arange(2 * 48 * 48, dtype=np.uint8).reshape(2, 48, 48)
    views = tta_views(faces, "crops")
    assert len(views) == 7
    np.testing.assert_array_equal(views[1], faces[:, :, ::-1])
    boxes = crop_boxes(48, 48)
    assert {side for _, _, side in boxes} == {43}
    np.testing.assert_array_equal(views[2], faces[:, :43, :43])
    np.testing.assert_array_equal(views[5], faces[:, 5:, 5:])
    assert len(tta_views(faces, "flip")) == 2 and len(tta_views(faces, "none")) == 1


def test_ensemble_evaluation_averages_the_members_probabilities(small_ferplus, two_runs, tmp_path):
    runs = [str(two_runs / "one"), str(two_runs / "two")]
    report = evaluate_command(run=runs, data_dir=str(small_ferplus), tta="flip", out=str(tmp_path / "ens"))
    assert report["members"] == [str(two_runs / r / "checkpoints" / "best_acc.keras") for r in ("one", "two")]
    assert len(report["member_accuracy"]) == 2
    saved = json.loads((tmp_path / "ens" / "eval_valid.json").read_text())
    assert saved["metrics"]["accuracy"] == report["metrics"]["accuracy"]

    # The same average, computed here from the members themselves.
    from ferkeras.evaluate.report import load_eval_split
    faces, labels, _ = load_eval_split(str(small_ferplus), "valid")
    members = [KerasPredictor(load_model_file(p)) for p in report["members"]]
    mean = np.mean([predict_probabilities(m, faces, "flip")[1] for m in members], axis=0)
    assert report["metrics"]["accuracy"] == pytest.approx(float(np.mean(mean.argmax(1) == labels)))
    ensemble = EnsemblePredictor(members)
    np.testing.assert_allclose(softmax(ensemble.logits(faces)),
                               np.mean([softmax(m.logits(faces)) for m in members], axis=0), atol=1e-5)


def test_exported_ensemble_with_tta_is_one_contract_file_that_matches_keras(two_runs, small_ferplus, tmp_path):
    from ferkeras.deploy.contract import check_onnx_contract
    from ferkeras.export.ensemble import averaged_model
    from ferkeras.export.onnx import export_onnx

    members = [load_model_file(two_runs / r / "checkpoints" / "best_acc.keras") for r in ("one", "two")]
    combined = averaged_model(members, "crops")
    report = export_onnx(combined, tmp_path / "ensemble.onnx", data_dir=str(small_ferplus))
    info = check_onnx_contract(tmp_path / "ensemble.onnx")
    # Both members are in the file (tf2onnx folds BatchNorm statistics into convolutions, so a few fewer).
    assert 1.9 * members[0].count_params() < info["parameters"] <= sum(m.count_params() for m in members)
    assert report["parity"]["top1_agreement"] == 1.0


def test_weight_average_export_is_one_network_with_the_members_mean_weights(two_runs, small_ferplus, tmp_path):
    from ferkeras.commands.export import main as export_main
    from ferkeras.deploy.contract import ContractSession, check_onnx_contract, load_onnx, to_contract_input

    paths = [two_runs / r / "checkpoints" / "best_acc.keras" for r in ("one", "two")]
    members = [load_model_file(p) for p in paths]
    out = tmp_path / "soup.onnx"
    export_main(["--run", str(two_runs / "one"), "--run", str(two_runs / "two"), "--average", "weights",
                 "--out", str(out), "--data_dir", str(small_ferplus)])
    soup = load_model_file(tmp_path / "soup.keras")
    for layer in soup.layers:
        for got, *theirs in zip(layer.get_weights(), *(m.get_layer(layer.name).get_weights() for m in members)):
            if got.dtype.kind == "f":
                np.testing.assert_allclose(got, np.mean(theirs, axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(members[0].get_layer("logits").get_weights()[0],
                           members[1].get_layer("logits").get_weights()[0])  # so the mean is a third network
    # One member's size, not two, with the first run's recipe in its metadata, and the file scores what
    # the averaged Keras model does.
    assert check_onnx_contract(out)["parameters"] < 1.1 * members[0].count_params()
    metadata = {p.key: p.value for p in load_onnx(out).metadata_props}
    assert metadata["config.model_name"] == "FerNetS" and metadata["config.training_mode"] == "crossentropy"
    assert metadata["config.average"] == "weights" and metadata["config.members"] == ",".join(map(str, paths))
    from ferkeras.evaluate.report import load_eval_split
    contract_faces = to_contract_input(load_eval_split(str(small_ferplus), "valid")[0][:32])  # (N, 1, 64, 64)
    keras_logits = soup(np.transpose(contract_faces, (0, 2, 3, 1)), training=False)
    np.testing.assert_allclose(softmax(ContractSession(out).logits(contract_faces)),
                               softmax(keras.ops.convert_to_numpy(keras_logits)), atol=1e-4)


def test_weight_average_refuses_members_it_cannot_average(two_runs, tmp_path):
    from ferkeras.commands.export import main as export_main
    from ferkeras.export.weight_average import average_weights

    small, larger = build_model("FerNetS", weights="none"), build_model("FerNetSD", weights="none")
    with pytest.raises(UserError, match="FerNetSD.keras: its layers differ from FerNetS.keras's"):
        average_weights([small, larger], names=["FerNetS.keras", "FerNetSD.keras"])
    with pytest.raises(UserError, match="at least two members"):
        export_main(["--run", str(two_runs / "one"), "--average", "weights"])
    onnx_member = tmp_path / "member.onnx"
    onnx_member.write_bytes(b"not read")
    with pytest.raises(UserError, match="member.onnx: --average weights needs Keras members"):
        export_main(["--run", str(two_runs / "one"), "--model", str(onnx_member), "--average", "weights",
                     "--out", str(tmp_path / "soup.onnx")])
    assert not (tmp_path / "soup.onnx").exists() and not (tmp_path / "soup.keras").exists()


def test_contract_round_trip_shows_the_keras_model_what_its_exported_file_sees(small_ferplus, tmp_path):
    from ferkeras.deploy.contract import ContractSession, to_contract_input
    from ferkeras.evaluate.report import load_eval_split
    from ferkeras.export.onnx import export_onnx
    from ferkeras.train.run import new_model

    faces = load_eval_split(str(small_ferplus), "valid")[0][:32]
    model = new_model(resolve([*FAST, "--contract_round_trip"])[0])
    assert model.get_layer("preprocess").via_size == 64
    export_onnx(model, tmp_path / "model.onnx", faces=faces)
    deployed = ContractSession(tmp_path / "model.onnx").logits(to_contract_input(faces))
    keras_logits = lambda m: keras.ops.convert_to_numpy(m(faces.astype(np.float32)[..., None], training=False))
    # The same weights without the round trip see the sharper 48 px faces, not the deployed ones.
    plain = build_model("FerNetS", weights="none", dropout_rate=0.0)
    plain.set_weights(model.get_weights())
    assert np.abs(softmax(keras_logits(plain)) - softmax(deployed)).max() > 10 * np.abs(
        softmax(keras_logits(model)) - softmax(deployed)).max()
    np.testing.assert_allclose(softmax(keras_logits(model)), softmax(deployed), atol=1e-5)


def test_an_ensemble_with_a_bfloat16_member_exports_as_a_float32_contract_file(small_ferplus, tmp_path):
    from ferkeras.deploy.contract import check_onnx_contract
    from ferkeras.export.ensemble import averaged_model
    from ferkeras.export.onnx import export_onnx
    from ferkeras.train.distribute import precision_policy

    with precision_policy(resolve(["--mixed_precision", "bfloat16"])[0]):
        mixed = build_model("FerNetS", weights="none")
    assert mixed.get_layer("logits").dtype_policy.name == "float32" and any(
        layer.dtype_policy.name == "mixed_bfloat16" for layer in mixed.layers)
    combined = averaged_model([mixed, build_model("FerNetS", weights="none")])
    report = export_onnx(combined, tmp_path / "ensemble.onnx", data_dir=str(small_ferplus))
    assert check_onnx_contract(tmp_path / "ensemble.onnx")["parameters"] > mixed.count_params()
    assert report["parity"]["top1_agreement"] == 1.0


def test_the_documented_flag_table_is_the_option_table():
    from pathlib import Path

    from ferkeras.train.config import options_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    assert options_markdown() in docs, "regenerate the table in docs/training.md with ferkeras.train.config.options_markdown()"
