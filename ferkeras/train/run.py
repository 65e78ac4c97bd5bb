"""Fine-tune a model on FER+: run folder, data, model, optimiser, learning-rate policy, checkpoints, resume.

A run folder (runs/<name>) holds everything a run made; its layout is `ferkeras.train.run_folder.RunFolder`.
"""
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import socket
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from ferkeras.train import distill, distribute, finetune, frozen_cache
from ferkeras.data.augment import build_augmenter
from ferkeras.train.config import read_saved_config, resumed_config, save_config
from ferkeras.data.ferplus import load_labelled, resolve_data_dir, summary_line
from ferkeras.errors import UserError, atomic_path, check_output_folder, read_json, sweep_stale_temporaries, write_text_atomic
from ferkeras.models.losses import loss_for_mode
from ferkeras.models.freezing import apply_freeze, freeze_summary
from ferkeras.models.onnx_weights import model_from_onnx, restore_for_training
from ferkeras.models.registry import build_model
from ferkeras.models.weights import load_model_file
from ferkeras.data.batches import FaceBatches, class_weight_vector
from ferkeras.train.plots import plot_training_curves
from ferkeras.train.run_folder import RunFolder

# Run folders this process created (see `_removes_unstarted_run`).
_created_run_dirs = []


# ----------------------------------------------------------------------------- run folder

def run_dir_for(config):
    return Path(config.output_dir) / config.name


