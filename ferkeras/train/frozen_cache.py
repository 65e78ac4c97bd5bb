"""`--cache_frozen`: run the frozen prefix once per augmentation view, then train only the suffix.

With `--freeze_before` freezing most of a network, every epoch recomputes the same frozen layers on
nearly the same faces. Here the model is cut where frozen layers hand their tensors to trainable ones:

    faces -> [prefix: frozen layers] -> cut tensor(s) -> [suffix: trainable layers] -> logits

The prefix runs once over `cache_views` views of every training face (view 0 the face, view 1 its
mirror, views 2.. random crops of the crop_flip recipe), and its outputs are kept as float16, in RAM
or, past `cache_ram_gb`, in memory-mapped files under `<run>/cache/`. Each epoch then trains the suffix
on one cached view per face, drawn at random. The suffix is built from the model's own layer objects,
so training it trains the model: checkpoints, evaluation and export see the whole model as usual.

Frozen layers run in inference mode (Keras 3 does this for `trainable = False` BatchNormalization),
so the cached outputs are exactly what the uncached path would compute for the same view. What the
cache gives up is augmentation diversity: K fixed views instead of a fresh random crop every epoch.
"""
import contextlib
import json
import math
import time

import keras
import numpy as np
from tqdm import tqdm

from ferkeras.data.augment import build_augmenter
from ferkeras.errors import UserError, atomic_path, write_text_atomic
from ferkeras.data.batches import FaceBatches
from ferkeras.train.config import CACHE_KEY_FIELDS  # the options that decide what the cached tensors hold
from ferkeras.train.run_folder import RunFolder

CACHE_BATCH = 128


def cut_tensors(model):
    """The tensors that frozen layers hand to trainable ones, in graph order.

    Raises UserError when nothing is frozen (there is no prefix to cache) or nothing trains.
    """
    layers = model.layers
    # The prefix ends at the first layer that learns; weightless layers before it (the input, the
    # preprocessing) belong to it whatever their own trainable flag says.
    first = next((i for i, layer in enumerate(layers) if layer.trainable_weights), None)
    if first is None:
        raise UserError("--cache_frozen: every layer is frozen, so there is nothing to train; "
                        "set --freeze_before to leave the last layers trainable")
    if first == 0 or not any(layer.weights for layer in layers[:first]):
        raise UserError("--cache_frozen needs a frozen prefix to cache; set --freeze_before (e.g. -51) "
                        "or drop --cache_frozen")
    frozen = {id(layer) for layer in layers[:first]}
    cuts = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # graph order: inputs first
        for node in model._nodes_by_depth[depth]:
            if id(node.operation) in frozen:
                continue
            for tensor in node.arguments.keras_tensors:
                if id(tensor._keras_history.operation) in frozen:
                    cuts.setdefault(id(tensor), tensor)
    return list(cuts.values())


def split_model(model):
    """(prefix, suffix): prefix maps faces to the cut tensors, suffix maps them to the logits.

    The suffix shares the model's layer objects (and so its weights) and has the same trainable
    variables in the same order, so an optimizer built for one serves the other.
    """
    cuts = cut_tensors(model)
    prefix = keras.Model(model.inputs, cuts, name=f"{model.name}_frozen_prefix")
    suffix = keras.Model(cuts if len(cuts) > 1 else cuts[0], model.outputs, name=f"{model.name}_suffix")
    return prefix, suffix


def compile_suffix(model, suffix):
    """Compile the suffix with the model's own optimizer, loss and metric, so the model's checkpoint
    carries the optimizer state the suffix builds."""
    suffix.compile(optimizer=model.optimizer, loss=model.loss,
                   metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=model.jit_compile)
    return suffix


# ----------------------------------------------------------------------------- computing views

def view_of(faces, view, rng_key, crop):
    """View `view` of uint8 faces (B, 48, 48): 0 the faces, 1 their mirror, 2.. random crops."""
    if view == 0:
        return faces
    if view == 1:
        return faces[:, :, ::-1]
    return crop(faces, np.random.default_rng(rng_key))


def cache_bytes(prefix, count, views):
    """Bytes of a float16 cache of `views` views of `count` faces."""
    values = sum(math.prod(shape[1:]) for shape in _output_shapes(prefix))
    return count * views * values * 2


def _output_shapes(prefix):
    return [tuple(t.shape) for t in prefix.outputs]


def compute_views(prefix, images, views, seed, store, label="cache"):
    """Fill `store` (one float16 array (N, views, *shape) per cut tensor) with the prefix's outputs."""
    crop = build_augmenter("crop_flip")
    steps = [(view, start) for view in range(views) for start in range(0, len(images), CACHE_BATCH)]
    for view, start in tqdm(steps, desc=f"{label}: frozen prefix x {views} view(s)", unit="batch",
                            mininterval=2):
        faces = view_of(images[start:start + CACHE_BATCH], view, [seed, 7919, view, start], crop)
        outputs = prefix.predict_on_batch(np.ascontiguousarray(faces, dtype=np.float32)[..., None])
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for array, output in zip(store, outputs):
            array[start:start + len(faces), view] = keras.ops.convert_to_numpy(output).astype(np.float16)
    return store


