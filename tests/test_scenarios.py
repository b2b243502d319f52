import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dndllama.scenarios import (
    DIAGNOSTIC_KINDS,
    Character,
    ScenarioError,
    check_scenario,
    format_scenario,
    load_folder,
    parse_scenario,
)
from dndllama.tools import load_vocabulary

DATA = Path(__file__).parent / "data"
SEED = (DATA / "seed_tavern.md").read_text(encoding="utf-8")

# A small valid file; the error cases below change one thing in it. Line numbers matter.
VALID = """\
# SYSTEM
Role: Dungeon Master
World: Forgotten Realms
Location: Goblin cave
Party:
- Mira (Human Rogue, Level 3, HP: 20/24, XP: 900, Inventory: rope, dagger)
- Elara (High Elf Wizard, Level 3, HP: 16/16)

# CONVERSATION
## User
Mira sneaks toward the sleeping goblin.

## DM
The goblin snores on a pile of furs.

[roll: Mira, stealth]

## TOOLCALL
stealth: 12 + 5(skill) = *17*

## DM
It keeps snoring. What now?
"""


def codes(text, path="combat/cave.md"):
    scenario, diagnostics = check_scenario(text, path)
    return [(d.code, d.line) for d in diagnostics]


def test_seed_tavern_golden():
    scenario = parse_scenario(SEED, "roleplay/seed_tavern.md", category="roleplay")
    system = scenario.system
    assert (scenario.path, scenario.category) == ("roleplay/seed_tavern.md", "roleplay")
    assert (system.role, system.world, system.location, system.scene) == (
        "Dungeon Master", "Forgotten Realms", "Tavern", "")
    assert system.party == [
        Character("Thordak", "Dragonborn", "Fighter", 5, 45, 45),
        Character("Elara", "Elf", "Wizard", 5, 28, 28),
        Character("Grimm", "Dwarf", "Cleric", 5, 38, 38),
    ]
    assert [c.line for c in system.party] == [6, 7, 8]
    assert [(t.kind, t.line) for t in scenario.turns] == [("user", 11), ("dm", 14), ("tool", 23), ("dm", 26)]
    user, dm, tool, dm2 = scenario.turns
    assert user.text == "I want to approach the bartender and ask about rumors in town."
    assert dm.text.startswith("The burly half-orc bartender looks up as you approach.")
    assert dm.text.endswith("Might want to test your perception first.\"\n\n[roll: perception]")
    assert dm.text.count("\n\n") == 3
    [call] = dm.tool_calls
    assert (call.name, call.args, call.raw, call.named) == ("roll", ("perception",), "[roll: perception]",
                                                           {"what": "perception"})
    assert dm.text[call.span[0]:call.span[1]] == call.raw
    assert tool.text == "perception: 15 + 10(skill) = *25*"
    assert [(r.label, r.text, r.line) for r in tool.results] == [("perception", "15 + 10(skill) = *25*", 24)]
    assert dm2.text.startswith("With your keen awareness") and dm2.text.endswith("about living statues.\"")
    assert dm2.tool_calls == [] and scenario.warnings == []


def test_extended_party_line_fields():
    scenario = parse_scenario(VALID)
    mira, elara = scenario.system.party
    assert mira == Character("Mira", "Human", "Rogue", 3, 20, 24, 900, ["rope", "dagger"])
    assert (elara.race, elara.char_class, elara.xp, elara.inventory) == ("High Elf", "Wizard", None, [])


def test_format_round_trip():
    for text in (SEED, VALID):
        scenario = parse_scenario(text, "x.md")
        assert parse_scenario(format_scenario(scenario), "x.md") == scenario


def test_layout_tolerance_crlf_bom_case_spacing():
    messy = "\ufeff" + VALID.replace("# SYSTEM", "# System").replace("## DM", "## dm").replace(
        "\n\n", "\n\n\n").replace("\n", "   \r\n")
    assert parse_scenario(messy) == parse_scenario(VALID)


def test_wrapped_results_forms_are_equivalent():
    inline = VALID.replace("\n## TOOLCALL\nstealth: 12 + 5(skill) = *17*\n\n## DM\n",
                           "\n<TOOLCALL>\nstealth: 12 + 5(skill) = *17*\n</TOOLCALL>\n\n")
    wrapped = VALID.replace("stealth: 12 + 5(skill) = *17*", "<TOOLCALL>\nstealth: 12 + 5(skill) = *17*\n</TOOLCALL>")
    one_line = VALID.replace("stealth: 12 + 5(skill) = *17*", "<TOOLCALL>stealth: 12 + 5(skill) = *17*</TOOLCALL>")
    expected = parse_scenario(VALID).turns
    for text in (inline, wrapped, one_line):
        assert parse_scenario(text).turns == expected


