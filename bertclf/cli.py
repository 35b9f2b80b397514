"""What every command line of the project shares: argparse with one-line errors, --verbose,
the true/false flag type, and running a command with its exit statuses."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from bertclf import quiet
from bertclf.errors import TrainingError, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def parse_bool(value: str) -> bool:
    """A true/false flag value: 1/true/yes/on or 0/false/no/off, any case."""
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def run_command(prog: str, command: Callable[[], int | None]) -> int:
    """Run a command line's work: user errors are one stderr line and exit status 2, a
    failed training run 1, Ctrl-C 130, a bug its traceback and 1; passwords in URLs are
    masked in every one."""
    from bertclf.masking import mask

    try:
        return command() or 0
    except UserError as e:
        print(mask(f"{prog}: error: {e}"), file=sys.stderr)
        return 2
    except TrainingError as e:
        print(mask(f"{prog}: failed: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        print(mask(traceback.format_exc()), file=sys.stderr, end="")
        return 1


class _Verbose(argparse.Action):
    """--verbose: takes effect as it is parsed, before any command imports TensorFlow."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        quiet.set_verbose()
        setattr(namespace, self.dest, True)


class CommandParser(ArgumentParser):
    """A sub-command's parser: --verbose anywhere on its line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action=_Verbose,
                          help="also show TensorFlow's and MLflow's own start-up lines and "
                               "warnings, and the detail behind errors about many items")


def command_parser(prog: str, description: str | None):
    """A command line with sub-commands: (the parser, the group to add commands to)."""
    parser = ArgumentParser(prog=prog, description=description)
    return parser, parser.add_subparsers(dest="command", required=True,
                                         parser_class=CommandParser)
