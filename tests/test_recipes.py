"""The GPU recipes of configs/ build, load a weights file of their format, and train a step here.

The real VGGFace2 and ImageNet files cannot be downloaded on these machines, so each test writes a
file of the same layout (Keras-2 HDF5, the published layer names) from a freshly initialised backbone
and hands it over with --weights PATH: the rest of the recipe (224 px, -51 freezing, class weights,
optimiser, plateau policy) is used as written, except the input side: 64 px instead of 224 keeps the
step affordable on 2 CPU cores (the weights and the freeze point do not depend on it).
"""
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from ferkeras.models.backbones import vggface
from ferkeras.train.config import resolve
from ferkeras.models.legacy_h5 import legacy_layer_name
from ferkeras.train.run import train
from tests.helpers import write_keras2_h5, write_keras2_weights_h5

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def vggface2_file(path):
    """A keras-vggface notop ResNet50 file (rcmalli layout), from an initialised backbone."""
    faces = keras.Input((224, 224, 3), name="input_1")
    backbone = keras.Model(faces, vggface.build_resnet50(faces))
    layers = [(legacy_layer_name(layer.name),
               [(f"{legacy_layer_name(layer.name)}/{v.name}:0", np.asarray(v)) for v in layer.weights])
              for layer in backbone.layers]
    write_keras2_h5(path, layers)
    return {layer.name: [np.asarray(v) for v in layer.weights] for layer in backbone.layers if layer.weights}


def imagenet_file(path):
    """A keras.applications notop ResNet50 file, as Keras downloads it."""
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    write_keras2_weights_h5(backbone, path)
    return {layer.name: [np.asarray(v) for v in layer.weights] for layer in backbone.layers if layer.weights}


# Each case costs minutes on 2 busy cores; the ImageNet recipe is marked slow (pytest -m slow runs it).
@pytest.mark.parametrize("recipe, make_file, first_trainable", [
    ("resnet50_ferplus.yaml", vggface2_file, "activation_36"),
    pytest.param("resnet50_imagenet.yaml", imagenet_file, "conv4_block5_2_bn", marks=pytest.mark.slow),
])
def test_gpu_recipe_builds_loads_its_weights_format_and_trains_a_step(
        recipe, make_file, first_trainable, small_ferplus, tmp_path, capsys):
    weights = tmp_path / "weights.h5"
    file_arrays = make_file(weights)
    config, explicit = resolve(["--config", str(CONFIGS / recipe), "--weights", str(weights),
                                "--data_dir", str(small_ferplus), "--output_dir", str(tmp_path / "runs"),
                                "--name", "smoke", "--train_limit", "4", "--valid_limit", "4",
                                "--batch_size", "2", "--nepochs", "1", "--image_size", "64"])
    assert config.freeze_before == -51 and config.weights == str(weights)
    result = train(config, explicit)
    out = capsys.readouterr().out
    assert f"({first_trainable}) on" in out

    history = pd.read_csv(Path(result["run_dir"]) / "training.csv")
    assert len(history) == 1 and np.isfinite(history["loss"]).all()
    model = keras.saving.load_model(Path(result["run_dir"]) / "checkpoints" / "last.keras")
    # Frozen layers still hold the file's arrays after the step; the head was trained.
    frozen = [layer for layer in model.layers if layer.weights and not layer.trainable]
    assert len(frozen) > 50
    for layer in frozen[:5] + frozen[-5:]:
        for mine, theirs in zip(layer.weights, file_arrays[layer.name], strict=True):
            np.testing.assert_array_equal(np.asarray(mine), theirs, err_msg=layer.name)
    assert model.get_layer("logits").trainable
