"""Face-pretrained backbones, rebuilt in Keras 3 so that published Keras-2 weights load into them.

- `vggface`: keras-vggface's ResNet50 and SENet50, pretrained on VGGFace2 (224x224, BGR minus means).
- `facenet`: FaceNet's Inception-ResNet-v1 (160x160, per-image standardised), 128-d face embeddings.

Each builder takes an already preprocessed KerasTensor and returns pooled features, adding its layers
to the caller's graph, so the FER+ model stays one flat Functional. The weights come from Keras-2 `.h5`
files, loaded by layer name with `ferkeras.models.legacy_h5.load_legacy_h5`.

This module holds what both share: where a weights file is looked for. Folders, in order:
$FERKERAS_WEIGHTS (if set), then Keras' download cache ($KERAS_HOME, default ~/.keras) in the
backbone's own sub-folder, then ~/.keras/models/.
"""
import importlib
import os
from pathlib import Path

from ferkeras.deploy.downloads import WEIGHTS_DIR_ENV
from ferkeras.errors import UserError


def keras_home():
    """Keras' cache folder: $KERAS_HOME, else ~/.keras (read at call time, so tests can redirect it)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def weights_dirs(cache_subdir="models"):
    """The folders searched for a weights file, most specific first, without duplicates."""
    folders = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        folders.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    folders += [keras_home() / cache_subdir, keras_home() / "models"]
    return list(dict.fromkeys(folders))


def find_weights_file(file_name, cache_subdir="models"):
    """The first `file_name` found in `weights_dirs(cache_subdir)`, or None."""
    for folder in weights_dirs(cache_subdir):
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def given_weights_file(path, what):
    """`path` as a Path if it is an existing file, else a UserError naming `what` was expected there."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such file; expected the {what}; fix the path")
    return path


def shown_dirs(cache_subdir="models"):
    """The searched folders, for error messages."""
    return ", ".join(f"{folder}/" for folder in weights_dirs(cache_subdir))


def import_backbone(name):
    """A backbone family's module (compact, facenet, vggface), imported only when asked for: each loads
    what it needs (Keras layers, weights lookups) when a model of its family is built."""
    return importlib.import_module(f"ferkeras.models.backbones.{name}")


def import_face_backbones():
    """Import the face backbones' modules, so that their custom layers (FaceNet's ScaledResidual) are
    registered: needed before `keras.saving.load_model` of a SeNet50 or FaceNet model."""
    for name in ("vggface", "facenet"):
        import_backbone(name)
