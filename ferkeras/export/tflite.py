"""Export a trained Keras model to TFLite (LiteRT) for phones and edge boards: float32, and int8.

`export.py --format tflite` writes `model.tflite` (and, with `--quantize int8`, `model.int8.tflite`)
with the contract of ferkeras.deploy.tflite: float32 [N, 64, 64, 1] NHWC raw 0..255 pixels in, [N, 8]
logits out; the signature `serving_default` names them like the ONNX file (Input3 ->
Plus692_Output_0). What each file is goes to `<file>.json` beside it (see ferkeras.deploy.tflite for why not
inside).

Conversion: the Keras model is wrapped in a `keras.export.ExportArchive` endpoint that calls it with
training=False on a (None, 64, 64, 1) input, written as a SavedModel to a scratch folder and converted
with `tf.lite.TFLiteConverter.from_saved_model`. (TF 2.21's `from_concrete_functions` given the Keras 3
model as trackable object keeps the weights as resource variables, READ_VARIABLE ops, and writes a
27 KB file with no weights; the SavedModel path freezes them and folds BatchNorm into the convolutions.)

int8 (`--quantize int8`): full-integer post-training quantization with float32 input and output
(int8 weights, per channel for convolutions, and int8 activations whose ranges are calibrated on
training faces chosen by ferkeras.export.int8.calibration_faces, as for the ONNX int8 file). Why not
dynamic-range quantization (int8 weights, float activations, no calibration): see docs/deploy.md,
"TFLite"; in short, full integer ran batch-1 latency faster here and is what integer-only phone and
board accelerators (NNAPI / Edge TPU / Hexagon) can run at all.

Every file is checked before it is kept: the float one against the Keras model like the ONNX export
(max softmax difference < 1e-4, top-1 agreement 100% on real validation faces), the int8 one by its
top-1 agreement with the Keras model (ferkeras.export.int8.MIN_AGREEMENT unless given). A failed check
leaves no file behind.
"""
import json
import tempfile
from pathlib import Path

import numpy as np

from ferkeras import NUM_CLASSES
from ferkeras.deploy.contract import INPUT_NAME, INPUT_SIZE, OUTPUT_NAME
from ferkeras.errors import UserError, atomic_path, write_text_atomic
from ferkeras.export.onnx import check_keras_model, check_scores_parity, copy_checkpoint, export_source, metadata_entries, \
    parity_faces
from ferkeras.export.int8 import DEFAULT_CALIBRATION_FACES, MIN_AGREEMENT, calibration_faces, int8_path
from ferkeras.timing import Stopwatch
from ferkeras.deploy.tflite import TFLITE_SUFFIX, TfliteSession, check_tflite_contract, make_interpreter, sidecar_path, \
    to_tflite_input

# How `--quantize int8` quantizes (FULL_INT8); DYNAMIC_RANGE is the alternative the benchmark compares.
FULL_INT8 = "full_int8"
DYNAMIC_RANGE = "dynamic_range"
SCHEMES = (FULL_INT8, DYNAMIC_RANGE)
SCHEME_NOTES = {
    FULL_INT8: "full-integer post-training quantization ({tf}): int8 weights (per channel for convolutions) "
               "and int8 activations calibrated (min/max) on {faces} FER+ training faces; float32 input "
               "and output",
    DYNAMIC_RANGE: "dynamic-range post-training quantization ({tf}): int8 weights, float32 activations "
                   "quantized on the fly; no calibration",
}
# Ops that compute in float inside an int8 file besides the float input's QUANTIZE and the output's
# DEQUANTIZE: listed in the sidecar, so that a backbone whose preprocessing stays partly float says so.
EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")


# ----------------------------------------------------------------------------- converting

def serving_saved_model(model, folder, input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """Write a SavedModel whose serving_default takes float32 (None, 64, 64, 1) as `input_name` and
    returns {output_name: logits}, with the model called in inference mode."""
    import keras
    import tensorflow as tf

    check_keras_model(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 1), tf.float32, name=input_name)
    archive.add_endpoint(name="serving_default", input_signature=[spec],
                         fn=lambda faces: {output_name: model(faces, training=False)})
    archive.write_out(str(folder), verbose=False)


def convert_to_tflite(model, scheme=None, calibration_input=None, input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """The TFLite flatbuffer (bytes) of `model`: float32 when `scheme` is None, else quantized.

    `calibration_input` (float32 NHWC faces) feeds FULL_INT8's activation ranges, one face per step.
    """
    import tensorflow as tf

    if scheme not in (None,) + SCHEMES:
        raise ValueError(f"scheme must be None or one of {SCHEMES}, got {scheme!r}")
    with tempfile.TemporaryDirectory(prefix="ferkeras-tflite-") as work:
        serving_saved_model(model, Path(work) / "saved", input_name, output_name)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(work) / "saved"))
        if scheme is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if scheme == FULL_INT8:
            if calibration_input is None or not len(calibration_input):
                raise UserError("--quantize int8: no calibration faces; give --data_dir with a training split")
            converter.representative_dataset = lambda: ([calibration_input[i:i + 1]]
                                                        for i in range(len(calibration_input)))
            # Input and output stay float32 (the default), so int8 files take the same faces as float ones.
        return converter.convert()


def scheme_note(scheme, calibration_count=0):
    import tensorflow as tf

    return SCHEME_NOTES[scheme].format(tf=f"TensorFlow {tf.__version__} TFLiteConverter", faces=calibration_count)