def plan_run(config, explicit=()):
    """Name the run folder (or reopen it, with --resume); return (config, run_dir, state).

    A new run's folder is only created by `create_run_dir`, once data and model have loaded, so a
    mistake in the command leaves no empty run behind; a folder left by a run that died before its
    first epoch ended holds nothing to keep, and is replaced rather than refused.
    """
    check_output_folder(config.output_dir, "--output_dir")
    if config.resume:
        return _reopen_run(config, explicit)
    if not config.name:
        config = config.replace(name=f"{config.model_name}-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = run_dir_for(config)
    if run_dir.exists() and not config.overwrite:
        if not _abandoned_before_first_epoch(run_dir):
            raise UserError(f"{run_dir}: a run of that name exists; pick another --name, add --overwrite to "
                            f"replace it, or --resume to continue it")
        print(f"{run_dir}: replacing the folder of a run that stopped before its first epoch ended")
    return config, run_dir, {"epoch": 0}


def create_run_dir(config, run_dir):
    if run_dir.exists():
        shutil.rmtree(run_dir)  # --overwrite, or a run that died before its first epoch (plan_run)
    folder = RunFolder(run_dir)
    folder.checkpoints_dir.mkdir(parents=True)
    # Which process is starting the run (see _abandoned_before_first_epoch); removed once an epoch is saved.
    write_text_atomic(folder.owner_file, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    _created_run_dirs.append(run_dir)
    save_config(config, folder.config_file)


def _started(run_dir):
    return RunFolder(run_dir).started()


def _abandoned_before_first_epoch(run_dir):
    """True for a ferkeras run folder without a finished epoch whose starting process is gone."""
    if _started(run_dir) or not RunFolder(run_dir).config_file.is_file():
        return False
    try:
        owner = read_json(RunFolder(run_dir).owner_file) or {}
    except UserError:
        owner = {}
    pid, host = owner.get("pid"), owner.get("host")
    if not isinstance(pid, int) or pid == os.getpid():
        return True  # made by an earlier ferkeras, or by an earlier attempt of this process
    if host != socket.gethostname():
        raise UserError(f"{run_dir}: process {pid} on {host} started this run and it has not finished an "
                        "epoch yet; wait for it, or add --overwrite if that process is gone")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    raise UserError(f"{run_dir}: process {pid} is starting this run right now (no epoch finished yet); "
                    "wait for it, or pick another --name")


def _removes_unstarted_run(train_function):
    """Remove the folder of a new run that fails or is interrupted before its first epoch is saved:
    it holds nothing to resume, and would only block the corrected command."""
    @functools.wraps(train_function)
    def wrapper(*args, **kwargs):
        already = len(_created_run_dirs)
        try:
            return train_function(*args, **kwargs)
        except BaseException:
            for run_dir in _created_run_dirs[already:]:
                if run_dir.is_dir() and not _started(run_dir):
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            del _created_run_dirs[already:]
    return wrapper


def _reopen_run(config, explicit):
    """The saved config and state of the run to resume. Everything is read and checked first: the
    folder is only written to (config.yaml, training.csv) once the run is known to be resumable."""
    if not config.name:
        raise UserError("--resume needs --name: the run to continue")
    run_dir = run_dir_for(config)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run to resume; check --name and --output_dir (the run folder is "
                        "<output_dir>/<name>), or drop --resume to start a new run")
    folder = RunFolder(run_dir)
    state_path, last = folder.state_file, folder.checkpoint("last")
    if not last.is_file() or not state_path.is_file():
        if folder.config_file.is_file() and not state_path.is_file():
            raise UserError(f"{run_dir}: the run stopped before its first epoch ended, so there is nothing to "
                            "resume; run the same command without --resume (the unfinished folder is replaced)")
        raise UserError(f"{run_dir}: nothing to resume (no {folder.relative(last)} and "
                        f"{folder.relative(state_path)}); start it again with --overwrite")
    saved, unknown = read_saved_config(folder.config_file)  # options added since the run: defaults
    state = folder.read_state()
    _check_checkpoint(last)
    saved = resumed_config(saved, config, explicit, run_dir)
    sweep_stale_temporaries(run_dir, recursive=True)  # left by a kill during a checkpoint or a cache
    save_config(saved.replace(resume=False), folder.config_file, unknown)
    _truncate_history(folder.history_file, state["epoch"])
    return saved, run_dir, state


def _check_checkpoint(path):
    """A truncated or damaged last.keras fails here, before --resume changes anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        bad = str(exc) or type(exc).__name__
    if bad:
        raise UserError(f"{path}: the last checkpoint is damaged ({bad}), so the run cannot be resumed; "
                        "restore it from a copy, or start the run again with --overwrite")


def _truncate_history(csv_path, epochs_done):
    """Drop training.csv rows written after the last saved checkpoint (a kill between the two writes)."""
    if not csv_path.is_file():
        return
    lines = csv_path.read_text(errors="replace").splitlines(keepends=True)
    write_text_atomic(csv_path, "".join(lines[:1 + epochs_done]))


# ----------------------------------------------------------------------------- data

def load_data(config):
    """Training faces with targets of the chosen label mode; validation faces under the majority protocol.

    With --finetune_from: your faces, a held-out share of them as the validation split."""
    if config.finetune_from:
        return finetune.load_finetune_data(config)
    data_dir = resolve_data_dir(config.data_dir)
    train_x, train_t, train_summary = load_labelled(data_dir, "train", config.training_mode)
    valid_x, valid_t, valid_summary = load_labelled(data_dir, "valid", "majority")
    print(summary_line("train", train_summary))
    print(summary_line("valid", valid_summary))
    rng = np.random.default_rng(config.seed)
    train_x, train_t = _subset(train_x, train_t, config.train_limit, rng)
    valid_x, valid_t = _subset(valid_x, valid_t, config.valid_limit, rng)
    return (train_x, train_t), (valid_x, valid_t)


def _subset(images, targets, limit, rng):
    if not limit or limit >= len(images):
        return images, targets
    rows = np.sort(rng.choice(len(images), size=limit, replace=False))
    return images[rows], targets[rows]


def fit_inputs(config, model, train, valid, run_dir, epoch=0):
    """(model to fit, training batches, validation data): the model itself on faces or, with
    --cache_frozen, its trainable suffix on cached outputs of the frozen prefix (same weights)."""
    if config.cache_frozen:
        return frozen_cache.prepare(model, config, train, valid, run_dir, epoch,
                                    class_weights=class_weight_vector(config.class_weights, train[1]),
                                    sample_targets=config.training_mode == "probability")
    valid_x, valid_t = valid
    if config.teacher:
        batches = distill.distilled_batches(config, train, run_dir, epoch,
                                            class_weight_vector(config.class_weights, train[1]))
    else:
        batches = make_batches(config, train, epoch)
    return model, batches, (valid_x.astype(np.float32)[..., None], valid_t)


def make_batches(config, train, epoch=0):
    images, targets = train
    return FaceBatches(
        images, targets, config.batch_size,
        augmenter=build_augmenter(config.augment, erasing=config.erasing),
        sample_targets=config.training_mode == "probability",
        class_weights=class_weight_vector(config.class_weights, targets),
        seed=config.seed, epoch=epoch, mix=config.mix, mix_alpha=config.mix_alpha)


# ----------------------------------------------------------------------------- model and optimiser

def build_optimizer(config):
    # --ema: Keras' optimizers keep the moving average themselves (use_ema), updated after every step.
    ema = {"use_ema": True, "ema_momentum": config.ema} if config.ema else {}
    if config.optimizer == "SGD":
        return keras.optimizers.SGD(learning_rate=config.init_lr, momentum=config.momentum, **ema)
    if config.optimizer == "AdamW":
        return keras.optimizers.AdamW(learning_rate=config.init_lr, weight_decay=config.weight_decay, **ema)
    return keras.optimizers.Adam(learning_rate=config.init_lr, **ema)


def swap_ema_weights(model):
    """Exchange the model's trainable weights with the optimizer's moving averages of them (--ema).

    Checkpoints are written swapped (the average as the model's weights, the raw weights in the
    optimizer's average slots), so evaluation and export use the average; --resume swaps back, so
    training continues from exactly the raw weights. The optimizer's private lists are the only handle
    on the averages (Keras' own SwapEMAWeights uses them too).
    """
    optimizer = model.optimizer
    for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
        raw = keras.ops.convert_to_numpy(variable)
        variable.assign(average)
        average.assign(raw)


class ValidateWithEMA(keras.callbacks.Callback):
    """--ema: validation scores the moving average, swapped in for each validation pass and out after.

    Not Keras' SwapEMAWeights: under TensorFlow it swaps by arithmetic (a += b; b = a - b; a -= b),
    which rounds the raw weights a little at every validation, so a resumed run (which restores them
    exactly) would drift from the uninterrupted one. Copies are exact.
    """

    def on_test_begin(self, logs=None):
        swap_ema_weights(self.model)

    def on_test_end(self, logs=None):
        swap_ema_weights(self.model)


def new_model(config, train_faces=None):
    """The configured model, frozen and compiled: built from --model_name, or loaded for --finetune_from.
    `train_faces` set the BatchNorm statistics of weights read from an ONNX file (models/onnx_weights.py)."""
    if config.finetune_from:
        source = finetune.finetune_source(config.finetune_from)
        print(f"fine-tuning {source}")
        model = model_from_onnx(source, _needed(train_faces)) if _is_onnx(source) else load_model_file(source)
    else:
        model = build_model(config.model_name, weights=config.weights,
                            image_size=config.image_size or None, dropout_rate=config.dropout_rate,
                            allow_partial_weights=config.allow_partial_weights,
                            contract_round_trip=config.contract_round_trip)
        if _is_onnx(config.weights):
            restore_for_training(model, _needed(train_faces))
    print(freeze_summary(apply_freeze(model, config.freeze_before)))
    model.compile(optimizer=build_optimizer(config),
                  loss=loss_for_mode(config.training_mode, config.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], **distribute.compile_options(config))
    return model


def _is_onnx(spec):
    return str(spec or "").lower().endswith(".onnx")


def starts_from_onnx(config):
    """Whether the run's first weights come from an ONNX file: --finetune_from's when given (it overrides
    --weights), else --weights'."""
    return _is_onnx(config.finetune_from) if config.finetune_from else _is_onnx(config.weights)


def save_start_model(model, path):
    """The file's network as this run starts from it: its BatchNorm statistics were measured here, so only
    this copy matches the run's checkpoints parameter for parameter (for a weight average of the two)."""
    uncompiled = keras.models.clone_model(model)  # no optimizer state: none exists yet
    uncompiled.set_weights(model.get_weights())
    with atomic_path(path) as tmp:
        uncompiled.save(tmp)
    print(f"start: {path} (the ONNX file's network in Keras form)")


def _needed(train_faces):
    if train_faces is None:
        raise ValueError("an ONNX file's weights need the training faces to measure BatchNorm statistics")
    return train_faces


def scheduled_lr(config, epoch):
    """Learning rate of an epoch for the epoch-indexed policies (step, cosine, constant)."""
    lr = config.init_lr
    # The policy's clock starts when the warm-up ends.
    warmup = config.warmup_epochs
    epoch = max(epoch - warmup, 0)
    if config.lr_policy == "step":
        return lr * config.lr_decay_factor ** (epoch // config.lr_decay_epochs)
    if config.lr_policy == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * epoch / (config.nepochs - warmup)))
    return lr


def lr_callback(config):
    if config.lr_policy == "plateau":
        return keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.plateau_factor,
                                                 patience=config.plateau_patience, min_lr=1e-7, verbose=1)
    return keras.callbacks.LearningRateScheduler(lambda epoch: scheduled_lr(config, epoch))


class WarmUp(keras.callbacks.Callback):
    """Linear warm-up of the learning rate over the first `epochs` epochs, set before every step.

    The rate is a function of (epoch, step) alone, so a resumed run warms up as the uninterrupted one
    did. Large learning rates from the first step can push a network trained from scratch (BatchNorm
    statistics still settling) into a poor region; the ramp lets Adam's moment estimates settle first.
    """

    def __init__(self, init_lr, epochs):
        super().__init__()
        self.init_lr, self.epochs = init_lr, epochs
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch >= self.epochs:
            return
        steps = self.params.get("steps") or 1
        done = (self.epoch * steps + batch + 1) / (self.epochs * steps)
        self.model.optimizer.learning_rate = self.init_lr * done


# ----------------------------------------------------------------------------- checkpoints and state

class RunRecorder(keras.callbacks.Callback):
    """After every epoch: checkpoints (atomically), state.json, curves.png and a one-line summary.

    It also carries the counters of the plateau and early-stopping callbacks across --resume, so a
    resumed run decays and stops exactly when the uninterrupted one would have.
    """

    def __init__(self, run_dir, config, state, stateful_callbacks, full_model=None):
        super().__init__()
        # With --cache_frozen, fit trains a suffix model; the checkpoints hold the whole model.
        self.full_model = full_model
        self.run_dir, self.config = Path(run_dir), config
        self.folder = RunFolder(run_dir)
        self.stateful = stateful_callbacks
        self.best_acc = state.get("best_val_accuracy") or -np.inf
        self.best_loss = state.get("best_val_loss") or np.inf
        self.best_epoch = state.get("best_epoch", 0)
        self.saved_counters = state.get("callbacks", {})
        self.saved_random_state = state.get("random_state")
        self.epoch_start = None

    def on_train_begin(self, logs=None):
        for name, callback in self.stateful.items():
            for key, value in self.saved_counters.get(name, {}).items():
                if value is not None:
                    setattr(callback, key, value)
        if self.saved_random_state is not None:
            restore_seed_states(self.full_model or self.model, self.saved_random_state)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        saved = []
        # Serialise once (a ResNet50 with Adam state is ~280 MB); the best checkpoints are links to it.
        self._save_last()
        if logs.get("val_accuracy", -np.inf) > self.best_acc:
            self.best_acc, self.best_epoch = logs["val_accuracy"], epoch + 1
            saved.append(self._copy_last("best_acc"))
        if logs.get("val_loss", np.inf) < self.best_loss:
            self.best_loss = logs["val_loss"]
            saved.append(self._copy_last("best_loss"))
        self._write_state(epoch + 1, finished=False)
        plot_training_curves(self.folder.history_file, self.folder.curves_file, title=self.config.name)
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        print(f"epoch {epoch + 1}/{self.config.nepochs}: loss {logs.get('loss', np.nan):.4f} "
              f"acc {logs.get('accuracy', np.nan):.4f} | val_loss {logs.get('val_loss', np.nan):.4f} "
              f"val_acc {logs.get('val_accuracy', np.nan):.4f} (best {self.best_acc:.4f} @ {self.best_epoch}) "
              f"| lr {lr:.3g} | {time.time() - self.epoch_start:.0f}s"
              + (f" | saved {', '.join(saved)}" if saved else ""), flush=True)

    def _checkpoint(self, which):
        return self.folder.checkpoint(which)

    def _save_last(self):
        model = self.full_model or self.model
        ema = bool(self.config.ema)
        if ema:
            swap_ema_weights(model)
        try:
            with atomic_path(self._checkpoint("last")) as tmp:
                model.save(tmp)
        finally:
            if ema:
                swap_ema_weights(model)

    def _copy_last(self, which):
        """This epoch's last.keras as best_acc / best_loss: a hard link where the file system has them.

        last.keras is only ever replaced by a rename, never rewritten, so the link keeps this epoch's
        file; and the disk takes one checkpoint per epoch instead of up to three (ResNet50 with Adam's
        state: 283 MB each)."""
        with atomic_path(self._checkpoint(which)) as tmp:
            try:
                os.link(self._checkpoint("last"), tmp)
            except OSError:
                shutil.copyfile(self._checkpoint("last"), tmp)
        return which

    def _write_state(self, epochs_done, finished):
        counters = {name: {key: _plain(getattr(cb, key)) for key in ("wait", "best", "cooldown_counter")
                           if hasattr(cb, key)} for name, cb in self.stateful.items()}
        state = {"epoch": epochs_done, "best_val_accuracy": _plain(self.best_acc),
                 "best_val_loss": _plain(self.best_loss), "best_epoch": self.best_epoch,
                 "finished": finished, "callbacks": counters,
                 "random_state": seed_states(self.full_model or self.model)}
        write_text_atomic(self.folder.state_file, json.dumps(state, indent=2))
        self.folder.owner_file.unlink(missing_ok=True)  # started: resumable from now on

    def finish(self, epochs_done):
        self._write_state(epochs_done, finished=True)


def _plain(value):
    value = float(keras.ops.convert_to_numpy(value)) if value is not None else None
    return None if value is None or not math.isfinite(value) else value


def _seed_state_variables(model):
    """The state of every Keras SeedGenerator in the model (the Dropout layers' masks come from them)."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def seed_states(model):
    """[[seed, counter], ...]: checkpoints do not hold them, and without them a resumed run would draw
    the dropout masks of its first epoch again instead of those the uninterrupted run draws next."""
    return [[int(x) for x in keras.ops.convert_to_numpy(v)] for v in _seed_state_variables(model)]


def restore_seed_states(model, states):
    variables = _seed_state_variables(model)
    if len(variables) != len(states):
        print(f"warning: state.json holds {len(states)} random-generator states, the model has "
              f"{len(variables)}; the dropout masks will differ from an uninterrupted run")
        return
    for variable, state in zip(variables, states):
        variable.assign(np.asarray(state, dtype=variable.dtype))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """End training with a one-line error as soon as the loss is NaN or infinite.

    A diverged model only gets worse, and its NaN weights would be saved as the last checkpoint (and
    make every later score meaningless). Runs first among the callbacks, so the epoch in which it
    happens is neither logged nor checkpointed; earlier epochs' checkpoints stay.
    """

    def __init__(self, config, run_dir):
        super().__init__()
        self.config, self.run_dir = config, run_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check("loss", (logs or {}).get("loss"), f"step {batch + 1} of epoch {self.epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            self._check(key, (logs or {}).get(key), f"the end of epoch {epoch + 1}")

    def _check(self, key, value, where):
        value = None if value is None else float(keras.ops.convert_to_numpy(value))
        if value is None or math.isfinite(value):
            return
        kept = (f"{self.run_dir} keeps the checkpoints of its first {self.epoch} epoch(s)" if self.epoch else
                f"no epoch was finished, so {self.run_dir} is removed")
        raise UserError(f"training diverged: {key} became {value} at {where}; {kept}; lower --init_lr "
                        f"(it is {self.config.init_lr:g}) or check --class_weights")


class StopAtStepEnd(keras.callbacks.Callback):
    """Ctrl-C during fit stops the run at the end of the step under way, not inside it.

    A KeyboardInterrupt raised while a TensorFlow step runs unwinds Python while the step's threads
    still use its memory: now and then the process then aborted ("free(): invalid next size (fast)",
    SIGABRT) instead of exiting with 130. The SIGINT handler only sets a flag; the callback raises the
    KeyboardInterrupt between steps. A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        super().__init__()
        self.requested = False

    def request(self, signum=None, frame=None):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def _stop_if_requested(self, batch=None, logs=None):
        if self.requested:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = _stop_if_requested


@contextlib.contextmanager
def ctrl_c_between_steps(stopper):
    """Route SIGINT to `stopper` while fit runs, where Python's own handler is the one installed (not in a
    process started with SIGINT ignored, nor outside the main thread)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, stopper.request)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def callbacks_for(config, run_dir, state, model=None):
    stateful = {"lr_policy": lr_callback(config)}
    warmup = [WarmUp(config.init_lr, config.warmup_epochs)] if config.warmup_epochs else []
    if config.early_stopping_patience > 0:
        stateful["early_stopping"] = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.early_stopping_patience, verbose=1)
    recorder = RunRecorder(run_dir, config, state, stateful, model)
    # The learning-rate callbacks add "learning_rate" to the epoch logs, so they run before the CSV logger;
    # a non-finite loss stops the run before anything of its epoch is recorded. With --ema, validation
    # scores the averaged weights (swapped in for each validation pass).
    ema = [ValidateWithEMA()] if config.ema else []
    callbacks = [StopOnNonFiniteLoss(config, run_dir), *ema, *stateful.values(), *warmup,
                 keras.callbacks.CSVLogger(str(RunFolder(run_dir).history_file), append=True), recorder]
    if keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(RunFolder(run_dir).tensorboard_dir)))
    return callbacks, recorder


# ----------------------------------------------------------------------------- the run

@_removes_unstarted_run
def train(config, explicit=()):
    """Train as configured; return a summary dict (run_dir, epochs, best_val_accuracy, ...)."""
    distill.check_distillation(config)  # the teachers exist (the options were checked by config.resolve)
    placement = distribute.place_run(config)  # first: TensorFlow fixes devices and collectives at start-up
    config, run_dir, state = plan_run(distribute.worker_config(config, placement), explicit)
    distribute.check_global_batch(config.batch_size, placement)
    initial_epoch = state["epoch"]
    if initial_epoch >= config.nepochs:
        raise UserError(f"{run_dir}: already trained {initial_epoch} epochs; raise --nepochs to train further")
    if config.finetune_from:
        finetune.finetune_source(config.finetune_from)  # a wrong path fails before the data loads
    keras.utils.set_random_seed(config.seed)
    train_data, (valid_x, valid_t) = load_data(config)
    class_weight_vector(config.class_weights, train_data[1])  # a class without faces fails before the run folder
    print(distribute.describe(placement, config))
    # Variables (model, optimiser, metrics) must be made under the strategy and the dtype policy.
    with placement.scope(), distribute.precision_policy(config):
        if initial_epoch:
            model = load_model_file(RunFolder(run_dir).checkpoint("last"), compile=True)
            if config.ema:
                swap_ema_weights(model)  # the checkpoint holds the average as the model's weights
            print(f"resuming {run_dir} after epoch {initial_epoch}")
        else:
            model = new_model(config, train_data[0])
            create_run_dir(config, run_dir)
            if starts_from_onnx(config):
                save_start_model(model, RunFolder(run_dir).start_model)
        fit_model, batches, valid_data = fit_inputs(config, model, train_data, (valid_x, valid_t), run_dir,
                                                    initial_epoch)
        batches = distribute.prepare_fit(fit_model, batches, placement)
    callbacks, recorder = callbacks_for(config, run_dir, state, model)
    before = finetune.accuracy_before(model, (valid_x, valid_t), run_dir) if config.finetune_from else None
    print(f"run folder: {run_dir}")
    stopper = StopAtStepEnd()
    try:
        with ctrl_c_between_steps(stopper):
            history = fit_model.fit(batches, steps_per_epoch=len(batches), validation_data=valid_data,
                                    validation_batch_size=distribute.validation_batch_size(
                                        max(config.batch_size, 64), len(valid_x), placement),
                                    epochs=config.nepochs, initial_epoch=initial_epoch,
                                    # The batches shuffle themselves by (seed, epoch); Keras' own shuffle
                                    # of their order (of a finite PyDataset) draws from Python's global
                                    # RNG, which a resumed run does not share with the uninterrupted one.
                                    shuffle=False, callbacks=[*callbacks, stopper], verbose=1)
    except KeyboardInterrupt:
        if _started(run_dir):
            print(f"\ninterrupted; continue with: python train.py --name {config.name} "
                  f"--output_dir {config.output_dir} --resume")
        else:
            print(f"\ninterrupted before the first epoch ended: nothing was saved, so {run_dir} is removed; "
                  "run the same command again to start over")
        raise
    epochs_done = initial_epoch + len(history.history.get("loss", []))
    recorder.finish(epochs_done)
    placement.release()
    summary = {"run_dir": str(run_dir), "epochs": epochs_done, "best_val_accuracy": recorder.best_acc,
               "best_epoch": recorder.best_epoch, "best_val_loss": recorder.best_loss}
    if before is not None:
        after = finetune.holdout_accuracy(model, (valid_x, valid_t))
        summary["finetune"] = finetune.record(run_dir, config.finetune_from, before, after, (valid_x, valid_t))
    return summary
