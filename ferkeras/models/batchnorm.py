"""`FusedBatchNormalization`: Keras' BatchNormalization whose training step runs TensorFlow's fused kernel.

Why: Keras 3 normalises a batch with separate moment, subtract, scale and shift ops; on TensorFlow's CPU
kernels that memory traffic is a large share of a small network's step (FerNetS: the bare training step
1.17x faster with the fused kernel in float32, 1.23x in bfloat16; `benchmarks/batchnorm_step.py`).
The layer is Keras' own in every other respect: the same four variables under the same names
(checkpoints of either class load into the other), the same moving-average update, and `super().call` wherever the fused kernel does not apply
(inference, frozen layers, masks, renorm, other backends, inputs that are not NHWC images), so exported
ONNX and TFLite graphs are exactly those of `keras.layers.BatchNormalization`.

The fused kernel's sums are plain float32 ones: over a 48x48 stage the batch mean can be 1e-5 of itself
off where Keras' is 1e-7 (tests/test_batchnorm.py), far below the noise of a batch's statistics.
"""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ferkeras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # Same upcast as Keras: the statistics of bfloat16 / float16 activations are taken in float32.
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The kernel returns the unbiased (n - 1) batch variance; Keras averages the biased one.
        count = ops.cast(ops.size(x) // channels, "float32")
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs, mask):
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4 and self.axis in (-1, 3))
