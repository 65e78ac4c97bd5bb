"""Export a trained Keras model to ONNX as a drop-in for the ONNX Model Zoo `emotion-ferplus-8.onnx`.

The exported graph is a thin Keras wrapper, Input((1, 64, 64)) -> transpose to NHWC -> the trained
model (inference mode), converted with tf2onnx. Our models keep all preprocessing (resize, gray to 3
channels, backbone normalisation) inside the graph, so the ONNX file takes the reference's raw
0..255 pixels and nothing else has to change in a deployment. The file is written to a temporary
path, checked against the Keras model on real faces, and only then moved into place.
"""
import shutil
from pathlib import Path

import numpy as np

from ferkeras import CLASSES, FACE_SIZE, NUM_CLASSES, __version__
from ferkeras.deploy.contract import (INPUT_NAME, INPUT_SIZE, OUTPUT_NAME, ContractSession, check_finite_scores, check_onnx_contract,
                       to_contract_input)
from ferkeras.errors import UserError, atomic_path, temp_dir_beside
from ferkeras.train.config import Config

# tf2onnx 1.17 converts up to opset 18; 17 is the newest that every onnxruntime since 1.14 runs.
DEFAULT_OPSET = 17
MAX_OPSET = 18
# Parity required between the Keras model and the exported file, on softmax outputs.
MAX_SOFTMAX_DIFF = 1e-4
PARITY_FACES = 256
# Options of the training config worth carrying inside the ONNX file.
CONFIG_METADATA = ("name", "model_name", "weights", "image_size", "freeze_before", "training_mode",
                   "dropout_rate", "optimizer", "init_lr", "lr_policy", "batch_size", "nepochs", "augment",
                   "class_weights", "seed", "members", "average", "tta")


# ----------------------------------------------------------------------------- building the ONNX graph

def contract_wrapper(model):
    """A Keras model taking the contract's NCHW [N, 1, 64, 64] input and returning `model`'s logits."""
    import keras

    check_keras_model(model)
    nchw = keras.Input((1, INPUT_SIZE, INPUT_SIZE), dtype="float32", name="contract_input")
    nhwc = keras.layers.Permute((2, 3, 1), name="nchw_to_nhwc")(nchw)
    return keras.Model(nchw, model(nhwc, training=False), name="ferkeras_contract")


def check_keras_model(model):
    """The model contract: one (None, H, W, 1) raw-pixel input, 8 logits out."""
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 4 or shape[-1] != 1:
        raise UserError(f"model {model.name}: expected one grayscale input (None, H, W, 1), got "
                        f"{model.input_shape}; export a model built by ferkeras")
    if shape[1] not in (None, INPUT_SIZE) or shape[2] not in (None, INPUT_SIZE):
        raise UserError(f"model {model.name}: its input is fixed to {shape[1]}x{shape[2]}, but the ONNX "
                        f"contract feeds {INPUT_SIZE}x{INPUT_SIZE}; build it with a (None, None, None, 1) input")
    if model.output_shape[-1] != NUM_CLASSES:
        raise UserError(f"model {model.name}: scores {model.output_shape[-1]} classes, expected "
                        f"{NUM_CLASSES} (FER+ order: {', '.join(CLASSES)})")


