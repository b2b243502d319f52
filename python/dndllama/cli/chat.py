"""`dndllama chat [MODEL]`: talk to a trained GGUF as the app does (chat.py holds the loop).

On a terminal it is interactive: type what the party does; after each DM reply its tool calls are
highlighted and you type one result line per call (`perception: 15 + 10(skill) = *25*`), which goes
back to the model as the app's `<TOOLCALL>` message. Commands: /system, /reset, /quit.

From a script (stdin not a terminal) it reads lines and prints no prompts:

  a line                         the player's message
  tool: LABEL: RESULT            one tool result line; when as many have come as the DM's reply has
                                 calls, they are sent back together
  <TOOLCALL>                     a block of result lines, sent at </TOOLCALL> (also on one line:
  LABEL: RESULT                  <TOOLCALL>perception: 15 + 10(skill) = *25*</TOOLCALL>)
  </TOOLCALL>
  /system, /reset, /quit         as interactively; blank lines are skipped

Output: `DM: ...` (continuation lines indented by four spaces) and one `TOOL CALL: [...]` line per
call (`INVALID TOOL CALL: ...` for a `[word: ...]` that does not parse); with --json, one JSON object
per reply instead. A line the session cannot take (a player message while results are due, the
wrong number of results) stops the command with its line number and exit status 1.

Registered in cli.COMMAND_GROUPS by `add_chat_command`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from ..chat import DEFAULT_SYSTEM, ChatError, ChatSession, ChatSettings, Reply, load_system, result_example
from ..config import check_setting
from ..files import read_json
from ..registry import CACTUS_CONFIG, METADATA
from ..tools import VocabularyError, default_vocabulary, load_vocabulary, render_tool_prompt
from .common import CliError, add_models_dir, command, resolve_model

COMMANDS = {"/quit": "leave", "/reset": "start the conversation over", "/system": "show the system prompt"}
TOOL_PREFIX, BLOCK_OPEN, BLOCK_CLOSE = "tool:", "<toolcall>", "</toolcall>"
_DOC = __doc__ or ""   # empty under python -OO
STDIN_HELP = _DOC[_DOC.find("From a script"):_DOC.find("Registered in")]


def add_chat_command(groups) -> None:
    chat = command(groups, "chat", cmd_chat,
                        "talk to a trained model through its chat template, as the app does")
    chat.formatter_class = argparse.RawDescriptionHelpFormatter
    chat.epilog = ("Interactive on a terminal: tool calls are highlighted and you type one result line per call,\n"
                   "e.g. `perception: 15 + 10(skill) = *25*`. Commands: /system, /reset, /quit.\n\n"
                   + STDIN_HELP.rstrip())
    chat.add_argument("model", nargs="?", metavar="MODEL",
                      help="a .gguf file or a version name such as v0002 (default: the current version in --models-dir)")
    add_models_dir(chat)
    chat.add_argument("--scenario", metavar="FILE.md",
                      help="use this scenario's SYSTEM block (setting and party); default: a built-in tavern party")
    chat.add_argument("--data", metavar="DIR", help="folder whose tools.toml the model was trained with "
                      "(default: the version's training folder if it exists, else the built-in tools)")
    chat.add_argument("--temperature", type=float, metavar="T", help="sampling temperature, 0 = greedy "
                      "(default: the version's cactus.config.json, else 0.7)")
    chat.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default: 0)")
    chat.add_argument("--max-tokens", type=int, metavar="N", help="longest reply in tokens (default: the app's, else 256)")
    chat.add_argument("--ctx", type=int, metavar="TOKENS", help="context size; the oldest exchanges are dropped "
                      "when it fills (default: the app's n_ctx, else 2048)")
    chat.add_argument("--json", action="store_true", help="print one JSON object per reply")


# ---------------------------------------------------------------- setting up


def cmd_chat(args: argparse.Namespace) -> int:
    model_path = resolve_model(args.model, Path(args.models_dir))
    app = read_json(model_path.parent / CACTUS_CONFIG, {})
    vocab = _vocabulary(args.data, read_json(model_path.parent / METADATA, {}))
    if app.get("toolPrompt") and app["toolPrompt"] != render_tool_prompt(vocab):
        print("warning: these tools differ from the ones the model was trained with; pass the training "
              "folder with --data", file=sys.stderr)
    try:
        system = load_system(args.scenario, vocab) if args.scenario else DEFAULT_SYSTEM
    except ChatError as exc:
        raise CliError(str(exc), "fix the SYSTEM block (see docs/scenario-format.md) or leave out --scenario") from None
    session = ChatSession(_load_model(model_path), system, vocab, _settings(args, app))
    out = Output("json" if args.json else "rich" if sys.stdout.isatty() else "plain")
    if sys.stdin.isatty():
        return interactive(session, out, model_path)
    return scripted(session, out, utf8_lines(sys.stdin.buffer))


def utf8_lines(stream):
    """The lines of a byte stream as text; a line that is not UTF-8 is an error naming it (Python's
    own decoding would either fail without the line number or, under a C locale, smuggle the bytes
    in as surrogates that the native tokenizer cannot take)."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"stdin line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                               f"{exc.start + 1})", "send the chat script as UTF-8 (iconv -t UTF-8 converts it)") from None


