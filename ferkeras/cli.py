"""`ferkeras <command> ...` (and `python -m ferkeras <command> ...`): one console command for the programs.

    ferkeras predict photo.jpg                # = python predict.py photo.jpg
    ferkeras train --config configs/cpu_quick.yaml
    ferkeras predict --help                   # each command's own flags

Each command's module is imported only when that command runs: `ferkeras predict` on a deployment
install never imports the training stack, and `ferkeras serve` (`ferkeras.service.main`) is looked up
only when asked for. A command whose packages are not installed says which extra to install.
"""
import argparse
import importlib
import sys

from ferkeras import __version__
from ferkeras.errors import UserError, run_cli

# command -> (module with main(argv), one-line summary)
COMMANDS = {
    "train": ("ferkeras.commands.train", "fine-tune a CNN on FER+ (or on your own faces)"),
    "evaluate": ("ferkeras.commands.evaluate", "score a checkpoint or ONNX file on a FER+ split; compare runs"),
    "export": ("ferkeras.commands.export", "export a checkpoint to the emotion-ferplus-8 ONNX contract; int8"),
    "predict": ("ferkeras.commands.predict", "recognise facial expressions in photos, folders and videos"),
    "serve": ("ferkeras.service", "answer predictions over HTTP"),
}
# Top-level modules of the `ferkeras[train]` extra: a command failing to import one needs that extra.
SERVE_EXTRA_MODULES = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart"}
TRAIN_EXTRA_MODULES = {"tensorflow", "keras", "tf2onnx", "albumentations", "pandas", "h5py", "yaml",
                       "matplotlib", "tensorboard"}


def build_parser(prog):
    lines = "\n".join(f"  {name:<10}{summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Facial-expression recognition on FER+: train, evaluate, export and deploy.",
        epilog=f"commands:\n{lines}\n\n`{prog} COMMAND --help` lists a command's flags.")
    parser.add_argument("--version", action="version", version=f"ferkeras {__version__}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own flags")
    return parser


def load_command(name):
    """The `main` function of a command, or a one-line UserError saying what is missing."""
    try:
        return importlib.import_module(COMMANDS[name][0]).main
    except ModuleNotFoundError as exc:
        raise missing_module(name, exc) from None


def missing_module(command, exc):
    missing = exc.name or "a module"
    if missing == COMMANDS[command][0]:
        return UserError(f"ferkeras {command}: not part of this ferkeras ({missing} is missing); install a "
                         "ferkeras that has it")
    if missing.split(".")[0] in SERVE_EXTRA_MODULES:
        return UserError(f"ferkeras {command}: needs the service packages ({missing} is not installed); "
                         "pip install 'ferkeras[serve]' (or -r requirements.txt in a checkout)")
    if missing.split(".")[0] in TRAIN_EXTRA_MODULES:
        return UserError(f"ferkeras {command}: needs the training packages ({missing} is not installed); "
                         "pip install 'ferkeras[train]' (or -r requirements.txt in a checkout)")
    return UserError(f"ferkeras {command}: {missing} is not installed; reinstall ferkeras with its dependencies")


def main(argv=None, prog="ferkeras"):
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    command_main = load_command(args.command)
    # argparse names a program after sys.argv[0]; the command's usage lines then read "ferkeras predict".
    saved, sys.argv[0] = sys.argv[0], f"{prog} {args.command}"
    try:
        return command_main(args.args)
    except ModuleNotFoundError as exc:  # a package imported lazily, inside the command
        raise missing_module(args.command, exc) from None
    finally:
        sys.argv[0] = saved


def run():
    """The console command's entry point."""
    sys.exit(run_cli(main))