def convert_to_onnx(model, opset=DEFAULT_OPSET, input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """tf2onnx conversion of the contract wrapper; returns an onnx.ModelProto with the tensor names set
    and the batch dimension named N."""
    import tensorflow as tf
    import tf2onnx

    if not 7 <= opset <= MAX_OPSET:
        raise UserError(f"--opset: expected 7..{MAX_OPSET} (what tf2onnx 1.17 converts), got {opset}")
    wrapper = contract_wrapper(model)
    # tf2onnx cannot read a Keras 3 model's signature by itself; it gets an explicit one.
    signature = (tf.TensorSpec((None, 1, INPUT_SIZE, INPUT_SIZE), tf.float32, name=input_name),)
    proto, _ = tf2onnx.convert.from_keras(wrapper, input_signature=signature, opset=opset)
    rename_tensor(proto.graph, proto.graph.output[0].name, output_name)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return proto


def rename_tensor(graph, old, new):
    """Rename a tensor everywhere it is produced, consumed or listed as a graph output."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def describe_contract(input_name, output_name):
    return {
        "classes": ",".join(CLASSES),
        "input": f"{input_name}: float32 [N,1,{INPUT_SIZE},{INPUT_SIZE}], NCHW, raw grayscale pixels 0..255 "
                 "(no normalisation: the graph does it)",
        "output": f"{output_name}: float32 [N,{NUM_CLASSES}] logits in the order of 'classes' "
                  "(softmax gives probabilities)",
        "input_layout": "NCHW",
        "pixel_range": "0..255",
        "input_size": str(INPUT_SIZE),
        "ferkeras_version": __version__,
    }


def metadata_entries(config, source, input_name, output_name):
    """Class names, the contract and the training config's essentials, as text keys and values: the
    metadata of every exported file (written into an ONNX file by `write_metadata`, restated beside
    a TFLite file as JSON by ferkeras.export.tflite, carried into an int8 file by ferkeras.export.int8)."""
    entries = describe_contract(input_name, output_name)
    config = config.to_dict() if isinstance(config, Config) else config  # a run's, or an ensemble's dict
    entries.update({f"config.{key}": _text(config[key]) for key in CONFIG_METADATA if key in config})
    entries["source_checkpoint"] = Path(source).name if source else ""
    return entries


def add_metadata(proto, config, source, input_name, output_name):
    """Write class names, the contract and the training config's essentials into metadata_props."""
    write_metadata(proto, metadata_entries(config, source, input_name, output_name),
                   "FER+ facial-expression classifier exported by ferkeras; drop-in for emotion-ferplus-8.onnx "
                   "(see metadata_props for the contract)")


def write_metadata(proto, entries, doc_string):
    """Replace an ONNX model's metadata_props by `entries` (values as text) and set its doc string."""
    del proto.metadata_props[:]
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, str(value)
    proto.doc_string = doc_string


def _text(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------- parity check

def parity_faces(data_dir=None, faces=None, limit=PARITY_FACES):
    """Up to `limit` real validation faces from `data_dir`, else the given `faces`, else seeded noise.

    Returns (faces uint8 (N, H, W), where they came from).
    """
    if data_dir is not None or faces is None:
        try:
            from ferkeras.data.ferplus import load_split, resolve_data_dir

            images = load_split(resolve_data_dir(data_dir), "valid").images
            return images[:limit], f"{min(limit, len(images))} validation faces"
        except UserError as exc:
            if faces is None:
                print(f"warning: no FER+ validation faces for the parity check ({exc}); using random faces")
    if faces is not None:
        faces = np.asarray(faces)[:limit]
        return faces, f"{len(faces)} given faces"
    noise = np.random.default_rng(0).integers(0, 256, size=(64, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    return noise, "64 random faces"


def keras_parity_logits(model, faces, name):
    """The Keras model's logits of the parity faces; a UserError when they are not finite (a model with
    NaN weights cannot be exported into a working file, whatever the opset)."""
    contract_input = to_contract_input(faces)
    keras_logits = model.predict(contract_input.transpose(0, 2, 3, 1), batch_size=64, verbose=0)
    return check_finite_scores(keras_logits, name, what="the Keras model", advice="nothing was written; export "
                               "another checkpoint (--checkpoint best_loss, last or a file)")


def check_parity(onnx_path, model, faces, info=None, name=None, keras_logits=None):
    """Compare onnxruntime on to_contract_input(faces) with the Keras model on the same pixels.

    `name` is the file the user asked for (`onnx_path` may be a temporary); `keras_logits`, when
    known, are `keras_parity_logits(model, faces)`. Returns {faces, max_softmax_diff, top1_agreement};
    raises a UserError past the tolerances, or when either model gives non-finite scores.
    """
    name = name or onnx_path
    session = ContractSession(onnx_path, {**(info or check_onnx_contract(onnx_path)), "path": str(name)})
    return check_scores_parity(session.logits, model, faces, f"{name}: ONNX", "try another --opset",
                               keras_logits=keras_logits, name=name)


def check_scores_parity(score, model, faces, what, hint, max_softmax_diff=MAX_SOFTMAX_DIFF, min_agreement=1.0,
                        keras_logits=None, name=None):
    """Compare `score` (contract input float32 [N,1,64,64] -> logits) with the Keras model on the same
    pixels of `faces`: the check every exported file passes before it is kept.

    `what` names the file and its format in the error, `hint` says what to try. `max_softmax_diff`
    None leaves the difference unchecked (only reported), for quantized files, which are held to
    `min_agreement` instead. Returns {faces, max_softmax_diff, top1_agreement}.
    """
    from ferkeras.deploy.contract import softmax

    if keras_logits is None:
        keras_logits = keras_parity_logits(model, faces, name or what)
    p_ours, p_keras = softmax(score(to_contract_input(faces))), softmax(keras_logits)
    diff = float(np.abs(p_ours - p_keras).max())
    agreeing = int((p_ours.argmax(axis=1) == p_keras.argmax(axis=1)).sum())
    agreement = agreeing / len(faces)
    result = {"faces": int(len(faces)), "max_softmax_diff": diff, "top1_agreement": agreement}
    diff_fails = max_softmax_diff is not None and not diff < max_softmax_diff
    if diff_fails or agreement < min_agreement:
        bound = f", must be < {max_softmax_diff:g}" if max_softmax_diff is not None else ""
        needed = "all" if min_agreement >= 1 else f"at least {min_agreement:.0%}"
        raise UserError(f"{what} and Keras outputs differ on {len(faces)} faces (max softmax difference "
                        f"{diff:.2e}{bound}; top-1 agreement on {agreeing} of {len(faces)} faces, must be "
                        f"{needed}); nothing was written; {hint}")
    return result


# ----------------------------------------------------------------------------- writing the files

def export_onnx(model, out_path, config=None, source=None, faces=None, data_dir=None, opset=DEFAULT_OPSET,
                input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """Convert, add metadata, verify parity and move the ONNX file into place; return a report dict."""
    import onnx

    from ferkeras.train.distribute import float32_model

    config = config or {}
    # A mixed-precision checkpoint converts to a half-precision graph that misses the contract and parity.
    model = float32_model(model)
    check_faces, origin = parity_faces(data_dir, faces)
    keras_logits = keras_parity_logits(model, check_faces, out_path)  # before the conversion: it takes a while
    proto = convert_to_onnx(model, opset, input_name, output_name)
    add_metadata(proto, config, source, input_name, output_name)
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
        info = check_onnx_contract(tmp)
        parity = check_parity(tmp, model, check_faces, info, name=out_path, keras_logits=keras_logits)
    return {"onnx": str(out_path), "opset": opset, "parameters": info["parameters"],
            "size_bytes": info["size_bytes"], "parity": {**parity, "source": origin}}


def copy_checkpoint(source, destination):
    """Copy the Keras checkpoint beside the export (skipped when it already is that file)."""
    source, destination = Path(source), Path(destination)
    if destination.exists() and destination.resolve() == source.resolve():
        return
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def export_saved_model(model, path):
    """A TF SavedModel of the Keras model itself (NHWC raw-pixel input), written beside and swapped in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_dir_beside(path)
    try:
        model.export(str(staging / "saved"), format="tf_saved_model", verbose=False)
        if path.exists():
            shutil.rmtree(path)
        (staging / "saved").rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_source(run=None, model=None, checkpoint="best_acc"):
    """(the .keras file to export, the run's Config or None): every export starts from a Keras model."""
    from ferkeras.train.run_folder import model_file, run_config

    source = model_file(run, model, checkpoint)
    if source.suffix.lower() != ".keras":
        raise UserError(f"{source}: export needs a .keras model, got {source.suffix or 'no suffix'}; "
                        "give --run runs/<name> or --model FILE.keras")
    return source, run_config(run)


def export_command(run=None, model=None, checkpoint="best_acc", out=None, opset=DEFAULT_OPSET,
                   input_name=INPUT_NAME, output_name=OUTPUT_NAME, data_dir=None, saved_model=False):
    """What `export.py` does: model.onnx (verified), model.keras beside it, optionally a SavedModel."""
    from ferkeras.models.weights import load_model_file

    source, config = export_source(run, model, checkpoint)
    out_path = Path(out) if out else (Path(run) if run else source.parent) / "model.onnx"
    if out_path.suffix.lower() != ".onnx":
        raise UserError(f"--out {out_path}: expected a file name ending in .onnx")
    keras_model = load_model_file(source)
    report = export_onnx(keras_model, out_path, config, source,
                         data_dir=data_dir or (config.data_dir if config else None),
                         opset=opset, input_name=input_name, output_name=output_name)
    copy_checkpoint(source, out_path.with_name("model.keras"))
    report["keras"] = str(out_path.with_name("model.keras"))
    if saved_model:
        export_saved_model(keras_model, out_path.with_name("saved_model"))
        report["saved_model"] = str(out_path.with_name("saved_model"))
    parity = report["parity"]
    print(f"wrote {out_path} ({report['size_bytes'] / 1e6:.1f} MB, {report['parameters']:,} parameters, "
          f"opset {opset}): {input_name} float32 [N,1,{INPUT_SIZE},{INPUT_SIZE}] -> {output_name} [N,{NUM_CLASSES}]")
    print(f"parity on {parity['source']}: max softmax difference {parity['max_softmax_diff']:.2e}, "
          f"top-1 agreement {parity['top1_agreement']:.2%}")
    print(f"wrote {report['keras']}" + (f" and {report['saved_model']}/" if saved_model else ""))
    return report
