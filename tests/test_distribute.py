"""--strategy, --mixed_precision, --jit_compile and the torch backend, on real FER+ faces.

Distributed runs need TensorFlow's devices and collectives configured before its runtime starts, so
each runs in fresh processes (`WORKER` below). They train a hand-made model without dropout or
BatchNorm: with those, replicas would draw other dropout masks or normalise over other batches, and
the distributed losses could not be compared with the single-device ones.
"""
import inspect
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest

from ferkeras.train import distribute
from ferkeras.train.config import Config, resolve
from ferkeras.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

def plain_model(*args, **kwargs):
    """Stands in for build_model: the model contract (raw faces in, float32 logits out), no dropout
    and no BatchNorm."""
    import keras
    from ferkeras.models.preprocess import FacePreprocess

    faces = keras.Input((None, None, 1), name="faces")
    x = FacePreprocess(16, "scale01", name="preprocess", dtype="float32")(faces)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(faces, keras.layers.Dense(8, name="logits", dtype="float32")(x))


WORKER = r'''
import json, os, sys
spec = json.loads(sys.argv[1])
import ferkeras
import tensorflow as tf
if spec.get("logical_cpus"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"])
from ferkeras.train import run as training
from ferkeras.train.config import resolve
''' + inspect.getsource(plain_model) + r'''
training.build_model = plain_model
histories = {}
for name, argv in spec["runs"].items():
    config, explicit = resolve(argv)
    result = training.train(config, explicit)
    if os.path.exists(result["run_dir"]):  # a non-chief worker's folder is gone
        histories[name] = {"run_dir": result["run_dir"], "csv": open(result["run_dir"] + "/training.csv").read()}
print("HISTORIES " + json.dumps(histories), flush=True)
'''

# SGD with momentum: Adam's first steps divide by tiny second moments and so magnify the last-bit
# differences between a reduction over one batch and a sum of two half-batch reductions.
# 65 validation faces leave one face for the last batch of 64: one replica would get none.
COMMON = ["--batch_size", "32", "--train_limit", "96", "--valid_limit", "65", "--class_weights", "none",
          "--augment", "crop_flip", "--optimizer", "SGD", "--momentum", "0.9", "--init_lr", "0.01",
          "--lr_policy", "constant", "--early_stopping_patience", "0", "--weights", "none"]


def run_worker(tmp_path, spec, env_extra=None):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(script), json.dumps(spec)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process, timeout=300):
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # a worker whose peer died waits on collectives for ever
        out, _ = process.communicate()
        pytest.fail(f"worker timed out:\n{out[-3000:]}")
    assert process.returncode == 0, out[-4000:]
    return out


def histories_of(out):
    line = next(line for line in out.splitlines() if line.startswith("HISTORIES "))
    runs = json.loads(line[len("HISTORIES "):])
    return {name: pd.read_csv(io.StringIO(run["csv"])) for name, run in runs.items()}


