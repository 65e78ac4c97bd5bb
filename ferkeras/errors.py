"""User-facing errors and atomic file writes.

A `UserError` is a mistake the user can fix (a missing file, a malformed row, a bad flag). The CLI
entry points print it as one line and exit with status 2, without a traceback. Anything else is a bug
and keeps its traceback.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path


class UserError(Exception):
    """An error caused by user input; its message says what was expected, what came, and the fix."""


def first_line(exc):
    """An exception's first line of text, for one-line errors (its type name when it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_cli(main, argv=None):
    """Run `main(argv)` and turn a UserError (or Ctrl-C) into a one-line message and an exit code."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: the interrupt may have cut a TensorFlow step short while its threads still run,
        # and the interpreter's shutdown then freed memory they used: "free(): invalid next size
        # (fast)" and SIGABRT instead of 130, seen in CI now and then (train.py also stops training
        # between steps, `train.run.StopAtStepEnd`, since the same abort came mid-step). Everything the program
        # had to clean up (an unstarted run folder, temporary files) is done before the interrupt gets
        # here, and files are written atomically, so skipping the shutdown loses nothing.
        os._exit(130)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix) and move it into place only on success.

    For writers that take a file name (model.save, onnx.save, savefig, np.savez): a crash or a
    failed check leaves no half-written file behind. A kill (-9, power loss) can still leave the
    temporary file; its name says which process on which machine made it
    (`.<stem>.tmp-<pid>@<host>-<random><suffix>`), so the first atomic write into that folder by a
    later process removes it (`sweep_stale_temporaries`).
    """
    path = Path(path)
    make_folder(path.parent)
    sweep_stale_temporaries(path.parent, once=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.stem), suffix=path.suffix)
    os.close(fd)
    os.unlink(tmp)  # some writers refuse to overwrite; they get a fresh name
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def temp_dir_beside(path):
    """A new empty folder beside `path` named like atomic_path's temporaries (swept the same way)."""
    path = Path(path)
    make_folder(path.parent)
    sweep_stale_temporaries(path.parent, once=True)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path.name)))


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def make_folder(folder):
    """mkdir -p, with a one-line error when a file stands where a folder has to be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), folder)
        raise UserError(f"{blocking}: is a file, so the folder {folder} cannot be made there; choose "
                        "another output path or move the file") from None
    except PermissionError:
        raise UserError(f"{folder}: permission denied; choose an output folder you can write to") from None


def check_output_folder(folder, flag):
    """Refuse, before any work, an output folder that is an existing file (or lies under one)."""
    folder = Path(folder)
    blocking = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{flag} {folder}: {blocking} is a file, not a folder; give a folder (it is made "
                        "if missing)")


# ----------------------------------------------------------------------------- temporaries left by kills

# Our temporaries: ".<name>.tmp-<pid>@<host>-<8 random characters>[suffix]", <host> a short hash of the
# machine's name (a folder on shared storage sees other machines' processes); before the pid was part
# of the name they were ".<name>.tmp-<8 random characters>[suffix]".
_TEMP_NAME = re.compile(r"^\..+\.tmp-(?:(?P<pid>\d+)@(?P<host>[0-9a-f]{6})-)?[a-z0-9_]{8}(?:\..*)?$")
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
# Temporaries of other machines, or named without a pid, are only trusted to be dead once this old.
UNNAMED_TEMP_AGE_S = 24 * 3600
_swept = set()


def _temp_prefix(name):
    return f".{name}.tmp-{os.getpid()}@{_HOST}-"


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: leave its file alone
    return True


def is_stale_temporary(path):
    """True for an atomic_path / temp_dir_beside temporary whose writing process is gone."""
    path = Path(path)
    match = _TEMP_NAME.match(path.name)
    if not match:
        return False
    if match["pid"] is not None and match["host"] == _HOST:
        return int(match["pid"]) != os.getpid() and not _process_alive(int(match["pid"]))
    try:
        return time.time() - path.lstat().st_mtime > UNNAMED_TEMP_AGE_S
    except OSError:
        return False


def sweep_stale_temporaries(folder, once=False, recursive=False):
    """Remove our temporaries in `folder` (and its subfolders with `recursive`) left by killed processes.

    With `once`, a folder is swept at most once per process (atomic_path calls this on every write).
    Returns the paths removed.
    """
    folder = Path(folder)
    key = os.path.abspath(folder)
    if once and key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        if is_stale_temporary(path):
            try:
                shutil.rmtree(path) if entry.is_dir(follow_symlinks=False) else path.unlink()
                removed.append(path)
            except OSError:
                pass  # another process swept it first, or it is not ours to remove
        elif recursive and entry.is_dir(follow_symlinks=False):
            removed += sweep_stale_temporaries(path, recursive=True)
    return removed


# ----------------------------------------------------------------------------- reading our own files

def read_json(path, what="file"):
    """The JSON in `path` (None when the file is absent); a one-line UserError when it is damaged."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"{path}: the {what} is damaged, not valid JSON{where}; restore it from a copy, "
                        "or delete it") from None


@contextlib.contextmanager
def open_text(path):
    """Open a text file for csv reading as UTF-8, with or without the byte-order mark Excel writes.

    A byte that is not UTF-8 (a file saved as Latin-1 / Windows-1252) becomes a UserError naming
    the line, instead of a UnicodeDecodeError from wherever the reader happened to be.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            yield handle
    except UnicodeDecodeError:
        raise undecodable_line_error(path) from None


def read_text(path):
    """A whole text file as UTF-8 (a byte-order mark dropped); a UserError naming an undecodable line."""
    with open_text(path) as handle:
        return handle.read()


def undecodable_line_error(path):
    """UserError naming the first line of `path` that is not UTF-8 and its offending byte."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                byte = raw[exc.start]
                return UserError(f"{path} line {number}: byte 0x{byte:02x} (column {exc.start + 1}) is not "
                                 "UTF-8 text; save the file as UTF-8 (e.g. 'CSV UTF-8' in Excel)")
    return UserError(f"{path}: not UTF-8 text; save the file as UTF-8")
