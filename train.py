"""Fine-tune a CNN for FER+ facial-expression recognition: `python train.py --help`.

A thin wrapper: the program is `ferkeras.commands.train` (also `ferkeras train` once installed with pip).
"""
import sys

from ferkeras.commands.train import main
from ferkeras.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
