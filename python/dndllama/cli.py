"""Command-line interface: `dndllama <group> <command> ...`.

Each command group registers itself in COMMAND_GROUPS; a command is a function taking the parsed
arguments and returning an exit code. Failures raise CliError (what failed + what to do); any
other exception prints one line plus a hint, and the traceback only with --debug.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .dataset import DataStats, data_stats
from .scenarios import ERROR, WARNING, load_folder, scenario_files
from .tools import VocabularyError, load_vocabulary

DEFAULT_DATA_DIR = "ai-training"


class CliError(Exception):
    """What failed, and what the user should do about it."""

    def __init__(self, what: str, hint: str):
        super().__init__(what)
        self.what, self.hint = what, hint


# Exception type -> what to do about it, for failures that are not CliError.
RECOVERY_HINTS: dict[type, str] = {
    VocabularyError: "fix the tools.toml named above (see docs/scenario-format.md, 'Tool vocabulary')",
    FileNotFoundError: "check the path, then run the command again",
    PermissionError: "check the file permissions, then run the command again",
}
DEFAULT_HINT = "run again with --debug to see the traceback, and report it if it looks like a bug"


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dndllama", description="Fine-tune a D&D game-master model "
                                     "from markdown scenarios.")
    parser.add_argument("--version", action="version", version=f"dndllama {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(groups)
    return parser


def _command(parent, name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    """Add a leaf command that also accepts --debug after its name."""
    command = parent.add_parser(name, help=help, description=help)
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    command.set_defaults(func=func)
    return command


def _add_data_commands(groups) -> None:
    data = groups.add_parser("data", help="check and inspect training scenarios")
    commands = data.add_subparsers(dest="command", metavar="COMMAND")
    check = _command(commands, "check", cmd_data_check, "validate every scenario and print statistics")
    check.add_argument("dir", nargs="?", default=DEFAULT_DATA_DIR, help=f"data folder (default: {DEFAULT_DATA_DIR})")
    check.add_argument("--base", metavar="GGUF", help="base model whose tokenizer counts tokens")
    data.set_defaults(func=lambda args: _usage(data))


# Later groups (train, info, quantize, chat, ...) append their register function here.
COMMAND_GROUPS: list[Callable] = [_add_data_commands]


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        return _usage(parser)
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
        hint = next((h for t, h in RECOVERY_HINTS.items() if isinstance(exc, t)), DEFAULT_HINT)
        return _fail(str(exc) or type(exc).__name__, hint)


def _fail(what: str, hint: str) -> int:
    print(f"error: {what}", file=sys.stderr)
    print(f"  what to do: {hint}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- data check


def _load_tokenizer(base: str | None):
    """The base model's own tokenizer (vocabulary only, fast) for token counts; None counts words."""
    if not base:
        return None
    from dndllama import _native

    try:
        return _native.Model(base, vocab_only=True)
    except _native.NativeError as e:
        raise CliError(f"cannot read the tokenizer of '{base}': {e}", "pass a GGUF model file with --base") from e


def cmd_data_check(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f"data folder '{root}' not found",
                       "pass the folder with your scenario files: dndllama data check PATH")
    files = scenario_files(root)
    if not files:
        raise CliError(f"no scenario files (*.md) under '{root}'",
                       "add markdown scenarios in category folders, see docs/scenario-format.md")
    try:
        vocab = load_vocabulary(root)
    except VocabularyError as exc:
        raise CliError(str(exc), RECOVERY_HINTS[VocabularyError]) from None
    check = load_folder(root, vocab)
    for diagnostic in sorted(check.diagnostics, key=lambda d: (d.path, d.line)):
        print(diagnostic)
    if check.diagnostics:
        print()
    _print_stats(data_stats(check.scenarios, vocab, _load_tokenizer(args.base)), sys.stdout.isatty())
    errors = sum(d.severity == ERROR for d in check.diagnostics)
    warnings = sum(d.severity == WARNING for d in check.diagnostics)
    print(f"\n{len(files)} files checked: {errors} {_plural('error', errors)}, {warnings} {_plural('warning', warnings)}")
    if errors:
        print("fix the errors above (file:line), then run `dndllama data check` again", file=sys.stderr)
    return 1 if errors else 0


def _plural(word: str, count: int) -> str:
    return word if count == 1 else f"{word}s"


def _print_stats(stats: DataStats, rich_output: bool) -> None:
    unit = stats.unit
    category_rows = [
        [name, row["files"], row["turns"], row["dm_turns"], row["size"], row["chars"]]
        for name, row in sorted(stats.categories.items())
    ]
    total = [sum(r[i] for r in category_rows) for i in range(1, 6)]
    category_rows.append(["total", *total])
    lengths = stats.dm_length_summary()
    tables = [
        ("Scenarios by category", ["category", "files", "turns", "DM turns", unit, "chars"], category_rows),
        ("Tool calls", ["tool", "calls"], [[name, count] for name, count in stats.tool_calls.items()]),
        ("DM turns", ["measure", "value"], [
            ["DM turns", stats.dm_turns],
            ["without tool calls", stats.dm_turns_without_calls],
            *[[f"{key} length ({unit})", value] for key, value in lengths.items()],
        ]),
    ]
    for title, headers, rows in tables:
        (_rich_table if rich_output else _plain_table)(title, headers, rows)


def _plain_table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(title)
    for row in cells:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _rich_table(title: str, headers: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console().print(table)
