"""Scenario markdown -> records (scenario_records.py): the file cut into sections at its headings,
the SYSTEM block and party lines read, turns and `<TOOLCALL>` result blocks split out, DM tool calls
parsed; each problem is added to the file's Report with its line. The rules between turns (a call
needs its results, results need a call) are scenario_rules.py's. Tolerant about layout (CRLF, BOM,
blank lines, trailing spaces, heading case) and strict about content.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from .scenario_records import TURN_HEADINGS, Character, Report, Scenario, SystemBlock, ToolResult, Turn
from .scenario_rules import check_conversation
from .tools import Vocabulary, find_tool_calls

# (heading level, normalized title) -> section kind.
SECTION_HEADINGS = {
    (1, "system"): "system",
    (1, "conversation"): "conversation",
    (2, "user"): "user",
    (2, "dm"): "dm",
    (2, "toolcall"): "tool",
    (2, "tool call"): "tool",
}
TURN_KINDS = ("user", "dm", "tool")
EXPECTED_HEADINGS = "# SYSTEM, # CONVERSATION, ## User, ## DM, ## TOOLCALL"

SYSTEM_FIELDS = ("role", "world", "location", "scene", "party")
REQUIRED_FIELDS = ("role", "world", "location", "party")
PARTY_LINE_FORM = "- Name (Race Class, Level N, HP: current/max, XP: n, Inventory: item, item)"

HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$")
FIELD = re.compile(r"^([A-Za-z][A-Za-z ]{0,30}?)\s*:\s*(.*)$")
BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
MEMBER = re.compile(r"^(?P<name>[^()]+?)\s*\((?P<details>.*)\)$")
DETAILS = re.compile(
    r"^(?P<race_class>[^,]+?)\s*,\s*level\s+(?P<level>\d+)\s*,\s*hp\s*:\s*(?P<hp>\d+)\s*/\s*(?P<max_hp>\d+)"
    r"(?:\s*,\s*xp\s*:\s*(?P<xp>\d+))?(?:\s*,\s*inventory\s*:\s*(?P<inventory>.*?))?\s*$",
    re.IGNORECASE,
)
RESULT_LINE = re.compile(r"^\s*(?P<label>[^:]*\S)\s*:\s*(?P<text>\S.*)$")
OPEN_TAG, CLOSE_TAG = "<toolcall>", "</toolcall>"
LEVELS = range(1, 21)


class Unreadable(Exception):
    """The file is not text; already reported."""


def parse(text: str, report: Report, vocab: Vocabulary, category: str) -> Scenario:
    sections = _sections(_split_lines(text), report)
    system_sections = [s for s in sections if s.kind == "system"]
    conversation_sections = [s for s in sections if s.kind == "conversation"]
    _check_layout(sections, report)
    system = _system(system_sections[0], report) if system_sections else SystemBlock()
    turns = _turns([s for s in sections if s.kind in TURN_KINDS], report, vocab)
    if conversation_sections:
        check_conversation(turns, conversation_sections[0].line, report, vocab, system)
    return Scenario(report.path, category, system, turns, normalized_digest(text))


def decode(text: str | bytes, report: Report) -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add(1, "unreadable", f"not UTF-8 text (byte {exc.start})", "a UTF-8 markdown file")
            raise Unreadable from None
    return text.lstrip("\ufeff")


def _split_lines(text: str) -> list[str]:
    return [line.rstrip() for line in re.split(r"\r\n|\r|\n", text.lstrip("\ufeff"))]


def normalized_digest(text: str) -> str:
    """Hash of the content with layout differences (line endings, spacing, blank lines) removed."""
    lines = [" ".join(line.split()) for line in _split_lines(text)]
    return hashlib.sha256("\n".join(line for line in lines if line).encode()).hexdigest()


# ---------------------------------------------------------------- sections


@dataclass
class _Section:
    kind: str
    line: int
    body: list[tuple[int, str]] = field(default_factory=list)


def _sections(lines: list[str], report: Report) -> list[_Section]:
    """Split into sections at headings; text before the first heading is reported."""
    sections: list[_Section] = []
    for number, line in enumerate(lines, start=1):
        match = HEADING.match(line)
        if match:
            level, title = len(match.group(1)), " ".join(match.group(2).lower().split())
            kind = SECTION_HEADINGS.get((level, title))
            if kind is None:
                report.add(number, "unknown-heading", f"unknown section heading '{line.strip()}'",
                           f"one of: {EXPECTED_HEADINGS}")
                kind = "unknown"
            sections.append(_Section(kind, number))
        elif sections:
            sections[-1].body.append((number, line))
        elif line.strip():
            report.add(number, "stray-text", "text before the first section", "the file to start with # SYSTEM")
    return sections


def _check_layout(sections: list[_Section], report: Report) -> None:
    """SYSTEM once, then CONVERSATION once, then only turn sections."""
    seen: dict[str, int] = {}
    for section in sections:
        kind = section.kind
        if kind in ("system", "conversation") and kind in seen:
            report.add(section.line, "section-order", f"second # {kind.upper()} heading",
                       f"one # {kind.upper()} per file (first at line {seen[kind]})")
        elif kind == "system" and "conversation" in seen:
            report.add(section.line, "section-order", "# SYSTEM after # CONVERSATION", "# SYSTEM first")
        elif kind in TURN_KINDS and "conversation" not in seen:
            report.add(section.line, "section-order", "turn heading before # CONVERSATION",
                       "## User/## DM/## TOOLCALL under # CONVERSATION")
        seen.setdefault(kind, section.line)
        if kind == "conversation":
            for number, line in section.body:
                if line.strip():
                    report.add(number, "stray-text", "text between # CONVERSATION and the first turn",
                               "a ## User, ## DM or ## TOOLCALL heading first")
                    break
    if "system" not in seen:
        report.add(1, "missing-system", "no # SYSTEM block", "# SYSTEM with Role, World, Location and Party")
    if "conversation" not in seen:
        report.add(1, "missing-conversation",
                   "no # CONVERSATION section", "# CONVERSATION followed by ## User and ## DM turns")


# ---------------------------------------------------------------- internals: SYSTEM


def _system(section: _Section, report: Report) -> SystemBlock:
    system = SystemBlock(line=section.line)
    seen: dict[str, int] = {}
    current = ""
    for number, line in section.body:
        if not line.strip():
            continue
        bullet, field_match = BULLET.match(line), FIELD.match(line.strip())
        if bullet and current == "party":
            member = _character(bullet.group(1).strip(), number, report)
            if member:
                system.party.append(member)
        elif field_match and not bullet:
            current = _system_field(system, field_match, number, seen, report)
        elif current in ("role", "world", "location", "scene") and not bullet:
            setattr(system, current, f"{getattr(system, current)} {line.strip()}".strip())
        else:
            report.add(number, "bad-system-line", f"unexpected line in SYSTEM: '{line.strip()[:60]}'",
                       f"'Key: value' or a party member line under Party: ({PARTY_LINE_FORM})")
    for name in REQUIRED_FIELDS:
        if name not in seen:
            report.add(section.line, "missing-field", f"SYSTEM has no {name.capitalize()}: line",
                       f"{name.capitalize()}: ... in the # SYSTEM block")
    if "party" in seen and not system.party:
        report.add(seen["party"], "bad-party-line", "Party: lists no members", PARTY_LINE_FORM)
    return system


def _system_field(system: SystemBlock, match: re.Match, number: int, seen: dict, report: Report) -> str:
    key, value = match.group(1).strip().lower(), match.group(2).strip()
    if key not in SYSTEM_FIELDS:
        report.add(number, "unknown-field", f"unknown SYSTEM field '{match.group(1).strip()}' (ignored)",
                   f"one of: {', '.join(f.capitalize() for f in SYSTEM_FIELDS)}")
        return ""
    if key in seen:
        report.add(number, "bad-system-line", f"second {key.capitalize()}: line",
                   f"one {key.capitalize()}: line (first at line {seen[key]})")
        return key
    seen[key] = number
    if key == "party":
        if value:
            report.add(number, "bad-party-line", f"text after Party: '{value[:40]}'",
                       f"members on their own lines: {PARTY_LINE_FORM}")
    else:
        setattr(system, key, value)
    return key


def _character(text: str, number: int, report: Report) -> Character | None:
    member = MEMBER.match(text)
    details = DETAILS.match(member.group("details").strip()) if member else None
    if not details:
        report.add(number, "bad-party-line", f"bad party line '{text[:70]}'", PARTY_LINE_FORM)
        return None
    race, _, char_class = details.group("race_class").strip().rpartition(" ")
    character = Character(
        name=member.group("name").strip(),
        race=race.strip(),
        char_class=char_class,
        level=int(details.group("level")),
        hp=int(details.group("hp")),
        max_hp=int(details.group("max_hp")),
        xp=int(details.group("xp")) if details.group("xp") else None,
        inventory=[i.strip() for i in (details.group("inventory") or "").split(",") if i.strip()],
        line=number,
    )
    if not character.race:
        report.add(number, "bad-party-line", f"'{character.char_class}' has no race", "'Race Class', e.g. 'Elf Wizard'")
    if character.level not in LEVELS:
        report.add(number, "bad-party-line", f"level {character.level} of {character.name}", "a level from 1 to 20")
    if character.max_hp < 1:
        report.add(number, "bad-party-line", f"max HP {character.max_hp} of {character.name}", "max HP of at least 1")
    if character.hp > character.max_hp:
        report.add(number, "hp-above-max", f"{character.name} has HP {character.hp}/{character.max_hp}",
                   f"current HP at most {character.max_hp}")
    return character


# ---------------------------------------------------------------- internals: turns


def _turns(sections: list[_Section], report: Report, vocab: Vocabulary) -> list[Turn]:
    turns: list[Turn] = []
    for section in sections:
        pieces = _split_result_blocks(section, report)
        if not any(text.strip() for _, _, lines in pieces for _, text in lines):
            report.add(section.line, "empty-turn", f"empty ## {TURN_HEADINGS[section.kind]} section",
                       "some text under it")
            continue
        for kind, line, lines in pieces:
            turn = _turn(kind, line, lines, report, vocab)
            if turn is not None:
                turns.append(turn)
    return turns


def _split_result_blocks(section: _Section, report: Report) -> list[tuple[str, int, list]]:
    """Cut `<TOOLCALL>...</TOOLCALL>` blocks out of a section into tool pieces.

    Inside a `## TOOLCALL` section the tags only wrap the results. In a User or DM section a block
    is a tool turn of its own, and the text after it continues the section's kind.
    """
    pieces: list[tuple[str, int, list]] = [(section.kind, section.line, [])]
    inside, opened_at = False, 0
    for number, line in section.body:
        rest, lower = line, line.lower()
        if OPEN_TAG in lower and not inside:
            before, rest = _cut(line, OPEN_TAG)
            if before.strip():
                pieces[-1][2].append((number, before))
            inside, opened_at = True, number
            if section.kind != "tool":
                pieces.append(("tool", number, []))
        if CLOSE_TAG in rest.lower():
            if not inside:
                report.add(number, "stray-text", "</TOOLCALL> without <TOOLCALL>", "<TOOLCALL> before it")
                rest = _cut(rest, CLOSE_TAG)[1]
            else:
                inner, after = _cut(rest, CLOSE_TAG)
                if inner.strip():
                    pieces[-1][2].append((number, inner))
                inside = False
                if section.kind != "tool":
                    pieces.append((section.kind, number, []))
                rest = after
        pieces[-1][2].append((number, rest))
    if inside:
        report.add(opened_at, "unclosed-result", "<TOOLCALL> is never closed", "</TOOLCALL> after the result lines")
    # The first piece keeps the heading's line; later pieces start at their first text line.
    return [(kind, line if i == 0 or kind == "tool" else _first_text_line(lines, line), lines)
            for i, (kind, line, lines) in enumerate(pieces)]


def _cut(line: str, tag: str) -> tuple[str, str]:
    at = line.lower().index(tag)
    return line[:at], line[at + len(tag):]


def _first_text_line(lines: list[tuple[int, str]], default: int) -> int:
    return next((number for number, text in lines if text.strip()), default)


def _turn(kind: str, line: int, lines: list[tuple[int, str]], report: Report, vocab: Vocabulary) -> Turn | None:
    content = list(lines)
    while content and not content[0][1].strip():
        content.pop(0)
    while content and not content[-1][1].strip():
        content.pop()
    if not content:
        return None if kind != "tool" else Turn("tool", "", line)
    # Runs of blank lines mean the same as one in markdown; keep training text uniform.
    kept = [(n, t) for i, (n, t) in enumerate(content) if t.strip() or content[i - 1][1].strip()]
    text = "\n".join(t.strip() if kind == "tool" else t for _, t in kept)
    turn = Turn(kind, text, line, text_line=content[0][0], source_lines=[n for n, _ in kept])
    if kind == "dm":
        _attach_calls(turn, report, vocab)
    elif kind == "tool":
        turn.results = _results(content, report)
    return turn


def _attach_calls(turn: Turn, report: Report, vocab: Vocabulary) -> None:
    calls, errors = find_tool_calls(turn.text, vocab)
    turn.tool_calls, turn.malformed_calls = calls, len(errors)
    for error in errors:
        report.add(turn.line_at(error.span[0]), error.code, error.found, error.expected)


def _results(content: list[tuple[int, str]], report: Report) -> list[ToolResult]:
    results = []
    for number, text in content:
        if not text.strip():
            continue
        match = RESULT_LINE.match(text)
        if match:
            results.append(ToolResult(match.group("label").strip(), match.group("text").strip(), number))
        else:
            report.add(number, "bad-result", f"result line '{text.strip()[:60]}' has no label",
                       "'label: result', e.g. 'perception: 15 + 10(skill) = *25*'")
            results.append(ToolResult("", text.strip(), number))
    return results

