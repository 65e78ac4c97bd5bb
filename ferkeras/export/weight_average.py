"""Weight averaging ("model soup", Wortsman et al. 2022): one network whose weights are the mean of its
members', so an ensemble's gain costs nothing at inference.

    python export.py --run runs/fine_tuned --run runs/original --average weights --out soup.onnx

It only works for members that sit in one basin of the loss: a run and a fine-tune started from it
(`train.py --weights runs/<a>/model.keras`), or checkpoints of one run. Two runs from different random
initialisations have the same architecture but unrelated weights, and their mean is a broken network:
average their probabilities instead (the default, `--average probabilities`). BatchNorm statistics are
averaged like every other weight; the parity check and `evaluate.py` then say what the soup scores.
"""
import numpy as np

from ferkeras.errors import UserError

# export.py --average: what an ensemble averages (outputs, or weights into one network)
AVERAGE_CHOICES = ("probabilities", "weights")


def weighted_layers(model):
    """{layer name: its weight arrays} for every layer that has weights."""
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def check_same_architecture(base_layers, other_layers, base_name, other_name):
    """Refuse, in one line, a member whose weighted layers ({name: arrays}) differ from the first member's."""
    missing = sorted(set(base_layers) ^ set(other_layers))
    if missing:
        raise UserError(f"{other_name}: its layers differ from {base_name}'s (for one, {missing[0]!r}); "
                        "--average weights needs members of one architecture, such as a run and a fine-tune of "
                        "it; give --average probabilities to average their outputs instead")
    for name, arrays in base_layers.items():
        shapes = [a.shape for a in arrays]
        theirs = [a.shape for a in other_layers[name]]
        if shapes != theirs:
            raise UserError(f"{other_name}: layer {name!r} has weights of shape {theirs}, {base_name}'s has "
                            f"{shapes}; --average weights needs members of one architecture")


def average_weights(members, names=None):
    """The first member, its weights replaced by the mean of every member's, layer by layer (by name).

    `names` label the members in errors (their file paths); the first member's graph (its preprocessing,
    its `--contract_round_trip` resize) is the one kept.
    """
    if len(members) < 2:
        raise UserError("--average weights needs at least two members (--run or --model .keras)")
    names = list(names) if names is not None else [f"member {i + 1}" for i in range(len(members))]
    base = members[0]
    every = [weighted_layers(m) for m in members]
    for layers, name in zip(every[1:], names[1:]):
        check_same_architecture(every[0], layers, names[0], name)
    for layer in base.layers:
        if layer.weights:
            stacks = zip(*(layers[layer.name] for layers in every))
            layer.set_weights([np.mean(np.stack(arrays), axis=0).astype(arrays[0].dtype) for arrays in stacks])
    return base
