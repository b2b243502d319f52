"""Command-line interface: `dndllama <group> <command> ...`.

Each command group registers itself in COMMAND_GROUPS; a command is a function taking the parsed
arguments and returning an exit code. Failures raise CliError (what failed + what to do); any
other exception prints one line plus a hint, and the traceback only with --debug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .base import BaseModelError
from .cli_chat import add_chat_command
from .cli_runtime import add_runtime_commands
from .cli_validate import add_validate_command
from .config import ConfigError, load_config
from .dataset import DataStats, data_stats
from .export import TemplateMismatch
from .pipeline import DataError, DiskFullError
from .quantize import CapError, human_size
from .registry import RegistryError
from .runtime import RuntimeCompatError, UnknownRuntime
from .scenarios import ERROR, WARNING, load_folder, scenario_files
from .tools import VocabularyError, load_vocabulary
from .train import TrainingError

DEFAULT_DATA_DIR = "ai-training"


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


def _add_train_command(groups) -> None:
    train = _command(groups, "train", cmd_train, "train a GGUF from the scenario folder and print the app's config")
    flags = [
        ("--data", str, "DIR", f"scenario folder (default: {DEFAULT_DATA_DIR}); its dndllama.toml sets defaults"),
        ("--base", str, "MODEL", "base model: 'embedded' (Gemma 3 270M), a .gguf, a Hugging Face folder or id"),
        ("--epochs", int, "N", "passes over the training data"),
        ("--max-steps", int, "N", "stop after N optimizer steps"),
        ("--lr", float, "LR", "peak learning rate of full fine-tuning"),
        ("--method", str, "HOW", "full, lora (frozen base + adapter, merged for the app) or auto (default: full "
                                 "when it fits this machine's memory, see --plan)"),
        ("--lora-rank", int, "R", "LoRA rank (default 16)"),
        ("--lora-lr", float, "LR", "peak learning rate of LoRA (default 5e-4)"),
        ("--ctx", int, "TOKENS", "training window (multiple of 256)"),
        ("--size-cap", str, "SIZE", "largest model file the app accepts, e.g. 2GB"),
        ("--quant", str, "TYPE", "quantization type, or auto (best type under the cap)"),
        ("--runtime", str, "NAME", "runtime the GGUF must load in (default cactus-0.2)"),
        ("--models-dir", str, "DIR", "where versions are kept (default: models)"),
        ("--cache-dir", str, "DIR", "stage cache (default: ~/.cache/dndllama)"),
        ("--name", str, "NAME", "model name in the GGUF and file names"),
        ("--threads", int, "N", "CPU threads (default: all cores)"),
        ("--matmul-precision", str, "P", "training's weight products on the CPU: auto (default: bf16 where the "
                                         "CPU has AMX-BF16, else f32), bf16 or f32"),
        ("--gpu-layers", int, "N", "layers to offload to the GPU"),
        ("--patience", int, "N", "evaluations without a better validation loss before stopping (0 = off)"),
        ("--save-every", int, "N", "steps between resume checkpoints"),
        ("--eval-every", int, "N", "steps between evaluations, each a checkpoint candidate (default: epoch ends)"),
        ("--select-by", str, "WHAT", "tool_f1 (default): checkpoint and quant type by replayed tool calls; "
                                     "loss: best validation loss and best type under the cap (faster)"),
        ("--quant-f1-tolerance", float, "F1", "the smallest quant type within this tool-call F1 of the best wins "
                                           "(default 0.02)"),
        ("--validate-turns", int, "N", "validation DM turns to replay for the report and the gate (0 = all)"),
        ("--min-f1-gain", float, "F", "the gate: tool-call F1 must beat the base model's by more than F (default 0)"),
    ]
    for flag, kind, metavar, text in flags:
        train.add_argument(flag, type=kind, metavar=metavar, help=text)
    train.add_argument("--resume", action="store_true", help="require an interrupted run to resume (resuming is "
                       "automatic; this fails if there is none)")
    train.add_argument("--force", action="store_true", help="ignore cached stages and retrain from the base")
    train.add_argument("--no-gate", dest="gate", action="store_const", const=False, default=None,
                       help="promote the new version even when it does not beat the base model")
    train.add_argument("--quiet", action="store_true", help="no per-step progress")
    train.add_argument("--plan", action="store_true", help="print the memory each method would need for this "
                       "base and context, and the method auto picks; train nothing")


def _add_models_commands(groups) -> None:
    models = groups.add_parser("models", help="list, inspect and switch trained versions")
    commands = models.add_subparsers(dest="command", metavar="COMMAND")
    for name, func, text, takes_version in [
        ("list", cmd_models_list, "every version, its lineage and which one is current", False),
        ("show", cmd_models_show, "one version's metadata", True),
        ("use", cmd_models_use, "make a version current (the app's config follows)", True),
        ("rollback", cmd_models_rollback, "make the previous version current", False),
        ("rm", cmd_models_rm, "delete a version that is not current", True),
    ]:
        command = _command(commands, name, func, text)
        if takes_version:
            command.add_argument("version", help="version name, e.g. v0002 or 2")
        command.add_argument("--models-dir", default="models", help="where versions are kept (default: models)")
    models.set_defaults(func=lambda args: _usage(models))

    cache = groups.add_parser("cache", help="the stage cache (datasets, training runs, converted bases)")
    cache_commands = cache.add_subparsers(dest="command", metavar="COMMAND")
    clear = _command(cache_commands, "clear", cmd_cache_clear, "delete cached stages; models/ is never touched")
    clear.add_argument("--cache-dir", default=None, help="default: ~/.cache/dndllama")
    cache.set_defaults(func=lambda args: _usage(cache))


# Later groups (info, quantize, chat, ...) append their register function here.
COMMAND_GROUPS: list[Callable] = [_add_data_commands, _add_train_command, add_validate_command, _add_models_commands,
                                  add_runtime_commands, add_chat_command]


def resolve_model(spec: str | None, models_dir: Path) -> Path:
    """A MODEL argument (a .gguf, a version such as v0002 or 2, `current` or nothing) as a file."""
    from . import registry

    try:
        return registry.resolve(models_dir, spec)
    except registry.RegistryError as exc:
        raise CliError(str(exc), "pick a version from `dndllama models list`, or pass a .gguf file") from None


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


def load_scenarios(root: Path, usage: str = "--data DIR"):
    """Every scenario of a data folder, parsed and checked (FolderCheck), or a CliError saying why not."""
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


def cmd_data_check(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    check = load_scenarios(root, "dndllama data check PATH")
    files, vocab = scenario_files(root), check.vocab
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


# ---------------------------------------------------------------- train


TRAIN_OVERRIDES = ("data", "base", "epochs", "max_steps", "lr", "ctx", "size_cap", "quant", "runtime",
                   "models_dir", "cache_dir", "name", "threads", "gpu_layers", "patience", "save_every",
                   "eval_every", "select_by", "quant_f1_tolerance", "validate_turns", "min_f1_gain", "gate",
                    "method", "lora_rank", "lora_lr", "matmul_precision")
GATE_FAILED = 3   # exit status: trained and kept, but not promoted


def cmd_train(args: argparse.Namespace) -> int:
    from . import pipeline

    config = load_config(args.data or DEFAULT_DATA_DIR, {k: getattr(args, k) for k in TRAIN_OVERRIDES})
    if args.plan:
        print(pipeline.memory_plan(config))
        return 0
    try:
        outcome = pipeline.run(config, force=args.force, quiet=args.quiet, require_resume=args.resume)
    except KeyboardInterrupt:
        raise CliError("training interrupted; checkpoints are kept",
                       "run the same command again to resume from the last checkpoint") from None
    except OSError as e:
        if e.errno == 28:   # ENOSPC
            raise CliError(f"disk full: {e}", RECOVERY_HINTS[DiskFullError]) from None
        raise
    _print_outcome(outcome)
    return 0 if outcome.promoted else GATE_FAILED


def _print_outcome(outcome) -> None:
    version, cactus = outcome.version, outcome.cactus
    meta = version.metadata
    print()
    state = "is current" if outcome.promoted else "is NOT current (it failed the quality gate)"
    print(f"{version.name} {state} ({meta['quant']['type']}, {human_size(meta['quant']['size'])}). "
          "For the app's cactus.ts:")
    print(f"  modelPath:  {json.dumps(cactus['modelPath'])}")
    print(f"  mmprojPath: {json.dumps(cactus['mmprojPath'])}"
          + ("  (text-only model: no projector)" if cactus["mmprojPath"] is None else ""))
    if meta.get("adapter_file"):
        print(f"  adapter:    {version.path / meta['adapter_file']}  (LoRA over the base {meta['base']['source']}; "
              "already merged into modelPath)")
    print(f"  snippet:    {version.path / 'cactus.ts'}")
    print(f"  config:     {version.path / 'cactus.config.json'}"
          + (f" (also {version.path.parent / 'cactus.config.json'})" if outcome.promoted else ""))
    if (version.path / "report.md").exists():
        print(f"  report:     {version.path / 'report.md'}")


# ---------------------------------------------------------------- models, cache


def cmd_models_list(args: argparse.Namespace) -> int:
    from . import registry

    _repair(args.models_dir)
    root = Path(args.models_dir)
    found = registry.versions(root)
    if not found:
        print(f"no versions in {root} yet: run dndllama train")
        return 0
    active = registry.current(root)
    rows = []
    for v in found:
        m = v.metadata
        parent = m.get("warm_start_from") or m.get("parent") or "-"
        shipped = (m.get("validation") or {}).get("model", {})   # the published file's own validation
        loss = shipped.get("loss", m.get("training", {}).get("best_val_loss"))
        rows.append(["*" if active and active.name == v.name else "", v.name, m.get("created", "?"),
                     m.get("quant", {}).get("type", "?"), human_size(m.get("quant", {}).get("size", 0)),
                     _loss(loss), _loss(shipped.get("tool_name_f1")), parent, m.get("base", {}).get("source", "?")])
    _plain_table(f"Versions in {root} (* = current)",
                 ["", "version", "created", "quant", "size", "val loss", "tool F1", "parent", "base"], rows)
    return 0


def _repair(models_dir: str) -> None:
    from . import registry

    for line in registry.repair(Path(models_dir)):
        print(f"repaired: {line}", file=sys.stderr)


def _loss(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def cmd_models_show(args: argparse.Namespace) -> int:
    from . import registry

    _repair(args.models_dir)
    version = registry.get(Path(args.models_dir), args.version)
    print(json.dumps({**version.metadata, "path": str(version.path)}, indent=2, default=str))
    return 0


def cmd_models_use(args: argparse.Namespace) -> int:
    from . import registry

    _repair(args.models_dir)
    version = registry.set_current(Path(args.models_dir), args.version)
    print(f"{version.name} is current: {version.model.resolve()}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from . import registry

    _repair(args.models_dir)
    version = registry.rollback(Path(args.models_dir))
    print(f"rolled back: {version.name} is current: {version.model.resolve()}")
    return 0


def cmd_models_rm(args: argparse.Namespace) -> int:
    from . import registry

    _repair(args.models_dir)
    registry.remove(Path(args.models_dir), args.version)
    print(f"removed {args.version}")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    import shutil

    from .config import Config

    cache = Path(args.cache_dir or Config().cache_dir).expanduser()
    removed = 0
    for part in ("datasets", "runs", "bases", "converted"):
        target = cache / part
        if target.exists():
            removed += sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
            shutil.rmtree(target)
    print(f"cleared {human_size(removed)} from {cache}")
    return 0
