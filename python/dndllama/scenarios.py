"""Markdown scenarios: parse them into typed records and report every problem at once.

A scenario file has a `# SYSTEM` block (Role, World, Location, optional Scene, Party) and a
`# CONVERSATION` made of `## User`, `## DM` and `## TOOLCALL` sections; see
docs/scenario-format.md. Parsing is tolerant about layout (CRLF, BOM, blank lines, trailing
spaces, heading case) and strict about content. Every function here that takes file text either
returns diagnostics or raises ScenarioError; nothing else escapes, whatever the input.

This module is the entry point (one file, one folder, the folder's files); the work is split by purpose:
  scenario_records.py   the records (Scenario, Turn, Character ...) and the diagnostics table
  scenario_markdown.py  markdown -> records: sections, SYSTEM block, party lines, turns, results
  scenario_rules.py     the rules between turns: calls need results, results need calls, names
"""

from __future__ import annotations

import os
from pathlib import Path

from .scenario_markdown import RESULT_LINE, Unreadable, decode, normalized_digest, parse  # noqa: F401
from .scenario_records import (DIAGNOSTIC_KINDS, ERROR, TURN_HEADINGS, WARNING, Character, Diagnostic,  # noqa: F401
                               FolderCheck, Report, Scenario, ScenarioError, SystemBlock, ToolResult, Turn,
                               diagnostic)
from .tools import Vocabulary, VocabularyError, default_vocabulary, load_vocabulary


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
    report = Report(path)
    try:
        scenario = parse(decode(text, report), report, vocab or default_vocabulary(), category)
    except Unreadable:
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
            diagnostics.append(diagnostic(rel, 1, "unreadable", f"cannot read file: {exc.strerror}", "a readable file"))
            continue
        scenario, found = check_scenario(data, rel, vocab, category_of(rel))
        diagnostics.extend(found)
        if scenario is not None:
            scenarios.append(scenario)
    diagnostics.extend(find_duplicates(scenarios))
    diagnostics.extend(diagnostic(rel, 1, "skipped-link", found, "the folder itself, moved or copied into the data folder")
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
            found.append(diagnostic(scenario.path, 1, "duplicate", f"same content as {first[scenario.digest]}",
                                     "each scenario in one file only; delete or change one copy"))
        else:
            first[scenario.digest] = scenario.path
    return found


def format_scenario(scenario: Scenario) -> str:
    """Render a scenario back to canonical markdown (parsing it again gives the same records)."""
    out = ["# SYSTEM", scenario.system.render(), "", "# CONVERSATION"]
    for turn in scenario.turns:
        out += [f"## {TURN_HEADINGS[turn.kind]}", turn.text, ""]
    return "\n".join(out).rstrip() + "\n"
