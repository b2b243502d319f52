"""The records a scenario file parses into (`Scenario`: SYSTEM block, party, turns, tool results),
the diagnostics every check reports (`DIAGNOSTIC_KINDS`: code -> severity), and `Report`, which
collects one file's diagnostics. scenario_markdown.py fills them in; scenarios.py is the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .tools import ToolCall, Vocabulary

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

# Turn kind -> its markdown heading (after "## "): parsing, messages and format_scenario agree.
TURN_HEADINGS = {"user": "User", "dm": "DM", "tool": "TOOLCALL"}

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



def diagnostic(path: str, line: int, code: str, found: str, expected: str = "") -> Diagnostic:
    return Diagnostic(path, line, DIAGNOSTIC_KINDS[code], code, found, expected)


class Report:
    """One file's diagnostics, in the order found; `sorted` gives them by line."""

    def __init__(self, path: str):
        self.path, self.items = path, []

    def add(self, line: int, code: str, found: str, expected: str = "") -> None:
        self.items.append(diagnostic(self.path, line, code, found, expected))

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=lambda d: d.line)
