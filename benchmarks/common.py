"""Shared parts of the benchmark scripts: machine facts, the matrix-product reference rate, FLOP counts,
tables and JSON reports.

FLOP conventions (used in every table):

- A multiply-add is 2 FLOPs, for the model and for the reference matrix product (2 n^3 for n x n @ n x n).
- Forward FLOPs per image count the layers that do the arithmetic: convolutions (plain, depthwise,
  separable, transposed) and dense layers, from the built model's output shapes. BatchNormalization,
  activations, additions, pooling and the in-graph resize are a few FLOPs per activation and are left out
  (under 1% of ResNet50's total; `profiler_flops` shows how much they are).
- Training FLOPs per image: 3 x forward for a layer with trainable weights (forward, gradient of its
  input, gradient of its weights), 1 x forward for a frozen layer before the first trainable one (nothing
  flows back into it) and 2 x for a frozen layer after it (its input gradient is still needed). The
  first trainable layer (and the stem of a fully trainable model) needs no input gradient either; it is
  counted at 3 x all the same, which overstates ResNet50@64's training FLOPs by about 1%.
"""
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ferkeras  # noqa: E402  (sets TensorFlow's environment before anything imports it)
from ferkeras.errors import UserError, write_text_atomic  # noqa: E402
from ferkeras.tables import markdown_table  # noqa: E402
from ferkeras.timing import load_average, time_calls  # noqa: E402

MATMUL_SIZE = 4096


# ----------------------------------------------------------------------------- the machine

def machine_facts():
    import keras
    import tensorflow as tf

    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "ferkeras": ferkeras.__version__}


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LoadWindow:
    """Records the 1-minute load average around a measurement (`with LoadWindow() as load:`)."""

    def __enter__(self):
        self.before = load_average()
        return self

    def __exit__(self, *exc):
        self.after = load_average()
        return False

    def as_dict(self):
        return {"load_before": self.before, "load_after": self.after}

    def text(self):
        return f"{self.before:.1f} / {self.after:.1f}"


# ----------------------------------------------------------------------------- the reference rate

def matmul_rate(n=MATMUL_SIZE, warmup=2, repeats=5):
    """(GFLOP per wall second, GFLOP per CPU second) of a float32 n x n @ n x n product in this process,
    each from the median of `repeats` products.

    The same TensorFlow build, thread pools and oneDNN setting run the model, so the ratio of the two
    rates says how well the training loop uses this machine, whatever the machine is.
    """
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    a = rng.normal((n, n), dtype=tf.float32)
    b = rng.normal((n, n), dtype=tf.float32)

    def product():
        # Reading one element waits for the product without copying n*n floats out of TensorFlow.
        tf.linalg.matmul(a, b)[0, 0].numpy()

    timed = time_calls(product, repeats, warmup)
    gflop = 2 * n ** 3 / 1e9
    return gflop / timed.median, gflop / timed.median_cpu


# ----------------------------------------------------------------------------- FLOP counting

def layer_macs(layer):
    """Forward multiply-adds per image of one layer (0 for layers that do no matrix arithmetic)."""
    import keras

    if isinstance(layer, keras.Model):
        return sum(layer_macs(inner) for inner in layer.layers)
    weights = {w.path.rsplit("/", 1)[-1]: w for w in layer.weights}
    if isinstance(layer, keras.layers.SeparableConv2D) or isinstance(layer, keras.layers.SeparableConv1D):
        positions = _positions(layer, "output")
        return positions * (_size(weights["depthwise_kernel"]) + _size(weights["pointwise_kernel"]))
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                          keras.layers.Conv3DTranspose)):
        # Every input position scatters one kernel-sized patch.
        return _positions(layer, "input") * _size(weights["kernel"])
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return _positions(layer, "output") * _size(weights["kernel"])
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        # kernel is (k..., in / groups, out): each output position costs one full kernel of MACs.
        return _positions(layer, "output") * _size(weights["kernel"])
    if isinstance(layer, keras.layers.Dense):
        return _positions(layer, "output") * _size(weights["kernel"])
    return 0


def _size(variable):
    size = 1
    for dim in variable.shape:
        size *= int(dim)
    return size


def _positions(layer, which):
    """Spatial positions per image of a layer's input or output (all axes but batch and channels)."""
    shape = tuple(getattr(layer, which).shape)[1:-1]
    if any(dim is None for dim in shape):
        raise UserError(f"layer {layer.name}: its {which} shape {getattr(layer, which).shape} is not fixed, so "
                        "its FLOPs depend on the image; build the model with a fixed --image_size")
    positions = 1
    for dim in shape:
        positions *= int(dim)
    return positions


def forward_flops(model):
    """Forward FLOPs per image (2 per multiply-add) of the convolution and dense layers."""
    return 2 * sum(layer_macs(layer) for layer in model.layers)


def training_flops(model):
    """Training FLOPs per image under the module's convention (3x trainable, 1x frozen prefix, 2x frozen
    after a trainable layer)."""
    total, seen_trainable = 0, False
    for layer in model.layers:
        macs = layer_macs(layer)
        trainable = bool(layer.trainable_weights)
        if trainable:
            factor = 3
        else:
            factor = 2 if seen_trainable else 1
        seen_trainable = seen_trainable or trainable
        total += factor * macs
    return 2 * total


def profiler_flops(model, image_shape):
    """TensorFlow's own FLOP count of one image's forward pass, by op type ({"Conv2D": ..., ...}).

    The model is traced for one (1, H, W, 1) image, its variables folded into constants, and the graph
    handed to tf.compat.v1's profiler, which counts 2 FLOPs per multiply-add for Conv2D and MatMul.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec((1, *image_shape, 1), tf.float32)
    concrete = tf.function(lambda x: model(x, training=False), autograph=False).get_concrete_function(spec)
    graph = convert_variables_to_constants_v2(concrete).graph
    options = (tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build())
    profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(),
                                            cmd="graph", options=options)
    by_type = {}
    for name, flops in _profiled_nodes(profile):
        op_type = graph.get_operation_by_name(name).type
        by_type[op_type] = by_type.get(op_type, 0) + flops
    return by_type


def _profiled_nodes(node):
    """(node name, its own FLOPs) for every node of a profiler tree that counts any."""
    if node.float_ops:
        yield node.name, int(node.float_ops)
    for child in node.children:
        yield from _profiled_nodes(child)


# ----------------------------------------------------------------------------- reports

def format_table(columns, rows):
    """A Markdown table: `columns` are (header, key, format) and `rows` dicts."""
    cells = [["" if row.get(key) is None else fmt.format(row[key]) if fmt else str(row[key])
              for _, key, fmt in columns] for row in rows]
    return markdown_table([header for header, _, _ in columns], cells)


def write_report(path, benchmark, command, results, extra=None):
    """Write the JSON report of a benchmark run (atomically) and say where it went."""
    report = {"benchmark": benchmark, "command": command, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": machine_facts(), **(extra or {}), "results": results}
    write_text_atomic(Path(path), json.dumps(report, indent=2))
    print(f"wrote {path}")
    return report


def finish(benchmark, columns, rows, out, argv=None, extra=None):
    """The closing table of benchmarks/<benchmark>.py's rows, then its JSON report in `out`; returns the rows."""
    print("\n" + format_table(columns, rows))
    write_report(out, benchmark, command_line(f"benchmarks/{benchmark}.py", argv), rows, extra)
    return rows


def command_line(script, argv=None):
    """The command that produced a report, for reproducing it."""
    return " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])
