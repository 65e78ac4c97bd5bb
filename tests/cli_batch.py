"""Run command lines of the ferkeras scripts in one interpreter, each as `python SCRIPT ARGS` runs.

    python tests/cli_batch.py cases.json      # [{"script": "train.py", "argv": [...], "env": {...}}, ...]
    python tests/cli_batch.py --serve         # the same for each cases file named on a line of stdin

Every case executes the script file itself as `__main__` (so its `run_cli(main)` decides the exit
status and what reaches stderr), with its own sys.argv, environment additions and captured
stdout/stderr, captured at file descriptors 1 and 2, so that what TensorFlow's C++ code writes
there counts too, in the order it came, as in a process of the case's own. An exception that escapes
is printed as the interpreter would print it, with its traceback, and gives status 1. The results
are printed as one JSON list (a line of its own with --serve) on the real stdout.

TensorFlow is imported once for all the cases instead of once per case, which is what keeps the many
bad-input cases of the tests fast; with --serve (tests/helpers.py `batch`) once for the whole test
session. Cases that need a process of their own (a kill, a sweep of what earlier processes left, what
a fresh process prints once) are run as plain subprocesses instead.
"""
import contextlib
import json
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def captured_descriptors():
    """Send file descriptors 1 and 2 to temporary files; yields a function giving what reached each."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    files = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    for fd, handle in files.items():
        os.dup2(handle.fileno(), fd)

    def written(fd):
        files[fd].seek(0)
        return files[fd].read().decode(errors="replace")

    try:
        yield written
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        for handle in files.values():
            handle.close()


def run_case(script, argv, env=None):
    """{"returncode", "stdout", "stderr"} of one script run in this interpreter."""
    saved_env = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    code = 0
    with captured_descriptors() as written:
        sys.argv = [script, *argv]
        try:
            runpy.run_path(str(REPO / script), run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: B036 (what the interpreter itself would report)
            traceback.print_exc()
            code = 1
        sys.stdout.flush()  # as a process's exit flushes them
        sys.stderr.flush()
        stdout, stderr = written(1), written(2)
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return {"returncode": code, "stdout": stdout, "stderr": stderr}


def run_cases(cases_file):
    cases = json.loads(Path(cases_file).read_text())
    return [run_case(case["script"], case["argv"], case.get("env")) for case in cases]


def main(argv):
    sys.path.insert(0, str(REPO))
    import ferkeras

    ferkeras.import_keras_quietly()  # once, up front, so its start-up lines stay out of the first case
    if argv[0] != "--serve":
        sys.__stdout__.write(json.dumps(run_cases(argv[0])))
        return
    for line in sys.stdin:
        sys.__stdout__.write(json.dumps(run_cases(line.strip())) + "\n")
        sys.__stdout__.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
