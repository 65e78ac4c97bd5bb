"""Load Keras-2 HDF5 weights into a Keras 3 model, matching layers by name.

Keras 2 wrote two kinds of `.h5` files that pretrained backbones are published as: `save_weights` files
(the layer groups at the root) and full-model files (the same groups under "model_weights"). In both,
the group holds the attribute `layer_names`, and each layer's group the attribute `weight_names`, the
paths of its arrays in the order `layer.weights` had in Keras 2 (kernel, bias; gamma, beta, moving mean,
moving variance). Keras 3 reads neither by name, so this module does, layer by layer.

Layer names: Keras 3 refuses "/" in a layer name, and keras-vggface's names have it
("conv1/7x7_s2/bn"). ferkeras names such layers with "__" in place of "/" ("conv1__7x7_s2__bn");
`keras_layer_name` and `legacy_layer_name` map between the two, and the loader matches names through
them. The mapping is reversible as long as no Keras-2 name contains "__", which holds for every
backbone ferkeras ports.

A load that would leave some layer with weights untouched (the file lacks it, or its arrays have other
shapes) is refused unless asked for: a half-pretrained backbone trains, but worse, and silently. The
classification head ("logits") is the exception, since published "notop" files never have it.
"""
import dataclasses
from pathlib import Path

import h5py
import numpy as np

from ferkeras.errors import UserError

LEGACY_SEPARATOR = "/"
KERAS3_SEPARATOR = "__"
# The head build_model adds on every backbone: no pretrained file has it, so it may be missing.
HEAD_LAYERS = ("logits", "head_dropout")
_NAMES_SHOWN = 3  # how many layer names an error message or summary quotes


def keras_layer_name(legacy_name):
    """A Keras-2 layer name as ferkeras names the layer in Keras 3 ("conv1/7x7_s2" -> "conv1__7x7_s2")."""
    return legacy_name.replace(LEGACY_SEPARATOR, KERAS3_SEPARATOR)


def legacy_layer_name(keras_name):
    """The inverse of `keras_layer_name` ("conv1__7x7_s2" -> "conv1/7x7_s2")."""
    return keras_name.replace(KERAS3_SEPARATOR, LEGACY_SEPARATOR)


@dataclasses.dataclass
class LoadReport:
    """What `load_legacy_h5` did, by Keras-2 layer name.

    loaded: layers whose weights came from the file.
    missing: layers of the model with weights that the file lacks (head layers excluded).
    unexpected: layers of the file with weights that the model lacks (e.g. a top classifier).
    mismatched: (layer, why) for layers present in both whose arrays do not fit; left untouched.
    head_missing: head layers the file lacks, as expected of a "notop" file; left untouched.
    """

    path: Path
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)
    head_missing: list = dataclasses.field(default_factory=list)

    @property
    def complete(self):
        """True when every layer of the model with weights, head aside, got them from the file."""
        return not self.missing and not self.mismatched

    def summary(self):
        """One line: counts, and the first few names of anything not loaded."""
        parts = [f"loaded {len(self.loaded)} layers by name"]
        for label, names in (("missing from the file", self.missing),
                             ("shape mismatch", [f"{name} ({why})" for name, why in self.mismatched]),
                             ("not in the model", self.unexpected),
                             ("head left at its initial values", self.head_missing)):
            if names:
                parts.append(f"{len(names)} {label}: {_first_names(names)}")
        return "; ".join(parts)

    def __str__(self):
        return self.summary()


def load_legacy_h5(model, path, allow_partial=False, head_layers=HEAD_LAYERS):
    """Load a Keras-2 `.h5` weights or full-model file into `model`, matching layers by name.

    Each matched layer gets the file's arrays in the file's order; where the file's array names
    (".../gamma:0") are a permutation of the layer's variable names, that order is used instead, which
    only matters for files saved with unusual variable creation orders.

    Args:
        model: a built Keras 3 model whose layers carry the file's layer names (through
            `keras_layer_name`).
        path: the `.h5` file.
        allow_partial: accept a file that leaves layers of the model without weights (missing or of
            another shape); they keep their initial values and the report lists them.
        head_layers: names of layers that may be missing without making the load partial.

    Returns:
        A LoadReport.

    Raises:
        UserError: the file is missing, not HDF5, not a Keras-2 weights layout, shares no layer with
            the model, or (without allow_partial) covers only part of the model. The model is left
            unchanged when the load is refused.
    """
    path = Path(path)
    file_layers = _read_file_layers(path)
    report, assignments = _plan_load(model, file_layers, path, set(head_layers))
    if not report.loaded:
        raise UserError(f"{path}: none of the {len(layers_with_weights(model))} layers of {model.name} with "
                        f"weights is in the file (file layers: {_first_names(list(file_layers))}); give the "
                        "weights file of this backbone")
    if not report.complete and not allow_partial:
        raise UserError(f"{path}: partial load refused: {report.summary()}; give the weights file saved "
                        "from this architecture, or pass --allow_partial_weights to keep those layers at "
                        "their initial values")
    for layer, values in assignments:
        layer.set_weights(values)
    return report


