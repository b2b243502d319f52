"""`dndllama validate MODEL`: replay the evaluation scenarios' DM turns (eval_data, default ai-eval/;
the validation split of --data when there is none) through a model (and a baseline), score the tool
calls, write report.json / report.md / charts and print a summary.

Registered in cli.COMMAND_GROUPS by `add_validate_command`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import check_setting, load_config
from ..dataset import Conversation, build_dataset
from ..evalset import EvalSetError, find_eval_dir, load_eval_set
from ..scenarios import ScenarioError
from ..tools import Vocabulary
from .common import DEFAULT_DATA_DIR, CliError, add_models_dir, command, load_scenarios, print_table, resolve_model
from ..validate import (DEFAULT_MAX_TOKENS, ValidationError, dm_turns, gate, metric_rows, validate_model,
                       write_report)

BASE_KEY = "dndllama.base"       # GGUF metadata: the base a dndllama model was trained from
TRAIN_LOG = "train-log.jsonl"
DEFAULT_OUT = "validation"
# setting -> the flag of this command that sets it
VALIDATE_FLAGS = {"validate_max_tokens": "--max-tokens", "app_ctx": "--ctx", "seed": "--seed", "threads": "--threads",
                  "validate_turns": "--max-turns"}


def add_validate_command(groups) -> None:
    default_data = DEFAULT_DATA_DIR
    leaf = command(groups, "validate", cmd_validate,
                   "replay the validation scenarios through a model and score its tool calls")
    leaf.add_argument("model", metavar="MODEL",
                      help="a .gguf file, or a version in --models-dir (v0002, 2, current)")
    leaf.add_argument("--data", default=default_data, metavar="DIR",
                      help=f"scenario folder: its tool vocabulary, and its validation split when there is no "
                           f"evaluation folder (default: {default_data})")
    leaf.add_argument("--eval-data", metavar="DIR",
                      help="held-out scenarios to replay (default: eval_data of the config, ai-eval; '' = none, "
                           "replay the validation split of --data)")
    leaf.add_argument("--all", action="store_true", help="replay every scenario of --data, not an evaluation set")
    leaf.add_argument("--baseline", default="auto", metavar="MODEL",
                      help="a .gguf to compare with; 'auto' (default): the base the model was trained "
                           "from, when it is at hand; 'none': no comparison")
    leaf.add_argument("--out", metavar="DIR", help=f"report folder (default: {DEFAULT_OUT}/<model file name>)")
    leaf.add_argument("--max-turns", type=int, metavar="N", help="replay only the first N DM turns (the loss still covers all)")
    leaf.add_argument("--ctx", type=int, metavar="N",
                      help="generation context in tokens (default: the app's, app_ctx in dndllama.toml: 2048)")
    leaf.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                      help=f"tokens generated per DM turn at most (default: {DEFAULT_MAX_TOKENS})")
    leaf.add_argument("--seed", type=int, metavar="N", help="seed (decoding is greedy; default: the config's)")
    leaf.add_argument("--threads", type=int, metavar="N",
                      help="CPU threads (default: the cores other processes leave free)")
    leaf.add_argument("--grammar", action=argparse.BooleanOptionalAction, default=None,
                      help="decode with the tool-call grammar, as the app does (default: grammar in dndllama.toml, on)")
    leaf.add_argument("--train-log", metavar="FILE",
                      help=f"a {TRAIN_LOG} to plot (default: the one next to the model, if any)")
    add_models_dir(leaf)


def cmd_validate(args: argparse.Namespace) -> int:
    from .. import _native

    for key, flag in VALIDATE_FLAGS.items():   # the same table as the config file's settings
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            check_setting(key, value, "command line", flag)
    model = resolve_model(args.model, Path(args.models_dir))
    config = load_config(args.data, {})
    eval_data = config.eval_data if args.eval_data is None else args.eval_data
    vocab, conversations, which = _conversations(Path(args.data), config.val_fraction, args.all, eval_data)
    loss_on = _loss_split(Path(args.data), config.val_fraction) if which == "evaluation " else None
    baseline = _baseline(args.baseline, model)
    train_log = Path(args.train_log) if args.train_log else model.parent / TRAIN_LOG
    if args.train_log and not train_log.is_file():
        raise CliError(f"training log '{train_log}' not found", f"pass the {TRAIN_LOG} of the run, or leave it out")
    out = Path(args.out) if args.out else Path(DEFAULT_OUT) / model.stem
    settings = dict(
        max_tokens=args.max_tokens, n_ctx=args.ctx or config.app_ctx,
        loss_ctx=config.ctx, seed=config.seed if args.seed is None else args.seed, max_turns=args.max_turns or None,
        n_threads=config.threads if args.threads is None else args.threads, n_gpu_layers=config.gpu_layers,
        grammar=config.grammar if args.grammar is None else args.grammar,
    )
    turns = len(dm_turns(conversations, args.max_turns))
    print(f"validating {model} on {turns} DM turns of {len(conversations)} {which}scenario(s)"
          + (f", against {baseline}" if baseline else ", no baseline"), flush=True)
    try:
        report = validate_model(model, conversations, vocab, baseline_path=baseline,
                                train_log=train_log if train_log.is_file() else None,
                                say=lambda line: print(line, flush=True), loss_conversations=loss_on, **settings)
    except ValidationError as exc:
        raise CliError(str(exc), "pass a larger --ctx or a smaller --max-tokens") from None
    except _native.NativeError as exc:
        raise CliError(f"validation failed in the native core: {exc}", "check that both files are GGUF "
                           "models this llama.cpp loads (dndllama check-runtime MODEL.gguf)") from None
    written = write_report(report, out)
    print()
    print_summary(report)
    print(f"report: {written['md']} (and {', '.join(p.name for k, p in written.items() if k != 'md')})")
    return 0


def _conversations(data: Path, val_fraction: float, every: bool,
                   eval_data: str = "") -> tuple[Vocabulary, list[Conversation], str]:
    check = load_scenarios(data)
    vocab = check.vocab
    evaluation = None if every else _evaluation(eval_data, data, check)
    if evaluation:
        return vocab, evaluation, "evaluation "
    try:
        split = build_dataset(check, 1.0 if every else val_fraction)
    except ScenarioError as exc:
        raise CliError(f"{len(exc.diagnostics)} error(s) in the scenarios under '{data}'",
                           f"run `dndllama data check {data}` and fix what it reports") from None
    conversations = split.validation   # with --all the fraction is 1: every scenario
    if not conversations:
        raise CliError(f"no validation scenario in '{data}' ({len(check.scenarios)} scenarios, validation "
                           f"fraction {val_fraction})", "pass --all to replay every scenario, or add scenarios")
    return vocab, sorted(conversations, key=lambda c: c.scenario), "" if every else "validation "


def _loss_split(data: Path, val_fraction: float) -> list[Conversation] | None:
    """With an evaluation folder the loss stays on --data's validation split, as in training (the
    whole evaluation set holds ~9x the windows); None replays and takes the loss on the same set."""
    try:
        return _conversations(data, val_fraction, False)[1]
    except CliError:
        return None


def _evaluation(eval_data: str, data: Path, check) -> list[Conversation] | None:
    """The evaluation folder's conversations, or None (with a notice when one was asked for)."""
    try:
        eval_dir, note = find_eval_dir(eval_data, data)
        if eval_dir is None:
            if note:
                print(note)
            return None
        return load_eval_set(eval_dir, check.vocab, {s.digest for s in check.scenarios}).conversations
    except EvalSetError as exc:
        raise CliError(str(exc), "fix the evaluation folder, or pass --eval-data '' to replay the "
                       "validation split of --data") from None


