"""The benchmark scripts: FLOP counting against hand-computed numbers, the arithmetic of their reports, and
each script run end to end with tiny settings on real faces (figures are not asserted: they are timings)."""
import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import ferkeras
from ferkeras.errors import UserError

keras = ferkeras.import_keras_quietly()

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = "VGG13@16"  # the smallest model train.py builds: seconds per run on 2 cores


def load_script(name):
    """Import benchmarks/<name>.py as a module (the folder is scripts, not a package)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_script("common")
train_speed = load_script("train_speed")


def tiny_model():
    """8x8x1 -> conv 3x3 to 4 (same) -> depthwise 3x3 stride 2 -> separable 3x3 to 6 (valid) -> 1x1 conv
    to 6 in 2 groups -> batch norm -> flatten -> dense 5. Multiply-adds per image, by hand:
      conv       8*8 positions * 3*3*1*4               = 2304
      depthwise  4*4 positions * 3*3*4                 =  576
      separable  2*2 positions * (3*3*4 + 1*1*4*6)     =  240
      grouped    2*2 positions * 1*1*(6/2)*6           =   72
      dense      24 inputs * 5                         =  120
    """
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="depthwise")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="valid", name="separable")(x)
    x = keras.layers.Conv2D(6, 1, groups=2, name="grouped")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5, name="dense")(x)
    return keras.Model(inputs, outputs)


HAND_MACS = {"conv": 2304, "depthwise": 576, "separable": 240, "grouped": 72, "bn": 0, "dense": 120}


def test_layer_macs_match_hand_counts():
    model = tiny_model()
    counted = {layer.name: common.layer_macs(layer) for layer in model.layers if layer.name in HAND_MACS}
    assert counted == HAND_MACS
    assert common.forward_flops(model) == 2 * sum(HAND_MACS.values()) == 6624


def test_transposed_convolution_counts_input_positions():
    inputs = keras.Input((4, 4, 2))
    up = keras.layers.Conv2DTranspose(3, 2, strides=2, name="up")
    model = keras.Model(inputs, up(inputs))
    # 4*4 input positions, each scattering a 2x2x(2->3) kernel of 24 multiply-adds: the 8x8 output has
    # exactly one contribution per output value and input channel.
    assert common.layer_macs(up) == 16 * 24 == 8 * 8 * 3 * 2
    assert common.forward_flops(model) == 768


def test_training_flops_follow_the_freezing_convention():
    model = tiny_model()
    assert common.training_flops(model) == 3 * 6624
    model.get_layer("conv").trainable = False  # a frozen prefix runs forward only
    assert common.training_flops(model) == 2 * (2304 + 3 * (576 + 240 + 72 + 120))
    model.get_layer("conv").trainable = True
    model.get_layer("dense").trainable = False  # frozen after a trainable layer: its input gradient remains
    assert common.training_flops(model) == 2 * (3 * (2304 + 576 + 240 + 72) + 2 * 120)


def test_flops_of_a_ferkeras_model_agree_with_tensorflows_profiler():
    from ferkeras.models.registry import build_model

    model = build_model("VGG13", weights="none", image_size=32)
    profiled = common.profiler_flops(model, (48, 48))
    assert profiled["Conv2D"] + profiled["MatMul"] == common.forward_flops(model)
    # What the convention leaves out (bias, resize arithmetic, pooling...) is small.
    assert sum(profiled.values()) < 1.01 * common.forward_flops(model)


def test_an_unfixed_image_size_is_refused():
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs))
    with pytest.raises(ferkeras.errors.UserError, match="conv.*not fixed"):
        common.forward_flops(model)


def test_matmul_rate_is_a_rate_of_2n3_flops(monkeypatch):
    import time

    wall = iter(np.arange(0, 100, 0.5))  # every timed product takes exactly 0.5 s of wall time
    cpu = iter(np.arange(0, 100, 0.8))  # and 0.8 s of CPU time (its threads share cores with others)
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(wall)))
    monkeypatch.setattr(time, "process_time", lambda: float(next(cpu)))
    per_wall_s, per_cpu_s = common.matmul_rate(n=64, warmup=1, repeats=3)
    assert per_wall_s == pytest.approx(2 * 64 ** 3 / 0.5 / 1e9)
    assert per_cpu_s == pytest.approx(2 * 64 ** 3 / 0.8 / 1e9)


def test_config_specs():
    assert train_speed.parse_spec("ResNet50@64:-51") == ("ResNet50", 64, -51)
    assert train_speed.parse_spec("FaceNet") == ("FaceNet", 0, 0)
    assert train_speed.parse_spec("VGG13:3") == ("VGG13", 0, 3)
    with pytest.raises(ferkeras.errors.UserError, match="MODEL"):
        train_speed.parse_spec("ResNet50@big")


def test_epoch_figures_and_rates_from_a_timeline():
    # Epoch 1 ends at t=10; epoch 2 begins at 10.5, steps end at 12, 13, 14, 15, validation runs 15-16,
    # the epoch-end callbacks end at 17. CPU time runs at twice the wall clock (2 busy cores) from 100.
    def marks(**wall):
        return {**wall, **{f"cpu_{name}": 100 + 2 * t for name, t in wall.items()}}

    def steps(*ends):
        return {"batch_ends": list(ends), "cpu_batch_ends": [100 + 2 * t for t in ends]}

    record = [{**steps(5.0), **marks(begin=0.0, test_begin=6.0, test_end=9.0, end=10.0)},
              {**steps(12.0, 13.0, 14.0, 15.0), **marks(begin=10.5, test_begin=15.0, test_end=16.0, end=17.0)}]
    epoch = train_speed.epoch_figures(record, batch_size=10)
    assert epoch == {"steps": 4, "gap_before_epoch_s": 0.5, "first_step_s": 1.5, "step_median_s": 1.0,
                     "train_s": 4.5, "validation_s": 1.0, "epoch_end_callbacks_s": 1.0, "epoch_wall_s": 6.5,
                     "train_images": 40, "cpu_step_median_s": 2.0, "cpu_train_s": 9.0, "cpu_validation_s": 2.0, "cpu_epoch_s": 13.0,
                     "cpu_cycle_s": 14.0}
    row = {**epoch, "batch_size": 10, "bare_step_s": 1.0, "bare_step_cpu_s": 1.5, "valid_images": 5,
           "training_gflop": 3.0, "forward_gflop": 1.0, "matmul_bare_gflops": 60.0, "matmul_e2e_gflops": 50.0,
           "matmul_bare_gflop_per_cpu_s": 40.0, "matmul_e2e_gflop_per_cpu_s": 30.0}
    rates = train_speed.rates(row)
    assert rates["bare_img_s"] == 10.0
    assert rates["bare_fraction"] == pytest.approx(10 * 3.0 / 60)
    # 40 training images x 3 GFLOP + 5 validation images x 1 GFLOP over 7 s (gap + epoch), against 50.
    assert rates["e2e_fraction"] == pytest.approx((40 * 3 + 5) / 7 / 50)
    assert rates["e2e_img_s"] == pytest.approx(40 / 7)
    # Beyond 4 one-second steps and 1 s of validation, the 7 s cycle spent 2 s once per epoch.
    assert rates["fixed_per_epoch_s"] == pytest.approx(2.0)
    assert rates["epoch_vs_steps"] == pytest.approx((6.5 - 1) / 4)
    full_steps = math.ceil(25045 / 10)
    full_s = full_steps * 1.0 + 1.0 * 3191 / 5 + 2.0
    assert rates["full_epoch_projected_s"] == pytest.approx(full_s)
    assert rates["full_epoch_fraction"] == pytest.approx((25045 * 3 + 3191) / full_s / 50)
    assert rates["bare_cpu_fraction"] == pytest.approx(10 * 3.0 / 1.5 / 40)
    assert rates["e2e_cpu_fraction"] == pytest.approx((40 * 3 + 5) / 14 / 30)
    assert rates["epoch_cpu_vs_steps"] == pytest.approx((13 - 2) / (4 * 1.5))
    assert rates["loop_cpu_per_step_s"] == pytest.approx(2.0 - 1.5)
    assert rates["cpu_fixed_per_epoch_s"] == pytest.approx(14 - 4 * 2.0 - 2.0)


def test_format_table():
    table = common.format_table((("name", "a", None), ("rate", "b", "{:.1f}")), [{"a": "x", "b": 2.25}, {"a": "y"}])
    assert table.splitlines() == ["| name | rate |", "|---|---|", "| x | 2.2 |", "| y |  |"]


# ----------------------------------------------------------------------------- the scripts, tiny settings

@pytest.fixture(scope="module")
def train_report(small_ferplus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "train_speed.json"
    train_speed.main(["--data_dir", str(small_ferplus), "--configs", TINY, "--batch_size", "8",
                      "--step_seconds", "0", "--epoch_seconds", "0", "--min_epoch_steps", "3",
                      "--matmul_size", "256", "--matmul_repeats", "1", "--out", str(out)])
    return json.loads(out.read_text())


def test_train_speed_runs_train_py_and_reports_every_figure(train_report):
    (row,) = train_report["results"]
    assert train_report["benchmark"] == "train_speed" and TINY in train_report["command"]
    assert row["config"] == TINY and row["steps"] == 3 and row["train_images"] == 24
    assert row["valid_images"] == round(24 * 3191 / 25045)
    assert row["bare_steps_timed"] == 3 and len(row["matmul_gflops_before_between_after"]) == 3
    # The whole model is trainable, so training FLOPs are 3x forward.
    assert row["training_gflop"] == pytest.approx(3 * row["forward_gflop"])
    assert 0 < row["train_s"] <= row["epoch_wall_s"]
    assert row["epoch_wall_s"] >= row["validation_s"] + row["epoch_end_callbacks_s"]
    assert 0 < row["cpu_validation_s"] < row["cpu_epoch_s"] < row["cpu_cycle_s"]
    for key in ("bare_fraction", "e2e_fraction", "full_epoch_fraction", "epoch_vs_steps", "bare_img_s",
                "bare_cpu_fraction", "e2e_cpu_fraction", "epoch_cpu_vs_steps"):
        assert math.isfinite(row[key]) and row[key] > 0
    assert row["load_before"] >= 0 and row["load_after"] >= 0


def test_train_speed_measures_mixed_precision_as_train_py_runs_it(small_ferplus, tmp_path):
    out = tmp_path / "train_speed.json"
    train_speed.main(["--data_dir", str(small_ferplus), "--configs", TINY, "--batch_size", "8",
                      "--mixed_precision", "bfloat16", "--step_seconds", "0", "--epoch_seconds", "0",
                      "--min_epoch_steps", "3", "--matmul_size", "256", "--matmul_repeats", "1", "--out", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert (row["precision"], row["bare_step_policy"]) == ("bfloat16", "mixed_bfloat16")
    assert row["steps"] == 3 and row["e2e_img_s"] > 0
    assert keras.config.dtype_policy().name == "float32"  # restored for whatever runs next


def test_pipeline_speed_compares_with_the_training_step(small_ferplus, train_report, tmp_path):
    pipeline_speed = load_script("pipeline_speed")
    train_json = tmp_path / "train.json"
    train_json.write_text(json.dumps(train_report))
    out = tmp_path / "pipeline.json"
    pipeline_speed.main(["--data_dir", str(small_ferplus), "--recipes", "crop_flip", "ferplus", "--batch_size", "8",
                         "--seconds", "0", "--max_batches", "3", "--step_config", TINY, "--train_json",
                         str(train_json), "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [row["augment"] for row in rows] == ["crop_flip", "ferplus"]
    step_img_s = train_report["results"][0]["bare_img_s"]
    for row in rows:
        assert row["batches"] == 2 and row["step_img_s"] == step_img_s  # at least 2 batches, whatever the time
        assert row["headroom"] == pytest.approx(row["pipeline_img_s"] / step_img_s)


def test_pipeline_speed_refuses_a_report_without_the_config(small_ferplus, train_report, tmp_path):
    pipeline_speed = load_script("pipeline_speed")
    train_json = tmp_path / "train.json"
    train_json.write_text(json.dumps(train_report))
    with pytest.raises(ferkeras.errors.UserError, match="no row for 'ResNet50@64'"):
        pipeline_speed.main(["--data_dir", str(small_ferplus), "--recipes", "none", "--max_batches", "2",
                             "--train_json", str(train_json), "--out", str(tmp_path / "p.json")])


def test_export_time_then_inference_speed(small_ferplus, tmp_path):
    export_time = load_script("export_time")
    inference_speed = load_script("inference_speed")
    exports = tmp_path / "exports"
    export_time.main(["--data_dir", str(small_ferplus), "--configs", TINY, "--out_dir", str(exports),
                      "--out", str(tmp_path / "export.json")])
    (row,) = json.loads((tmp_path / "export.json").read_text())["results"]
    assert row["export_s"] > row["parity_s"] > 0 and row["max_softmax_diff"] < 1e-4
    folder = Path(row["folder"])
    assert sorted(p.name for p in folder.iterdir()) == ["model.keras", "model.onnx"]

    inference_speed.main(["--run", str(folder), "--data_dir", str(small_ferplus), "--repeats", "1",
                          "--eval_faces", "40"])
    report = json.loads((folder / "inference_speed.json").read_text())
    assert [r["runtime"] for r in report["results"]] == ["onnxruntime", "keras"]
    assert all(r["eval_faces"] == 40 and r["eval_img_s"] > 0 for r in report["results"])
    assert report["onnx_batch64_img_s"] == report["results"][0]["batch64_img_s"]

    # An exported ensemble has no model.keras: --onnx_only times the file alone.
    (folder / "model.keras").unlink()
    with pytest.raises(ferkeras.errors.UserError, match="model.keras: not found.*--onnx_only"):
        inference_speed.main(["--run", str(folder), "--data_dir", str(small_ferplus)])
    inference_speed.main(["--run", str(folder), "--data_dir", str(small_ferplus), "--repeats", "1",
                          "--eval_faces", "40", "--onnx_only"])
    report = json.loads((folder / "inference_speed.json").read_text())
    assert [r["runtime"] for r in report["results"]] == ["onnxruntime"] and "keras_batch1_ms" not in report


def test_inference_speed_names_a_missing_export(small_ferplus, tmp_path):
    inference_speed = load_script("inference_speed")
    with pytest.raises(ferkeras.errors.UserError, match="model.onnx: not found"):
        inference_speed.main(["--run", str(tmp_path), "--data_dir", str(small_ferplus)])


def test_stack_step_compares_models_of_the_same_arithmetic():
    stack_step = load_script("stack_step")
    theirs, their_input = stack_step.keras_resnet50(32)
    ours, our_input = stack_step.ferkeras_resnet50(32, batch_size=2)
    assert their_input == (32, 32, 3) and our_input == (48, 48, 1)
    # Same convolutions and head: the fractions of the two rows are comparable image for image.
    assert common.training_flops(ours) == pytest.approx(common.training_flops(theirs), rel=1e-9)


def test_stack_step_refuses_impossible_settings():
    stack_step = load_script("stack_step")
    with pytest.raises(ferkeras.errors.UserError, match="--image_size: at least 32"):
        stack_step.main(["--image_size", "16"])


def test_batchnorm_step_times_fernet_with_both_batchnorms_and_reports_the_ratio(tmp_path):
    from ferkeras.models.batchnorm import FusedBatchNormalization

    batchnorm_step = load_script("batchnorm_step")
    with batchnorm_step.keras_batchnorm():
        baseline = batchnorm_step.build("FerNetS", 4, "none", fused=False)
    fused = batchnorm_step.build("FerNetS", 4, "none", fused=True)
    kinds = [{type(layer) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
             for model in (baseline, fused)]
    assert kinds == [{keras.layers.BatchNormalization}, {FusedBatchNormalization}]
    assert baseline.count_params() == fused.count_params()

    out = tmp_path / "bn.json"
    rows = batchnorm_step.main(["--model_names", "FerNetS", "--batch_size", "4", "--rounds", "2", "--steps", "1",
                                "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "batchnorm_step" and report["results"] == rows
    row = rows[0]
    assert row["keras_img_s"] > 0 and row["fused_img_s"] > 0 and row["speedup"] > 0
    with pytest.raises(UserError, match="--model_names: expected some of FerNetS"):
        batchnorm_step.main(["--model_names", "ResNet50"])


def test_framing_and_speed_benchmarks_report_both_detectors(ferplus_dir, small_ferplus, models, yunet_model,
                                                             tmp_path):
    """benchmarks/face_framing.py and predict_speed.py, tiny, on real faces with a stand-in model."""
    from ferkeras.deploy.predict import make_detector
    from tests.helpers import REAL_FERPLUS

    if Path(ferplus_dir) != REAL_FERPLUS:
        pytest.skip("the benchmarks measure real faces")
    load_script("face_framing").main(["--data_dir", str(small_ferplus), "--faces", "12",
                                         "--out", str(tmp_path / "framing.json")])
    framing = json.loads((tmp_path / "framing.json").read_text())
    assert [d["detector"] for d in framing["detectors"]] == ["haar", "yunet"]
    assert all(d["framed"] >= 6 and 0.7 < d["ratio_quartiles"][1] < 1.4 for d in framing["detectors"]), framing
    load_script("predict_speed").main(["--model", str(models["dynamic"]), "--data_dir", str(small_ferplus),
                                          "--pictures", "4", "--out", str(tmp_path / "speed.json")])
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert [r["detector"] for r in speed["models"]] == ["yunet", "haar"]
    for result in speed["models"]:
        scores = result["by_margin"][str(make_detector(detector=result["detector"]).ferplus_margin)]
        assert result["pictures"] == 4 and scores["found_faces"] + scores["false_detections"] == result["faces_found"]


def test_suite_time_reports_every_test_and_pytests_exit_status(tmp_path):
    suite_time = load_script("suite_time")
    (tmp_path / "test_a.py").write_text("import time\n\ndef test_sleeps():\n    time.sleep(0.2)\n\n"
                                        "def test_works():\n    sum(range(10 ** 6))\n")
    (tmp_path / "test_b.py").write_text("def test_fails():\n    assert False\n")
    out = tmp_path / "suite_time.json"
    status = suite_time.main(["--repo", str(tmp_path), "--pytest_args", "test_a.py test_b.py", "--out", str(out)])
    assert status == 1  # pytest's own: one test failed
    report = json.loads(out.read_text())
    results = report["results"]
    assert results["pytest"].startswith("1 failed, 2 passed")
    assert [row["test"] for row in results["tests"]] == ["test_a.py::test_sleeps", "test_a.py::test_works",
                                                        "test_b.py::test_fails"]
    assert [row["outcome"] for row in results["tests"]] == ["passed", "passed", "failed"]
    assert [line.split(" - ")[0] for line in results["failures"]] == ["FAILED test_b.py::test_fails"]
    assert "assert False" in results["tests"][2]["failure"] and "failure" not in results["tests"][0]
    sleeps = results["tests"][0]
    assert sleeps["wall_s"] >= 0.2 and sleeps["cpu_s"] < sleeps["wall_s"]  # sleeping costs no CPU
    files = {row["file"]: row for row in results["per_file"]}
    assert files["test_a.py"]["tests"] == 2 and files["test_b.py"]["tests"] == 1
    assert files["test_a.py"]["wall_s"] == pytest.approx(sum(r["wall_s"] for r in results["tests"][:2]))
    assert results["wall_s"] >= sum(r["wall_s"] for r in results["tests"])
    assert "--pytest_args 'test_a.py test_b.py'" in report["command"]
    # In two pytest-xdist workers (pytest.ini's -n 2) each worker writes its own rows: all come back.
    suite_time.main(["--repo", str(tmp_path), "--pytest_args", "-n 2 test_a.py test_b.py", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert results["pytest"].startswith("1 failed, 2 passed")
    assert sorted((row["test"], row["outcome"]) for row in results["tests"]) == [
        ("test_a.py::test_sleeps", "passed"), ("test_a.py::test_works", "passed"), ("test_b.py::test_fails", "failed")]


def test_ablation_trains_each_row_once_scores_it_and_tabulates_it(small_ferplus, tmp_path, capsys, monkeypatch):
    import subprocess

    import yaml

    ablation = load_script("ablation")
    out, runs = tmp_path / "ablation.json", tmp_path / "runs"
    argv = ["--data_dir", str(small_ferplus), "--rows", "recipe,label_smoothing", "--nepochs", "3",
            "--train_limit", "48", "--output_dir", str(runs), "--out", str(out)]
    assert ablation.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["recipe", "label_smoothing"]
    for row, smoothing in (("recipe", 0.0), ("label_smoothing", 0.1)):
        result = results[row]
        assert result["command"].startswith("python train.py --config configs/fernet_small.yaml")
        config = yaml.safe_load((runs / f"ablation-{row}" / "config.yaml").read_text())
        assert (config["model_name"], config["nepochs"], config["train_limit"]) == ("FerNetS", 3, 48)
        assert config["label_smoothing"] == smoothing and config["training_mode"] == "crossentropy"
        assert set(result["scores"]) == {"plain", "flip", "crops", "exported"} and 1 <= result["best_epoch"] <= 3
        assert result["scores"]["plain"]["n"] == result["scores"]["crops"]["n"] > 0 and result["minutes"] > 0
        # The exported file is what was scored: the deployed figure, on faces enlarged to 64 px.
        assert (runs / f"ablation-{row}" / "model.onnx").is_file()
        assert result["scores"]["exported"]["n"] == result["scores"]["plain"]["n"]
    printed = capsys.readouterr().out
    delta = 100 * (results["label_smoothing"]["scores"]["plain"]["accuracy"] -
                   results["recipe"]["scores"]["plain"]["accuracy"])
    (line,) = [line for line in printed.splitlines() if line.startswith("| + label smoothing 0.1 |")]
    assert f"| {delta:+.2f} |" in line and line.endswith("| --label_smoothing 0.1 |")
    assert f"| {results['label_smoothing']['scores']['exported']['accuracy']:.2%} |" in line

    # A report from before the ONNX column gets only that column measured: the other scores are kept.
    report = json.loads(out.read_text())
    del report["results"]["recipe"]["scores"]["exported"]
    report["results"]["recipe"]["scores"]["plain"]["accuracy"] = 0.5
    out.write_text(json.dumps(report))
    assert ablation.main(argv) == 0
    recipe = json.loads(out.read_text())["results"]["recipe"]["scores"]
    assert recipe["plain"]["accuracy"] == 0.5 and recipe["exported"] == results["recipe"]["scores"]["exported"]

    # Finished rows are neither trained nor scored again; a row stopped half-way resumes.
    state = runs / "ablation-recipe" / "state.json"
    before = state.stat().st_mtime_ns
    assert ablation.main(argv) == 0
    assert state.stat().st_mtime_ns == before
    assert json.loads(out.read_text())["results"]["recipe"]["minutes"] == results["recipe"]["minutes"]
    state.write_text(json.dumps({**json.loads(state.read_text()), "epoch": 2, "finished": False}))
    commands = []
    monkeypatch.setattr(ablation.subprocess, "run",
                        lambda command, **_: commands.append(command) or subprocess.CompletedProcess(command, 0))
    ablation.main(argv[:3] + ["recipe"] + argv[4:])
    (command,) = commands
    assert command[-1] == "--resume" and "--overwrite" not in command


def test_the_ablation_distill_row_trains_on_the_given_teachers_and_refuses_to_run_without(tmp_path, monkeypatch):
    import subprocess

    ablation = load_script("ablation")
    out = tmp_path / "ablation.json"
    argv = ["--data_dir", "data", "--rows", "distill", "--output_dir", str(tmp_path / "runs"), "--out", str(out)]
    with pytest.raises(UserError, match="--rows distill needs its teachers: add --teacher"):
        ablation.main(argv)
    assert "distill" not in ablation.parse_args(["--data_dir", "data"]).rows  # every row but this one
    commands = []
    monkeypatch.setattr(ablation.subprocess, "run",
                        lambda command, **_: commands.append(command) or subprocess.CompletedProcess(command, 0))
    ablation.main([*argv, "--teacher", "runs/facenet", "--teacher", "models/small.onnx"])
    (command,) = commands
    flags = ["--teacher", "runs/facenet", "--teacher", "models/small.onnx", "--distill_views", "1", "--distill_reaugment"]
    assert command[-len(flags):] == flags and "--name" in command and "ablation-distill" in command
    assert json.loads(out.read_text())["results"]["distill"]["flags"] == flags


def test_ensemble_search_scores_every_subset_as_evaluate_does_and_infers_each_member_once(
        small_ferplus, tmp_path, capsys):
    import os

    from ferkeras.evaluate.report import evaluate_command

    search = load_script("ensemble_search")
    shipped = BENCHMARKS.parent / "models"
    # Copies, so that touching one below leaves the repository's files alone.
    members = []
    for name in ("ferplus-small.onnx", "ferplus-small.int8.onnx"):
        members.append(tmp_path / name)
        members[-1].write_bytes((shipped / name).read_bytes())
    out, probs = tmp_path / "search.json", tmp_path / "probs"
    argv = ["--data_dir", str(small_ferplus), "--model", str(members[0]), "--model", str(members[1]),
            "--tta", "flip", "--probs_dir", str(probs), "--out", str(out)]
    assert search.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("inferring") == 2
    rows = json.loads(out.read_text())["results"]
    assert sorted(len(row["members"]) for row in rows) == [1, 1, 2]
    plain_best = max(rows, key=lambda row: (row["accuracy"], -row["parameters"]))
    assert f"best without TTA: {' + '.join(plain_best['members'])}: {plain_best['accuracy']:.2%}" in printed
    assert [row["tta_accuracy"] for row in rows] == sorted((row["tta_accuracy"] for row in rows), reverse=True)
    for row in rows:
        paths = [str(tmp_path / name) for name in row["members"]]
        report = evaluate_command(model=paths if len(paths) > 1 else paths[0], data_dir=str(small_ferplus),
                                  tta="flip", out=str(tmp_path / "eval"))
        assert row["tta_accuracy"] == pytest.approx(report["metrics"]["accuracy"])
        assert row["accuracy"] == pytest.approx(report["metrics_without_tta"]["accuracy"])
    capsys.readouterr()

    # Called again, nothing is inferred; a member whose file changed is inferred again, alone.
    assert search.main(argv) == 0
    assert "inferring" not in capsys.readouterr().out
    os.utime(members[1], ns=(members[1].stat().st_atime_ns, members[1].stat().st_mtime_ns + 10**9))
    assert search.main(argv) == 0
    assert capsys.readouterr().out.count("inferring") == 1

    # --split_check: the choice made on one half of the faces, scored on the other, in --out and printed.
    assert search.main([*argv, "--split_check", "3"]) == 0
    check = json.loads(out.read_text())["split_check"]
    assert check["repeats"] == 3 and set(check) == {"repeats", "without_tta", "tta"}
    assert f"all 2 members together {check['tta']['all_members']:.2%} (3 random halves)" in capsys.readouterr().out

    # --show prints the best rows only; --out keeps them all.
    assert search.main([*argv, "--show", "1"]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 3 and table[2].startswith(f"| {' + '.join(rows[0]['members'])} |")  # header, rule, row
    assert "(2 more rows in " in printed
    assert len(json.loads(out.read_text())["results"]) == 3

    with pytest.raises(ferkeras.errors.UserError, match="expected 2 to 12 models, got 1"):
        search.main(argv[:4] + argv[6:])
    with pytest.raises(ferkeras.errors.UserError, match="--show: expected a number of rows of at least 1, got 0"):
        search.main([*argv, "--show", "0"])
    with pytest.raises(ferkeras.errors.UserError, match="--split_check: expected a number of random halves"):
        search.main([*argv, "--split_check", "-1"])
    # Files of the same name (every run's model.onnx) are told apart by their folders.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.onnx").write_bytes(members[0].read_bytes())
    args = search.parse_args(["--data_dir", "d", "--model", str(tmp_path / "a" / "model.onnx"),
                              "--model", str(tmp_path / "b" / "model.onnx"), "--model", str(members[1])])
    assert search.member_files(args)[0] == ["a/model.onnx", "b/model.onnx", "ferplus-small.int8.onnx"]


def test_ensemble_split_check_scores_the_choice_on_faces_it_was_not_made_on():
    search = load_script("ensemble_search")
    labels = np.arange(800) % 8
    right, wrong = np.eye(8)[labels], np.eye(8)[(labels + 1) % 8]
    # Member 0 is right on every face, member 1 on none; averaged, the tie goes to the lower class, so
    # the pair is right except where the label is 7 (contempt), on about 7/8 of either half.
    report = search.split_check([(right, right, 1), (wrong, wrong, 1)], labels, repeats=5)
    for which in ("without_tta", "tta"):
        assert report[which]["chosen_on_one_half"] == 1.0 and report[which]["chosen_sd"] == 0.0
        assert report[which]["all_members"] == pytest.approx(7 / 8, abs=0.04)
    # Members that guess: the best of their 255 subsets looks better than chance on the faces it was
    # chosen on, and the split check shows that it is not.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, size=2000)
    guesses = [(p, p, 1) for p in rng.dirichlet(np.ones(8), size=(8, 2000))]
    chosen_in_sample = max(np.mean(np.mean([guesses[i][0] for i in subset], axis=0).argmax(axis=1) == labels)
                           for size in range(1, 9) for subset in itertools.combinations(range(8), size))
    report = search.split_check(guesses, labels, repeats=30)
    held_out = report["without_tta"]["chosen_on_one_half"]
    assert chosen_in_sample > 0.14 and held_out < chosen_in_sample - 0.01 and held_out == pytest.approx(1 / 8, abs=0.01)
