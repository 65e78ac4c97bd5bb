"""`--freeze_before`: which layers of a model train, counted as the published FER+ recipe counted them."""
import numpy as np

from ferkeras.errors import UserError

def apply_freeze(model, freeze_before):
    """Freeze layers of the full flat model, counted over `model.layers` as the published recipe did.

    The input layer and the preprocessing layer count like any other. freeze_before N < 0 freezes every
    layer except the last |N|; N > 0 freezes the first N; 0 freezes nothing. Frozen BatchNormalization
    layers run in inference mode (Keras 3 does this for `trainable = False`), so their moving statistics
    stay the pretrained ones. Compile the model after freezing.

    Returns a dict: first_trainable (layer name), first_trainable_index, trainable_params, frozen_layers,
    total_layers.
    """
    layers = model.layers
    total = len(layers)
    freeze_before = int(freeze_before)
    if freeze_before < -total or freeze_before >= total:
        raise UserError(f"--freeze_before: {model.name} has {total} layers, so expected a number from "
                        f"-{total} to {total - 1}, got {freeze_before}; 0 trains every layer")
    first_trainable = total + freeze_before if freeze_before < 0 else freeze_before
    for index, layer in enumerate(layers):
        layer.trainable = index >= first_trainable
    return {"first_trainable": layers[first_trainable].name, "first_trainable_index": first_trainable,
            "trainable_params": count_params(model.trainable_weights), "frozen_layers": first_trainable,
            "total_layers": total}


def freeze_summary(info):
    """One line for the CLI describing what `apply_freeze` did."""
    if info["frozen_layers"] == 0:
        return (f"freeze: none of {info['total_layers']} layers frozen; "
                f"{info['trainable_params']:,} trainable parameters")
    return (f"freeze: {info['frozen_layers']} of {info['total_layers']} layers frozen; training from layer "
            f"{info['first_trainable_index']} ({info['first_trainable']}) on, "
            f"{info['trainable_params']:,} trainable parameters")


def count_params(weights):
    """Number of scalars in a list of variables (e.g. model.trainable_weights)."""
    return int(sum(np.prod(w.shape) for w in weights))