# (code, replace this, with this, expected line)
ERROR_CASES = [
    ("unknown-heading", "## DM\nIt keeps", "## Narrator\nIt keeps", 21),
    ("missing-system", "# SYSTEM\nRole: Dungeon Master\nWorld: Forgotten Realms\nLocation: Goblin cave\nParty:\n"
     "- Mira (Human Rogue, Level 3, HP: 20/24, XP: 900, Inventory: rope, dagger)\n"
     "- Elara (High Elf Wizard, Level 3, HP: 16/16)\n\n", "", 1),
    ("missing-conversation", "# CONVERSATION\n", "", 1),
    ("missing-field", "World: Forgotten Realms\n", "", 1),
    ("missing-result", "## TOOLCALL\nstealth: 12 + 5(skill) = *17*\n\n", "", 16),
    ("orphan-result", "[roll: Mira, stealth]\n", "\n", 18),
    ("result-count", "stealth: 12 + 5(skill) = *17*\n", "stealth: 12 + 5(skill) = *17*\nMira: 17\n", 18),
    ("unknown-tool", "[roll: Mira, stealth]", "[sneak: Mira]", 16),
    ("bad-arguments", "[roll: Mira, stealth]", "[roll: Mira, 3d]", 16),
    ("hp-above-max", "HP: 16/16", "HP: 17/16", 7),
    ("bad-party-line", "- Elara (High Elf Wizard, Level 3, HP: 16/16)", "- Elara, a wizard", 7),
    ("bad-party-line", "Level 3, HP: 16/16", "Level 30, HP: 16/16", 7),
    ("empty-conversation", "## User\nMira sneaks toward the sleeping goblin.\n\n## DM\nThe goblin snores on a pile of "
     "furs.\n\n[roll: Mira, stealth]\n\n## TOOLCALL\nstealth: 12 + 5(skill) = *17*\n\n## DM\nIt keeps snoring. "
     "What now?\n", "", 9),
    ("truncated", "## DM\nIt keeps snoring. What now?\n", "## User\nI stab it.\n", 21),
    ("truncated", "\n## TOOLCALL\nstealth: 12 + 5(skill) = *17*\n\n## DM\nIt keeps snoring. What now?\n", "\n", 16),
    ("empty-turn", "## User\nMira sneaks toward the sleeping goblin.\n", "## User\n", 10),
    ("unclosed-result", "stealth: 12 + 5(skill) = *17*", "<TOOLCALL>\nstealth: 12 + 5(skill) = *17*", 19),
    ("bad-result", "stealth: 12 + 5(skill) = *17*", "a roll of seventeen", 19),
    ("section-order", "# CONVERSATION\n## User", "## User", 9),
    ("stray-text", "# SYSTEM\n", "Hello there\n# SYSTEM\n", 1),
    ("bad-system-line", "Party:\n", "Party:\nsome words\n", 6),
]


@pytest.mark.parametrize("code, old, new, line", ERROR_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_each_error_class_names_file_and_line(code, old, new, line):
    assert old in VALID
    text = VALID.replace(old, new, 1)
    scenario, diagnostics = check_scenario(text, "combat/cave.md")
    assert (code, line) in [(d.code, d.line) for d in diagnostics], [str(d) for d in diagnostics]
    hit = next(d for d in diagnostics if (d.code, d.line) == (code, line))
    assert hit.severity == "error"
    assert str(hit).startswith(f"combat/cave.md:{line}: error: ")
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "combat/cave.md")
    assert hit in info.value.diagnostics


def test_every_problem_is_reported_at_once():
    text = VALID.replace("HP: 16/16", "HP: 17/16").replace("[roll: Mira, stealth]", "[heal: Mira]")
    text = text.replace("## DM\nIt keeps", "## Narrator\nIt keeps")
    found = codes(text)
    assert {"hp-above-max", "unknown-tool", "unknown-heading"} <= {c for c, _ in found}


def test_diagnostic_rendering_matches_house_format():
    [diag] = [d for d in check_scenario(VALID.replace("[roll: Mira, stealth]", "[heal: Mira]"), "combat/goblins.md")[1]
              if d.code == "unknown-tool"]
    assert str(diag) == ("combat/goblins.md:16: error: unknown tool 'heal' "
                         "(expected one of: roll, health, inventory, spellcast, check)")


def test_warnings_do_not_fail_parsing():
    text = VALID.replace("[roll: Mira, stealth]", "[roll: Bob, stealth]").replace("stealth: 12", "perception: 12")
    scenario = parse_scenario(text, "combat/cave.md")
    assert sorted((d.code, d.line, d.severity) for d in scenario.warnings) == [
        ("label-mismatch", 19, "warning"), ("unknown-target", 16, "warning")]


def test_plausible_unknown_roll_is_a_warning_naming_the_line():
    text = VALID.replace("[roll: Mira, stealth]", "[roll: Mira, juggling]").replace("stealth: 12", "juggling: 12")
    scenario = parse_scenario(text, "combat/cave.md")
    [warning] = scenario.warnings
    assert (warning.code, warning.line, warning.severity) == ("unknown-value", 16, "warning")
    assert "'juggling'" in warning.found and "[lists]" in warning.expected


