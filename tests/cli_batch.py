"""Run several command lines of the ferkeras scripts in one interpreter, each as `python SCRIPT ARGS` runs.

    python tests/cli_batch.py cases.json      # [{"script": "train.py", "argv": [...], "env": {...}}, ...]

Every case executes the script file itself as `__main__` (so its `run_cli(main)` decides the exit
status and what reaches stderr), with its own sys.argv, environment additions and captured
stdout/stderr; an exception that escapes is printed as the interpreter would print it, with its
traceback, and gives status 1. The results are printed as one JSON list on the real stdout.

TensorFlow is imported once for all the cases instead of once per case, which is what keeps the many
bad-input cases of tests/test_bad_input.py fast; cases that need a process of their own (a kill, a
sweep of what earlier processes left) are run there as plain subprocesses instead.
"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_case(script, argv, env=None):
    """{"returncode", "stdout", "stderr"} of one script run in this interpreter."""
    saved_env = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = [script, *argv]
        try:
            runpy.run_path(str(REPO / script), run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: B036 (what the interpreter itself would report)
            traceback.print_exc()
            code = 1
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(cases_file):
    sys.path.insert(0, str(REPO))
    import ferkeras

    ferkeras.import_keras_quietly()  # once, up front, so its start-up lines stay out of the first case
    cases = json.loads(Path(cases_file).read_text())
    results = [run_case(case["script"], case["argv"], case.get("env")) for case in cases]
    sys.__stdout__.write(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
