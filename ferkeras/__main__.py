"""`python -m ferkeras <command> ...`: the same as the `ferkeras` console command."""
import sys

from ferkeras.cli import main
from ferkeras.errors import run_cli

sys.exit(run_cli(lambda argv: main(argv, prog="python -m ferkeras")))
