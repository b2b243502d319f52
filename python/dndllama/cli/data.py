"""`dndllama data check [DIR]`: validate every scenario of a data folder and print its statistics.
`dndllama data synth` lives in cli/synth.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import load_config
from ..dataset import DataStats, data_stats
from ..scenarios import ERROR, WARNING, scenario_files
from .common import DEFAULT_DATA_DIR, CliError, command, group, load_scenarios, plural, print_table
from .synth import add_synth_command


def add_data_commands(groups) -> None:
    commands = group(groups, "data", "check and inspect training scenarios")
    check = command(commands, "check", cmd_data_check, "validate every scenario and print statistics")
    check.add_argument("dir", nargs="?", default=DEFAULT_DATA_DIR, help=f"data folder (default: {DEFAULT_DATA_DIR})")
    check.add_argument("--base", metavar="GGUF",
                       help="base model whose tokenizer counts tokens (default: the folder's base, if a GGUF)")
    add_synth_command(commands)


def cmd_data_check(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    check = load_scenarios(root, "dndllama data check PATH")
    files, vocab = scenario_files(root), check.vocab
    for diagnostic in sorted(check.diagnostics, key=lambda d: (d.path, d.line)):
        print(diagnostic)
    if check.diagnostics:
        print()
    config = load_config(root)   # after the diagnostics, so a bad dndllama.toml does not hide them
    tokenizer = _load_tokenizer(args.base or _configured_gguf(config.base))
    cuts = _exchanges_over_ctx(check, root, config.ctx, tokenizer)
    print_stats(data_stats(check.scenarios, vocab, tokenizer), sys.stdout.isatty())
    errors = sum(d.severity == ERROR for d in check.diagnostics) + len(cuts)
    warnings = sum(d.severity == WARNING for d in check.diagnostics)
    print(f"\n{len(files)} files checked: {errors} {plural('error', errors)}, {warnings} {plural('warning', warnings)}")
    if errors:
        print("fix the errors above (file:line), then run `dndllama data check` again", file=sys.stderr)
    return 1 if errors else 0


def _exchanges_over_ctx(check, root: Path, ctx: int, tokenizer) -> list[str]:
    """With a tokenizer, the exchanges that do not fit the training window (ctx of the folder's
    dndllama.toml): train refuses them, so they are errors here too."""
    from ..dataset import build_dataset, ctx_for, windows_and_cuts

    if tokenizer is None:
        print("note: pass --base MODEL.gguf to check every exchange against the training window (ctx) in tokens"
              " (the folder's base is not a GGUF file here)")
        return []
    if check.errors:
        return []
    split = build_dataset(check, 0.0)
    _, cuts = windows_and_cuts(split.train + split.validation, tokenizer, ctx)
    for line in cuts:
        print(f"error: {line}")
    if cuts:
        print(f"  fix: raise ctx to {ctx_for(cuts)} in {root / 'dndllama.toml'}, or split the long DM turns\n")
    return cuts


def _configured_gguf(base: str) -> str | None:
    """The GGUF file of the base that `dndllama train` would use (the embedded one included), whose
    tokenizer sees the exchanges as training will; None for a Hugging Face base (converting it is
    train's job) or one that cannot be found."""
    from ..base import BaseModelError, embedded_gguf
    from ..config import EMBEDDED_BASE

    if base == EMBEDDED_BASE:
        try:
            return str(embedded_gguf())
        except (BaseModelError, ImportError):
            return None
    return base if base.endswith(".gguf") and Path(base).is_file() else None


def _load_tokenizer(base: str | None):
    """The base model's own tokenizer (vocabulary only, fast) for token counts; None counts words."""
    if not base:
        return None
    from .. import _native

    try:
        return _native.Model(base, vocab_only=True)
    except _native.NativeError as e:
        raise CliError(f"cannot read the tokenizer of '{base}': {e}", "pass a GGUF model file with --base") from e


def print_stats(stats: DataStats, rich_output: bool) -> None:
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
        print_table(title, headers, rows, rich_output)
