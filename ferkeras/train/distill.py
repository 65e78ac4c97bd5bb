"""`--teacher`: knowledge distillation from one or more trained models (Hinton et al. 2015).

Fine-tune big, deploy small: a teacher (any ferkeras run, or a .keras / .onnx file with the FER+
contract) scores every training face once, before training, and the student learns from a blend of
its label-mode target and the teachers' softened probabilities:

    target = (1 - distill_alpha) x label-mode target + distill_alpha x mean over teachers of softmax(scores / T)

Teachers are only run once: each training face gets `distill_views` fixed views (the face, its mirror,
then random draws of the --augment recipe, all seeded), the teachers score every view, and each epoch
the student sees one view per face, drawn at random, with that view's teacher probabilities. So
distillation costs one teacher pass over views x faces, then trains as fast as plain training. With
`--distill_reaugment` the drawn view is augmented again by the --augment recipe before the student
sees it, its target left as the teacher scored the view: a slow teacher then scores each face once or
twice (`--distill_views 1` or 2) and the student keeps the endless fresh draws plain training has,
which a from-scratch compact network needs over a long schedule.

The teachers' probabilities are kept in the run folder (`distill/teacher_probs.npy`), so --resume does
not score them again, and in ferkeras' cache (`$FERKERAS_CACHE/teachers/`, else
`~/.cache/ferkeras/teachers/`) under a key made of the teachers' file contents, the views they score and
the temperature: a second student of the same teachers (same faces, seed, --augment and --distill_views)
starts training at once, whatever its own model or recipe, instead of waiting for the teachers again
(FaceNet takes about 9 minutes a view on 2 CPU cores).
"""
import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ferkeras.data.augment import build_augmenter
from ferkeras.deploy.downloads import cache_dir, file_sha256
from ferkeras.errors import UserError, atomic_path, first_line, write_text_atomic
from ferkeras.models.predictor import load_predictor
from ferkeras.train.run_folder import RunFolder, model_file
from ferkeras.deploy.contract import softmax
from ferkeras.train.frozen_cache import view_of
from ferkeras.data.batches import FaceBatches

TEACHER_BATCH = 256
VIEW_SALT = 4099  # keeps the views' random crops apart from the frozen cache's and the epochs' draws
STORE_VERSION = 1  # bump when the stored probabilities change meaning, so old ones are not trusted


def teacher_files(teachers):
    """Each --teacher as a model file: a run folder's best_acc.keras, or the file itself."""
    files = []
    for teacher in teachers:
        path = Path(teacher)
        files.append(model_file(run=path) if path.is_dir() else model_file(model=path))
    return files


def check_distillation(config):
    """Before anything loads: the teachers exist. (config.resolve checked the blend's options.)"""
    if config.teacher:
        teacher_files(config.teacher)


def training_views(images, views, recipe, seed):
    """(views, N, 48, 48) uint8: view 0 the faces, 1 their mirror, 2.. seeded draws of `recipe`."""
    augment = build_augmenter(recipe if recipe != "none" else "crop_flip")
    return np.stack([view_of(images, view, [seed, VIEW_SALT, view], augment) for view in range(views)])


def teacher_probabilities(files, views, temperature):
    """(views, N, 8) float32: the teachers' softened probabilities of every view, averaged over teachers."""
    total = np.zeros(views.shape[:2] + (8,), np.float64)
    for path in files:
        predictor = load_predictor(path, batch_size=TEACHER_BATCH)
        for view in tqdm(range(len(views)), desc=f"teacher {path}", unit="view"):
            logits = predictor.logits(views[view])
            if not np.isfinite(logits).all():
                raise UserError(f"--teacher {path}: the model returned non-finite scores; retrain or export it "
                                "again, or drop it from --teacher")
            total[view] += softmax(logits / temperature)
    return (total / len(files)).astype(np.float32)


