"""Tool vocabulary: which `[tool: arg, ...]` calls the DM may write, loaded from TOML data.

The default vocabulary ships as `tools.toml` next to this module. A data folder may hold its own
`tools.toml`; its word lists and arg types are added to the defaults and each of its tools adds a
new tool or replaces the default tool of the same name (Requirement 7.2: new tools without code
changes). An argument may name a `loose` type besides its own: a value that fits only the loose
one is accepted and flagged on the call (`ToolCall.loose`), so a checker can warn instead of refuse.
"""

from __future__ import annotations

import itertools
import re
import signal
import threading
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

VOCABULARY_FILE = "tools.toml"
MATCH_BUDGET_S = 1.0     # one argument against one user regex; real ones take microseconds
MAX_ARG_CHARS = 200      # off the main thread (no timer): longer arguments are cut before matching

# `[name: args]` anywhere in DM text; a markdown link `[text](url)` is not a call.
CALL_PATTERN = re.compile(r"\[\s*([A-Za-z_][\w-]*)\s*:([^\[\]\n]*)\](?!\()")
# `{list}` in an arg-type regex: a [lists] entry; `{0,3}` quantifiers have no letters, so never match.
LIST_REFERENCE = re.compile(r"\{([A-Za-z_]\w*)\}")


class VocabularyError(ValueError):
    """A tools.toml file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class ArgSpec:
    name: str
    type: str
    optional: bool = False
    loose: str = ""  # a looser arg type accepted with a warning ("" = none)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: tuple[ArgSpec, ...]
    label: tuple[str, ...]
    example: str
    result: str

    def signature(self) -> str:
        parts = [f"{a.name}?" if a.optional else a.name for a in self.args]
        return f"[{self.name}: {', '.join(parts)}]"


@dataclass(frozen=True)
class Vocabulary:
    tools: dict[str, Tool]
    arg_types: dict[str, re.Pattern]
    sources: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return list(self.tools)


@dataclass(frozen=True)
class ToolCall:
    name: str
    args: tuple[str, ...]
    raw: str
    span: tuple[int, int]
    named: dict[str, str] = field(default_factory=dict, compare=False)
    loose: tuple[str, ...] = field(default=(), compare=False)  # args that fit only their loose type

    def label_values(self, vocab: Vocabulary) -> list[str]:
        tool = vocab.tools[self.name]
        return [self.named[a] for a in tool.label if a in self.named]


class ToolCallError(ValueError):
    """A `[...]` call that does not fit the vocabulary; `found`/`expected` read as one diagnostic."""

    def __init__(self, code: str, found: str, expected: str, raw: str = "", span=(0, 0)):
        super().__init__(f"{found} (expected {expected})")
        self.code, self.found, self.expected = code, found, expected
        self.raw, self.span = raw, span


# ---------------------------------------------------------------- loading


def default_vocabulary() -> Vocabulary:
    return _build(_default_data(), ("<package>/tools.toml",))


def load_vocabulary(data_dir: str | Path | None = None) -> Vocabulary:
    """The default vocabulary merged with `data_dir/tools.toml` when that file exists."""
    if data_dir is None:
        return default_vocabulary()
    path = Path(data_dir) / VOCABULARY_FILE
    if not path.is_file():
        return default_vocabulary()
    try:
        override = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VocabularyError(f"{path}: not valid TOML: {exc}") from None
    return _build(merge_vocabulary_data(_default_data(), override), ("<package>/tools.toml", str(path)))


def merge_vocabulary_data(base: dict, override: dict) -> dict:
    """Lists and arg types merge key by key; a tool table replaces the whole tool of the same name."""
    return {
        "lists": {**base.get("lists", {}), **override.get("lists", {})},
        "arg_types": {**base.get("arg_types", {}), **override.get("arg_types", {})},
        "tools": {**base.get("tools", {}), **override.get("tools", {})},
    }


@lru_cache(maxsize=1)
def _default_text() -> str:
    return resources.files(__package__).joinpath(VOCABULARY_FILE).read_text(encoding="utf-8")


def _default_data() -> dict:
    return tomllib.loads(_default_text())


def _build(data: dict, sources: tuple[str, ...]) -> Vocabulary:
    where = " + ".join(sources)
    lists = data.get("lists", {})
    arg_types = {name: _compile(name, _expand(name, pattern, lists, where), where)
                 for name, pattern in data["arg_types"].items()}
    tools = {name: _tool(name, spec, arg_types, where) for name, spec in data["tools"].items()}
    vocab = Vocabulary(tools=tools, arg_types=arg_types, sources=sources)
    for tool in tools.values():
        try:
            parse_tool_call(tool.example, vocab)
        except ToolCallError as exc:
            raise VocabularyError(f"{where}: example of tool '{tool.name}' does not parse: {exc}") from None
    return vocab


def _expand(name: str, pattern, lists: dict, where: str):
    """Replace each `{list}` with an alternation of its entries, escaped so that spaces and
    parentheses stay literal in verbose regexes too; an apostrophe also matches a typographic one."""
    if not isinstance(pattern, str):
        raise VocabularyError(f"{where}: arg type '{name}' must be a regex string")

    def alternation(match: re.Match) -> str:
        entries = lists.get(match.group(1))
        if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
            known = ", ".join(lists) or "none"
            raise VocabularyError(f"{where}: arg type '{name}' names {{{match.group(1)}}}, which is not a "
                                  f"[lists] entry of non-empty strings (known lists: {known})")
        longest_first = sorted(entries, key=len, reverse=True)   # "pan flute" before "flute"
        return "(?:" + "|".join(re.escape(e).replace("'", "['’]") for e in longest_first) + ")"

    return LIST_REFERENCE.sub(alternation, pattern)


def _compile(name: str, pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise VocabularyError(f"{where}: arg type '{name}' is not a valid regex: {exc}") from None


def _tool(name: str, spec: dict, arg_types: dict, where: str) -> Tool:
    if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise VocabularyError(f"{where}: tool name '{name}' must be a single word")
    try:
        args = tuple(ArgSpec(a["name"], a["type"], bool(a.get("optional", False)), str(a.get("loose", "")))
                     for a in spec["args"])
        tool = Tool(
            name=name,
            description=str(spec["description"]),
            args=args,
            label=tuple(spec.get("label", [args[0].name] if args else [])),
            example=str(spec["example"]),
            result=str(spec["result"]),
        )
    except (KeyError, TypeError) as exc:
        raise VocabularyError(
            f"{where}: tool '{name}' needs description, args (name, type), example and result; missing {exc}"
        ) from None
    for arg in args:
        for kind in (arg.type, arg.loose or arg.type):
            if kind not in arg_types:
                raise VocabularyError(
                    f"{where}: tool '{name}' arg '{arg.name}' has unknown type '{kind}' "
                    f"(known: {', '.join(arg_types)})"
                )
    unknown_labels = set(tool.label) - {a.name for a in args}
    if unknown_labels:
        raise VocabularyError(f"{where}: tool '{name}' label names unknown args {sorted(unknown_labels)}")
    return tool


# ---------------------------------------------------------------- parsing


def find_tool_calls(text: str, vocab: Vocabulary) -> tuple[list[ToolCall], list[ToolCallError]]:
    """Every `[name: args]` in `text`, in order; calls that do not fit come back as errors."""
    calls, errors = [], []
    for match in CALL_PATTERN.finditer(text):
        try:
            calls.append(parse_tool_call(match.group(0), vocab, offset=match.start()))
        except ToolCallError as exc:
            errors.append(exc)
    return calls, errors


def parse_tool_call(raw: str, vocab: Vocabulary, offset: int = 0) -> ToolCall:
    """Parse one `[name: a, b, c]`; raise ToolCallError saying what was found and what was expected."""
    span = (offset, offset + len(raw))
    match = CALL_PATTERN.fullmatch(raw.strip())
    if not match:
        raise ToolCallError("bad-arguments", f"malformed tool call {raw!r}", "[tool: arg, arg, ...]", raw, span)
    name, body = match.group(1), match.group(2)
    tool = vocab.tools.get(name) or vocab.tools.get(name.lower())
    if tool is None:
        raise ToolCallError("unknown-tool", f"unknown tool '{name}'", f"one of: {', '.join(vocab.tools)}", raw, span)
    values = tuple(v.strip() for v in body.split(","))
    if values == ("",):
        values = ()
    named = _bind(tool, values, vocab) or _bind(tool, values, vocab, loose=True)
    if named is None:
        expected = f"{_describe(tool)}, e.g. {tool.example}"
        raise ToolCallError("bad-arguments", f"{_mismatch(tool, values, vocab)} in {raw.strip()}", expected, raw, span)
    loose = tuple(a.name for a in tool.args
                  if a.name in named and not arg_matches(vocab, a.type, named[a.name]))
    return ToolCall(tool.name, values, raw, span, named, loose)


def _mismatch(tool: Tool, values: tuple[str, ...], vocab: Vocabulary) -> str:
    """Say precisely what is wrong: the argument count, or the first value that fits no type."""
    required = sum(not a.optional for a in tool.args)
    if not required <= len(values) <= len(tool.args):
        wanted = str(required) if required == len(tool.args) else f"{required} to {len(tool.args)}"
        return f"'{tool.name}' takes {wanted} arguments, found {len(values)}"
    specs = [a for a in tool.args if not a.optional][: len(values)] if len(values) == required else tool.args
    for position, (spec, value) in enumerate(zip(specs, values), start=1):
        if not arg_matches(vocab, spec.type, value):
            return f"argument {position} '{value}' is not a valid {spec.type} for '{spec.name}'"
    return "arguments do not fit"


def _bind(tool: Tool, values: tuple[str, ...], vocab: Vocabulary, loose: bool = False) -> dict[str, str] | None:
    """Assign values to args left to right, trying each way of leaving optional args out; with
    `loose`, a value may also fit its arg's loose type (tried only after a strict binding failed)."""
    optional = [i for i, a in enumerate(tool.args) if a.optional]
    missing = len(tool.args) - len(values)
    if missing < 0 or missing > len(optional):
        return None
    for left_out in itertools.combinations(optional, missing):
        specs = [a for i, a in enumerate(tool.args) if i not in left_out]
        if all(_fits(s, v, vocab, loose) for s, v in zip(specs, values)):
            return {s.name: v for s, v in zip(specs, values)}
    return None


