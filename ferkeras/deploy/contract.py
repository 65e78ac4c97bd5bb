"""The ONNX deployment contract shared with the ONNX Model Zoo `emotion-ferplus-8.onnx`.

A contract model takes one float32 tensor [N, 1, 64, 64] of raw grayscale pixels 0..255 (NCHW, no
normalisation) and returns one float32 tensor [N, 8] of class scores (logits) in FER+ order. The
reference model fixes N to 1; ours leave it dynamic.

This module imports neither TensorFlow nor Keras: a deployment tool that only has onnx, onnxruntime
and OpenCV can check a model file, prepare faces and score them with it.
"""
import abc
from pathlib import Path

import cv2
import numpy as np

from ferkeras import CLASSES, NUM_CLASSES
from ferkeras.deploy.faces import resize_interpolation
from ferkeras.errors import UserError

INPUT_NAME = "Input3"
OUTPUT_NAME = "Plus692_Output_0"
INPUT_SIZE = 64

_FLOAT = 1  # onnx.TensorProto.FLOAT, spelled out so that the module loads without importing onnx


def to_contract_input(faces):
    """Grayscale faces uint8 (N, H, W) -> float32 (N, 1, 64, 64): raw 0..255, NCHW, resized as
    `crop_face` resizes (bilinear when enlarging, as FER+'s 48x48 faces are; area when shrinking)."""
    faces = np.asarray(faces)
    if faces.ndim == 4 and faces.shape[-1] == 1:
        faces = faces[..., 0]
    if faces.ndim != 3:
        raise UserError(f"faces: expected grayscale images shaped (N, H, W), got shape {faces.shape}; "
                        "convert colour images to gray first")
    faces = faces.astype(np.float32)  # resize in float: no rounding back to whole grey levels
    if faces.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        size = (INPUT_SIZE, INPUT_SIZE)
        interpolation = resize_interpolation(faces.shape[1], INPUT_SIZE)
        faces = np.stack([cv2.resize(face, size, interpolation=interpolation) for face in faces]) \
            if len(faces) else np.zeros((0,) + size, np.float32)
    return faces[:, None, :, :]


def check_finite_scores(scores, source, what="the model", advice="use another model file or checkpoint"):
    """Return `scores`, or raise a UserError when any is NaN or infinite: no softmax, label or accuracy
    of such scores means anything, and argmax would quietly pick class 0 (neutral)."""
    scores = np.asarray(scores)
    bad = ~np.isfinite(scores).all(axis=tuple(range(1, scores.ndim))) if scores.size else np.zeros(0, bool)
    if bad.any():
        raise UserError(f"{source}: {what} returned non-finite scores (NaN or infinity) for {int(bad.sum())} of "
                        f"{len(scores)} faces; its weights are broken (e.g. saved from a training run that "
                        f"diverged); {advice}")
    return scores


# ----------------------------------------------------------------------------- checking a file

def check_onnx_contract(path, expect_names=False):
    """Load an ONNX file and check that it follows the contract; return what was found.

    Returns a dict: path, input_name, output_name, batch (the fixed batch size, or None when dynamic),
    opset, ir_version, producer, size_bytes, parameters (sum of initializer sizes) and metadata (the
    file's metadata_props). With `expect_names`, the tensor names must also be the reference's
    (Input3 / Plus692_Output_0), as they must for a drop-in replacement.
    """
    model = load_onnx(path)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    # Old IR versions (the reference is IR 3) list the weights among the graph inputs too.
    inputs = [value for value in graph.input if value.name not in initializers]
    outputs = list(graph.output)
    expected_input = f"one float32 input [N,1,{INPUT_SIZE},{INPUT_SIZE}]"
    expected_output = f"one float32 output [N,{NUM_CLASSES}] (one score per FER+ class)"
    if len(inputs) != 1:
        raise UserError(f"{path}: expected {expected_input}, got {len(inputs)} inputs "
                        f"({_describe_all(inputs)}); export the model with export.py")
    if len(outputs) != 1:
        raise UserError(f"{path}: expected {expected_output}, got {len(outputs)} outputs "
                        f"({_describe_all(outputs)}); export the model with export.py")
    source, target = inputs[0], outputs[0]
    in_type, in_dims = _tensor_type(source)
    out_type, out_dims = _tensor_type(target)
    if in_type != _FLOAT or in_dims is None or len(in_dims) != 4 or \
            in_dims[1:] != [1, INPUT_SIZE, INPUT_SIZE]:
        raise UserError(f"{path}: expected {expected_input}, got input {_describe(source)}; "
                        "the contract takes raw grayscale pixels 0..255 in NCHW layout")
    if out_type != _FLOAT or out_dims is None or len(out_dims) != 2 or out_dims[1] != NUM_CLASSES:
        raise UserError(f"{path}: expected {expected_output}, got output {_describe(target)}; "
                        f"the model must score the {NUM_CLASSES} FER+ classes")
    if expect_names and (source.name, target.name) != (INPUT_NAME, OUTPUT_NAME):
        raise UserError(f"{path}: expected tensor names {INPUT_NAME} -> {OUTPUT_NAME} (the reference's), "
                        f"got {source.name} -> {target.name}; re-export with the default --input_name "
                        "and --output_name")
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    return {
        "path": str(path),
        "input_name": source.name,
        "output_name": target.name,
        "batch": in_dims[0] if isinstance(in_dims[0], int) else None,
        "opset": opset,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "size_bytes": Path(path).stat().st_size,
        "parameters": parameter_count(model),
        "metadata": {prop.key: prop.value for prop in model.metadata_props},
    }


