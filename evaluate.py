"""Evaluate a FER+ model under the majority protocol, or compare training runs: `python evaluate.py --help`.

A thin wrapper: the program is `ferkeras.commands.evaluate` (also `ferkeras evaluate` once installed with pip).
"""
import sys

from ferkeras.commands.evaluate import main
from ferkeras.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