def float_ops(path):
    """Names of the ops of a TFLite file that compute in float32, besides QUANTIZE / DEQUANTIZE."""
    interpreter = make_interpreter(path, threads=1, delegate=False)
    float_tensors = {t["index"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32}
    return sorted({op["op_name"] for op in interpreter._get_ops_details()  # no public op listing in LiteRT
                   if op["op_name"] not in EDGE_OPS and float_tensors & set(op["outputs"])})


# ----------------------------------------------------------------------------- writing one file

def export_tflite(model, out_path, config=None, source=None, faces=None, data_dir=None, scheme=None,
                  calibration=None, min_agreement=MIN_AGREEMENT, input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """Convert, check against the Keras model, move `out_path` into place and write its sidecar.

    `calibration`: uint8 training faces (N, H, W) for FULL_INT8. Returns the sidecar's dict.
    """
    from ferkeras.train.distribute import float32_model

    model = float32_model(model)  # a mixed-precision graph would miss the float32 contract
    calibration_input = to_tflite_input(calibration) if calibration is not None else None
    flatbuffer = convert_to_tflite(model, scheme, calibration_input, input_name, output_name)
    check_faces, origin = parity_faces(data_dir, faces)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_bytes(flatbuffer)
        info = check_tflite_contract(tmp)
        session = TfliteSession(tmp, info)
        parity = check_scores_parity(
            lambda contract_input: session.logits(np.ascontiguousarray(contract_input.transpose(0, 2, 3, 1))),
            model, check_faces, f"{out_path}: TFLite", **parity_terms(scheme, min_agreement))
        ops = float_ops(tmp) if scheme is not None else None
    metadata = describe_tflite(info, config or {}, source, model, scheme, calibration, ops)
    metadata["parity"] = {**parity, "source": origin}
    write_text_atomic(sidecar_path(out_path), json.dumps(metadata, indent=2))
    return metadata


def parity_terms(scheme, min_agreement):
    """The tolerances and advice of check_scores_parity for a float or a quantized file."""
    if scheme is None:
        return {"hint": "the TFLite converter changed the model; export to ONNX (--format onnx) instead"}
    return {"hint": f"try more calibration faces (--calibration_faces) or accept it with a lower "
                    f"--min_agreement (now {min_agreement:g})",
            "max_softmax_diff": None, "min_agreement": min_agreement}


def describe_tflite(info, config, source, model, scheme, calibration, ops):
    """The sidecar: the ONNX file's metadata entries restated for NHWC, plus what TFLite adds."""
    entries = metadata_entries(config, source, info["input_name"], info["output_name"])
    entries.update({
        "format": "tflite",
        "input": f"{info['input_name']}: float32 [N,{INPUT_SIZE},{INPUT_SIZE},1], NHWC, raw grayscale pixels "
                 "0..255 (no normalisation: the graph does it)",
        "output": f"{info['output_name']}: float32 [N,{NUM_CLASSES}] logits in the order of 'classes' "
                  "(softmax gives probabilities)",
        "input_layout": info["input_layout"],
        "input_name": info["input_name"],
        "output_name": info["output_name"],
        "signature": "serving_default",
        "size_bytes": info["size_bytes"],
        "parameters": int(model.count_params()),
        "quantization": "none (float32)" if scheme is None else
        scheme_note(scheme, len(calibration) if calibration is not None else 0),
    })
    if ops is not None:
        entries["float_ops"] = ops
    return entries


# ----------------------------------------------------------------------------- the command

def check_tflite_out(out_path):
    if out_path.suffix.lower() != TFLITE_SUFFIX:
        raise UserError(f"--out {out_path}: expected a file name ending in {TFLITE_SUFFIX} for --format tflite")


def export_tflite_command(run=None, model=None, checkpoint="best_acc", out=None, data_dir=None, quantize=None,
                          calibration_faces_count=DEFAULT_CALIBRATION_FACES, min_agreement=MIN_AGREEMENT,
                          input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """What `export.py --format tflite` does: model.tflite (verified) and its sidecar, model.keras
    beside it, and with quantize="int8" model.int8.tflite too. Calibration faces are loaded before
    anything is converted, so that missing training faces stop the command with nothing written."""
    from ferkeras.models.weights import load_model_file

    source, config = export_source(run, model, checkpoint)
    out_path = Path(out) if out else (Path(run) if run else source.parent) / f"model{TFLITE_SUFFIX}"
    check_tflite_out(out_path)
    data_dir = data_dir or (config.data_dir if config else None)
    calibration = calibration_faces(data_dir, calibration_faces_count) if quantize is not None else None
    keras_model = load_model_file(source)
    targets = [(out_path, None)] + ([(int8_path(out_path), FULL_INT8)] if quantize is not None else [])
    reports = {}
    for path, scheme in targets:
        with Stopwatch() as watch:
            reports[path.name] = export_tflite(keras_model, path, config, source, data_dir=data_dir, scheme=scheme,
                                               calibration=calibration if scheme else None,
                                               min_agreement=min_agreement, input_name=input_name,
                                               output_name=output_name)
        print_written(path, reports[path.name], watch.seconds)
    copy_checkpoint(source, out_path.with_name("model.keras"))
    print(f"wrote {out_path.with_name('model.keras')}")
    return {"tflite": str(out_path), "int8": str(int8_path(out_path)) if quantize is not None else None,
            "keras": str(out_path.with_name("model.keras")), "files": reports}


def print_written(path, report, seconds):
    parity = report["parity"]
    print(f"wrote {path} ({report['size_bytes'] / 1e6:.2f} MB, {report['parameters']:,} parameters, "
          f"{seconds:.0f} s) and {sidecar_path(path).name}: {report['input_name']} float32 [N,{INPUT_SIZE},"
          f"{INPUT_SIZE},1] NHWC -> {report['output_name']} [N,{NUM_CLASSES}]")
    print(f"  {report['quantization']}")
    print(f"  against Keras on {parity['source']}: max softmax difference {parity['max_softmax_diff']:.2e}, "
          f"top-1 agreement {parity['top1_agreement']:.2%}")
