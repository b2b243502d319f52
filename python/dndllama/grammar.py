"""Tool-call grammar: a GBNF grammar (llama.cpp's format) generated from the tool vocabulary, so that
constrained decoding can only write calls the app's parser accepts.

  tool_call_grammar(vocab)   the GBNF text: free prose, and every `[` opens a complete, valid call
  call_regex(vocab)          a Python regex of exactly the calls the grammar allows (for tests/tools)
  GRAMMAR_FILE               its name in a version folder ("tool-calls.gbnf")

The grammar's shape:
  root  ::= (prose | call)*           prose is any character but `[`: the reference DM turns use
  call  ::= "[" (roll | health | ...) "]"    brackets for nothing else, so a `[` always opens a call
  roll  ::= "roll: " (actor sep what | what)   one alternative per way of leaving optional args out
The spacing is the one the scenarios use (`[roll: Mira, stealth]`); the parser accepts more.
Argument types in tools.toml are regexes. Each is parsed with Python's own regex parser and
translated node by node (literals folded for case, as the vocabulary matches case-insensitively;
character classes enumerated over the characters a DM writes: ASCII, Latin-1, Latin Extended and
typographic punctuation; `.` as "anything but a newline"). Every value also excludes `[`, `]`, `,`
and newlines, which end an argument in the parser. So the grammar accepts a subset of what the
parser accepts, never more. A regex with a construct GBNF has no equivalent (lookaround, anchors,
backreferences) falls back to a generic value (non-empty, no delimiters), said in a grammar comment.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from .tools import Tool, Vocabulary

try:
    import re._constants as C
    import re._parser as sre_parse
except ImportError:      # Python 3.10
    import sre_constants as C
    import sre_parse

GRAMMAR_FILE = "tool-calls.gbnf"
DELIMITERS = frozenset("[],\n")   # end an argument (or a call) in tools.CALL_PATTERN and the value split
# the characters a class is enumerated over; outside it a class matches nothing (never too much).
# ASCII, Latin-1 letters (À-ÿ), Latin Extended-A and typographic punctuation (’ – …): not the
# Latin-1 signs Python counts as alphanumeric (ª ² ¼), which a sampled call would only garble
UNIVERSE = [chr(c) for lo, hi in ((0x20, 0x7E), (0xC0, 0x17F), (0x2010, 0x2027)) for c in range(lo, hi + 1)
            if chr(c) not in "×÷"]
CONTROLS = frozenset(chr(c) for c in range(0x20))
GENERIC_VALUE = ("set", frozenset(c for c in UNIVERSE if c not in DELIMITERS and c != " "), False)
# a value is matched whole (fullmatch), so anchors at its ends change nothing
WHOLE_VALUE_ANCHORS = {C.AT_BEGINNING, C.AT_BEGINNING_STRING, C.AT_END, C.AT_END_STRING}


class Untranslatable(ValueError):
    """A regex construct with no GBNF equivalent; the arg type falls back to GENERIC_VALUE."""


# ---------------------------------------------------------------- regex -> a small tree
# nodes: ("lit", text) | ("set", chars, open) | ("seq", [nodes]) | ("alt", [nodes]) | ("rep", node, lo, hi)
# an "open" set is written as a negation ("anything but ...") and is only used for `.`


def translate(pattern: str) -> tuple:
    """The tree of a vocabulary regex (matched case-insensitively, as tools.py compiles it)."""
    parsed = sre_parse.parse(pattern, re.IGNORECASE)
    return _seq(list(parsed))


def _seq(items: list) -> tuple:
    nodes = [_node(op, av) for op, av in items]
    return ("lit", "") if not nodes else nodes[0] if len(nodes) == 1 else ("seq", nodes)


def _node(op, av) -> tuple:
    if op is C.LITERAL:
        return _fold(chr(av))
    if op is C.ANY:
        return ("set", DELIMITERS | CONTROLS, True)
    if op is C.IN:
        return ("set", _class(av), False)
    if op is C.NOT_LITERAL:
        return ("set", _class([(C.NEGATE, None), (C.LITERAL, av)]), False)
    if op is C.AT and av in WHOLE_VALUE_ANCHORS:
        return ("lit", "")
    if op is C.SUBPATTERN:
        return _seq(list(av[-1]))
    if op is C.BRANCH:
        return ("alt", [_seq(list(branch)) for branch in av[1]])
    if op in (C.MAX_REPEAT, C.MIN_REPEAT) or op is getattr(C, "POSSESSIVE_REPEAT", None):
        lo, hi, body = av
        return ("rep", _seq(list(body)), lo, None if hi is C.MAXREPEAT else hi)
    if op is getattr(C, "ATOMIC_GROUP", None):
        return _seq(list(av))
    raise Untranslatable(f"{str(op).lower()} has no GBNF equivalent")


def _fold(char: str) -> tuple:
    variants = frozenset(v for v in {char, char.lower(), char.upper()} if len(v) == 1) - DELIMITERS
    if not variants:
        raise Untranslatable(f"literal {char!r} ends an argument")
    return ("lit", char) if len(variants) == 1 else ("set", variants, False)


CATEGORIES = {
    C.CATEGORY_DIGIT: str.isdecimal,
    C.CATEGORY_NOT_DIGIT: lambda c: not c.isdecimal(),
    C.CATEGORY_SPACE: str.isspace,
    C.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    C.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    C.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}


def _class(items: list) -> frozenset:
    """The UNIVERSE characters a `[...]` class matches (case-insensitively), minus the delimiters."""
    negate = bool(items) and items[0][0] is C.NEGATE
    tests = []
    for op, av in items[negate:]:
        if op is C.LITERAL:
            tests.append(lambda c, v=chr(av): c == v)
        elif op is C.RANGE:
            tests.append(lambda c, lo=av[0], hi=av[1]: lo <= ord(c) <= hi)
        elif op is C.CATEGORY and av in CATEGORIES:
            tests.append(CATEGORIES[av])
        else:
            raise Untranslatable(f"class item {op} has no GBNF equivalent")

    def member(c: str) -> bool:
        hit = any(t(v) for t in tests for v in {c, c.lower(), c.upper()} if len(v) == 1)
        return hit != negate

    chars = frozenset(c for c in UNIVERSE if c not in DELIMITERS and member(c))
    if not chars:
        raise Untranslatable("a character class with no character a value may hold")
    return chars


# ---------------------------------------------------------------- tree -> GBNF / Python regex


def to_gbnf(node: tuple) -> str:
    kind = node[0]
    if kind == "lit":
        return _gbnf_string(node[1])
    if kind == "set":
        return _gbnf_class(node[1], node[2])
    if kind == "seq":
        return " ".join(_group(to_gbnf(n), n) for n in node[1])
    if kind == "alt":
        return " | ".join(to_gbnf(n) for n in node[1])
    _, body, lo, hi = node
    return f"{_group(to_gbnf(body), body, repeat=True)}{_quantifier(lo, hi)}"


def to_regex(node: tuple) -> str:
    kind = node[0]
    if kind == "lit":
        return re.escape(node[1])
    if kind == "set":
        chars = "".join(_regex_char(c) for c in sorted(node[1]))
        return f"[^{chars}]" if node[2] else f"[{chars}]"
    if kind == "seq":
        return "".join(f"(?:{to_regex(n)})" if n[0] == "alt" else to_regex(n) for n in node[1])
    if kind == "alt":
        return "|".join(to_regex(n) for n in node[1])
    _, body, lo, hi = node
    return f"(?:{to_regex(body)}){_quantifier(lo, hi)}"


def _group(text: str, node: tuple, repeat: bool = False) -> str:
    simple = node[0] == "set" or (node[0] == "lit" and not repeat)
    return text if simple else f"({text})"


def _quantifier(lo: int, hi: int | None) -> str:
    if (lo, hi) == (0, None):
        return "*"
    if (lo, hi) == (1, None):
        return "+"
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo},}}" if hi is None else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


def _gbnf_string(text: str) -> str:
    return '"' + "".join(c if c.isalnum() and c.isascii() or c in " :'" else _escape(c) for c in text) + '"'


def _gbnf_class(chars: frozenset, negated: bool) -> str:
    ranges = []
    for _, run in itertools.groupby(enumerate(sorted(map(ord, chars))), lambda pair: pair[1] - pair[0]):
        run = [code for _, code in run]
        ranges.append(_class_char(run[0]) + (f"-{_class_char(run[-1])}" if len(run) > 1 else ""))
    return f"[{'^' if negated else ''}{''.join(ranges)}]"


def _class_char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else _escape(char)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}"


def _regex_char(char: str) -> str:
    return re.escape(char) if char != "\n" else "\\n"


# ---------------------------------------------------------------- the vocabulary's grammar


@dataclass(frozen=True)
class ArgRule:
    name: str           # the GBNF rule name
    node: tuple
    note: str = ""      # why the generic value is used, when it is


def arg_rules(vocab: Vocabulary) -> dict[str, ArgRule]:
    """One rule per arg type the tools use, translated from its regex (or the generic value)."""
    rules = {}
    for type_name in dict.fromkeys(a.type for t in vocab.tools.values() for a in t.args):
        rule = "arg-" + _rule_name(type_name)
        try:
            rules[type_name] = ArgRule(rule, translate(vocab.arg_types[type_name].pattern))
        except (Untranslatable, re.error) as exc:
            rules[type_name] = ArgRule(rule, ("rep", GENERIC_VALUE, 1, None), f"generic value: {exc}")
    return rules


def tool_call_grammar(vocab: Vocabulary, prose: bool = True) -> str:
    """The GBNF grammar: prose, and calls of the vocabulary's tools with arguments of their types.
    With `prose` off the root is one call and nothing else (to test the call rules on their own)."""
    args = arg_rules(vocab)
    tools = {name: "call-" + _rule_name(name) for name in vocab.tools}
    lines = [
        "# dndllama tool-call grammar, generated from the tool vocabulary (dndllama/grammar.py).",
        "# Free prose; a `[` always opens a call of a known tool, complete with valid arguments.",
        "root ::= (prose | call)*" if prose else "root ::= call",
        "prose ::= [^[]",
        "call ::= \"[\" (" + " | ".join(tools.values()) + ") \"]\"",
        "sep ::= \", \"",
    ]
    for name, tool in vocab.tools.items():
        lines.append(f"{tools[name]} ::= {_gbnf_string(tool.name + ': ')} ({_signatures(tool, args, 'gbnf')})")
    for type_name, rule in args.items():
        if rule.note:
            lines.append(f"# arg type '{type_name}': {rule.note}")
        lines.append(f"{rule.name} ::= {to_gbnf(rule.node)}")
    return "\n".join(lines) + "\n"


def call_regex(vocab: Vocabulary) -> re.Pattern:
    """A regex of one call, built from the same tree as the grammar: what the grammar accepts."""
    args = arg_rules(vocab)
    calls = [rf"{re.escape(t.name)}: (?:{_signatures(t, args, 'regex')})" for t in vocab.tools.values()]
    return re.compile(r"\[(?:" + "|".join(calls) + r")\]")


def _signatures(tool: Tool, args: dict[str, ArgRule], form: str) -> str:
    """Alternatives for each way of leaving the tool's optional arguments out (as tools._bind does)."""
    optional = [i for i, a in enumerate(tool.args) if a.optional]
    alternatives = []
    for count in range(len(optional) + 1):
        for left_out in itertools.combinations(optional, count):
            kept = [a for i, a in enumerate(tool.args) if i not in left_out]
            if form == "gbnf":
                alternatives.append(" sep ".join(args[a.type].name for a in kept) or '""')
            else:
                alternatives.append(", ".join(f"(?:{to_regex(args[a.type].node)})" for a in kept))
    return " | ".join(alternatives) if form == "gbnf" else "|".join(alternatives)


def _rule_name(name: str) -> str:
    """GBNF rule names are letters, digits and dashes."""
    return re.sub(r"[^A-Za-z0-9-]", "-", name).lower()