def _fits(spec: ArgSpec, value: str, vocab: Vocabulary, loose: bool) -> bool:
    if arg_matches(vocab, spec.type, value):
        return True
    return bool(loose and spec.loose and arg_matches(vocab, spec.loose, value))


def arg_matches(vocab: Vocabulary, type_name: str, value: str) -> bool:
    """Whether `value` is a valid `type_name`, within a time budget: arg types are user regexes
    (tools.toml), and one with nested quantifiers such as (a+)+ can backtrack for hours on a short
    argument. CPython's regex engine checks for signals while it matches, so a timer interrupts it
    exactly; that needs no new dependency and refuses only a regex that really is slow on this data
    (a static ban on nested quantifiers would also refuse the default `name` type's harmless
    (?: [...]+){0,5}). Off the main thread, where no timer can be set, arguments are cut to
    MAX_ARG_CHARS instead."""
    pattern = vocab.arg_types[type_name]
    if threading.current_thread() is not threading.main_thread():
        return bool(pattern.fullmatch(value[:MAX_ARG_CHARS]))
    previous = signal.signal(signal.SIGALRM, _too_slow)
    signal.setitimer(signal.ITIMER_REAL, MATCH_BUDGET_S)
    try:
        return bool(pattern.fullmatch(value))
    except _RegexTimeout:
        where = " + ".join(vocab.sources) or "tools.toml"
        raise VocabularyError(f"{where}: arg type '{type_name}' (regex {pattern.pattern!r}) took over "
                              f"{MATCH_BUDGET_S:g} s on the argument {value[:60]!r}: it backtracks catastrophically; "
                              "rewrite it without a repeated group that repeats inside, such as (a+)+") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


class _RegexTimeout(Exception):
    pass


def _too_slow(signum, frame):
    raise _RegexTimeout


def _describe(tool: Tool) -> str:
    parts = [f"{a.name}{'?' if a.optional else ''}: {a.type}" for a in tool.args]
    return f"[{tool.name}: {', '.join(parts)}]"


def label_matches(label: str, call: ToolCall, vocab: Vocabulary) -> bool:
    """A result label should mention the call's key argument (what is rolled, target, owner, ...)."""
    label = _fold(label)
    for value in call.label_values(vocab):
        value = _fold(value.lstrip("+-"))
        if value and (value in label or label in value):
            return True
    return False


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- prompting


def render_tool_prompt(vocab: Vocabulary) -> str:
    """The tool section of the system prompt: call form, feedback form, one example per tool."""
    lines = [
        "Tools: when the rules call for it, write a tool call such as [roll: perception] in your reply.",
        "The results come back in the next user message, one line per call in the same order:",
        "<TOOLCALL>",
        "label: result",
        "</TOOLCALL>",
        "Available tools:",
    ]
    for tool in vocab.tools.values():
        lines.append(f"- {tool.signature()}: {tool.description} Example: {tool.example} -> {tool.result}")
    return "\n".join(lines)