def _baseline(spec: str, model: Path) -> Path | None:
    if spec == "none":
        return None
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise CliError(f"baseline '{spec}' not found", "pass a .gguf file, 'auto' or 'none' to --baseline")
        return path
    found, note = auto_baseline(model)
    if found is None:
        print(f"note: {note}; validating without a baseline (pass --baseline MODEL.gguf to compare)")
    return found


def auto_baseline(model: Path) -> tuple[Path | None, str]:
    """The base the model was trained from (its GGUF's `dndllama.base`), when it is on this machine."""
    from .. import _native

    try:
        source = _native.Model(str(model), vocab_only=True).info().metadata.get(BASE_KEY, "")
    except _native.NativeError as exc:
        raise CliError(f"cannot read '{model}': {exc}", "pass a GGUF model file") from None
    if not source:
        return None, f"{model.name} does not record its base model ({BASE_KEY})"
    if source == "embedded":
        from ..base import embedded_gguf

        return embedded_gguf(), "embedded base"
    path = Path(source).expanduser()
    if path.is_file():
        return path, "recorded base"
    return None, f"the base {source!r} recorded in {model.name} is not a file here"


def print_summary(report) -> None:
    headers = ["metric", "model", "baseline", "change"] if report.baseline else ["metric", "model"]
    rows = metric_rows(report)
    title = f"{len(report.model.turns)} DM turns replayed ({report.model.skipped_turns} skipped: over n_ctx)"
    print_table(title, headers, rows)
    if report.baseline:
        passed, reason = gate(report)
        print(f"quality gate: {'passed' if passed else 'FAILED'}: {reason}")
