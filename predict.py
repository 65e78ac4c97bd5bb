"""Recognise facial expressions in photos, folders of photos and videos with an ONNX model: `python predict.py --help`.

A thin wrapper: the program is `ferkeras.commands.predict` (also `ferkeras predict` once installed with pip).
"""
import sys

from ferkeras.commands.predict import main
from ferkeras.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