def _vocabulary(data: str | None, metadata: dict):
    folder = data or metadata.get("config", {}).get("data")
    if data and not Path(data).is_dir():
        raise CliError(f"data folder '{data}' not found", "pass the folder the model was trained on with --data")
    try:
        return load_vocabulary(folder) if folder and Path(folder).is_dir() else default_vocabulary()
    except VocabularyError as exc:
        raise CliError(str(exc), "fix the tools.toml named above") from None


def _settings(args: argparse.Namespace, app: dict) -> ChatSettings:
    """Flags first, then the app's settings from the version's cactus.config.json, then defaults."""
    sampling, default = app.get("sampling", {}), ChatSettings()
    flag = lambda key, value, name: value if value is None else check_setting(key, value, "command line", name)  # noqa: E731
    app_value = lambda key, value: value if value is None else check_setting(key, value, CACTUS_CONFIG)  # noqa: E731
    settings = ChatSettings(
        max_tokens=_first(flag("sampling.max_tokens", args.max_tokens, "--max-tokens"),
                          app_value("sampling.max_tokens", sampling.get("n_predict")), default.max_tokens),
        temperature=_first(flag("sampling.temperature", args.temperature, "--temperature"),
                           app_value("sampling.temperature", sampling.get("temperature")), default.temperature),
        top_k=_first(app_value("sampling.top_k", sampling.get("top_k")), default.top_k),
        top_p=_first(app_value("sampling.top_p", sampling.get("top_p")), default.top_p),
        seed=flag("seed", args.seed, "--seed"),
        n_ctx=_first(flag("app_ctx", args.ctx, "--ctx"), app_value("app_ctx", app.get("n_ctx")), default.n_ctx),
    )
    if settings.max_tokens <= 0 or settings.n_ctx <= settings.max_tokens:
        raise CliError(f"--ctx {settings.n_ctx} leaves no room for --max-tokens {settings.max_tokens}",
                           "use a context larger than the reply length")
    return settings


def _first(*values):
    return next(v for v in values if v is not None)


def _load_model(path: Path):
    from .. import _native

    try:
        return _native.Model(str(path))
    except _native.NativeError as exc:
        raise CliError(f"cannot load '{path}': {exc}", "check that it is a complete GGUF "
                           "(dndllama models list shows the trained versions)") from None


# ---------------------------------------------------------------- the two loops