def cached_teacher_probabilities(config, views, run_dir):
    """The teachers' probabilities: from the run folder when an earlier start of this run made them, else
    from the shared store when another run scored the same views with the same teachers, else scored now."""
    folder = RunFolder(run_dir)
    probs_path, meta_path = folder.teacher_probs_file, folder.distill_meta_file
    files = teacher_files(config.teacher)
    meta = {"teachers": [str(f) for f in files], "views": int(len(views)), "faces": int(views.shape[1]),
            "temperature": config.distill_temperature, "seed": config.seed, "augment": config.augment}
    if probs_path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()) == meta:
                print(f"distill: reusing the teachers' probabilities in {probs_path}")
                return np.load(probs_path)
        except (ValueError, OSError):
            pass  # a damaged record is made again below
    stored = stored_probs_file(files, views, config.distill_temperature)
    probs = _read_stored(stored, views)
    if probs is not None:
        print(f"distill: reusing the teachers' probabilities of an earlier run ({stored})")
    else:
        probs = teacher_probabilities(files, views, config.distill_temperature)
        _store(stored, probs)
    _save_npy_atomic(probs_path, probs)
    write_text_atomic(meta_path, json.dumps(meta, indent=2))
    return probs


def stored_probs_file(files, views, temperature):
    """Where the shared store keeps these teachers' probabilities of these views at this temperature.

    The key hashes what decides the probabilities, not their names: each teacher file's bytes (a teacher
    retrained or re-exported under the same path gets a new key), the views' pixels (so the faces, the
    seed, the recipe and the view count) and the temperature."""
    key = hashlib.sha256(json.dumps({"version": STORE_VERSION, "temperature": float(temperature),
                                     "views": list(views.shape)}).encode())
    for path in files:
        key.update(bytes.fromhex(file_sha256(path)))
    key.update(hashlib.sha256(np.ascontiguousarray(views).data).digest())
    return cache_dir() / "teachers" / f"{key.hexdigest()[:32]}.npy"


def _read_stored(path, views):
    """The stored (views, N, 8) probabilities, or None when there are none or they are unreadable."""
    try:
        probs = np.load(path)
    except (OSError, ValueError):
        return None
    return probs if probs.shape == (*views.shape[:2], 8) else None


def _store(path, probs):
    """Keep the probabilities for later runs; a cache that cannot be written only costs those runs time."""
    try:
        _save_npy_atomic(path, probs)
    except (UserError, OSError) as exc:
        print(f"distill: not kept for later runs ({first_line(exc)}); set FERKERAS_CACHE to a writable folder")


def _save_npy_atomic(path, array):
    with atomic_path(path) as tmp:
        np.save(tmp, array)


class DistilledBatches(FaceBatches):
    """FaceBatches over fixed views: each epoch, one view per face with its blended target.

    Shuffling, PLD sampling, class weights and mixing are FaceBatches' own and keyed on (seed, epoch,
    batch), so a resumed run sees the batches the uninterrupted one would have.
    """

    def __init__(self, views, teacher_probs, targets, batch_size, alpha, **kwargs):
        self.views, self.teacher_probs, self.alpha = views, teacher_probs, alpha
        super().__init__(np.arange(len(targets)), targets, batch_size, **kwargs)

    def epoch_arrays(self, epoch):
        arrays = super().epoch_arrays(epoch)
        rng = np.random.default_rng([self.seed, epoch, VIEW_SALT])
        views = rng.integers(len(self.views), size=len(self.targets))
        teacher = self.teacher_probs[views, np.arange(len(self.targets))]
        return {**arrays, "views": views, "targets": (1 - self.alpha) * arrays["targets"] + self.alpha * teacher}

    def batch_inputs(self, rows, epoch, index, arrays):
        faces = self.views[arrays["views"][rows], rows]
        if self.augmenter is not None:
            faces = self.augmenter(faces, np.random.default_rng([self.seed, epoch, index]))
        return faces.astype(np.float32)[..., None]


def distilled_batches(config, train, run_dir, epoch, class_weights):
    """The training batches of a --teacher run (teachers scored here, or read back from the run folder)."""
    images, targets = train
    views = training_views(images, config.distill_views, config.augment, config.seed)
    probs = cached_teacher_probabilities(config, views, run_dir)
    recipe = config.augment if config.distill_reaugment else "none"
    fresh = recipe != "none" or config.erasing
    return DistilledBatches(
        views, probs, targets, config.batch_size, config.distill_alpha,
        augmenter=build_augmenter(recipe, erasing=config.erasing) if fresh else None,
        sample_targets=config.training_mode == "probability", class_weights=class_weights,
        seed=config.seed, epoch=epoch, mix=config.mix, mix_alpha=config.mix_alpha)