def args(data_dir, output_dir, name, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--name", name, *COMMON, *extra]


# Two replicas sum two half-batch reductions where one device makes one: the same arithmetic rounded
# in another order, float32's 2**-24 per operation, which SGD passes on in proportion (no BatchNorm,
# no dropout, no Adam to magnify it). Measured gap: 1.1e-7, one float32 step at these losses, for
# mirrored and for multiworker across its resume. The bound leaves a factor of 100 for other CPUs'
# kernels; a wrong split (doubled gradients, skipped or repeated faces) changes the steps themselves,
# whose 2 epochs move the loss by 3e-3 here, 200 times the bound.
SAME_ARITHMETIC_RTOL = 2.0 ** -16


def assert_same_training(actual, expected):
    assert list(actual["epoch"]) == list(expected["epoch"])
    # Near chance level, a face or two may flip its top class.
    for column in ("loss", "val_loss"):
        assert np.allclose(actual[column], expected[column], rtol=SAME_ARITHMETIC_RTOL, atol=0), \
            (column, actual, expected)
    for column in ("accuracy", "val_accuracy"):
        assert np.allclose(actual[column], expected[column], atol=3 / 64), (column, actual, expected)


@pytest.fixture(scope="module")
def one_device_and_mirrored(small_ferplus, tmp_path_factory):
    """The same 2-epoch run on one device and mirrored over 2 logical CPU devices, in one process."""
    tmp = tmp_path_factory.mktemp("mirrored")
    runs = {"one": args(small_ferplus, tmp / "runs", "one", "--nepochs", "2", "--strategy", "none"),
            "mirrored": args(small_ferplus, tmp / "runs", "mirrored", "--nepochs", "2", "--strategy", "mirrored")}
    out = finish(run_worker(tmp, {"logical_cpus": 2, "runs": runs}))
    return histories_of(out), out


def test_mirrored_on_two_devices_trains_like_one_device(one_device_and_mirrored):
    histories, out = one_device_and_mirrored
    assert "strategy: mirrored, 2 replicas over /device:CPU:0, /device:CPU:1; global batch 32 (16 per replica)" in out
    assert "strategy: none, 1 replica; global batch 32" in out
    assert "first batch: 16 + 16 faces on this worker's 2 replicas" in out
    assert histories["one"]["loss"].iloc[-1] < histories["one"]["loss"].iloc[0]  # it did train
    assert_same_training(histories["mirrored"], histories["one"])


def free_ports(count):
    """`count` distinct free ports: each socket stays bound until all are chosen, so the kernel
    cannot hand the same port out twice (two workers on one port: one fails, its peer waits)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def finish_workers(processes, timeout=300):
    """Every worker's output; if one hangs, all are killed and all their outputs reported, since the
    one that waits is rarely the one that failed."""
    deadline = time.monotonic() + timeout
    outs, hung = [], False
    for process in processes:
        try:
            outs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            hung = True
            process.kill()
            outs.append(process.communicate()[0])
    if hung or any(p.returncode != 0 for p in processes):
        report = "\n".join(f"--- worker {i} (exit {p.returncode}):\n{out[-3000:]}"
                           for i, (p, out) in enumerate(zip(processes, outs)))
        pytest.fail(("a worker timed out" if hung else "a worker failed") + ":\n" + report)
    return outs


def launch_workers(tmp_path, argv, ports):
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    return [run_worker(tmp_path, {"runs": {"run": argv}},
                       {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
            for i in range(len(ports))]


def test_multiworker_run_writes_one_checkpoint_set_and_resumes(small_ferplus, tmp_path, one_device_and_mirrored):
    output_dir = tmp_path / "runs"
    first = args(small_ferplus, output_dir, "mw", "--strategy", "multiworker", "--nepochs", "1")
    chief_out, worker_out = finish_workers(launch_workers(tmp_path, first, free_ports(2)))
    for out in (chief_out, worker_out):
        assert "strategy: multiworker, 2 replicas" in out
        assert "first batch: 16 faces on this worker's 1 replica" in out  # each worker gets its half
    scratch = re.search(r"not the chief: writing to (\S+)", worker_out).group(1)
    assert not Path(scratch).exists()  # the non-chief's private folder is gone
    assert "not the chief" not in chief_out
    assert sorted(p.name for p in output_dir.iterdir()) == ["mw"]
    assert sorted(p.name for p in (output_dir / "mw" / "checkpoints").iterdir()) == \
        ["best_acc.keras", "best_loss.keras", "last.keras"]

    resumed = args(small_ferplus, output_dir, "mw", "--strategy", "multiworker", "--nepochs", "2", "--resume")
    chief_out, worker_out = finish_workers(launch_workers(tmp_path, resumed, free_ports(2)))
    assert "resuming" in chief_out and "resuming" in worker_out
    history = pd.read_csv(output_dir / "mw" / "training.csv")
    # Each worker trains on its half of every global batch: together, and across the resume, exactly
    # the uninterrupted single-device run.
    histories, _ = one_device_and_mirrored
    assert_same_training(history, histories["one"])
    from ferkeras.models.weights import load_model_file

    last = load_model_file(output_dir / "mw" / "checkpoints" / "last.keras", compile=True)
    assert int(last.optimizer.iterations) == 2 * 96 // 32


# ----------------------------------------------------------------------------- in-process checks


def test_multiworker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="TF_CONFIG is not set"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}}')
    with pytest.raises(UserError, match="expected JSON with 'cluster' and 'task'"):
        distribute.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(UserError, match="task worker:3 is not in its cluster"):
        distribute.read_tf_config()


def test_validation_batches_leave_no_replica_empty():
    two = distribute.Placement("mirrored", strategy=SimpleNamespace(num_replicas_in_sync=2))
    assert distribute.validation_batch_size(64, 65, two) == 63  # 65 = 63 + 2: a face for each
    assert distribute.validation_batch_size(64, 128, two) == 64
    assert distribute.validation_batch_size(64, 3191, two) == 64  # 49 x 64 + 55
    one = distribute.Placement("none")
    assert distribute.validation_batch_size(64, 65, one) == 64


def test_chief_is_worker_zero_unless_a_chief_is_named():
    workers = {"worker": ["a:1", "b:1"]}
    assert distribute.is_chief_task({"cluster": workers, "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief_task({"cluster": workers, "task": {"type": "worker", "index": 1}})
    named = {"chief": ["c:1"], **workers}
    assert distribute.is_chief_task({"cluster": named, "task": {"type": "chief", "index": 0}})
    assert not distribute.is_chief_task({"cluster": named, "task": {"type": "worker", "index": 0}})


def test_auto_strategy_is_one_device_without_several_gpus():
    placement = distribute.place_run(Config(strategy="auto"))
    assert placement.name == "none" and placement.replicas == 1 and placement.chief


def test_mixed_precision_keeps_preprocessing_logits_and_variables_float32():
    from ferkeras.models.registry import build_model

    with distribute.precision_policy(Config(mixed_precision="bfloat16")):
        model = build_model("VGG13", weights="none", image_size=16, dropout_rate=0.0)
    assert keras.config.dtype_policy().name == "float32"  # restored for whatever is built next
    policies = {layer.name: layer.dtype_policy.name for layer in model.layers}
    assert policies["preprocess"] == policies["logits"] == "float32"
    assert policies["block1_conv1"] == policies["fc1"] == "mixed_bfloat16"
    assert {v.dtype for v in model.weights} == {"float32"}
    faces = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 1)).astype(np.float32)
    assert keras.ops.convert_to_numpy(model(faces)).dtype == np.float32


@pytest.fixture(scope="module")
def float16_run(small_ferplus, tmp_path_factory):
    """A float16 run of 1 epoch resumed for a second, in this process, with the plain model."""
    import ferkeras.train.run as training

    output_dir = tmp_path_factory.mktemp("f16") / "runs"
    argv = args(small_ferplus, output_dir, "f16", "--mixed_precision", "float16", "--train_limit", "64")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "build_model", plain_model)
        training.train(*resolve(argv + ["--nepochs", "1"]))
        result = training.train(*resolve(argv + ["--nepochs", "2", "--resume"]))
    return Path(result["run_dir"])


def test_float16_run_resumes_with_its_loss_scale(float16_run):
    from ferkeras.models.weights import load_model_file

    history = pd.read_csv(float16_run / "training.csv")
    assert list(history["epoch"]) == [0, 1] and np.isfinite(history["loss"]).all()
    # The loss-scale optimiser and its state come back only when the model is loaded under the
    # run's policy, as --resume does; otherwise Keras silently starts a fresh plain optimiser.
    with distribute.precision_policy(Config(mixed_precision="float16")):
        model = load_model_file(float16_run / "checkpoints" / "last.keras", compile=True)
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    assert int(model.optimizer.iterations) == 2 * 64 // 32
    assert model.get_layer("conv").dtype_policy.name == "mixed_float16"


def test_mixed_precision_checkpoint_exports_as_float32_with_parity(float16_run, small_ferplus, tmp_path):
    import onnx

    from ferkeras.data.ferplus import load_split
    from ferkeras.export.onnx import export_onnx
    from ferkeras.models.weights import load_model_file

    mixed = load_model_file(float16_run / "checkpoints" / "last.keras")
    model = distribute.float32_model(mixed)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    for a, b in zip(mixed.get_weights(), model.get_weights()):
        assert np.array_equal(a, b)
    faces = load_split(small_ferplus, "valid").images[:64]
    report = export_onnx(mixed, tmp_path / "model.onnx", faces=faces)  # export_onnx makes the float32 copy
    assert report["parity"]["max_softmax_diff"] < 1e-4 and report["parity"]["top1_agreement"] == 1.0
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    float32 = onnx.TensorProto.FLOAT
    assert all(t.data_type == float32 for t in graph.initializer if t.data_type in
               (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, float32))
    assert distribute.float32_model(model) is model  # a float32 model is left as it is


def test_jit_compile_is_off_unless_asked(small_ferplus, tmp_path, monkeypatch):
    import ferkeras.train.run as training
    from ferkeras.models.weights import load_model_file

    assert distribute.compile_options(resolve([])[0]) == {"jit_compile": False}
    monkeypatch.setattr(training, "build_model", plain_model)
    result = training.train(*resolve(args(small_ferplus, tmp_path, "xla", "--jit_compile", "--nepochs", "1",
                                          "--train_limit", "64")))
    assert np.isfinite(result["best_val_loss"])
    model = load_model_file(Path(result["run_dir"]) / "checkpoints" / "last.keras", compile=True)
    assert model.jit_compile is True


# ----------------------------------------------------------------------------- the torch backend

TORCH_RUN = r'''
import sys
import time
import numpy as np
import ferkeras
from ferkeras.train import distribute
from ferkeras.train.config import Config, resolve
from ferkeras.data.ferplus import load_split
from ferkeras.errors import UserError
from ferkeras.train.run import train
import keras
assert keras.backend.backend() == "torch"
try:
    distribute.place_run(Config(strategy="mirrored"))
except UserError as exc:
    print("REFUSED", exc)
result = train(*resolve(sys.argv[1:]))
model = keras.saving.load_model(result["run_dir"] + "/checkpoints/last.keras")
faces = load_split(sys.argv[2], "valid").images[:16].astype("float32")[..., None]
np.save(result["run_dir"] + "/torch_logits.npy", keras.ops.convert_to_numpy(model.predict(faces, verbose=0)))
print("RUN", result["run_dir"])
'''


def torch_python():
    """A Python with torch and this project's requirements: $FERKERAS_TORCH_PYTHON, else this one."""
    candidate = os.environ.get("FERKERAS_TORCH_PYTHON", sys.executable)
    found = subprocess.run([candidate, "-c", "import torch"], capture_output=True).returncode == 0
    return candidate if found else None


@pytest.mark.skipif(torch_python() is None, reason="torch is not installed (set FERKERAS_TORCH_PYTHON to a "
                    "Python that has it)")
def test_torch_backend_trains_and_tensorflow_reads_its_checkpoint(small_ferplus, tmp_path):
    script = tmp_path / "torch_run.py"
    script.write_text(TORCH_RUN)
    argv = ["--data_dir", str(small_ferplus), "--output_dir", str(tmp_path / "runs"), "--name", "torch",
            "--model_name", "VGG13", "--image_size", "16", "--weights", "none", "--train_limit", "64",
            "--valid_limit", "32", "--batch_size", "32", "--nepochs", "1", "--class_weights", "none"]
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([torch_python(), str(script), *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "REFUSED --strategy mirrored: tf.distribute needs KERAS_BACKEND=tensorflow" in out.stdout
    run_dir = Path(re.search(r"^RUN (.+)$", out.stdout, re.M).group(1))
    assert (run_dir / "checkpoints" / "best_acc.keras").is_file() and (run_dir / "state.json").is_file()

    from ferkeras.data.ferplus import load_split
    from ferkeras.models.weights import load_model_file

    model = load_model_file(run_dir / "checkpoints" / "last.keras")  # read here, under TensorFlow
    faces = load_split(small_ferplus, "valid").images[:16].astype("float32")[..., None]
    ours = model.predict(faces, verbose=0)
    assert np.allclose(ours, np.load(run_dir / "torch_logits.npy"), atol=1e-4)
