"""User-facing errors and atomic file writes.

A `UserError` is a mistake the user can fix (a missing file, a malformed row, a bad flag). The CLI
entry points print it as one line and exit with status 2, without a traceback. Anything else is a bug
and keeps its traceback.
"""
import contextlib
import os
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """An error caused by user input; its message says what was expected, what came, and the fix."""


def run_cli(main, argv=None):
    """Run `main(argv)` and turn a UserError (or Ctrl-C) into a one-line message and an exit code."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix) and move it into place only on success.

    For writers that take a file name (model.save, onnx.save, savefig, np.savez): a crash or a
    failed check leaves no half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-", suffix=path.suffix)
    os.close(fd)
    os.unlink(tmp)  # some writers refuse to overwrite; they get a fresh name
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