def train_cache(prefix, images, config, run_dir):
    """The cached views of the training faces: in RAM, or memory-mapped under <run>/cache/."""
    views = config.cache_views
    if views < 1:
        raise UserError(f"--cache_views: expected at least 1 (the face itself), got {views}")
    size = cache_bytes(prefix, len(images), views)
    shapes = [(len(images), views) + shape[1:] for shape in _output_shapes(prefix)]
    if size <= config.cache_ram_gb * 2**30:
        print(f"cache: {size / 2**30:.2f} GiB of frozen-prefix outputs in RAM")
        return compute_views(prefix, images, views, config.seed, [np.zeros(s, np.float16) for s in shapes])
    return _memmapped_cache(prefix, images, config, RunFolder(run_dir), shapes, size)


def _memmapped_cache(prefix, images, config, folder, shapes, size):
    key = {field: value for field, value in config.to_dict().items() if field in CACHE_KEY_FIELDS}
    key["shapes"] = [list(s) for s in shapes]
    cache_dir, meta_path = folder.cache_dir, folder.cache_meta_file
    files = [folder.cache_views_file(i) for i in range(len(shapes))]
    if _stored_key(meta_path) == key and all(f.is_file() for f in files):
        print(f"cache: reusing {size / 2**30:.2f} GiB in {cache_dir}")
        return [np.load(f, mmap_mode="r") for f in files]
    print(f"cache: {size / 2**30:.2f} GiB of frozen-prefix outputs memory-mapped in {cache_dir}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # a half-made cache must never look finished
    with contextlib.ExitStack() as stack:
        temporary = [stack.enter_context(atomic_path(path)) for path in files]
        arrays = [np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
                  for tmp, shape in zip(temporary, shapes)]
        compute_views(prefix, images, config.cache_views, config.seed, arrays)
        for array in arrays:
            array.flush()
        del arrays
    write_text_atomic(meta_path, json.dumps(key))
    return [np.load(f, mmap_mode="r") for f in files]


def _stored_key(meta_path):
    """The key a memory-mapped cache was made under; None when absent or damaged (then it is recomputed)."""
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def valid_features(prefix, images):
    """The prefix's outputs for the validation faces as they are (one view), as float16 arrays."""
    shapes = [(len(images), 1) + shape[1:] for shape in _output_shapes(prefix)]
    store = compute_views(prefix, images, 1, 0, [np.zeros(s, np.float16) for s in shapes], label="valid")
    return _model_input([array[:, 0] for array in store])


def _model_input(arrays):
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


# ----------------------------------------------------------------------------- training batches

class CachedViewBatches(FaceBatches):
    """FaceBatches over cached prefix outputs: each epoch, one of the K cached views per face.

    Targets, PLD sampling, class weights and the (seed, epoch, batch) keyed shuffling are FaceBatches'
    own, so a cached run draws its batches in the same order as the uncached one.
    """

    def __init__(self, features, targets, batch_size, **kwargs):
        self.features = features
        self.views = features[0].shape[1]
        super().__init__(np.arange(len(targets)), targets, batch_size, augmenter=None, **kwargs)

    def epoch_arrays(self, epoch):
        rng = np.random.default_rng([self.seed, epoch, 31337])
        return {**super().epoch_arrays(epoch), "views": rng.integers(self.views, size=len(self.targets))}

    def batch_inputs(self, rows, epoch, index, arrays):
        views = arrays["views"][rows]
        return _model_input([np.asarray(f[rows, views], dtype=np.float32) for f in self.features])


def prepare(model, config, train, valid, run_dir, epoch, class_weights, sample_targets):
    """Cut `model`, cache its frozen prefix's outputs and return (suffix, train batches, valid data).

    The suffix is compiled with the model's optimizer, so fitting it trains `model`.
    """
    (train_x, train_t), (valid_x, valid_t) = train, valid
    prefix, suffix = split_model(model)
    shapes = ", ".join(str(s[1:]) for s in _output_shapes(prefix))
    print(f"cache: cut after the frozen prefix at {len(prefix.outputs)} tensor(s) {shapes}")
    started = time.time()
    features = train_cache(prefix, train_x, config, run_dir)
    valid_data = (valid_features(prefix, valid_x), valid_t)
    print(f"cache: ready in {time.time() - started:.0f}s; training the suffix "
          f"({len(suffix.layers)} layers) on one of {config.cache_views} views per face per epoch")
    batches = CachedViewBatches(features, train_t, config.batch_size, sample_targets=sample_targets,
                                class_weights=class_weights, seed=config.seed, epoch=epoch)
    return compile_suffix(model, suffix), batches, valid_data
