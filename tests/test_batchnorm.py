"""`FusedBatchNormalization` (ferkeras/models/batchnorm.py): FerNet trains through TensorFlow's fused kernel,
and everything else about the layer is Keras' own BatchNormalization: the same training step, the same
inference, frozen layers untouched, checkpoints of either class loading into the other."""
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from ferkeras.models.batchnorm import FusedBatchNormalization
from ferkeras.models.losses import loss_for_mode
from ferkeras.models.registry import build_model
from ferkeras.models.weights import load_model_file
from tests.helpers import some_faces


def keras_twin(model):
    """The same model, weights included, with Keras' own BatchNormalization in place of the fused one."""
    def clone(layer):
        cls = keras.layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else type(layer)
        return cls.from_config(layer.get_config())

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


def fernet(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model("FerNetS", weights="none", dropout_rate=0.0)  # no dropout: both twins see the same step


def op_types(model, training):
    call = tf.function(lambda x: model(x, training=training))
    graph = call.get_concrete_function(tf.TensorSpec((None, 48, 48, 1), tf.float32)).graph
    return {op.type for op in graph.get_operations()}


def test_fernet_trains_through_the_fused_kernel_and_infers_through_keras_own():
    model = fernet()
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(type(layer) is FusedBatchNormalization for layer in bns)
    assert "FusedBatchNormV3" in op_types(model, training=True)
    assert "FusedBatchNormV3" not in op_types(model, training=False)  # exported graphs are Keras' own
    assert "FusedBatchNormV3" not in op_types(keras_twin(model), training=True)


def test_a_fused_layer_trains_as_keras_batchnorm_does():
    # Real faces as activations, few values (4 x 12 x 12) and momentum 0.5: a variance of the wrong kind
    # (n - 1 in place of n) would move the moving variance by 4e-4 of itself, four times the tolerance.
    activations = tf.constant(some_faces(4)[:, ::4, ::4] / 255.0 * 3.0 + 1.0)
    upstream = tf.constant(np.random.default_rng(0).normal(size=activations.shape).astype(np.float32))
    results = []
    for layer in (FusedBatchNormalization(momentum=0.5), keras.layers.BatchNormalization(momentum=0.5)):
        layer.build(activations.shape)
        layer.gamma.assign([1.5])
        layer.beta.assign([-0.5])
        with tf.GradientTape() as tape:
            tape.watch(activations)
            outputs = layer(activations, training=True)
            loss = tf.reduce_sum(outputs * upstream)
        gradients = tape.gradient(loss, [activations, layer.gamma, layer.beta])
        results.append([outputs, *gradients, layer.moving_mean, layer.moving_variance])
    for name, mine, theirs in zip(("outputs", "d inputs", "d gamma", "d beta", "moving mean", "moving variance"),
                                  *results):
        mine, theirs = np.asarray(mine), np.asarray(theirs)
        np.testing.assert_allclose(mine, theirs, atol=1e-4 * np.abs(theirs).max(), err_msg=name)


def test_fernet_s_training_steps_are_those_of_keras_batchnorm():
    faces = some_faces(16)
    targets = np.eye(8, dtype=np.float32)[np.arange(16) % 8]
    fused = fernet()
    twin = keras_twin(fused)
    start = fused.get_weights()
    losses, updates = [], []
    for model in (fused, twin):
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss_for_mode("crossentropy"))
        losses.append([float(model.train_on_batch(faces, targets)) for _ in range(3)])
        updates.append(np.concatenate([(after - before).ravel() for after, before in zip(model.get_weights(), start)]))
    np.testing.assert_allclose(*losses, rtol=1e-3)
    assert losses[0][2] < losses[0][0] - 0.3  # it learned: the steps were real ones
    # Not exactly equal: a ReLU input or a max-pooling tie a rounding error apart routes a gradient
    # differently, so the two updates differ by about 1% here (a wrong gradient would be ~100% off).
    assert np.linalg.norm(updates[0] - updates[1]) < 0.05 * np.linalg.norm(updates[1])
    np.testing.assert_allclose(fused.predict(faces, verbose=0), twin.predict(faces, verbose=0), atol=0.02)


def test_a_frozen_fused_layer_normalises_with_its_moving_statistics_and_keeps_them():
    activations = some_faces(8) / 255.0 * 3.0 + 1.0
    layer = FusedBatchNormalization()
    layer.build(activations.shape)
    layer.moving_mean.assign([0.5])
    layer.moving_variance.assign([2.0])
    layer.trainable = False
    reference = keras.layers.BatchNormalization()
    reference.build(activations.shape)
    reference.set_weights(layer.get_weights())

    frozen = layer(activations, training=True).numpy()
    np.testing.assert_array_equal(frozen, reference(activations, training=False).numpy())
    np.testing.assert_array_equal(layer.moving_mean.numpy(), [0.5])
    np.testing.assert_array_equal(layer.moving_variance.numpy(), [2.0])


def test_bfloat16_activations_are_normalised_in_float32_and_returned_in_bfloat16():
    activations = some_faces(8)
    try:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        fused, reference = FusedBatchNormalization(), keras.layers.BatchNormalization()
        outputs = [layer(tf.cast(activations, tf.bfloat16), training=True) for layer in (fused, reference)]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert [out.dtype for out in outputs] == [tf.bfloat16, tf.bfloat16]
    np.testing.assert_allclose(*[tf.cast(out, tf.float32).numpy() for out in outputs], atol=0.02)
    np.testing.assert_allclose(fused.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), reference.moving_variance.numpy(), rtol=1e-4)


@pytest.mark.parametrize("saved_with", ["keras", "fused"])
def test_checkpoints_of_either_class_initialise_a_fernet(tmp_path, saved_with):
    faces = some_faces(4)
    source = fernet(seed=1)
    if saved_with == "keras":  # what every FerNet checkpoint written before the fused layer holds
        source = keras_twin(source)
    path = tmp_path / "source.keras"
    source.save(path)
    assert isinstance(load_model_file(path).get_layer("stage2_conv1_bn"),
                      FusedBatchNormalization if saved_with == "fused" else keras.layers.BatchNormalization)
    restarted = build_model("FerNetS", weights=str(path), dropout_rate=0.0)
    np.testing.assert_allclose(restarted.predict(faces, verbose=0), source.predict(faces, verbose=0), atol=1e-5)


def test_load_model_file_reads_a_fernet_checkpoint_in_a_process_that_built_no_model(tmp_path):
    # export.py and evaluate.py load checkpoints without building a model first: the layer must be
    # registered by the loader itself.
    path = tmp_path / "fernet.keras"
    fernet().save(path)
    code = ("import sys; from ferkeras.models.weights import load_model_file; "
            "print(type(load_model_file(sys.argv[1]).get_layer('stage2_conv1_bn')).__name__)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "FusedBatchNormalization"
