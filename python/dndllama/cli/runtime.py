"""`dndllama check-runtime MODEL.gguf` and `dndllama runtime install|list`: does the app's runtime
load our GGUF, and does it build the prompt training used, character for character?

Registered in cli.COMMAND_GROUPS by `add_runtime_commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..app_runtime import (CompatReport, RuntimeInstallError, RuntimeNotInstalled, check_runtime, ensure_runtime_env,
                           find_runtime_env, report_json)
from ..dataset import Message, render_gemma, split_scenarios, to_conversation
from ..runtime_profiles import DEFAULT_RUNTIME, RUNTIMES, UnknownRuntime, load_runtime
from ..ship_checks import first_exchange
from .common import DEFAULT_DATA_DIR, CliError, command, group, load_scenarios

TEXT_PREVIEW = 300  # characters of the reply shown


def add_runtime_commands(groups) -> None:
    default_data = DEFAULT_DATA_DIR
    check = command(groups, "check-runtime", cmd_check_runtime,
                     "load a GGUF in the app's runtime, chat once, compare the prompt with training")
    check.add_argument("model", metavar="MODEL.gguf", help="the GGUF to check")
    check.add_argument("--runtime", default=DEFAULT_RUNTIME, choices=_installable(),
                       help=f"runtime profile (default: {DEFAULT_RUNTIME})")
    check.add_argument("--data", default=default_data, metavar="DIR",
                       help=f"scenario folder whose first validation scenario is the test chat (default: {default_data})")
    check.add_argument("--max-tokens", type=int, default=48, metavar="N", help="tokens to generate (default: 48)")
    check.add_argument("--json", action="store_true", help="print the full report as JSON")

    commands = group(groups, "runtime", "install and list app runtimes for check-runtime")
    install = command(commands, "install", cmd_runtime_install,
                      "build the runtime's llama.cpp in its own venv (once; about 2 minutes on 2 cores)")
    install.add_argument("name", nargs="?", default=DEFAULT_RUNTIME, choices=_installable(),
                         help=f"runtime to install (default: {DEFAULT_RUNTIME})")
    command(commands, "list", cmd_runtime_list, "list runtime profiles and whether each is installed")


def _installable() -> list[str]:
    """Runtimes with a desktop stand-in (check-runtime runs those; llama.cpp-current is dndllama itself)."""
    return [name for name in RUNTIMES if load_runtime(name).stand_in]


# ---------------------------------------------------------------- runtime install / list


def cmd_runtime_install(args: argparse.Namespace) -> int:
    try:
        ensure_runtime_env(args.name, progress=lambda line: print(line, flush=True))
    except RuntimeInstallError as exc:
        raise CliError(f"installing runtime '{args.name}' failed: {exc}",
                       "install a C/C++ compiler and CMake, check the network, then run it again") from None
    return 0


def cmd_runtime_list(args: argparse.Namespace) -> int:
    for name in RUNTIMES:
        runtime = load_runtime(name)
        if runtime.stand_in:
            env = find_runtime_env(name)
            state = f"installed at {env.path}" if env else f"not installed: dndllama runtime install {name}"
        else:
            state = "built in (dndllama's own llama.cpp)"
        print(f"{name}: {runtime.description}")
        print(f"  llama.cpp: {runtime.llama_cpp}")
        print(f"  {len(runtime.architectures)} architectures; {state}")
    return 0


# ---------------------------------------------------------------- check-runtime


def cmd_check_runtime(args: argparse.Namespace) -> int:
    model = Path(args.model)
    if not model.is_file():
        raise CliError(f"model file '{model}' not found", "pass the path of a .gguf file")
    messages, source = _test_chat(Path(args.data))
    expected_prompt = _bos_text(model) + render_gemma(messages, add_generation_prompt=True)
    try:
        report = check_runtime(model, args.runtime, messages, expected_prompt=expected_prompt,
                               expected_tokens=_training_tokens(model, messages), max_tokens=args.max_tokens)
    except UnknownRuntime as exc:
        raise CliError(str(exc), "pick one of the names listed") from None
    except RuntimeNotInstalled as exc:
        raise CliError(str(exc), f"run `dndllama runtime install {args.runtime}`, then this command again") from None
    if args.json:
        print(json.dumps(report_json(report), indent=2, default=str))
    else:
        print_report(report, source)
    return 0 if report.ok else 1


def _test_chat(data: Path) -> tuple[list[Message], str]:
    """System + first user message of the first validation scenario: the prompt before the first DM turn."""
    check = load_scenarios(data)
    vocab = check.vocab
    if not check.scenarios:
        raise CliError(f"no usable scenario in '{data}'", "run `dndllama data check` and fix what it reports")
    by_path = {s.path: s for s in check.scenarios}
    train, validation = split_scenarios(by_path)
    path = (validation or train)[0]
    return first_exchange(to_conversation(by_path[path], vocab).messages)[:-1], path


def _bos_text(model: Path) -> str:
    """The BOS token's text when the GGUF's tokenizer adds BOS (training's windows start with it)."""
    from .. import _native

    try:
        tokenizer = _native.Model(str(model), vocab_only=True)
    except _native.NativeError:
        return ""   # an unusable vocabulary: the runtime check reports the model itself
    return tokenizer.detokenize(tokenizer.tokenize("", True, True), True)


def _training_tokens(model: Path, messages: list[Message]) -> list[int] | None:
    """The prompt as training tokenized it (dataset.conversation_windows: BOS, special tokens parsed),
    with the pinned llama.cpp's tokenizer; None when the native module or the vocabulary is unusable
    (the runtime check then reports the model itself)."""
    try:
        from .. import _native
    except ImportError:
        return None
    try:
        tokenizer = _native.Model(str(model), vocab_only=True)
    except _native.NativeError:
        return None
    return list(tokenizer.tokenize(render_gemma(messages, add_generation_prompt=True), True, True))


def print_report(report: CompatReport, source: str = "") -> None:
    rows = [("runtime", f"{report.runtime} (llama-cpp-python {report.runtime_version or '?'})"),
            ("model", report.model)]
    if source:
        rows.append(("test chat", f"{source}, up to the first DM turn"))
    rows.append(("static", "ok" if not report.static_problems else "; ".join(report.static_problems)))
    if not report.loaded:
        rows.append(("load", f"FAILED: {report.error}"))
    else:
        rows.append(("load", f"ok in {report.load_s:.2f} s"))
        rows.append(("template", _template_line(report)))
        if report.tokens_identical is not None:
            rows.append(("tokens", f"identical ({len(report.prompt_tokens)} tokens)" if report.tokens_identical
                         else f"DIFFERENT from token {report.first_token_difference} on"))
        if report.error:
            rows.append(("generate", f"FAILED: {report.error}"))
        else:
            text = report.text if len(report.text) <= TEXT_PREVIEW else report.text[:TEXT_PREVIEW] + "…"
            rows.append(("reply", f"{text!r}"))
            rows.append(("", f"{report.generated_tokens} tokens in {report.generate_s:.2f} s "
                             f"({report.tokens_per_s:.1f} tokens/s), stop: {report.finish_reason}"))
            calls = ", ".join(c.raw for c in report.tool_calls) or "none"
            rows.append(("tool calls", calls))
            if report.tool_call_errors:
                rows.append(("", "invalid: " + "; ".join(str(e) for e in report.tool_call_errors)))
    rows += [("warning", w) for w in report.warnings]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    verdict = "OK: the app's runtime loads this model and prompts it as training did" if report.ok else (
        "FAILED: " + ("the runtime cannot load this model" if not report.loaded
                      else "the runtime does not build the prompt training used" if report.error is None
                      else "see above"))
    print(verdict, file=sys.stdout if report.ok else sys.stderr)


def _template_line(report: CompatReport) -> str:
    where = f"{report.template_engine}, template: {report.template_source}"
    if report.template_identical is None:
        return f"rendered ({len(report.effective_prompt)} chars; {where}); nothing to compare with"
    if report.template_identical:
        return f"identical to training ({len(report.effective_prompt)} chars; {where})"
    return f"DIFFERENT from training: {report.difference} ({where})"