def interactive(session: ChatSession, out: Output, model: Path) -> int:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    out.banner(model, session.settings)
    while True:
        line = _ask("You> ")
        if line is None or line.strip() == "/quit":
            return 0
        if not line.strip() or _slash_command(session, out, line.strip()):
            continue
        reply, kind = _try(out, session.send, line), "player"
        while reply is not None:
            out.reply(reply, kind)
            reply, kind = _answer_calls(session, out, reply), "tool_results"
            if reply is QUIT:
                return 0


QUIT = object()


def _answer_calls(session: ChatSession, out: Output, reply: Reply):
    """Ask for the results of the reply's tool calls and send them: the DM's continuation, None when
    there is nothing to answer (or after /reset), QUIT on /quit or end of input."""
    while reply.awaiting_results:
        lines = _ask_results(session, reply)
        if lines is None:
            return QUIT
        if not lines:
            return None
        answer = _try(out, session.send_tool_results, lines)
        if answer is not None:
            return answer
    return None


def _ask(prompt: str) -> str | None:
    try:
        return input(prompt)
    except (EOFError, KeyboardInterrupt):
        print()
        return None


def _ask_results(session: ChatSession, reply: Reply) -> list[str] | None:
    """One line per call; None to quit, [] after /reset."""
    lines = []
    for index, call in enumerate(reply.tool_calls, start=1):
        line = ""
        while not line:
            answer = _ask(f"  result {index}/{len(reply.tool_calls)} for {call.raw} "
                          f"(e.g. {result_example(call, session.vocab)})> ")
            if answer is None or answer.strip() == "/quit":
                return None
            if answer.strip() == "/reset":
                session.reset()
                print("(conversation reset; the system prompt stays)")
                return []
            line = answer.strip()
        lines.append(line)
    return lines


def _try(out: Output, send, message) -> Reply | None:
    try:
        return send(message)
    except ChatError as exc:
        out.error(str(exc))
    except KeyboardInterrupt:
        out.notice("interrupted: that message was not answered")
    return None


def scripted(session: ChatSession, out: Output, lines) -> int:
    results: list[str] = []
    block: list[str] | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if block is not None:                      # inside <TOOLCALL> ... </TOOLCALL>
            body, closed = _cut_close(line)
            block += [body] if body else []
            if closed:
                _send_results(session, out, block, number)
                block = None
            continue
        if not line:
            continue
        if line == "/quit":
            break
        if _slash_command(session, out, line):
            results = []
            continue
        if line.lower().startswith(BLOCK_OPEN):
            body, closed = _cut_close(line[len(BLOCK_OPEN):].strip())
            block = [body] if body else []
            if closed:
                _send_results(session, out, block, number)
                block = None
        elif line.lower().startswith(TOOL_PREFIX):
            results.append(line[len(TOOL_PREFIX):].strip())
            if len(results) >= len(session.pending):
                _send_results(session, out, results, number)
                results = []
        else:
            if results:
                _fail(number, f"{len(results)} of {len(session.pending)} tool results given before this player message")
            _send(out, session.send, line, number)
    if block is not None:
        _fail(number, "<TOOLCALL> without </TOOLCALL>")
    if session.pending:
        print(f"note: the last reply's {len(session.pending)} tool call(s) got no results", file=sys.stderr)
    return 0


def _cut_close(line: str) -> tuple[str, bool]:
    at = line.lower().find(BLOCK_CLOSE)
    return (line, False) if at < 0 else (line[:at].strip(), True)


def _send_results(session: ChatSession, out: Output, lines: list[str], number: int) -> None:
    _send(out, session.send_tool_results, lines, number, "tool_results")


def _send(out: Output, send, message, number: int, kind: str = "player") -> None:
    try:
        reply = send(message)
    except ChatError as exc:
        _fail(number, str(exc))
    out.reply(reply, kind)


def _fail(number: int, what: str) -> NoReturn:
    raise CliError(f"stdin line {number}: {what}",
                       "see `dndllama chat --help` for the input format (a player message per line, "
                       "`tool: label: result` per tool call)")


