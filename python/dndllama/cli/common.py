"""What every command module shares: CliError and the recovery hints, leaf-command registration,
table printing, the default folders, and turning a MODEL argument or a data folder into something usable.

Command modules import this one and the stage modules; nothing here imports a command module or the
package's `__init__` (which holds `main`), so each module imports alone (tests/test_imports.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ..base import BaseModelError
from ..config import Config, ConfigError
from ..pipeline import DataError, DiskFullError
from ..quantize import CapError
from ..registry import RegistryError
from ..runtime_profiles import RuntimeCompatError, UnknownRuntime
from ..scenarios import FolderCheck, load_folder, scenario_files
from ..ship_checks import TemplateMismatch
from ..tools import VocabularyError, load_vocabulary
from ..train import TrainingError

# The folders a command uses when none is given: the Config's defaults, so the CLI and dndllama.toml agree.
DEFAULT_DATA_DIR = Config.data
DEFAULT_MODELS_DIR = Config.models_dir


class CliError(Exception):
    """What failed, and what the user should do about it."""

    def __init__(self, what: str, hint: str):
        super().__init__(what)
        self.what, self.hint = what, hint


# Exception type -> what to do about it, for failures that are not CliError.
RECOVERY_HINTS: dict[type, str] = {
    VocabularyError: "fix the tools.toml named above (see docs/scenario-format.md, 'Tool vocabulary')",
    DataError: "fix the files named above (dndllama data check lists every problem), then rerun",
    ConfigError: "fix the setting named above in dndllama.toml or on the command line",
    BaseModelError: "pass another --base (a .gguf file, a Hugging Face folder or id) or leave it out for the "
                    "embedded Gemma 3 270M",
    CapError: "raise --size-cap, choose another --quant, or use a smaller base model; the trained weights "
              "are kept, so the rerun only quantizes",
    TemplateMismatch: "nothing was shipped; report this as a bug with the lines above (the model was trained "
                      "and is kept, a rerun only repeats the checks)",
    TrainingError: "see the message above; the last checkpoint is kept and the same command resumes from it",
    DiskFullError: "free disk space (dndllama cache clear removes cached runs), then rerun to resume",
    MemoryError: "lower --ctx, use a smaller base, or close other programs; the same command resumes",
    UnknownRuntime: "pass one of the runtimes listed (dndllama runtime list)",
    RegistryError: "see dndllama models list for the versions there are",
    RuntimeCompatError: "the model was trained and is kept; pick a --base or --quant the runtime supports "
                        "(dndllama runtime list), or another --runtime",
    FileNotFoundError: "check the path, then run the command again",
    PermissionError: "check the file permissions, then run the command again",
}
DEFAULT_HINT = "run again with --debug to see the traceback, and report it if it looks like a bug"


def hint_for(exc: BaseException) -> str:
    return next((hint for kind, hint in RECOVERY_HINTS.items() if isinstance(exc, kind)), DEFAULT_HINT)


# ---------------------------------------------------------------- registration


def command(parent, name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    """Add a leaf command that also accepts --debug after its name."""
    leaf = parent.add_parser(name, help=help, description=help)
    leaf.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    leaf.set_defaults(func=func)
    return leaf


def group(groups, name: str, help: str):
    """A command group (`dndllama models ...`): returns the subparsers its leaf commands go into.
    Without a leaf command it prints its usage."""
    parser = groups.add_parser(name, help=help)
    parser.set_defaults(func=lambda args: usage(parser))
    return parser.add_subparsers(dest="command", metavar="COMMAND")


def usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def add_models_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, metavar="DIR",
                        help=f"where versions are kept (default: {DEFAULT_MODELS_DIR})")


# ---------------------------------------------------------------- tables


def print_table(title: str, headers: list[str], rows: list[list], rich_output: bool | None = None) -> None:
    """A titled table: rich on a terminal, aligned plain text in logs (first column left, the rest right)."""
    if rich_output is None:
        rich_output = sys.stdout.isatty()
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


def plural(word: str, count: int) -> str:
    return word if count == 1 else f"{word}s"


# ---------------------------------------------------------------- arguments -> things


def resolve_model(spec: str | None, models_dir: Path) -> Path:
    """A MODEL argument (a .gguf, a version such as v0002 or 2, `current` or nothing) as a file."""
    from .. import registry

    try:
        return registry.resolve(models_dir, spec)
    except registry.RegistryError as exc:
        raise CliError(str(exc), "pick a version from `dndllama models list`, or pass a .gguf file") from None


def load_scenarios(root: Path, usage: str = "--data DIR") -> FolderCheck:
    """Every scenario of a data folder, parsed and checked, or a CliError saying why not."""
    if not root.is_dir():
        raise CliError(f"data folder '{root}' not found", f"pass the folder with your scenario files: {usage}")
    if not scenario_files(root):
        raise CliError(f"no scenario files (*.md) under '{root}'",
                       "add markdown scenarios in category folders, see docs/scenario-format.md")
    try:
        vocab = load_vocabulary(root)
    except VocabularyError as exc:
        raise CliError(str(exc), RECOVERY_HINTS[VocabularyError]) from None
    return load_folder(root, vocab)
