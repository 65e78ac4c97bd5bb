"""Weights of a ferkeras ONNX export back into a Keras model: `--weights model.onnx`.

ferkeras ships its compact model as ONNX only (`models/ferplus-small.onnx`), so fine-tuning it, or
distilling further from its weights, starts from that file. tf2onnx folds each BatchNormalization into
the convolution before it: the file holds, per convolution, one kernel W' = W * g and one bias
b' = beta - mean * g (g = gamma / sqrt(var + eps)), and W, gamma, beta and the moving statistics cannot be
told apart again. Two steps give them back:

1. `load_onnx_weights`: each Conv2D gets W' and the BatchNormalization after it the identity plus b'
   (moving mean 0, moving variance 1, gamma sqrt(1 + eps), beta b'). The Keras model then computes
   exactly the file's function, which is all inference needs.
2. `restore_batchnorm_statistics` (train.py does it for an ONNX `--weights`, on training faces): in
   training mode a BatchNormalization normalises by the batch's own statistics, not the moving ones, so
   with step 1 alone the first training step would see a different network. This step measures each
   convolution's output on real faces (mean m, standard deviation s per channel), scales the kernel to
   unit variance (W' / s) and sets the layer's statistics to what it will measure (mean m / s, variance 1)
   and gamma and beta so that inference is unchanged. Training mode then computes about what inference
   computes, and fine-tuning starts from the network in the file.

Only networks made of Conv2D (no bias) + BatchNormalization pairs and a Dense classifier load this way:
the FerNet family, whose files ferkeras ships. A file whose convolutions do not match the model's in
number and shape is refused with one line.
"""
from pathlib import Path

import keras
import numpy as np

from ferkeras.errors import UserError

STATISTICS_BATCH = 256
# Faces on which train.py measures the statistics: a fixed draw, whatever --seed, so that every fine-tune of
# one file starts from the same weights and their weight average (export.py --average weights) means the
# same thing.
STATISTICS_FACES = 2000
STATISTICS_SEED = 0
# A channel that is constant on the faces (a dead filter) keeps its kernel scale.
MIN_CHANNEL_STD = 1e-6
ZERO_BIAS = object()  # a Conv node without a bias input