def _plan_load(model, file_layers, path, head_layers):
    """Match the model's layers to the file's; returns the report and the (layer, arrays) to assign."""
    report = LoadReport(path)
    assignments = []
    model_names = set()
    for layer in layers_with_weights(model):
        name = legacy_layer_name(layer.name)
        model_names.add(name)
        if name not in file_layers:
            (report.head_missing if layer.name in head_layers else report.missing).append(name)
            continue
        values, problem = _fit_to_layer(layer, file_layers[name])
        if problem:
            report.mismatched.append((name, problem))
        else:
            report.loaded.append(name)
            assignments.append((layer, values))
    report.unexpected = [name for name in file_layers if name not in model_names]
    return report, assignments


def _fit_to_layer(layer, named_arrays):
    """The file's arrays for `layer` in the layer's variable order, or (None, why they do not fit)."""
    variables = layer.weights
    if len(named_arrays) != len(variables):
        return None, f"file has {len(named_arrays)} arrays, model {len(variables)}"
    arrays = _in_variable_order(variables, named_arrays)
    for variable, array in zip(variables, arrays):
        if tuple(variable.shape) != array.shape:
            return None, f"{variable.name}: file {array.shape}, model {tuple(variable.shape)}"
    return [array.astype(variable.dtype) for variable, array in zip(variables, arrays)], None


def _in_variable_order(variables, named_arrays):
    """Reorder the file's arrays by variable name when the names correspond one to one, else keep them."""
    by_short_name = {_short_weight_name(name): array for name, array in named_arrays}
    variable_names = [variable.name for variable in variables]
    if len(by_short_name) == len(named_arrays) and sorted(by_short_name) == sorted(variable_names):
        return [by_short_name[name] for name in variable_names]
    return [array for _, array in named_arrays]


def _short_weight_name(weight_name):
    """"conv1/7x7_s2/bn/gamma:0" -> "gamma"."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


# ----------------------------------------------------------------------------- reading the file


def _read_file_layers(path):
    """{Keras-2 layer name: [(weight name, array), ...]} for the file's layers that have weights."""
    if not path.is_file():
        raise UserError(f"{path}: no such file; give the path of a Keras-2 .h5 weights file")
    if not h5py.is_hdf5(path):
        raise UserError(f"{path}: not an HDF5 file; give a Keras-2 .h5 weights or model file (a .keras "
                        "archive or .weights.h5 file is loaded by name elsewhere, not by this loader)")
    try:
        with h5py.File(path, "r") as h5:
            group = _weights_group(h5, path)
            layers = {}
            for layer_name in _string_list_attr(group, "layer_names"):
                named_arrays = _layer_arrays(group[layer_name])
                if named_arrays:
                    layers[layer_name] = named_arrays
            return layers
    except (OSError, KeyError) as exc:
        raise UserError(f"{path}: cannot read it as Keras-2 weights ({str(exc).splitlines()[0]}); the "
                        "file may be truncated: download or copy it again") from None


def _weights_group(h5, path):
    """The group holding `layer_names`: the root of a weights file, "model_weights" of a model file."""
    if _has_string_list_attr(h5, "layer_names"):
        return h5
    if "model_weights" in h5 and _has_string_list_attr(h5["model_weights"], "layer_names"):
        return h5["model_weights"]
    raise UserError(f"{path}: no 'layer_names' attribute at the root or under 'model_weights', so this is "
                    "not a Keras-2 weights or model file (a Keras 3 .weights.h5 is loaded with "
                    "model.load_weights); give a Keras-2 .h5 file")


def _layer_arrays(layer_group):
    return [(name, np.asarray(layer_group[name])) for name in _string_list_attr(layer_group, "weight_names")]


def _has_string_list_attr(group, name):
    return name in group.attrs or f"{name}0" in group.attrs


def _string_list_attr(group, name):
    """A list-of-strings attribute as Keras 2 wrote it: whole, or split into name0, name1, ... when it
    exceeded HDF5's 64 KiB attribute limit (large models' `layer_names`)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [value.decode("utf8") if isinstance(value, bytes) else str(value) for value in values]


def layers_with_weights(model):
    """The layers of `model` that hold weights, in order (what a weights file is matched against)."""
    return [layer for layer in model.layers if layer.weights]


def _first_names(names):
    shown = ", ".join(str(name) for name in names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")
