"""Weights files into models: ImageNet ResNet50's file, `.weights.h5` / `.keras` / Keras-2 `.h5` files,
ferkeras' FerNet `.onnx` exports (onnx_weights.py), and `load_model_file`, which reads any ferkeras
`.keras` file with one-line errors."""
import warnings
import zipfile
from pathlib import Path

import h5py
import keras

from ferkeras.errors import UserError, first_line
from ferkeras.models.backbones import import_face_backbones
from ferkeras.models.batchnorm import FusedBatchNormalization
from ferkeras.models.legacy_h5 import layers_with_weights

# Imported for its registration: load_model needs FerNet's layer class known to Keras.
_REGISTERED = (FusedBatchNormalization,)

# keras.applications.ResNet50(weights="imagenet")'s file, address and checksum: a copy Keras downloaded
# once serves us too, and vice versa. (The face backbones' files are found by their own modules.)
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_FILE
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


def imagenet_weights_path():
    """The local path of Keras' ImageNet ResNet50 notop file: found in the weights folders the face
    backbones use too ($FERKERAS_WEIGHTS, then Keras' cache), else downloaded into Keras' cache.

    A file found is used as it is (it may have been placed there by hand on a machine without internet);
    one that is not the right file then fails, with a UserError, when keras.applications loads it.
    """
    from ferkeras.models.backbones import find_weights_file, keras_home, shown_dirs

    found = find_weights_file(IMAGENET_FILE, "models")
    if found:
        return found
    try:
        return Path(keras.utils.get_file(IMAGENET_FILE, IMAGENET_URL, cache_subdir="models",
                                         cache_dir=str(keras_home()), file_hash=IMAGENET_MD5))
    except Exception as exc:  # get_file raises a bare Exception for network failures
        # Its message is "URL fetch failure on <origin>: <code> -- <reason>"; the reason is what helps.
        reason = first_line(exc).rpartition(" -- ")[2]
        raise UserError(f"--weights imagenet: {IMAGENET_FILE} is not in {shown_dirs()} and downloading it "
                        f"failed ({reason[:120]}); put the file in {keras_home() / 'models'}/ (Keras' cache), "
                        "or use --weights PATH / none") from None


def load_weights_file(model, path, allow_partial=False):
    """Load a `.weights.h5`, `.keras` or Keras-2 `.h5` file into `model`; returns a one-line report.

    - `.keras`: the stored model is loaded and its weights are copied layer by layer, matched by layer
      name and variable shapes, so a checkpoint of a whole ferkeras model initialises a fresh one.
    - `.weights.h5`: Keras' own loading; the file records layers by position, not by name, so it must
      come from the same architecture (same --model_name, and for VGG13 the same --image_size).
    - `.h5` / `.hdf5`: a Keras-2 file, loaded by layer name by the legacy loader.
    - `.onnx`: a FerNet file exported by ferkeras, its BatchNorm folded into the convolutions
      (onnx_weights.py): inference is the file's; before training, restore_batchnorm_statistics.
    Without `allow_partial`, every layer of `model` that has weights must get them from the file.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".keras"):
        return _load_keras_file_by_name(model, path, allow_partial)
    if name.endswith(".weights.h5"):
        return _load_weights_h5(model, path, allow_partial)
    if name.endswith(".onnx"):
        from ferkeras.models.onnx_weights import load_onnx_weights

        return load_onnx_weights(model, path, allow_partial)
    return load_legacy_weights(model, path, allow_partial)


def load_legacy_weights(model, path, allow_partial=False):
    """A Keras-2 HDF5 weights or model file, through the legacy loader; returns a one-line report."""
    from ferkeras.models.legacy_h5 import load_legacy_h5

    return f"{path}: {load_legacy_h5(model, path, allow_partial=allow_partial)}"


def load_model_file(path, compile=False):
    """keras.saving.load_model for a ferkeras .keras file (a checkpoint or an export), with one-line errors.

    Registers every ferkeras custom layer first (FaceNet's lives in its backbone module), so a
    checkpoint of any backbone loads; `compile=True` restores the optimiser state for --resume.
    """
    import_face_backbones()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file; give a .keras checkpoint or a .onnx export")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a .keras model (a .keras file is a zip archive; this one is another format, "
                        "or damaged or truncated); give a checkpoint saved by train.py")
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, OSError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: cannot load it as a Keras model ({first_line(exc)[:160]}); give a "
                        ".keras file saved by train.py") from None


def _load_keras_file_by_name(model, path, allow_partial):
    saved = load_model_file(path)
    saved_layers = {layer.name: layer for layer in saved.layers}
    loaded, unmatched = 0, []
    for layer in layers_with_weights(model):
        source = saved_layers.get(layer.name)
        if source is None or _weight_shapes(source) != _weight_shapes(layer):
            unmatched.append(layer.name)
            continue
        layer.set_weights(source.get_weights())
        loaded += 1
    return _matching_report(path, loaded, unmatched, allow_partial, "by layer name and shape")


def _load_weights_h5(model, path, allow_partial):
    _check_readable_hdf5(path)  # a damaged file is not a mismatch: --allow_partial_weights would not help
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path, skip_mismatch=allow_partial)
    except OSError as exc:  # h5py could open the file but not read its arrays
        raise UserError(f"--weights {path}: cannot read it ({first_line(exc)[:120]}); the file is damaged or "
                        "truncated: copy or save it again") from None
    except (ValueError, KeyError) as exc:
        raise UserError(f"--weights {path}: does not fit {model.name} ({first_line(exc)[:160]}); build the "
                        "model it was saved from (same --model_name and --image_size), or pass "
                        "--allow_partial_weights") from None
    skipped = [str(w.message) for w in caught if "could not be loaded" in str(w.message)]
    if skipped:
        return f"{path}: loaded by position, with mismatching layers skipped ({first_line(skipped[0])})"
    return f"{path}: loaded all layers by position"


def _check_readable_hdf5(path):
    if not h5py.is_hdf5(path):
        raise UserError(f"--weights {path}: not an HDF5 file (a .weights.h5 file is HDF5, written by Keras' "
                        "model.save_weights); it may be damaged or another format: copy or save it again")
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as exc:
        raise UserError(f"--weights {path}: cannot read it ({first_line(exc)[:120]}); the file is damaged or "
                        "truncated: copy or save it again") from None


def _matching_report(path, loaded, unmatched, allow_partial, how):
    total = loaded + len(unmatched)
    if unmatched and not allow_partial:
        raise UserError(f"--weights {path}: {len(unmatched)} of {total} layers with weights have no match "
                        f"{how} (first: {', '.join(unmatched[:3])}); build the model the file was saved "
                        "from, or pass --allow_partial_weights")
    if loaded == 0:
        raise UserError(f"--weights {path}: none of the model's {total} layers with weights match the file "
                        f"{how}; is it a weights file of a ferkeras model?")
    missing = f"; {len(unmatched)} kept their initial weights (first: {', '.join(unmatched[:3])})" \
        if unmatched else ""
    return f"{path}: loaded {loaded} of {total} layers {how}{missing}"


def _weight_shapes(layer):
    return [tuple(w.shape) for w in layer.weights]