def test_new_roll_forms_pass_without_diagnostics():
    calls = ("[roll: Mira, thieves' tools, advantage]\n[roll: group stealth]\n[roll: Mira, athletics]\n"
             "[roll: ogre, athletics]\n[check: thieves' tools, 15]")
    results = ("thieves' tools (advantage): 6, 14 + 5(tools) = *19*\ngroup stealth: Mira 17, Elara 9\n"
               "athletics: 12 + 1 = *13*\nathletics: 15 + 6 = *21*\nthieves' tools: 14 + 5(tools) = *19* vs DC 15, success")
    text = VALID.replace("[roll: Mira, stealth]", calls).replace("stealth: 12 + 5(skill) = *17*", results)
    assert [d.code for d in check_scenario(text, "combat/cave.md")[1]] == ["unknown-target"]   # the ogre


def test_party_member_as_the_roll_is_an_error():
    # "[roll: Mira]" fits the loose roll phrase, but a member's name is a lost comma, not a roll
    assert ("bad-arguments", 16) in codes(VALID.replace("[roll: Mira, stealth]", "[roll: Mira]"))


def test_duplicates_across_files(tmp_path):
    (tmp_path / "combat").mkdir()
    (tmp_path / "social").mkdir()
    (tmp_path / "combat" / "a.md").write_text(VALID, encoding="utf-8")
    (tmp_path / "social" / "b.md").write_text(VALID.replace("\n", "\r\n").replace("\n\n", "\n\n\n"), encoding="utf-8")
    (tmp_path / "README.md").write_text("# Not a scenario\n", encoding="utf-8")
    check = load_folder(tmp_path)
    assert [(d.path, d.line, d.code) for d in check.errors] == [("social/b.md", 1, "duplicate")]
    assert "combat/a.md" in check.errors[0].found
    assert [s.category for s in check.scenarios] == ["combat", "social"]


def test_non_utf8_file_is_a_diagnostic(tmp_path):
    (tmp_path / "bad.md").write_bytes(b"# SYSTEM\n\xff\xfe\n")
    check = load_folder(tmp_path)
    assert [(d.path, d.code) for d in check.errors] == [("bad.md", "unreadable")]


def test_a_catastrophic_tools_regex_is_a_diagnostic_within_its_time_budget(tmp_path):
    (tmp_path / "tools.toml").write_text('[arg_types]\nrunes = \'(a+)+\'\n[tools.chant]\ndescription = "chant"\n'
                                         'args = [{ name = "runes", type = "runes" }]\nexample = "[chant: aa]"\n'
                                         'result = "chant: aa = *done*"\n')
    text = VALID.replace("[roll: Mira, stealth]", "[chant: " + "a" * 40 + "b]")
    started = time.monotonic()
    _, found = check_scenario(text, "combat/chant.md", load_vocabulary(tmp_path))
    assert [d.code for d in found] == ["vocabulary"] and "backtracks catastrophically" in found[0].found
    assert time.monotonic() - started < 10


def test_every_error_code_is_exercised():
    tested = {case[0] for case in ERROR_CASES} | {"duplicate", "unreadable", "internal", "vocabulary"}
    assert {c for c, s in DIAGNOSTIC_KINDS.items() if s == "error"} <= tested


# ---------------------------------------------------------------- property: never crash

HEADINGS = ["# SYSTEM", "# CONVERSATION", "## User", "## DM", "## TOOLCALL", "## dm", "### DM", "# Notes",
            "<TOOLCALL>", "</TOOLCALL>", "Party:", "- X (Elf Wizard, Level 1, HP: 5/4)", "[roll:", "[health: A, -1]"]


@st.composite
def mutated(draw):
    lines = draw(st.sampled_from([SEED, VALID])).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "duplicate", "insert_chars", "swap_heading", "replace_line"]))
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        if not lines:
            lines = [""]
        if op == "delete":
            del lines[at]
        elif op == "duplicate":
            lines.insert(at, lines[at])
        elif op == "insert_chars":
            pos = draw(st.integers(0, len(lines[at])))
            chars = draw(st.text(alphabet=st.sampled_from("[]:,#-()/<>\r\n\ufeff\x00 aZ9*+é"), max_size=4))
            lines[at] = lines[at][:pos] + chars + lines[at][pos:]
        elif op == "swap_heading":
            lines[at] = draw(st.sampled_from(HEADINGS))
        else:
            lines[at] = draw(st.text(max_size=30))
    return "\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_only_ever_give_diagnostics(text):
    scenario, diagnostics = check_scenario(text, "x/y.md")
    assert "internal" not in [d.code for d in diagnostics], [str(d) for d in diagnostics]
    assert all(d.path == "x/y.md" and d.line >= 1 and d.code in DIAGNOSTIC_KINDS for d in diagnostics)
    try:
        parse_scenario(text, "x/y.md")
    except ScenarioError as exc:
        assert exc.diagnostics


def test_lines_stay_exact_after_blank_line_runs():
    text = VALID.replace("furs.\n\n[roll: Mira, stealth]", "furs.\n\n\n\n\n[heal: Mira]")
    assert ("unknown-tool", 19) in codes(text)
    assert "furs.\n\n[heal: Mira]" in check_scenario(text)[0].turns[1].text
