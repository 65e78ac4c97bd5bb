"""Where and how fast a run trains: tf.distribute strategies, mixed precision and XLA.

- `--strategy`: `none` (one device), `mirrored` (one machine, one replica per GPU), `multiworker`
  (several machines or processes, described by the standard `TF_CONFIG` variable), or `auto`: mirrored
  when several GPUs are visible, else none. `--batch_size` is always the GLOBAL batch: Keras splits each
  batch of the input pipeline across the replicas. The learning rate is never scaled automatically.
- `--mixed_precision`: `float16` (Keras wraps the optimiser in a LossScaleOptimizer) or `bfloat16`
  (no loss scaling needed). Variables stay float32; the preprocessing and the `logits` layer compute in
  float32 (see models.build_model), so losses, checkpoints and exports see float32 logits.
- `--jit_compile`: XLA-compile the train step (torch.compile under KERAS_BACKEND=torch).

Only the strategies need TensorFlow; everything else here works under any Keras backend.
"""
import atexit
import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras

from ferkeras.errors import UserError
from ferkeras.train.config import OPTION_BY_NAME
from ferkeras.train.run_folder import RunFolder

STRATEGIES = OPTION_BY_NAME["strategy"].choices
PRECISION_POLICIES = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


# ----------------------------------------------------------------------------- strategies

@dataclass
class Placement:
    """The strategy a run trains under, and where this process writes its run folder."""
    name: str  # resolved: none, mirrored or multiworker
    strategy: object = None  # a tf.distribute.Strategy, or None for Keras' default single device
    devices: tuple = ()
    task: str = None  # multiworker: this process's TF_CONFIG task, e.g. "worker:1"
    chief: bool = True
    scratch: Path = None  # a non-chief worker's private output folder, deleted by `release`
    notes: list = field(default_factory=list)

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def release(self):
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def place_run(config):
    """Create the strategy of `config.strategy`; call before any other TensorFlow work.

    TensorFlow configures its devices and collective ops once, when its runtime starts, which is why
    a strategy (MultiWorkerMirroredStrategy above all) has to exist before the first tensor is made.
    """
    requested = config.strategy
    if requested not in STRATEGIES:
        raise UserError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {requested!r}")
    backend = keras.backend.backend()
    if backend != "tensorflow":
        if requested in ("mirrored", "multiworker"):
            raise UserError(f"--strategy {requested}: tf.distribute needs KERAS_BACKEND=tensorflow, this run uses "
                            f"{backend}; use --strategy none (or auto) here, or run under TensorFlow")
        return Placement("none")
    import tensorflow as tf

    if requested == "auto":
        requested = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if requested == "none":
        return Placement("none")
    if requested == "mirrored":
        return _mirrored(tf)
    return _multiworker(tf, config)


def _mirrored(tf):
    """One replica per GPU; without GPUs, one per logical CPU device (only tests make several)."""
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    placement = Placement("mirrored", strategy, tuple(devices))
    if len(devices) == 1:
        placement.notes.append("only one device is visible, so mirrored trains like --strategy none")
    return placement


def read_tf_config():
    """The parsed TF_CONFIG of this process, with a one-line error when it is absent or malformed."""
    text = os.environ.get("TF_CONFIG", "").strip()
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise UserError(f"--strategy multiworker: TF_CONFIG is not set; set it on every worker, e.g. {example} "
                        "(index 1 on the second)")
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config["cluster"], tf_config["task"]
        workers = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
        task_type, index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"TF_CONFIG: expected JSON with 'cluster' and 'task' as in {example}, got {text[:120]!r}")
    if not workers or task_type not in cluster or not 0 <= index < len(cluster[task_type]):
        raise UserError(f"TF_CONFIG: task {task_type}:{index} is not in its cluster {cluster}; give each worker "
                        "its own type and index")
    return tf_config


def is_chief_task(tf_config):
    """The chief writes the run folder: task "chief", or worker 0 when the cluster names no chief."""
    task_type, index = tf_config["task"]["type"], int(tf_config["task"].get("index", 0))
    if "chief" in tf_config["cluster"]:
        return task_type == "chief"
    return task_type == "worker" and index == 0


