"""Markdown scenarios: parse them into typed records and report every problem at once.

A scenario file has a `# SYSTEM` block (Role, World, Location, optional Scene, Party) and a
`# CONVERSATION` made of `## User`, `## DM` and `## TOOLCALL` sections; see
docs/scenario-format.md. Parsing is tolerant about layout (CRLF, BOM, blank lines, trailing
spaces, heading case) and strict about content. Every function here that takes file text either
returns diagnostics or raises ScenarioError; nothing else escapes, whatever the input.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .tools import ToolCall, Vocabulary, VocabularyError, default_vocabulary, find_tool_calls, label_matches, load_vocabulary

ERROR, WARNING = "error", "warning"

# Every kind of problem the validator reports, with its severity. Tests and the CLI key on codes.
DIAGNOSTIC_KINDS = {
    "unreadable": ERROR,  # not UTF-8, or the file cannot be read
    "vocabulary": ERROR,  # tools.toml cannot check this file (a regex that backtracks catastrophically)
    "skipped-link": WARNING,  # a symlinked folder or a dangling link: not read
    "unknown-heading": ERROR,  # a heading that is not one of SECTION_HEADINGS
    "section-order": ERROR,  # e.g. `## DM` before `# CONVERSATION`, or a second `# SYSTEM`
    "missing-system": ERROR,
    "missing-conversation": ERROR,
    "missing-field": ERROR,  # Role, World, Location or Party absent from SYSTEM
    "bad-system-line": ERROR,  # a SYSTEM line that is neither `Key: value` nor a party member
    "bad-party-line": ERROR,
    "hp-above-max": ERROR,
    "stray-text": ERROR,  # text outside any section, or a stray </TOOLCALL>
    "empty-turn": ERROR,  # a `## User`/`## DM`/`## TOOLCALL` heading with nothing under it
    "empty-conversation": ERROR,  # no DM turn at all
    "unclosed-result": ERROR,  # <TOOLCALL> without </TOOLCALL>
    "missing-result": ERROR,  # a DM tool call not followed by its results
    "orphan-result": ERROR,  # tool results with no DM tool call right before them
    "result-count": ERROR,  # results and calls differ in number
    "bad-result": ERROR,  # a result line that is not `label: text`
    "unknown-tool": ERROR,
    "bad-arguments": ERROR,
    "truncated": ERROR,  # ends with a User turn, with results, or with a call awaiting results
    "duplicate": ERROR,  # same normalized content as another file
    "internal": ERROR,  # a parser bug; should never be seen
    "unknown-field": WARNING,  # a SYSTEM `Key:` that is not known; ignored
    "unknown-target": WARNING,  # a tool call names someone outside the party (creatures are fine)
    "label-mismatch": WARNING,  # a result label that does not mention the call's key argument
    "unknown-value": WARNING,  # an argument that fits only its loose type, e.g. [roll: juggling]
}

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


class ScenarioError(Exception):
    """Raised with every error diagnostic of one or more files."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics) or "invalid scenario")


@dataclass(frozen=True)
class Diagnostic:
    path: str
    line: int
    severity: str
    code: str
    found: str
    expected: str = ""

    def __str__(self) -> str:
        tail = f" (expected {self.expected})" if self.expected else ""
        return f"{self.path}:{self.line}: {self.severity}: {self.found}{tail}"


@dataclass
class Character:
    name: str
    race: str
    char_class: str  # the last word of "Race Class": "High Elf Wizard" -> race "High Elf"
    level: int
    hp: int
    max_hp: int
    xp: int | None = None
    inventory: list[str] = field(default_factory=list)
    line: int = field(default=0, compare=False)

    def render(self) -> str:
        parts = [f"{self.race} {self.char_class}".strip(), f"Level {self.level}", f"HP: {self.hp}/{self.max_hp}"]
        if self.xp is not None:
            parts.append(f"XP: {self.xp}")
        if self.inventory:
            parts.append("Inventory: " + ", ".join(self.inventory))
        return f"- {self.name} ({', '.join(parts)})"


@dataclass
class SystemBlock:
    role: str = ""
    world: str = ""
    location: str = ""
    scene: str = ""
    party: list[Character] = field(default_factory=list)
    line: int = field(default=0, compare=False)

    def render(self) -> str:
        lines = [f"Role: {self.role}", f"World: {self.world}", f"Location: {self.location}"]
        if self.scene:
            lines.append(f"Scene: {self.scene}")
        lines.append("Party:")
        lines.extend(c.render() for c in self.party)
        return "\n".join(lines)


@dataclass
class ToolResult:
    label: str
    text: str
    line: int = field(default=0, compare=False)

    def render(self) -> str:
        return f"{self.label}: {self.text}"


