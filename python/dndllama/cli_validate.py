"""`dndllama validate MODEL`: replay the validation scenarios' DM turns through a model (and a
baseline), score the tool calls, write report.json / report.md / charts and print a summary.

Registered in cli.COMMAND_GROUPS by `add_validate_command`; reuses cli's `_command` and `CliError`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli  # used at call time, so cli.py may import this module at its top
from .config import check_setting, load_config
from .dataset import Conversation, build_dataset
from .scenarios import ScenarioError
from .tools import Vocabulary
from .validate import (DEFAULT_MAX_TOKENS, ValidationError, dm_turns, gate, metric_rows, validate_model,
                       write_report)

BASE_KEY = "dndllama.base"       # GGUF metadata: the base a dndllama model was trained from
TRAIN_LOG = "train-log.jsonl"
DEFAULT_OUT = "validation"
# setting -> the flag of this command that sets it
VALIDATE_FLAGS = {"validate_max_tokens": "--max-tokens", "app_ctx": "--ctx", "seed": "--seed", "threads": "--threads",
                  "validate_turns": "--max-turns"}


def add_validate_command(groups) -> None:
    default_data = cli.DEFAULT_DATA_DIR
    command = cli._command(groups, "validate", cmd_validate,
                           "replay the validation scenarios through a model and score its tool calls")
    command.add_argument("model", metavar="MODEL",
                         help="a .gguf file, or a version in --models-dir (v0002, 2, current)")
    command.add_argument("--data", default=default_data, metavar="DIR",
                         help=f"scenario folder; its validation split is replayed (default: {default_data})")
    command.add_argument("--all", action="store_true", help="replay every scenario, not only the validation split")
    command.add_argument("--baseline", default="auto", metavar="MODEL",
                         help="a .gguf to compare with; 'auto' (default): the base the model was trained "
                              "from, when it is at hand; 'none': no comparison")
    command.add_argument("--out", metavar="DIR", help=f"report folder (default: {DEFAULT_OUT}/<model file name>)")
    command.add_argument("--max-turns", type=int, metavar="N", help="replay only the first N DM turns (the loss still covers all)")
    command.add_argument("--ctx", type=int, metavar="N",
                         help="generation context in tokens (default: the app's, app_ctx in dndllama.toml: 2048)")
    command.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                         help=f"tokens generated per DM turn at most (default: {DEFAULT_MAX_TOKENS})")
    command.add_argument("--seed", type=int, metavar="N", help="seed (decoding is greedy; default: the config's)")
    command.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: all cores)")
    command.add_argument("--train-log", metavar="FILE",
                         help=f"a {TRAIN_LOG} to plot (default: the one next to the model, if any)")
    command.add_argument("--models-dir", default="models", metavar="DIR",
                         help="where versions are kept (default: models)")


def cmd_validate(args: argparse.Namespace) -> int:
    from . import _native

    for key, flag in VALIDATE_FLAGS.items():   # the same table as the config file's settings
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            check_setting(key, value, "command line", flag)
    model = cli.resolve_model(args.model, Path(args.models_dir))
    config = load_config(args.data, {})
    vocab, conversations, which = _conversations(Path(args.data), config.val_fraction, args.all)
    baseline = _baseline(args.baseline, model)
    train_log = Path(args.train_log) if args.train_log else model.parent / TRAIN_LOG
    if args.train_log and not train_log.is_file():
        raise cli.CliError(f"training log '{train_log}' not found", f"pass the {TRAIN_LOG} of the run, or leave it out")
    out = Path(args.out) if args.out else Path(DEFAULT_OUT) / model.stem
    settings = dict(
        max_tokens=args.max_tokens, n_ctx=args.ctx or config.app_ctx,
        loss_ctx=config.ctx, seed=config.seed if args.seed is None else args.seed, max_turns=args.max_turns or None,
        n_threads=config.threads if args.threads is None else args.threads, n_gpu_layers=config.gpu_layers,
    )
    turns = len(dm_turns(conversations)[: args.max_turns or None])
    print(f"validating {model} on {turns} DM turns of {len(conversations)} {which}scenario(s)"
          + (f", against {baseline}" if baseline else ", no baseline"), flush=True)
    try:
        report = validate_model(model, conversations, vocab, baseline_path=baseline,
                                train_log=train_log if train_log.is_file() else None,
                                say=lambda line: print(line, flush=True), **settings)
    except ValidationError as exc:
        raise cli.CliError(str(exc), "pass a larger --ctx or a smaller --max-tokens") from None
    except _native.NativeError as exc:
        raise cli.CliError(f"validation failed in the native core: {exc}", "check that both files are GGUF "
                           "models this llama.cpp loads (dndllama check-runtime MODEL.gguf)") from None
    written = write_report(report, out)
    print()
    print_summary(report)
    print(f"report: {written['md']} (and {', '.join(p.name for k, p in written.items() if k != 'md')})")
    return 0


def _conversations(data: Path, val_fraction: float, every: bool) -> tuple[Vocabulary, list[Conversation], str]:
    check = cli.load_scenarios(data)
    vocab = check.vocab
    try:
        split = build_dataset(check, 1.0 if every else val_fraction)
    except ScenarioError as exc:
        raise cli.CliError(f"{len(exc.diagnostics)} error(s) in the scenarios under '{data}'",
                           f"run `dndllama data check {data}` and fix what it reports") from None
    conversations = split.validation   # with --all the fraction is 1: every scenario
    if not conversations:
        raise cli.CliError(f"no validation scenario in '{data}' ({len(check.scenarios)} scenarios, validation "
                           f"fraction {val_fraction})", "pass --all to replay every scenario, or add scenarios")
    return vocab, sorted(conversations, key=lambda c: c.scenario), "" if every else "validation "


def _baseline(spec: str, model: Path) -> Path | None:
    if spec == "none":
        return None
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise cli.CliError(f"baseline '{spec}' not found", "pass a .gguf file, 'auto' or 'none' to --baseline")
        return path
    found, note = auto_baseline(model)
    if found is None:
        print(f"note: {note}; validating without a baseline (pass --baseline MODEL.gguf to compare)")
    return found


def auto_baseline(model: Path) -> tuple[Path | None, str]:
    """The base the model was trained from (its GGUF's `dndllama.base`), when it is on this machine."""
    from . import _native

    try:
        source = _native.Model(str(model), vocab_only=True).info().metadata.get(BASE_KEY, "")
    except _native.NativeError as exc:
        raise cli.CliError(f"cannot read '{model}': {exc}", "pass a GGUF model file") from None
    if not source:
        return None, f"{model.name} does not record its base model ({BASE_KEY})"
    if source == "embedded":
        from .base import embedded_gguf

        return embedded_gguf(), "embedded base"
    path = Path(source).expanduser()
    if path.is_file():
        return path, "recorded base"
    return None, f"the base {source!r} recorded in {model.name} is not a file here"


def print_summary(report) -> None:
    headers = ["metric", "model", "baseline", "change"] if report.baseline else ["metric", "model"]
    rows = metric_rows(report)
    title = f"{len(report.model.turns)} DM turns replayed ({report.model.skipped_turns} skipped: over n_ctx)"
    (cli._rich_table if sys.stdout.isatty() else cli._plain_table)(title, headers, rows)
    if report.baseline:
        passed, reason = gate(report)
        print(f"quality gate: {'passed' if passed else 'FAILED'}: {reason}")