def _multiworker(tf, config):
    tf_config = read_tf_config()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = tf_config["task"]
    placement = Placement("multiworker", strategy, task=f"{task['type']}:{task.get('index', 0)}",
                          chief=is_chief_task(tf_config))
    if not placement.chief:
        placement.scratch = Path(tempfile.mkdtemp(prefix="ferkeras-worker-"))
        atexit.register(placement.release)  # also when the run stops with an error
    return placement


def worker_config(config, placement):
    """The config this process plans its run folder with.

    The chief keeps it as given. Every other worker writes into a private scratch folder, which
    `Placement.release` deletes: its checkpoints would equal the chief's. To resume, it first copies
    from the chief's run folder what --resume reads, so every worker starts from the same checkpoint;
    the run folder must therefore be on storage every worker sees (or copied to each).
    """
    if placement.chief:
        return config
    if config.resume:
        _copy_chief_run(Path(config.output_dir) / str(config.name), placement.scratch / str(config.name))
    return config.replace(output_dir=str(placement.scratch), overwrite=True)


def _copy_chief_run(chief_dir, mine):
    """Copy what --resume reads (`RunFolder.resume_files`) from the chief's run folder into `mine`."""
    chief = RunFolder(chief_dir)
    for source in chief.resume_files():
        if not source.is_file():
            if source == chief.history_file:
                continue
            raise UserError(f"{source}: a non-chief worker cannot read the chief's run to resume it; put the "
                            "run folder on storage every worker sees (or copy it to the same path on each)")
        target = Path(mine) / chief.relative(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def prepare_fit(model, batches, placement):
    """Make `model.fit(batches)` train correctly under the run's strategy; returns the batches to fit.

    Under a strategy with several replicas, every training batch is a whole global batch: the last,
    short batch of an epoch is left out (those few faces are reshuffled into the next epoch), because
    Keras scales each replica's mean loss by 1/replicas, which is the global mean only when the
    replicas' shares are equal, and a replica with an empty share crashes oneDNN's CPU kernels.
    The model is patched for Keras 3.15's failures under tf.distribute, see `_patch_keras_fit`.
    """
    if placement.strategy is None:
        return batches
    _patch_keras_fit(model, placement)
    if placement.replicas > 1 and len(batches.images) % batches.batch_size:
        return WholeBatches(batches)
    return batches


def validation_batch_size(batch_size, faces, placement):
    """The largest size up to `batch_size` whose last validation batch still gives every replica a face.

    Validation must score every face, so its short last batch cannot be left out as in training, and a
    replica with an empty share crashes oneDNN's CPU kernels. The size changes no score: the model
    runs in inference mode.
    """
    size = batch_size
    while size > placement.replicas and 0 < faces % size < placement.replicas:
        size -= 1
    return size


class WholeBatches(keras.utils.PyDataset):
    """The full batches of a FaceBatches (or subclass): its epoch's last, short batch left out."""

    def __init__(self, batches):
        super().__init__()
        if len(batches.images) < batches.batch_size:
            raise UserError(f"--batch_size {batches.batch_size}: larger than the {len(batches.images)} training "
                            "faces, so a distributed run has no whole batch to train on; lower it")
        self.batches = batches

    def __len__(self):
        return len(self.batches.images) // self.batches.batch_size

    @property
    def num_batches(self):
        return None  # endless, like FaceBatches: batches are a function of (epoch, index)

    def __getitem__(self, position):
        return self.batches.batch(self.batches.epoch + position // len(self), position % len(self))


def _patch_keras_fit(model, placement):
    """Work around two failures of Keras 3.15's `fit` under tf.distribute.

    1. Before the first step Keras builds the model's state from one input batch, which it first
       merges across replicas with `strategy.reduce`: MultiWorkerMirroredStrategy cannot reduce a
       (x, y, weights) tuple (keras-team/keras#20585), and MirroredStrategy fails when that batch
       splits unevenly. Building needs only shapes and dtypes, so this model builds from those of
       this worker's share, with the batch dimension left open.
    2. Under MultiWorkerMirroredStrategy Keras merges each step's logs with
       strategy.reduce("MEAN", value, axis=0), which fails on scalars; see `_logs_as_vectors`.
    """
    import tensorflow as tf
    from keras import tree

    strategy = placement.strategy

    def spec_of_local_part(value):
        if isinstance(value, tf.distribute.DistributedValues):
            value = strategy.experimental_local_results(value)[0]
        return tf.TensorSpec((None,) + tuple(value.shape[1:]), value.dtype)

    def build_from_local_batch(iterator=None, data_batch=None):
        if data_batch is None and iterator is not None:
            for _, _, batches in iterator:
                first = next(batches)
                data_batch = tree.map_structure(spec_of_local_part, first)
                break
            if not announced:  # the training batches; later calls build for validation
                announced.append(True)
                _announce_split(strategy, first)
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    announced = []
    model._maybe_symbolic_build = build_from_local_batch
    if placement.name == "multiworker":
        model.train_step = _logs_as_vectors(model.train_step)
        model.test_step = _logs_as_vectors(model.test_step)


def _announce_split(strategy, batch):
    """Print what each local replica really receives: the proof that a batch is split, not copied."""
    from keras import tree

    faces = strategy.experimental_local_results(tree.flatten(batch)[0])
    print(f"first batch: {' + '.join(str(int(part.shape[0])) for part in faces)} faces on this worker's "
          f"{len(faces)} replica{'s' if len(faces) > 1 else ''}", flush=True)


def _logs_as_vectors(step):
    """Keras 3.15 merges each step's logs across workers with strategy.reduce("MEAN", value, axis=0),
    which fails on the scalar logs. As vectors of one value the same call averages them over replicas."""
    from keras import ops, tree

    def step_with_vector_logs(data):
        return tree.map_structure(lambda value: ops.reshape(value, (1,)), step(data))

    return step_with_vector_logs


def check_global_batch(batch_size, placement):
    """`--batch_size` is split across replicas; each replica needs at least one face per step."""
    replicas = placement.replicas
    if batch_size < replicas:
        raise UserError(f"--batch_size {batch_size}: the global batch is split across {replicas} replicas, so it "
                        f"must be at least {replicas}; raise it (and see the README on scaling --init_lr)")
    if batch_size % replicas:
        placement.notes.append(f"--batch_size {batch_size} does not divide by {replicas} replicas: their shares "
                               "of a batch differ, so their faces weigh slightly differently in the loss; prefer "
                               f"a multiple of {replicas}")


def describe(placement, config):
    replicas = placement.replicas
    per_replica = f" ({config.batch_size / replicas:g} per replica)" if replicas > 1 else ""
    where = f" over {', '.join(placement.devices)}" if placement.devices else ""
    role = f"; this process is {placement.task}" if placement.task else ""
    role += "" if placement.chief else f", not the chief: writing to {placement.scratch}"
    line = (f"strategy: {placement.name}, {replicas} replica{'s' if replicas > 1 else ''}{where}; global batch "
            f"{config.batch_size}{per_replica}; precision {policy_name(config)}; "
            f"XLA {'on' if config.jit_compile else 'off'}{role}")
    return "\n".join([line] + [f"note: {note}" for note in placement.notes])


# ----------------------------------------------------------------------------- precision and XLA

def policy_name(config):
    choice = config.mixed_precision
    if choice not in PRECISION_POLICIES:
        raise UserError(f"--mixed_precision: expected one of {', '.join(PRECISION_POLICIES)}, got {choice!r}")
    return PRECISION_POLICIES[choice]


@contextlib.contextmanager
def precision_policy(config):
    """Build (and compile) models under the run's dtype policy, then restore the global one.

    Layers keep the policy they were built with (it is saved in .keras files), so only building needs
    it; restoring it keeps later models of the same process, tests above all, in float32.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy_name(config))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def compile_options(config):
    """Extra `model.compile` arguments. XLA stays off unless asked for: on this project's 2-core CPU it
    made ResNet50 steps slower, and Keras' own "auto" would turn it on whenever a GPU is visible."""
    return {"jit_compile": bool(config.jit_compile)}


def is_mixed(model):
    return any(layer.dtype_policy.name.startswith("mixed_") for layer in model.layers)


def float32_model(model):
    """A float32 copy of a mixed-precision model (same layers, names and weights), for export.

    Mixed-precision layers keep float32 variables, so the copy holds exactly the trained weights;
    only the computation returns to float32. A float32 model is returned as it is.
    """
    if not is_mixed(model):
        return model
    from ferkeras.models.backbones import import_face_backbones

    import_face_backbones()  # FaceNet's custom layer must be registered before from_config
    copy = model.__class__.from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def _float32_config(node):
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and str(node.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {key: "float32" if key == "dtype" and str(value).startswith("mixed_") else _float32_config(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_float32_config(value) for value in node]
    return node