@dataclass
class Turn:
    kind: str  # "user" | "dm" | "tool"
    text: str
    line: int = field(default=0, compare=False)  # the heading (or <TOOLCALL>) line
    tool_calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)  # tool turns only
    text_line: int = field(default=0, compare=False)  # where `text` starts in the file
    malformed_calls: int = field(default=0, compare=False)  # `[...]` calls that did not parse
    source_lines: list[int] = field(default_factory=list, compare=False, repr=False)  # file line of each text line

    @property
    def attempted_calls(self) -> int:
        return len(self.tool_calls) + self.malformed_calls

    def line_at(self, offset: int) -> int:
        """The file line of a character offset in `text`."""
        index = self.text.count("\n", 0, offset)
        return self.source_lines[index] if index < len(self.source_lines) else (self.text_line or self.line) + index


@dataclass
class Scenario:
    path: str
    category: str
    system: SystemBlock
    turns: list[Turn]
    digest: str = field(default="", compare=False)
    warnings: list[Diagnostic] = field(default_factory=list, compare=False)


@dataclass
class FolderCheck:
    root: Path
    scenarios: list[Scenario]
    diagnostics: list[Diagnostic]
    vocab: Vocabulary

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == WARNING]


# ---------------------------------------------------------------- public entry points


def parse_scenario(text: str | bytes, path: str = "<string>", vocab: Vocabulary | None = None,
                   category: str = "") -> Scenario:
    """Parse one file's text; raise ScenarioError listing every error (warnings stay on the result)."""
    scenario, diagnostics = check_scenario(text, path, vocab, category)
    errors = [d for d in diagnostics if d.severity == ERROR]
    if errors or scenario is None:
        raise ScenarioError(errors)
    return scenario


def check_scenario(text: str | bytes, path: str = "<string>", vocab: Vocabulary | None = None,
                   category: str = "") -> tuple[Scenario | None, list[Diagnostic]]:
    """Best-effort parse plus all diagnostics, sorted by line. Never raises."""
    report = _Report(path)
    try:
        scenario = _parse(_decode(text, report), report, vocab or default_vocabulary(), category)
    except _Unreadable:
        return None, report.sorted()
    except VocabularyError as exc:   # a user regex of tools.toml too slow on this file's arguments
        report.add(1, "vocabulary", str(exc), "an arg type in tools.toml that matches without backtracking")
        return None, report.sorted()
    except Exception as exc:  # noqa: BLE001 - the contract is "diagnostics, never a crash"
        report.add(1, "internal", f"parser failure {type(exc).__name__}: {exc}", "a bug report with this file")
        return None, report.sorted()
    scenario.warnings = [d for d in report.items if d.severity == WARNING]
    return scenario, report.sorted()


def scenario_files(data_dir: str | Path) -> list[Path]:
    """All `*.md` files under data_dir, sorted; README files and hidden folders are skipped."""
    root = Path(data_dir)
    files = []
    for path in root.rglob("*.md"):
        rel = path.relative_to(root)
        if path.is_file() and path.name.lower() != "readme.md" and not any(p.startswith(".") for p in rel.parts):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def category_of(rel_path: str) -> str:
    """The first folder under the data dir; files at the top level are 'uncategorized'."""
    parts = rel_path.split("/")
    return parts[0] if len(parts) > 1 else "uncategorized"


def load_folder(data_dir: str | Path, vocab: Vocabulary | None = None) -> FolderCheck:
    """Parse and validate every scenario under data_dir (using its tools.toml if present)."""
    root = Path(data_dir)
    vocab = vocab or load_vocabulary(root)
    scenarios, diagnostics = [], []
    for file in scenario_files(root):
        rel = file.relative_to(root).as_posix()
        try:
            data = file.read_bytes()
        except OSError as exc:
            diagnostics.append(_diagnostic(rel, 1, "unreadable", f"cannot read file: {exc.strerror}", "a readable file"))
            continue
        scenario, found = check_scenario(data, rel, vocab, category_of(rel))
        diagnostics.extend(found)
        if scenario is not None:
            scenarios.append(scenario)
    diagnostics.extend(find_duplicates(scenarios))
    diagnostics.extend(_diagnostic(rel, 1, "skipped-link", found, "the folder itself, moved or copied into the data folder")
                       for rel, found in skipped_links(root))
    return FolderCheck(root, scenarios, diagnostics, vocab)


