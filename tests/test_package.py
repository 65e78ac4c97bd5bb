"""What `import ferkeras` promises: Keras can load our checkpoints, and the predictor side stays TensorFlow-free."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fernet_checkpoint(tmp_path_factory):
    """A saved FerNetS and a FaceNet-free custom layer set: FacePreprocess is what plain Keras cannot find."""
    from ferkeras.models.registry import build_model

    path = tmp_path_factory.mktemp("checkpoint") / "model.keras"
    build_model("FerNetS", weights="none").save(path)
    return path


@pytest.mark.parametrize("imports", ["import ferkeras, keras", "import keras, ferkeras"])
def test_keras_load_model_reads_a_checkpoint_once_ferkeras_is_imported(fernet_checkpoint, imports):
    done = run_python(f"{imports}\nmodel = keras.saving.load_model({str(fernet_checkpoint)!r})\n"
                      "print(model.get_layer('preprocess').__class__.__name__)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("FacePreprocess")


def test_importing_ferkeras_or_its_predictor_loads_neither_keras_nor_tensorflow():
    done = run_python("import sys, ferkeras, ferkeras.deploy.predict, ferkeras.deploy.contract, ferkeras.deploy.faces\n"
                      "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
