"""Serve a contract ONNX model over HTTP, with a page that runs it in the browser.

    python serve.py --model models/ferplus-small.onnx [--host 127.0.0.1 --port 8000]
    python serve.py --help       # every option; the same as `ferkeras serve`

See ferkeras/service/cli.py for the endpoints and docs/serve.md for the figures.
"""
import sys

from ferkeras.errors import run_cli
from ferkeras.service import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