def skipped_links(root: Path) -> list[tuple[str, str]]:
    """Links scenario_files does not follow: symlinked folders (a link can loop, or reach outside the
    data) and links to no file. (relative path, what was skipped), so nothing is dropped unsaid."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if name.startswith(".") or not path.is_symlink():
                continue
            if path.is_dir():
                found.append((rel, "a symlinked folder: links are not followed, its scenarios are not read"))
            elif not path.exists() and name.endswith(".md"):
                found.append((rel, "a link to a file that does not exist"))
    return found


def find_duplicates(scenarios: list[Scenario]) -> list[Diagnostic]:
    """A file whose normalized content equals an earlier file's is an error on the later file."""
    first: dict[str, str] = {}
    found = []
    for scenario in scenarios:
        if scenario.digest in first:
            found.append(_diagnostic(scenario.path, 1, "duplicate", f"same content as {first[scenario.digest]}",
                                     "each scenario in one file only; delete or change one copy"))
        else:
            first[scenario.digest] = scenario.path
    return found


def format_scenario(scenario: Scenario) -> str:
    """Render a scenario back to canonical markdown (parsing it again gives the same records)."""
    out = ["# SYSTEM", scenario.system.render(), "", "# CONVERSATION"]
    headings = {"user": "## User", "dm": "## DM", "tool": "## TOOLCALL"}
    for turn in scenario.turns:
        out += [headings[turn.kind], turn.text, ""]
    return "\n".join(out).rstrip() + "\n"


def normalized_digest(text: str) -> str:
    """Hash of the content with layout differences (line endings, spacing, blank lines) removed."""
    lines = [" ".join(line.split()) for line in _split_lines(text)]
    return hashlib.sha256("\n".join(line for line in lines if line).encode()).hexdigest()


# ---------------------------------------------------------------- internals: reporting


def _diagnostic(path: str, line: int, code: str, found: str, expected: str = "") -> Diagnostic:
    return Diagnostic(path, line, DIAGNOSTIC_KINDS[code], code, found, expected)


class _Unreadable(Exception):
    pass


class _Report:
    def __init__(self, path: str):
        self.path, self.items = path, []

    def add(self, line: int, code: str, found: str, expected: str = "") -> None:
        self.items.append(_diagnostic(self.path, line, code, found, expected))

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=lambda d: d.line)


def _decode(text: str | bytes, report: _Report) -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add(1, "unreadable", f"not UTF-8 text (byte {exc.start})", "a UTF-8 markdown file")
            raise _Unreadable from None
    return text.lstrip("\ufeff")


def _split_lines(text: str) -> list[str]:
    return [line.rstrip() for line in re.split(r"\r\n|\r|\n", text.lstrip("\ufeff"))]


# ---------------------------------------------------------------- internals: sections


@dataclass
class _Section:
    kind: str
    line: int
    body: list[tuple[int, str]] = field(default_factory=list)


def _parse(text: str, report: _Report, vocab: Vocabulary, category: str) -> Scenario:
    sections = _sections(_split_lines(text), report)
    system_sections = [s for s in sections if s.kind == "system"]
    conversation_sections = [s for s in sections if s.kind == "conversation"]
    _check_layout(sections, report)
    system = _system(system_sections[0], report) if system_sections else SystemBlock()
    turns = _turns([s for s in sections if s.kind in TURN_KINDS], report, vocab)
    if conversation_sections:
        _check_conversation(turns, conversation_sections[0].line, report, vocab, system)
    return Scenario(report.path, category, system, turns, normalized_digest(text))


def _sections(lines: list[str], report: _Report) -> list[_Section]:
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


def _check_layout(sections: list[_Section], report: _Report) -> None:
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


def _system(section: _Section, report: _Report) -> SystemBlock:
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


def _system_field(system: SystemBlock, match: re.Match, number: int, seen: dict, report: _Report) -> str:
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


def _character(text: str, number: int, report: _Report) -> Character | None:
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


def _turns(sections: list[_Section], report: _Report, vocab: Vocabulary) -> list[Turn]:
    turns: list[Turn] = []
    for section in sections:
        pieces = _split_result_blocks(section, report)
        if not any(text.strip() for _, _, lines in pieces for _, text in lines):
            report.add(section.line, "empty-turn", f"empty ## {_heading(section.kind)} section", "some text under it")
            continue
        for kind, line, lines in pieces:
            turn = _turn(kind, line, lines, report, vocab)
            if turn is not None:
                turns.append(turn)
    return turns


def _heading(kind: str) -> str:
    return {"user": "User", "dm": "DM", "tool": "TOOLCALL"}[kind]


def _split_result_blocks(section: _Section, report: _Report) -> list[tuple[str, int, list]]:
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


def _turn(kind: str, line: int, lines: list[tuple[int, str]], report: _Report, vocab: Vocabulary) -> Turn | None:
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


def _attach_calls(turn: Turn, report: _Report, vocab: Vocabulary) -> None:
    calls, errors = find_tool_calls(turn.text, vocab)
    turn.tool_calls, turn.malformed_calls = calls, len(errors)
    for error in errors:
        report.add(turn.line_at(error.span[0]), error.code, error.found, error.expected)


def _results(content: list[tuple[int, str]], report: _Report) -> list[ToolResult]:
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


