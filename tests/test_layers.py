"""The stage packages import one way: deploy <- data <- models <- train <- evaluate <- export.

What a deployment runs (ferkeras/deploy, the service) must install and import without TensorFlow or
Keras, and a lower stage must never need a higher one; the rules are read from the source (every import
statement, those inside functions too), so a violation fails here before it ships.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ferkeras"
STAGES = ("deploy", "data", "models", "train", "evaluate", "export")  # each may import those before it
SHARED = ("errors", "tables", "timing")  # plain-Python helpers (and the root package's constants) every stage uses
ALLOWED = {"service": ("deploy",), "commands": STAGES + ("service",), "cli": STAGES + ("service", "commands"),
           "__main__": ("cli",)}
HEAVY = ("tensorflow", "keras", "tf2onnx", "albumentations", "h5py", "torch")
TF_FREE = ("deploy", "service", "tables", "timing")


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def part_of(path):
    """The stage (or top-level module) a file belongs to: ferkeras/train/run.py -> "train"."""
    relative = path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0]


def imported_modules(path):
    """Dotted names of everything a file of the package imports."""
    return imports_in(path.read_text(), ["ferkeras", *path.relative_to(PACKAGE).parent.parts])


def imports_in(source, package):
    """Dotted names of everything `source` imports, relative imports made absolute from `package`."""
    tree = ast.parse(source)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names.append(base)
            # from ferkeras import train -> ferkeras.train (a module or a name: the stage is what counts)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def ferkeras_parts(names):
    parts = set()
    for name in names:
        pieces = name.split(".")
        if pieces[0] == "ferkeras" and len(pieces) > 1 and (PACKAGE / pieces[1]).is_dir() | \
                (PACKAGE / f"{pieces[1]}.py").is_file():
            parts.add(pieces[1])
    return parts


def allowed_for(part):
    if part in STAGES:
        return set(STAGES[:STAGES.index(part) + 1]) | set(SHARED)
    return set(ALLOWED.get(part, ())) | {part} | set(SHARED)


def test_every_module_belongs_to_a_stage_or_a_known_top_level_module():
    known = set(STAGES) | set(SHARED) | set(ALLOWED) | {"__init__", "shipped"}
    assert {part_of(p) for p in modules()} <= known


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_one_way(path):
    part = part_of(path)
    wrong = ferkeras_parts(imported_modules(path)) - allowed_for(part)
    assert not wrong, f"{path.relative_to(ROOT)} ({part}) imports {sorted(wrong)}; it may import {sorted(allowed_for(part))}"


@pytest.mark.parametrize("path", [p for p in modules() if part_of(p) in TF_FREE], ids=lambda p: str(p.relative_to(ROOT)))
def test_deployment_code_never_imports_tensorflow_or_keras(path):
    heavy = {name.split(".")[0] for name in imported_modules(path)} & set(HEAVY)
    assert not heavy, f"{path.relative_to(ROOT)} imports {sorted(heavy)}: deployments run without them"


def test_the_checker_finds_upward_relative_and_heavy_imports():
    names = imports_in("import keras\nfrom ferkeras.train.config import OPTIONS\nfrom .. import export\n"
                       "def late():\n    from . import faces\n", ["ferkeras", "deploy"])
    assert ferkeras_parts(names) - allowed_for("deploy") == {"train", "export"}
    assert {n.split(".")[0] for n in names} & set(HEAVY) == {"keras"}
    assert "ferkeras.deploy.faces" in names  # imports inside functions count


def test_importing_every_deployment_module_loads_neither_tensorflow_nor_keras():
    names = [".".join(("ferkeras",) + p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
             for p in modules() if part_of(p) == "deploy"]
    code = f"import sys\nfor n in {names!r}: __import__(n)\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
