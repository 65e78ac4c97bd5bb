"""`RunFolder`: the layout of a run folder, and the only code that knows its file names.

    runs/<name>/
        config.yaml            the resolved options (train.config), read back by --resume, evaluate, export
        state.json             epochs done, best scores, early-stopping / plateau counters and the dropout
                               generators' state; written after every epoch (its presence = the run started)
        training.csv           one row of metrics per epoch (Keras' CSVLogger)
        curves.png             loss / accuracy / learning rate per epoch
        checkpoints/           best_acc.keras, best_loss.keras, last.keras (with the optimiser state; with
                               --ema the moving average is saved as the weights, see train.run)
        tensorboard/           TensorBoard event files (train/, validation/)
        distill/               --teacher: teacher_probs.npy and meta.json (what they were scored with)
        cache/                 --cache_frozen, when over --cache_ram_gb: train_views_<i>.npy and meta.json
        finetune.json          --finetune_from: the held-out faces' accuracy before and after
        eval_<split>.json      evaluate.py's report, beside confusion_<split>.png
        .started_by.json       which process is starting the run; removed once its first epoch is saved
        .<name>.tmp-...        temporaries of a write cut short by a kill (ferkeras.errors.atomic_path),
                               swept by --resume

export.py writes its files (model.onnx, model.keras, model.tflite, ...) into the run folder too by
default; those are named by ferkeras.export, since they are made beside a --model file the same way.
evaluate.py names its reports the same way in any folder it writes to (`RunFolder(folder).eval_report`).
"""
from pathlib import Path

from ferkeras.errors import UserError, read_json

CHECKPOINT_NAMES = ("best_acc", "best_loss", "last")
CHECKPOINT_SUFFIX = ".keras"


class RunFolder:
    """The files of one run folder, by what they hold; creating one reads and writes nothing."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    def __str__(self):
        return str(self.path)

    # ------------------------------------------------------------------------- files

    @property
    def config_file(self):
        return self.path / "config.yaml"

    @property
    def state_file(self):
        return self.path / "state.json"

    @property
    def history_file(self):
        return self.path / "training.csv"

    @property
    def curves_file(self):
        return self.path / "curves.png"

    @property
    def owner_file(self):
        return self.path / ".started_by.json"

    @property
    def finetune_report(self):
        return self.path / "finetune.json"

    @property
    def start_model(self):
        """The network a run from an ONNX file's weights started from, in Keras form: a member for
        `export.py --average weights` beside the run's own checkpoints (models/onnx_weights.py)."""
        return self.path / "start.keras"

    @property
    def checkpoints_dir(self):
        return self.path / "checkpoints"

    def checkpoint(self, name):
        """The checkpoint `name` (one of CHECKPOINT_NAMES) of this run."""
        if name not in CHECKPOINT_NAMES:
            raise ValueError(f"{name!r}: a run's checkpoints are {', '.join(CHECKPOINT_NAMES)}")
        return self.checkpoints_dir / f"{name}{CHECKPOINT_SUFFIX}"

    def checkpoints_found(self):
        """The names of the checkpoints on disk, sorted (e.g. ['best_acc', 'best_loss', 'last'])."""
        return sorted(p.stem for p in self.checkpoints_dir.glob(f"*{CHECKPOINT_SUFFIX}"))

    @property
    def tensorboard_dir(self):
        return self.path / "tensorboard"

    @property
    def distill_dir(self):
        return self.path / "distill"

    @property
    def teacher_probs_file(self):
        return self.distill_dir / "teacher_probs.npy"

    @property
    def distill_meta_file(self):
        return self.distill_dir / "meta.json"

    @property
    def cache_dir(self):
        return self.path / "cache"

    @property
    def cache_meta_file(self):
        return self.cache_dir / "meta.json"

    def cache_views_file(self, index):
        """The memory-mapped outputs of the frozen prefix's `index`-th output tensor."""
        return self.cache_dir / f"train_views_{index}.npy"

    def eval_report(self, split):
        return self.path / f"eval_{split}.json"

    def confusion_picture(self, split):
        return self.path / f"confusion_{split}.png"

    def resume_files(self):
        """What --resume reads (a non-chief worker copies them from the chief, see train.distribute)."""
        return (self.config_file, self.state_file, self.history_file, self.checkpoint("last"))

    def relative(self, path):
        """`path` as named inside the folder, e.g. 'checkpoints/last.keras' (for messages)."""
        return Path(path).relative_to(self.path).as_posix()

    # ------------------------------------------------------------------------- checks and reads

    def exists(self):
        return self.path.is_dir()

    def require(self):
        """This folder, or a one-line UserError when there is no such folder."""
        if not self.exists():
            raise UserError(f"{self.path}: no such run folder; give a folder made by train.py (runs/<name>)")
        return self

    def started(self):
        """A run is started (and resumable) once its first epoch's checkpoint and state.json are written."""
        return self.state_file.is_file()

    def read_config(self):
        """config.yaml as a `train.config.Config`; a one-line UserError when it is missing or damaged."""
        from ferkeras.train.config import read_config

        return read_config(self.config_file)

    def read_state(self):
        """state.json as a dict with at least one completed epoch; a one-line UserError otherwise."""
        state = read_json(self.state_file, "run state")
        epoch = state.get("epoch") if isinstance(state, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise UserError(f"{self.state_file}: the run state is damaged (no completed epoch count); restore it "
                            "from a copy of the run folder, or start the run again with --overwrite")
        return state


def model_file(run=None, model=None, checkpoint="best_acc"):
    """The model file to evaluate or export: --model as given, or a checkpoint of --run (one of the two)."""
    if model and run:
        raise UserError("give either --run or --model, not both")
    if model:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"{path}: no such model file; give a .keras checkpoint or a .onnx export")
        return path
    if not run:
        raise UserError("give --run runs/<name> or --model FILE (.keras or .onnx)")
    folder = RunFolder(run).require()
    path = folder.checkpoint(checkpoint) if checkpoint in CHECKPOINT_NAMES else Path(checkpoint)
    if not path.is_file():
        found = ", ".join(folder.checkpoints_found()) or "none"
        raise UserError(f"{path}: checkpoint not found (this run has: {found}); pick --checkpoint from "
                        f"{', '.join(CHECKPOINT_NAMES)} or a file path")
    return path


def run_config(run):
    """The run's config.yaml as a `train.config.Config`, or None without a run."""
    if not run:
        return None
    return RunFolder(run).require().read_config()
