"""Rules of the test suite itself (docs/testing.md), and its tool for running many command lines at once.

No test module imports another test module or a conftest.py: pytest imports those itself, and a test
file imported as a library runs its fixtures under two names and breaks when the other file is
renamed or split. Shared fixtures live in tests/conftest.py, plain helpers in tests/helpers.py.
"""
import ast
from pathlib import Path

from tests.helpers import batch

TESTS = Path(__file__).resolve().parent


def is_test_module(dotted):
    """Whether a dotted module name names a test module or a conftest (tests.test_x, test_x, conftest, ...)."""
    last = dotted.split(".")[-1]
    return last.startswith("test_") or last == "conftest"


def imported_test_modules(source, package):
    """The test modules and conftests that Python `source`, a module of `package` (e.g. "tests.service"), imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if is_test_module(base):
                found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names if is_test_module(alias.name)]
    return found


def test_the_rule_catches_every_way_of_importing_a_test_module():
    bad = ("from tests.test_predict import models\n"
           "import tests.test_detectors\n"
           "from tests.service.conftest import REPO\n"
           "from . import test_api\n"
           "from .conftest import start_server\n"
           "def later():\n"
           "    from tests.conftest import REAL_FERPLUS\n")
    assert imported_test_modules(bad, "tests.service") == [
        "tests.test_predict", "tests.test_detectors", "tests.service.conftest", "tests.service.test_api",
        "tests.service.conftest", "tests.conftest"]
    fine = "from tests.helpers import compose\nimport tests.cli_batch\nfrom ferkeras.deploy import predict\n"
    assert imported_test_modules(fine, "tests") == []


def test_no_test_module_imports_another_test_module_or_a_conftest():
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        package = ".".join(("tests", *path.parent.relative_to(TESTS).parts))
        imported = imported_test_modules(path.read_text(), package)
        if imported:
            offenders[str(path.relative_to(TESTS.parent))] = imported
    assert not offenders, ("move shared fixtures to tests/conftest.py and plain functions to tests/helpers.py: "
                           f"{offenders}")


def test_batched_cases_report_what_reached_their_descriptors_as_their_own_process_would(tmp_path):
    """tests/helpers.py `batch`: each case's status, and its stdout and stderr whether written by Python
    or straight to the file descriptors (as TensorFlow's C++ code writes), in order, and nothing else."""
    script = tmp_path / "noisy.py"
    script.write_text("import os, sys\n"
                      "print('python out', flush=True)\n"
                      "os.write(1, b'fd out\\n')\n"
                      "print('python err', file=sys.stderr, flush=True)\n"
                      "os.write(2, b'fd err\\n')\n"
                      "sys.exit(int(sys.argv[1]))\n")
    failing = tmp_path / "failing.py"
    failing.write_text("raise ValueError('escaped')\n")
    noisy, quiet, escaped = batch(tmp_path, [(script, [3]), (script, [0]), (failing, [])])
    assert (noisy.returncode, noisy.stdout, noisy.stderr) == (3, "python out\nfd out\n", "python err\nfd err\n")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "python out\nfd out\n", "python err\nfd err\n")
    assert escaped.returncode == 1 and escaped.stdout == ""
    assert escaped.stderr.startswith("Traceback") and escaped.stderr.endswith("ValueError: escaped\n")