# ---------------------------------------------------------------- internals: conversation rules


def _check_conversation(turns: list[Turn], heading_line: int, report: _Report, vocab: Vocabulary,
                        system: SystemBlock) -> None:
    if not any(t.kind == "dm" for t in turns):
        report.add(turns[0].line if turns else heading_line, "empty-conversation",
                   "conversation has no DM turn", "at least one ## User and one ## DM turn")
        return
    party = _party_names(system)
    for index, turn in enumerate(turns):
        previous = turns[index - 1] if index else None
        following = turns[index + 1] if index + 1 < len(turns) else None
        if turn.kind == "dm":
            _check_dm_turn(turn, following, report, vocab, party)
        elif turn.kind == "tool":
            _check_results(turn, previous, report, vocab)
    last = turns[-1]
    if last.kind == "user":
        report.add(last.line, "truncated", "conversation ends with a User turn", "a ## DM reply after it")
    elif last.kind == "tool" and _attempted(turns[-2] if len(turns) > 1 else None):
        report.add(last.line, "truncated", "conversation ends with tool results", "a ## DM turn that uses them")


def _attempted(turn: Turn | None) -> int:
    return turn.attempted_calls if turn is not None and turn.kind == "dm" else 0


def _check_dm_turn(turn: Turn, following: Turn | None, report: _Report, vocab: Vocabulary, party: set[str]) -> None:
    for call in turn.tool_calls:
        _check_loose_args(turn, call, report, vocab, party)
        tool = vocab.tools[call.name]
        for spec in tool.args:
            value = call.named.get(spec.name)
            if spec.type == "name" and value and not _in_party(value, party):
                report.add(_call_line(turn, call), "unknown-target",
                           f"{call.raw.strip()} names '{value}', who is not in the party",
                           "a party member (fine for creatures)")
    if not _attempted(turn):
        return
    if following is None:
        report.add(_call_line(turn, None), "truncated", "conversation ends with a DM tool call awaiting results",
                   "a ## TOOLCALL section with the results, then a ## DM turn")
    elif following.kind != "tool":
        report.add(_call_line(turn, None), "missing-result", "DM tool call with no result",
                   f"a ## TOOLCALL section before the ## {_heading(following.kind)} at line {following.line}")


def _check_loose_args(turn: Turn, call: ToolCall, report: _Report, vocab: Vocabulary, party: set[str]) -> None:
    """A value that fits only its arg's loose type is a warning (the meaning is clear), unless it is
    a party member's name: `[roll: Mira]` lost the comma and the skill, so it is an error."""
    tool = vocab.tools[call.name]
    for spec in tool.args:
        if spec.name not in call.loose:
            continue
        value = call.named[spec.name]
        if _in_party(value, party):
            report.add(_call_line(turn, call), "bad-arguments",
                       f"{call.raw.strip()} names party member '{value}' as its {spec.name}",
                       f"the member first, then what to roll, e.g. [{call.name}: {value}, perception]")
        else:
            report.add(_call_line(turn, call), "unknown-value",
                       f"'{value}' in {call.raw.strip()} is not a known {spec.type} (kept as written)",
                       f"a {spec.type} of tools.toml, e.g. {tool.example}, or add it to the [lists] there")


def _check_results(turn: Turn, previous: Turn | None, report: _Report, vocab: Vocabulary) -> None:
    wanted = _attempted(previous)
    if not wanted:
        report.add(turn.line, "orphan-result", "tool results with no tool call before them",
                   "a ## DM turn containing a call such as [roll: perception] right before")
        return
    if len(turn.results) != wanted:
        labels = ", ".join(c.raw.strip() for c in previous.tool_calls) or f"{wanted} calls"
        report.add(turn.line, "result-count", f"{len(turn.results)} result lines for {wanted} tool calls",
                   f"one 'label: result' line per call, in order: {labels}")
        return
    if len(previous.tool_calls) != wanted:
        return  # a malformed call is already reported; pairing would be guesswork
    for call, result in zip(previous.tool_calls, turn.results):
        if result.label and not label_matches(result.label, call, vocab):
            report.add(result.line, "label-mismatch", f"result label '{result.label}' for {call.raw.strip()}",
                       f"a label naming {' or '.join(repr(v) for v in call.label_values(vocab))}")


def _call_line(turn: Turn, call: ToolCall | None) -> int:
    offset = call.span[0] if call else (turn.tool_calls[-1].span[0] if turn.tool_calls else 0)
    return turn.line_at(offset)


def _party_names(system: SystemBlock) -> set[str]:
    names = set()
    for member in system.party:
        names.add(member.name.lower())
        names.add(member.name.split()[0].lower())
    return names


def _in_party(value: str, party: set[str]) -> bool:
    return " ".join(value.lower().split()) in party