def _walk_layers(model):
    """The model's layers in order, nested models opened."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk_layers(layer)
        else:
            yield layer


def conv_batchnorm_pairs(model, source):
    """[(Conv2D, BatchNormalization), ...] in model order, and the Dense classifier; refuses other models."""
    layers = list(_walk_layers(model))
    pairs = []
    for index, layer in enumerate(layers):
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        after = layers[index + 1] if index + 1 < len(layers) else None
        normalised = isinstance(after, keras.layers.BatchNormalization) and after.scale and after.center
        if layer.use_bias or not normalised:
            raise UserError(f"--weights {source}: ONNX weights load only into networks whose every convolution "
                            "is a bias-free Conv2D followed by a BatchNormalization with gamma and beta (the "
                            f"FerNet family); {model.name}'s {layer.name} is not; use a .keras or .weights.h5 file")
        pairs.append((layer, after))
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    if not pairs or len(dense) != 1:
        raise UserError(f"--weights {source}: ONNX weights load only into a FerNet-like network (convolutions "
                        f"with BatchNormalization, one Dense classifier); {model.name} has {len(pairs)} "
                        f"convolution(s) and {len(dense)} Dense layer(s)")
    return pairs, dense[0]


def read_onnx_layers(path):
    """([(kernel HWIO, bias), ...] of the file's Conv nodes in graph order, (Dense kernel, bias)).

    ONNX graphs are stored in topological order, so the convolutions come in the network's order.
    """
    from onnx import numpy_helper

    from ferkeras.deploy.contract import load_onnx

    graph = load_onnx(path).graph
    constants = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        kernel = constants.get(node.input[1])
        # tf2onnx leaves out a bias of zeros.
        bias = constants.get(node.input[2]) if len(node.input) > 2 else ZERO_BIAS
        if kernel is None or bias is None:
            raise _not_ferkeras_file(path, f"its Conv node {node.name} has no constant kernel and bias")
        if bias is ZERO_BIAS:
            bias = np.zeros(kernel.shape[0], kernel.dtype)
        convs.append((np.transpose(kernel, (2, 3, 1, 0)), bias))  # ONNX OIHW -> Keras HWIO
    if not convs:
        raise _not_ferkeras_file(path, "it has no Conv node")
    return convs, _read_classifier(graph, constants, path)


def _read_classifier(graph, constants, path):
    """The last MatMul's constant (input, 8) matrix and the constant added to its output."""
    matmuls = [node for node in graph.node if node.op_type in ("MatMul", "Gemm")]
    if not matmuls:
        raise _not_ferkeras_file(path, "it has no MatMul / Gemm node (the classifier)")
    last = matmuls[-1]
    kernel = constants.get(last.input[1])
    if last.op_type == "Gemm":
        bias = constants.get(last.input[2]) if len(last.input) > 2 else None
    else:
        adds = [node for node in graph.node if node.op_type == "Add" and last.output[0] in node.input]
        bias = next((constants[name] for node in adds for name in node.input if name in constants), None)
        if not adds and kernel is not None:
            bias = np.zeros(kernel.shape[-1], kernel.dtype)  # tf2onnx leaves out an Add of zeros
    if kernel is None or bias is None:
        raise _not_ferkeras_file(path, f"its classifier ({last.name}) has no constant weights and bias")
    return kernel, bias


def _not_ferkeras_file(path, what):
    return UserError(f"--weights {path}: {what}; expected a file exported by ferkeras (export.py) from a FerNet "
                     "model")


def load_onnx_weights(model, path, allow_partial=False):
    """Step 1 (see the module's doc): the file's folded weights into `model`; returns a one-line report.

    `allow_partial` is refused: a folded file either covers every convolution or is another network.
    """
    path = Path(path)
    if allow_partial:
        raise UserError(f"--weights {path}: --allow_partial_weights does not apply to ONNX files, whose "
                        "convolutions must match the model's one for one; drop the flag")
    pairs, dense = conv_batchnorm_pairs(model, path)
    convs, (dense_kernel, dense_bias) = read_onnx_layers(path)
    expected = [tuple(conv.kernel.shape) for conv, _ in pairs]
    found = [tuple(kernel.shape) for kernel, _ in convs]
    if expected != found:
        raise UserError(f"--weights {path}: its {len(found)} convolution kernels {_shapes(found)} do not match "
                        f"the {model.name} model's {len(expected)} {_shapes(expected)}; use the --model_name the "
                        "file was trained as (its metadata_props config.model_name)")
    if tuple(dense.kernel.shape) != dense_kernel.shape:
        raise UserError(f"--weights {path}: its classifier is {dense_kernel.shape}, {model.name}'s "
                        f"{tuple(dense.kernel.shape)}; use the --model_name the file was trained as")
    for (conv, norm), (kernel, bias) in zip(pairs, convs):
        conv.kernel.assign(kernel)
        # Identity statistics: inference computes kernel * x + bias, as the file does.
        norm.moving_mean.assign(np.zeros_like(bias))
        norm.moving_variance.assign(np.ones_like(bias))
        norm.gamma.assign(np.full_like(bias, np.sqrt(1.0 + norm.epsilon)))
        norm.beta.assign(bias)
    dense.kernel.assign(dense_kernel)
    dense.bias.assign(dense_bias)
    return f"{path}: {len(convs)} convolutions (BatchNorm folded into them) and the classifier"


def _shapes(shapes):
    text = ", ".join("x".join(str(n) for n in shape) for shape in shapes[:3])
    return f"({text}{', ...' if len(shapes) > 3 else ''})"


def restore_batchnorm_statistics(model, faces, batch_size=STATISTICS_BATCH):
    """Step 2 (see the module's doc): refit every (Conv2D, BatchNormalization) pair to the statistics
    its convolution has on `faces` (raw pixels (N, H, W) or (N, H, W, 1)), inference unchanged.

    Returns the largest relative change of the model's logits on the faces (a check: near 0).
    """
    faces = np.asarray(faces, dtype="float32")
    if faces.ndim == 3:
        faces = faces[..., None]
    if faces.ndim != 4 or faces.shape[-1] != 1 or len(faces) < 2:
        raise ValueError(f"expected at least 2 grayscale faces (N, H, W[, 1]), got shape {faces.shape}")
    pairs, _ = conv_batchnorm_pairs(model, "model")
    before = model.predict(faces, batch_size=batch_size, verbose=0)
    # One pass: a convolution's input depends only on the layers before it, whose inference is unchanged.
    probe = keras.Model(model.inputs, [conv.output for conv, _ in pairs])
    outputs = probe.predict(faces, batch_size=batch_size, verbose=0)
    for (conv, norm), output in zip(pairs, outputs if len(pairs) > 1 else [outputs]):
        _refit_pair(conv, norm, np.asarray(output, dtype="float64").reshape(-1, output.shape[-1]))
    after = model.predict(faces, batch_size=batch_size, verbose=0)
    return float(np.max(np.abs(after - before)) / max(np.max(np.abs(before)), 1e-12))


def restore_for_training(model, train_faces):
    """restore_batchnorm_statistics on a fixed draw of at most STATISTICS_FACES of `train_faces`, reported."""
    rows = np.random.default_rng(STATISTICS_SEED).permutation(len(train_faces))[:STATISTICS_FACES]
    change = restore_batchnorm_statistics(model, train_faces[np.sort(rows)])
    print(f"weights: BatchNorm statistics measured on {len(rows):,} training faces (logits changed by "
          f"{change:.1e}, relative)")


def model_from_onnx(path, train_faces):
    """The Keras model of a ferkeras FerNet ONNX file, ready to train (`--finetune_from FILE.onnx`): the
    network its metadata names, reading faces through the contract's 64 px as the file does, statistics
    restored."""
    from ferkeras.deploy.contract import load_onnx
    from ferkeras.models.registry import build_model

    metadata = {prop.key: prop.value for prop in load_onnx(path).metadata_props}
    model_name = metadata.get("config.model_name")
    if model_name is None:
        raise UserError(f"--finetune_from {path}: its metadata_props name no config.model_name; expected an ONNX "
                        "file exported by ferkeras from a FerNet model, or give a run folder or .keras file")
    dropout_rate = float(metadata.get("config.dropout_rate", 0.3))
    model = build_model(model_name, weights=str(path), dropout_rate=dropout_rate, contract_round_trip=True)
    restore_for_training(model, train_faces)
    return model


def _refit_pair(conv, norm, output):
    """kernel / s and statistics (m / s, var / s^2), gamma and beta so that inference stays
    scale * conv(x) + shift, as before."""
    eps = norm.epsilon
    gamma, beta = (np.asarray(v.numpy(), dtype="float64") for v in (norm.gamma, norm.beta))
    scale = gamma / np.sqrt(np.asarray(norm.moving_variance.numpy(), dtype="float64") + eps)
    shift = beta - scale * np.asarray(norm.moving_mean.numpy(), dtype="float64")
    mean, std = output.mean(axis=0), output.std(axis=0)
    divisor = np.where(std > MIN_CHANNEL_STD, std, 1.0)
    variance = (std / divisor) ** 2
    conv.kernel.assign((np.asarray(conv.kernel.numpy(), dtype="float64") / divisor).astype("float32"))
    norm.moving_mean.assign((mean / divisor).astype("float32"))
    norm.moving_variance.assign(variance.astype("float32"))
    norm.gamma.assign((scale * divisor * np.sqrt(variance + eps)).astype("float32"))
    norm.beta.assign((shift + scale * mean).astype("float32"))