def load_onnx(path):
    """onnx.load with one-line errors for a missing file or one that is not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file; give the path of a .onnx model (export.py writes one)")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise UserError(f"{path}: not an ONNX model ({type(exc).__name__}); give a .onnx file "
                        "written by export.py or the ONNX Model Zoo") from None
    # A protobuf parser accepts some arbitrary bytes as an empty message; a real model has a graph.
    if model.ir_version == 0 or not model.graph.node:
        raise UserError(f"{path}: not an ONNX model (no IR version or no graph nodes); give a .onnx "
                        "file written by export.py or the ONNX Model Zoo")
    return model


def parameter_count(model):
    """Number of weights stored in the file: the sum of its initializer sizes."""
    return int(sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer))


def _tensor_type(value):
    """(element type, dims) of a graph value; a dim is an int, or a name/None when symbolic."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return tensor.elem_type, None
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return tensor.elem_type, dims


def _describe(value):
    elem_type, dims = _tensor_type(value)
    names = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}
    shape = "?" if dims is None else "[" + ",".join("N" if d is None else str(d) for d in dims) + "]"
    return f"{value.name} {names.get(elem_type, f'type#{elem_type}')} {shape}"


def _describe_all(values):
    return ", ".join(_describe(v) for v in values) or "none"


# ----------------------------------------------------------------------------- scoring with onnxruntime

class ContractSession:
    """An onnxruntime session over a contract model that scores any number of faces.

    A model with a fixed batch size (the reference takes exactly one face per call) is fed in chunks
    of that size, the last chunk padded; a dynamic-batch model is fed `batch_size` faces per call.
    """

    def __init__(self, path, info=None, intra_threads=0):
        import onnxruntime as ort

        self.info = info or check_onnx_contract(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_threads  # 0: onnxruntime's default (one per core)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.info["input_name"]
        self.fixed_batch = self.info["batch"]

    def run_batch(self, batch):
        """Logits of one batch exactly as given (the caller respects a fixed batch size)."""
        return self.session.run(None, {self.input_name: batch})[0]

    def logits(self, contract_input, batch_size=64):
        """float32 (N, 1, 64, 64) -> float32 (N, 8) scores."""
        return check_finite_scores(logits_in_batches(self.run_batch, contract_input, batch_size, self.fixed_batch),
                                   self.info["path"])


def logits_in_batches(run_batch, inputs, batch_size=64, fixed_batch=None):
    """Scores (N, 8) of any number of inputs through `run_batch`, `batch_size` at a time; a model with
    a fixed batch gets chunks of exactly that size, the last one padded with zeros."""
    step = fixed_batch or batch_size
    chunks = []
    for start in range(0, len(inputs), step):
        chunk = inputs[start:start + step]
        missing = step - len(chunk) if fixed_batch else 0
        if missing:
            chunk = np.concatenate([chunk, np.zeros((missing,) + chunk.shape[1:], chunk.dtype)])
        chunks.append(run_batch(chunk)[:step - missing])
    if not chunks:
        return np.zeros((0, NUM_CLASSES), np.float32)
    return np.concatenate(chunks).astype(np.float32)


def softmax(logits):
    """Row-wise softmax in float64, stable for large logits."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def check_class_count(count, source):
    if count != NUM_CLASSES:
        raise UserError(f"{source}: the model scores {count} classes, expected {NUM_CLASSES} (the FER+ "
                        f"classes {', '.join(CLASSES)}); train it with train.py or pick another file")


class Predictor(abc.ABC):
    """What every predictor has, whatever runs its model file (onnxruntime here, Keras in
    ferkeras.models.predictor, LiteRT in ferkeras.deploy.tflite, several at once in
    ferkeras.evaluate.ensemble): `logits(faces)`, `probabilities(faces)`, `describe()` and
    `batch_size`. Faces are gray (N, H, W), uint8 or float 0..255, any size."""

    kind = None
    batch_size = 64

    @abc.abstractmethod
    def logits(self, faces):
        """float32 (N, 8) scores in CLASSES order."""

    def probabilities(self, faces):
        """float32 (N, 8) softmax probabilities in CLASSES order."""
        if len(faces) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        return softmax(self.logits(faces)).astype(np.float32)

    @abc.abstractmethod
    def describe(self):
        """What the model is, for reports: format, path, parameters..."""


class OnnxPredictor(Predictor):
    """A contract ONNX model scored with onnxruntime on `to_contract_input(faces)`: what evaluation,
    distillation teachers, predict.py and the service all score ONNX files with.

    The file is checked against the contract on construction (a one-line `UserError` otherwise), and
    so are its weights: a model with broken (NaN) weights fails here, before any input is read or
    output written. A fixed-batch model such as the reference is fed one chunk of its size at a time.
    `threads`: onnxruntime intra-op threads (0: one per core).
    """

    kind = "onnx"

    def __init__(self, path, batch_size=64, threads=0):
        self.path, self.batch_size = Path(path), batch_size
        self.info = check_onnx_contract(path)
        self.session = ContractSession(path, self.info, intra_threads=threads)
        self.logits(np.full((1, INPUT_SIZE, INPUT_SIZE), 128, np.uint8))

    def logits(self, faces):
        return self.session.logits(to_contract_input(faces), batch_size=self.batch_size)

    def describe(self):
        return {"format": "onnx", "path": str(self.path), "parameters": self.info["parameters"],
                "opset": self.info["opset"], "fixed_batch": self.info["batch"]}
