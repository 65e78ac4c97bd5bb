"""Test-suite time: wall and CPU seconds of `python -m pytest -q`, in total, per test file and per test.

    python benchmarks/suite_time.py                            # the default run, as CI runs it
    python benchmarks/suite_time.py --pytest_args "-m slow"    # the slow tests
    python benchmarks/suite_time.py --repo ../other-checkout   # another checkout, for a before / after

pytest runs in a subprocess, in --repo, with this file as a plugin that times each test's setup, call
and teardown. CPU seconds count that process and its children (the tests' own subprocesses), all
threads: they say how much work the suite is and are far less swayed by other jobs on shared cores
than wall seconds, which say how long CI waits. The 1-minute load average before and after stands
beside both. The exit status is pytest's, so a failing suite is not mistaken for a fast one; a failed
test's row keeps the end of pytest's report of it (assertion and captured output). Under pytest-xdist
(pytest.ini's -n 2) each worker times its own tests.
"""
import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROWS_ENV = "SUITE_TIME_ROWS"  # where the plugin, inside pytest, writes its per-test rows


# ----------------------------------------------------------------------------- the plugin (inside pytest)

def _cpu_seconds():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_rows = []
_outcomes = {}  # nodeid -> "passed", "failed", "skipped" (a failure in setup or teardown counts as failed)
_failures = {}  # nodeid -> the end of pytest's report of the failure (its assertion, its captured output)
FAILURE_CHARS = 4000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = _cpu_seconds(), time.perf_counter()
    yield
    _rows.append({"test": item.nodeid, "wall_s": time.perf_counter() - wall, "cpu_s": _cpu_seconds() - cpu,
                  "outcome": _outcomes.get(item.nodeid, "passed"),
                  **({"failure": _failures[item.nodeid]} if item.nodeid in _failures else {})})


def pytest_runtest_logreport(report):
    if report.failed:
        _outcomes[report.nodeid] = "failed"
        _failures[report.nodeid] = report.longreprtext[-FAILURE_CHARS:]
    elif report.skipped and _outcomes.get(report.nodeid) != "failed":
        _outcomes[report.nodeid] = "skipped"


def pytest_sessionfinish(session, exitstatus):
    # Under pytest-xdist every worker runs its share of the tests and writes its own rows, named by its
    # process id (the controller too, with none); the report reads them all.
    if os.environ.get(ROWS_ENV):
        Path(f"{os.environ[ROWS_ENV]}.{os.getpid()}").write_text(json.dumps(_rows))


# ----------------------------------------------------------------------------- the report (outside it)

def per_file(rows):
    """Wall and CPU seconds summed per test file, slowest (wall) first."""
    files = {}
    for row in rows:
        total = files.setdefault(row["test"].split("::")[0], {"file": row["test"].split("::")[0], "tests": 0,
                                                              "wall_s": 0.0, "cpu_s": 0.0})
        total["tests"] += 1
        total["wall_s"] += row["wall_s"]
        total["cpu_s"] += row["cpu_s"]
    return sorted(files.values(), key=lambda total: -total["wall_s"])


def run_suite(repo, pytest_args):
    """(pytest's exit status, its last output line, wall seconds, CPU seconds, per-test rows, failure lines)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.json"
        env = {**os.environ, ROWS_ENV: str(rows_file),
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent),
                                              os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "suite_time",
                   *shlex.split(pytest_args)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rows = [row for part in sorted(rows_file.parent.glob(rows_file.name + ".*"))
                for row in json.loads(part.read_text())]
    lines = done.stdout.strip().splitlines() or [""]
    # pytest's short summary (-ra): one "FAILED test - reason" line per failure, kept in the report.
    failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return done.returncode, lines[-1], wall, cpu, rows, failures


def main(argv=None):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                        help="the checkout whose tests run (default: this one)")
    parser.add_argument("--pytest_args", default="", help='extra pytest arguments, e.g. "-m slow"')
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest tests to list")
    parser.add_argument("--out", default="benchmarks/results/suite_time.json", help="JSON report")
    args = parser.parse_args(argv)

    with common.LoadWindow() as load:
        status, summary, wall, cpu, rows, failures = run_suite(args.repo, args.pytest_args)
    print(f"pytest: {summary}")
    print(f"suite: {wall:.0f} s wall, {cpu:.0f} s CPU; load 1-min before / after {load.text()}")
    print(common.format_table((("file", "file", None), ("tests", "tests", None), ("wall s", "wall_s", "{:.1f}"),
                               ("CPU s", "cpu_s", "{:.1f}")), per_file(rows)))
    for line in failures:
        print(line)
    slowest = sorted(rows, key=lambda row: -row["wall_s"])[:args.top]
    print(common.format_table((("test", "test", None), ("wall s", "wall_s", "{:.1f}"), ("CPU s", "cpu_s", "{:.1f}")),
                              slowest))
    command = common.command_line("benchmarks/suite_time.py", [shlex.quote(a) for a in (argv or sys.argv[1:])])
    common.write_report(args.out, "suite_time", command,
                        {"wall_s": wall, "cpu_s": cpu, "pytest": summary, "exit_status": status,
                         "failures": failures, "per_file": per_file(rows), "tests": rows},
                        extra={"repo": str(Path(args.repo).resolve()), **load.as_dict()})
    return status


if __name__ == "__main__":
    sys.exit(main())
