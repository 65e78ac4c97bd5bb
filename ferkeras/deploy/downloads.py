"""Third-party model files ferkeras uses but does not ship: where they are looked for, and the one-time
download that puts them there. The standard library only (urllib, hashlib): no TensorFlow, no Keras.

A file is taken from, in order:

1. the path given on the command line (e.g. `predict.py --detector_model PATH`), used as it is;
2. `$FERKERAS_WEIGHTS/<name>`, the folder that also holds backbone weights, when the variable is set;
3. the cache: `$FERKERAS_CACHE/weights/<name>`, else `~/.cache/ferkeras/weights/<name>`;
4. a download from the file's canonical address into the cache, once: streamed into a temporary file
   beside the target while its sha256 is computed, and moved into place only when size and hash
   match. A mismatch or a broken connection leaves nothing behind. `FERKERAS_NO_DOWNLOAD=1` turns
   downloads off (air-gapped machines; the tests).

A file found in 2 or 3 is checked against the published size and sha256 too, so that a truncated or
different file there is reported instead of failing later inside OpenCV.
"""
import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ferkeras.errors import UserError, atomic_path

# A folder of weights files the user keeps, searched first (also by the Keras backbones' weights lookup).
WEIGHTS_DIR_ENV = "FERKERAS_WEIGHTS"


def cache_dir():
    """ferkeras' cache (decoded splits, downloaded model files, teachers' probabilities for distillation):
    $FERKERAS_CACHE, else ~/.cache/ferkeras."""
    return Path(os.environ.get("FERKERAS_CACHE") or Path.home() / ".cache" / "ferkeras")

NO_DOWNLOAD_ENV = "FERKERAS_NO_DOWNLOAD"
DOWNLOAD_TIMEOUT_S = 60
BLOCK = 1 << 16


@dataclass(frozen=True)
class ModelFile:
    """A published file: its name, canonical address, size in bytes and sha256, licence, and the flag
    that gives its path instead."""
    name: str
    url: str
    size: int
    sha256: str
    licence: str
    flag: str


YUNET = ModelFile(
    name="face_detection_yunet_2023mar.onnx",
    url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
        "face_detection_yunet_2023mar.onnx",
    size=232_589,
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    licence="MIT, OpenCV Zoo",
    flag="--detector_model",
)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_cache_dir():
    """Where downloaded model files go: $FERKERAS_CACHE/weights, else ~/.cache/ferkeras/weights."""
    return cache_dir() / "weights"


def search_dirs():
    """The folders a model file is looked for in, in order ($FERKERAS_WEIGHTS first, when set)."""
    folders = [Path(os.environ[WEIGHTS_DIR_ENV]).expanduser()] if os.environ.get(WEIGHTS_DIR_ENV) else []
    return list(dict.fromkeys(folders + [weights_cache_dir()]))


def model_file_path(spec, given=None, download=True):
    """The local path of `spec`'s file: `given`, else a checked copy in `search_dirs()`, else a fresh
    download into `weights_cache_dir()`. A one-line `UserError` when none of these works."""
    if given:
        given = Path(given).expanduser()
        if not given.is_file():
            raise UserError(f"{given}: no such file; {spec.flag} expects the path of {spec.name}")
        return given
    for folder in search_dirs():
        if (folder / spec.name).is_file():
            check_file(spec, folder / spec.name)
            return folder / spec.name
    shown = ", ".join(f"{folder}/" for folder in search_dirs())
    if not download or os.environ.get(NO_DOWNLOAD_ENV, "") not in ("", "0"):
        raise UserError(f"{spec.name}: not in {shown} and downloads are off (${NO_DOWNLOAD_ENV}); "
                        f"{by_hand(spec)}")
    return fetch(spec, weights_cache_dir() / spec.name)


def by_hand(spec):
    return (f"download {spec.url} ({spec.licence}; {spec.size:,} bytes, sha256 {spec.sha256}) into "
            f"{weights_cache_dir()}/ or pass {spec.flag} PATH")


def check_file(spec, path):
    """A UserError when `path` is not the published file (size first: it costs nothing)."""
    size = path.stat().st_size
    digest = file_sha256(path) if size == spec.size else None
    if digest != spec.sha256:
        found = f"{size:,} bytes" + (f", sha256 {digest[:12]}..." if digest else "")
        raise UserError(f"{path}: not the published {spec.name} ({found}; expected {spec.size:,} bytes, "
                        f"sha256 {spec.sha256[:12]}...); delete it so that it is downloaded again, or pass "
                        f"{spec.flag} PATH")


def fetch(spec, target):
    """Download `spec.url` to `target` atomically, checking its size and sha256 on the way."""
    print(f"downloading {spec.name} ({spec.size:,} bytes, {spec.licence}) from {spec.url} into "
          f"{target.parent}/ (once)", file=sys.stderr)
    digest, size = hashlib.sha256(), 0
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
                # Reading stops one byte past the published size: a wrong address is not read to its end.
                while size <= spec.size and (block := response.read(BLOCK)):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
            if (size, digest.hexdigest()) != (spec.size, spec.sha256):
                got = f"{size:,} bytes" if size > spec.size else f"{size:,} bytes, sha256 {digest.hexdigest()[:12]}..."
                raise UserError(f"{spec.url}: the download is not the published {spec.name} ({got}; expected "
                                f"{spec.size:,} bytes, sha256 {spec.sha256[:12]}...); nothing was kept; "
                                f"{by_hand(spec)}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        reason = (str(reason).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"{spec.name}: not in {', '.join(f'{d}/' for d in search_dirs())} and the download "
                        f"from {spec.url} failed ({reason}); {by_hand(spec)}") from None
    return target
