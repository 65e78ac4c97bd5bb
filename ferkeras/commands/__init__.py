"""The command-line programs. Each module has `main(argv=None)` (and its argparse parser); the top-level
scripts (train.py, evaluate.py, export.py, predict.py) and the `ferkeras <command>` console command
(`ferkeras.cli`) both call it, so both take the same flags."""
