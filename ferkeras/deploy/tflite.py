"""TFLite (LiteRT) files of the FER+ contract: check one, score faces with it, read its sidecar.

A ferkeras TFLite file keeps the ONNX contract's semantics in TFLite's own layout: one float32 input
[N, 64, 64, 1] (NHWC, raw grayscale pixels 0..255, no normalisation: the graph does it) and one float32
output [N, 8] of logits in FER+ order. The int8 file has the same float input and output; the
quantization is inside. The batch dimension is dynamic (the interpreter is resized to each batch).

What the file is (classes, layout, training config, parity, quantization) is written beside it in
`<file>.json` (`model.tflite.json`), not inside it: TFLite's metadata format needs the tflite-support
package, which pins protobuf < 4, and rewriting the flatbuffer from Python does not keep the
converter's 16-byte alignment of the weight buffers.

Faces are scored with the LiteRT interpreter (`ai_edge_litert`, the package TensorFlow's deprecated
`tf.lite.Interpreter` points to). This module imports neither TensorFlow nor Keras: a phone or an edge
board with ai-edge-litert, numpy and OpenCV can check a file and score faces with it.
"""
import json
import os
from pathlib import Path

import numpy as np

from ferkeras import NUM_CLASSES
from ferkeras.deploy.contract import INPUT_SIZE, Predictor, logits_in_batches, to_contract_input
from ferkeras.errors import UserError

TFLITE_SUFFIX = ".tflite"
INPUT_LAYOUT = "NHWC"


def to_tflite_input(faces):
    """Grayscale faces uint8 (N, H, W) -> float32 (N, 64, 64, 1): the contract's pixels, NHWC."""
    return np.ascontiguousarray(to_contract_input(faces).transpose(0, 2, 3, 1))


def sidecar_path(path):
    """model.tflite -> model.tflite.json, where the file's metadata is kept."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path):
    """The metadata beside a TFLite file as a dict, {} when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{sidecar}: not valid JSON ({exc.msg} at line {exc.lineno}); delete it or "
                        "export the model again") from None


# ----------------------------------------------------------------------------- the interpreter

def make_interpreter(path, threads=0, delegate=True):
    """A LiteRT interpreter over `path` with its tensors allocated; one-line errors for a missing
    file, one that is not TFLite, or a missing runtime. `threads` 0: one per core. `delegate` False
    runs TFLite's own kernels without XNNPACK, which otherwise replaces the ops it takes by DELEGATE
    nodes (for listing the file's ops)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such TFLite file; give the path of a .tflite model "
                        "(export.py --format tflite writes one)")
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise UserError(f"{path}: scoring a TFLite model needs the LiteRT runtime; "
                        "pip install ai-edge-litert (see requirements.txt)") from None
    try:
        resolver = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1,
                                  experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a TFLite model the runtime can load ({reason}); give a .tflite "
                        "file written by export.py --format tflite") from None
    return interpreter


def check_tflite_contract(path, interpreter=None):
    """Check that a TFLite file follows the contract in NHWC; return what was found.

    Returns a dict: path, input_name, output_name (signature names when the file has a signature, else
    tensor names), batch (fixed batch size, or None when dynamic), size_bytes, input_layout.
    """
    interpreter = interpreter or make_interpreter(path)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    expected_input = f"one float32 input [N,{INPUT_SIZE},{INPUT_SIZE},1] (NHWC)"
    expected_output = f"one float32 output [N,{NUM_CLASSES}] (one score per FER+ class)"
    if len(inputs) != 1 or not _is_float_shaped(inputs[0], [INPUT_SIZE, INPUT_SIZE, 1]):
        raise UserError(f"{path}: expected {expected_input}, got {_describe_all(inputs)}; the TFLite "
                        "contract takes raw grayscale pixels 0..255 in NHWC layout")
    if len(outputs) != 1 or not _is_float_shaped(outputs[0], [NUM_CLASSES]):
        raise UserError(f"{path}: expected {expected_output}, got {_describe_all(outputs)}; the model "
                        f"must score the {NUM_CLASSES} FER+ classes")
    input_name, output_name = _signature_names(interpreter, inputs[0]["name"], outputs[0]["name"])
    batch = int(inputs[0]["shape_signature"][0])
    return {"path": str(path), "input_name": input_name, "output_name": output_name,
            "batch": batch if batch > 0 else None, "size_bytes": Path(path).stat().st_size,
            "input_layout": INPUT_LAYOUT}


def _is_float_shaped(detail, trailing):
    shape = [int(d) for d in detail["shape_signature"]]
    return detail["dtype"] == np.float32 and len(shape) == len(trailing) + 1 and shape[1:] == trailing


def _signature_names(interpreter, input_tensor, output_tensor):
    """The serving signature's input and output names, or the tensor names without a signature."""
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        signature = next(iter(signatures.values()))
        if len(signature["inputs"]) == 1 and len(signature["outputs"]) == 1:
            return signature["inputs"][0], signature["outputs"][0]
    return input_tensor, output_tensor


def _describe_all(details):
    described = [f"{d['name']} {np.dtype(d['dtype']).name} [" +
                 ",".join("N" if int(n) < 0 else str(int(n)) for n in d["shape_signature"]) + "]"
                 for d in details]
    return ", ".join(described) or "none"


class TfliteSession:
    """A LiteRT interpreter over a contract TFLite file that scores any number of faces (NHWC input).

    The interpreter is resized only when the batch size changes. A model with a fixed batch is fed in
    chunks of that size, the last one padded, like contract.ContractSession.
    """

    def __init__(self, path, info=None, threads=0):
        self.interpreter = make_interpreter(path, threads)
        self.info = info or check_tflite_contract(path, self.interpreter)
        self.fixed_batch = self.info["batch"]
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.threads = threads or os.cpu_count() or 1
        self._batch = int(self.interpreter.get_input_details()[0]["shape"][0])

    def run_batch(self, batch):
        """Logits of one NHWC batch exactly as given (the caller respects a fixed batch size)."""
        if len(batch) != self._batch:
            self.interpreter.resize_tensor_input(self.input_index, [len(batch), INPUT_SIZE, INPUT_SIZE, 1])
            self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(batch, dtype=np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()  # the interpreter reuses its buffer

    def logits(self, tflite_input, batch_size=64):
        """float32 (N, 64, 64, 1) -> float32 (N, 8) scores."""
        return logits_in_batches(self.run_batch, tflite_input, batch_size, self.fixed_batch)


class TflitePredictor(Predictor):
    """A TFLite contract model scored with LiteRT on `to_tflite_input(faces)` (for ferkeras.evaluate.report)."""

    kind = "tflite"

    def __init__(self, path, batch_size=64, threads=0):
        self.path, self.batch_size = Path(path), batch_size
        self.session = TfliteSession(path, threads=threads)
        self.metadata = read_sidecar(path)

    def logits(self, faces):
        return self.session.logits(to_tflite_input(faces), batch_size=self.batch_size)

    def describe(self):
        return {"format": "tflite", "path": str(self.path), "parameters": self.metadata.get("parameters"),
                "fixed_batch": self.session.fixed_batch, "threads": self.session.threads,
                "quantization": self.metadata.get("quantization", "unknown (no sidecar)")}