def _slash_command(session: ChatSession, out: Output, line: str) -> bool:
    """Run /system or /reset; report an unknown /command. False when the line is not a command."""
    if line == "/system":
        out.system(session.system)
    elif line == "/reset":
        session.reset()
        out.notice("conversation reset; the system prompt stays")
    elif line.startswith("/") and " " not in line:
        out.error(f"unknown command {line}; commands: " + ", ".join(f"{c} ({w})" for c, w in COMMANDS.items()))
    else:
        return False
    return True


# ---------------------------------------------------------------- output


class Output:
    """Rich styling on a terminal, `DM:` / `TOOL CALL:` lines otherwise, or one JSON object per reply."""

    def __init__(self, mode: str):
        self.mode = mode
        self.turn = 0
        if mode == "rich":
            from rich.console import Console

            self.console = Console(highlight=False)

    def banner(self, model: Path, s: ChatSettings) -> None:
        text = (f"Chatting with {model} (context {s.n_ctx} tokens, temperature {s.temperature}). "
                "Type what the party does; " + ", ".join(f"{c} {w}" for c, w in COMMANDS.items()) + ".")
        if self.mode == "rich":
            self.console.print(text, style="dim")
        elif self.mode == "plain":
            print(text)

    def reply(self, reply: Reply, kind: str) -> None:
        self.turn += 1
        if reply.dropped:
            self.notice(f"context full: dropped the oldest {reply.dropped} exchange(s); the system prompt is kept")
        if self.mode == "json":
            print(json.dumps(reply_json(reply, self.turn, kind), ensure_ascii=False), flush=True)
        elif self.mode == "rich":
            self._rich_reply(reply)
        else:
            print("DM: " + reply.text.replace("\n", "\n    "))
            for call in reply.tool_calls:
                print(f"TOOL CALL: {call.raw}")
            for error in reply.invalid_calls:
                print(f"INVALID TOOL CALL: {error.raw} ({error})")
            sys.stdout.flush()

    def _rich_reply(self, reply: Reply) -> None:
        from rich.text import Text

        label = "DM  "
        text = Text.assemble((label, "bold green"), reply.text)
        for call in reply.tool_calls:
            text.stylize("bold black on yellow", call.span[0] + len(label), call.span[1] + len(label))
        for error in reply.invalid_calls:
            text.stylize("bold red underline", error.span[0] + len(label), error.span[1] + len(label))
        self.console.print(text)
        for call in reply.tool_calls:
            self.console.print(Text.assemble(("  tool call  ", "yellow"), (call.raw, "bold yellow")))
        for error in reply.invalid_calls:
            self.console.print(Text(f"  invalid tool call  {error.raw}: {error}", style="red"))

    def system(self, text: str) -> None:
        if self.mode == "json":
            print(json.dumps({"system": text}, ensure_ascii=False), flush=True)
        elif self.mode == "rich":
            from rich.panel import Panel
            from rich.text import Text

            self.console.print(Panel(Text(text), title="system prompt", title_align="left"))
        else:
            print("SYSTEM: " + text.replace("\n", "\n    "), flush=True)

    def notice(self, text: str) -> None:
        print(f"({text})", file=sys.stderr if self.mode != "rich" else sys.stdout, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=sys.stderr, flush=True)


def reply_json(reply: Reply, turn: int, kind: str) -> dict:
    return {
        "turn": turn,
        "input": kind,
        "text": reply.text,
        "tool_calls": [{"name": c.name, "args": list(c.args), "raw": c.raw} for c in reply.tool_calls],
        "invalid_tool_calls": [{"raw": e.raw, "error": str(e)} for e in reply.invalid_calls],
        "awaiting_results": len(reply.tool_calls),
        "dropped_exchanges": reply.dropped,
        "n_prompt": reply.n_prompt,
        "n_generated": reply.n_generated,
        "stop_reason": reply.stop_reason,
        "tokens_per_s": round(reply.tokens_per_s, 1),
    }
