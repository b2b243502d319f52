"""Every llama.cpp patch carries its rationale as a header (like a mailed patch) and has a line in
the README's table; `git apply`/`patch` skip the header (a clean rebuild applies them all)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATCHES = sorted((REPO / "cpp" / "patches").glob("*.patch"))
SECTIONS = ("What upstream does:", "What this patch changes:", "How it is tested:")
FIRST_HUNK = re.compile(r"^(diff --git |--- a/)", re.M)


def test_there_are_patches():
    assert len(PATCHES) >= 10


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name[:4])
def test_patch_starts_with_its_rationale(patch):
    text = patch.read_text(encoding="utf-8")
    start = FIRST_HUNK.search(text)
    assert start, f"{patch.name}: no diff in it"
    header = text[:start.start()]
    assert header.startswith(f"dndllama patch {patch.name[:4]}: "), f"{patch.name}: first line is not its subject"
    positions = [header.find(section) for section in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), f"{patch.name}: header needs {SECTIONS} in order"
    # a header line that looks like a diff would make git apply or patch read the header as a hunk
    assert not re.search(r"^(---|\+\+\+|@@|diff|index|Index:)", header, re.M), patch.name


def test_readme_table_lists_every_patch():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| (\d{4}) \|", readme, re.M))
    assert listed == {p.name[:4] for p in PATCHES}
