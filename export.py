"""Export a trained model to ONNX as a drop-in for the ONNX Model Zoo emotion-ferplus-8.onnx: `python export.py --help`.

A thin wrapper: the program is `ferkeras.commands.export` (also `ferkeras export` once installed with pip).
"""
import sys

from ferkeras.commands.export import main
from ferkeras.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
