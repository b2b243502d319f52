"""Command-line interface: `dndllama <group> <command> ...` (also `python -m dndllama`).

One module per command group: data, train, models, cache, validate, runtime (check-runtime and
runtime install|list), chat. Each has a register function listed in COMMAND_GROUPS; a command is a
function taking the parsed arguments and returning an exit code. What they share (CliError, the
recovery hints, registration, tables, MODEL and data-folder resolution) is in common.py, which
imports no command module; this module imports them all and nothing imports it, so there is no cycle.

Failures raise CliError (what failed + what to do); any other exception prints one line plus a
hint from common.RECOVERY_HINTS, and the traceback only with --debug.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .. import __version__
from .cache import add_cache_commands
from .chat import add_chat_command
from .common import CliError, hint_for, usage
from .data import add_data_commands
from .models import add_models_commands
from .runtime import add_runtime_commands
from .train import add_train_command
from .validate import add_validate_command

# The order of `dndllama --help`.
COMMAND_GROUPS: list[Callable] = [add_data_commands, add_train_command, add_validate_command, add_models_commands,
                                  add_cache_commands, add_runtime_commands, add_chat_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dndllama", description="Fine-tune a D&D game-master model "
                                     "from markdown scenarios.")
    parser.add_argument("--version", action="version", version=f"dndllama {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        return usage(parser)
    try:
        return int(args.func(args))
    except CliError as exc:
        return _fail(exc.what, exc.hint)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into messages
        if args.debug:
            raise
        return _fail(str(exc) or type(exc).__name__, hint_for(exc))


def _fail(what: str, hint: str) -> int:
    print(f"error: {what}", file=sys.stderr)
    print(f"  what to do: {hint}", file=sys.stderr)
    return 1
