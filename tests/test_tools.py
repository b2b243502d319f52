import pytest

from dndllama.tools import (
    ToolCallError,
    VocabularyError,
    default_vocabulary,
    find_tool_calls,
    label_matches,
    load_vocabulary,
    parse_tool_call,
    render_tool_prompt,
)

VOCAB = default_vocabulary()


@pytest.mark.parametrize(
    "raw, name, named",
    [
        ("[roll: perception]", "roll", {"what": "perception"}),
        ("[roll: 2d6+3]", "roll", {"what": "2d6+3"}),
        ("[roll: Mira, stealth]", "roll", {"actor": "Mira", "what": "stealth"}),
        ("[roll: Thordak, longsword attack]", "roll", {"actor": "Thordak", "what": "longsword attack"}),
        ("[roll: dex save]", "roll", {"what": "dex save"}),
        ("[health: Elara, -7]", "health", {"target": "Elara", "amount": "-7"}),
        ("[health: Goblin 2, +3]", "health", {"target": "Goblin 2", "amount": "+3"}),
        ("[inventory: Mira, +rope]", "inventory", {"owner": "Mira", "item": "+rope"}),
        ("[inventory: Mira, -healing potion]", "inventory", {"owner": "Mira", "item": "-healing potion"}),
        ("[spellcast: Elara, fireball, 3]", "spellcast", {"caster": "Elara", "spell": "fireball", "slot": "3"}),
        ("[spellcast: Ivo, light, 0]", "spellcast", {"caster": "Ivo", "spell": "light", "slot": "0"}),
        ("[check: stealth, 15]", "check", {"skill": "stealth", "dc": "15"}),
        ("[check: Sleight of Hand, 40]", "check", {"skill": "Sleight of Hand", "dc": "40"}),
    ],
)
def test_default_tools_parse(raw, name, named):
    call = parse_tool_call(raw, VOCAB)
    assert (call.name, call.named, call.raw) == (name, named, raw)
    assert call.args == tuple(named.values())
    assert call.span == (0, len(raw))


@pytest.mark.parametrize(
    "raw, code, fragment",
    [
        ("[heal: Elara, 5]", "unknown-tool", "unknown tool 'heal'"),
        ("[health: Elara, 7]", "bad-arguments", "argument 2 '7' is not a valid signed_int"),
        ("[health: Elara]", "bad-arguments", "'health' takes 2 arguments, found 1"),
        ("[roll: 2d6+x]", "bad-arguments", "argument 1 '2d6+x' is not a valid roll_expr"),
        ("[roll: d2O]", "bad-arguments", "argument 1 'd2O' is not a valid roll_expr"),
        ("[roll: a, stealth, c]", "bad-arguments", "argument 3 'c' is not a valid roll_mode"),
        ("[roll: a, stealth, advantage, d]", "bad-arguments", "takes 1 to 3 arguments, found 4"),
        ("[roll: Mira, 2d]", "bad-arguments", "not a valid"),
        ("[check: juggling, 12]", "bad-arguments", "'juggling' is not a valid skill"),
        ("[check: stealth, 41]", "bad-arguments", "'41' is not a valid dc"),
        ("[check: stealth, 0]", "bad-arguments", "'0' is not a valid dc"),
        ("[spellcast: Elara, fireball, 10]", "bad-arguments", "'10' is not a valid slot"),
        ("[inventory: Mira, rope]", "bad-arguments", "'rope' is not a valid item_delta"),
    ],
)
def test_bad_calls_say_what_and_what_was_expected(raw, code, fragment):
    with pytest.raises(ToolCallError) as info:
        parse_tool_call(raw, VOCAB)
    assert info.value.code == code
    assert fragment in info.value.found
    assert info.value.expected


# The roll forms a real table makes (issue 15 item 2), each with the arguments it binds.
@pytest.mark.parametrize(
    "raw, named",
    [
        ("[roll: thieves' tools]", {"what": "thieves' tools"}),
        ("[roll: Vex, thieves' tools]", {"actor": "Vex", "what": "thieves' tools"}),
        ("[roll: Vex, thieves’ tools]", {"actor": "Vex", "what": "thieves’ tools"}),
        ("[roll: herbalism kit]", {"what": "herbalism kit"}),
        ("[roll: navigator's tools]", {"what": "navigator's tools"}),
        ("[roll: disguise kit]", {"what": "disguise kit"}),
        ("[roll: forgery kit]", {"what": "forgery kit"}),
        ("[roll: poisoner's kit]", {"what": "poisoner's kit"}),
        ("[roll: calligrapher's supplies]", {"what": "calligrapher's supplies"}),
        ("[roll: Tamsin, cook's utensils]", {"actor": "Tamsin", "what": "cook's utensils"}),
        ("[roll: glassblower's tools]", {"what": "glassblower's tools"}),
        ("[roll: lute]", {"what": "lute"}),
        ("[roll: pan flute]", {"what": "pan flute"}),
        ("[roll: bagpipes]", {"what": "bagpipes"}),
        ("[roll: three-dragon ante set]", {"what": "three-dragon ante set"}),
        ("[roll: playing card set]", {"what": "playing card set"}),
        ("[roll: vehicles (water)]", {"what": "vehicles (water)"}),
        ("[roll: Vehicles (Land)]", {"what": "Vehicles (Land)"}),
        ("[roll: stealth check]", {"what": "stealth check"}),
        ("[roll: thieves' tools check]", {"what": "thieves' tools check"}),
        ("[roll: group stealth]", {"what": "group stealth"}),
        ("[roll: group dex save]", {"what": "group dex save"}),
        ("[roll: Thordak, athletics]", {"actor": "Thordak", "what": "athletics"}),
        ("[roll: ogre, athletics]", {"actor": "ogre", "what": "athletics"}),
        ("[roll: stealth, advantage]", {"what": "stealth", "mode": "advantage"}),
        ("[roll: Mira, perception, disadvantage]", {"actor": "Mira", "what": "perception", "mode": "disadvantage"}),
        ("[roll: Mira, shortbow attack, advantage]", {"actor": "Mira", "what": "shortbow attack", "mode": "advantage"}),
        ("[check: thieves' tools, 15]", {"skill": "thieves' tools", "dc": "15"}),
        ("[check: herbalism kit, 12]", {"skill": "herbalism kit", "dc": "12"}),
    ],
)
def test_table_roll_forms_parse_strictly(raw, named):
    call = parse_tool_call(raw, VOCAB)
    assert call.named == named
    assert call.loose == ()


@pytest.mark.parametrize(
    "raw, named",
    [
        ("[roll: juggling]", {"what": "juggling"}),
        ("[roll: Vex, card counting]", {"actor": "Vex", "what": "card counting"}),
        ("[roll: juggling, advantage]", {"what": "juggling", "mode": "advantage"}),
    ],
)
def test_plausible_unknown_roll_parses_loosely(raw, named):
    call = parse_tool_call(raw, VOCAB)
    assert (call.named, call.loose) == (named, ("what",))


def test_strict_binding_wins_over_loose():
    # "Mira" also fits the loose roll phrase; the strict reading (actor, skill) must be chosen
    assert parse_tool_call("[roll: Mira, stealth]", VOCAB).named == {"actor": "Mira", "what": "stealth"}
    assert parse_tool_call("[roll: Mira, stealth]", VOCAB).loose == ()


def test_lists_expand_into_arg_types_and_can_be_extended(tmp_path):
    (tmp_path / "tools.toml").write_text('[lists]\ntools = ["lockpicks", "soldering iron"]\n', encoding="utf-8")
    vocab = load_vocabulary(tmp_path)
    assert parse_tool_call("[roll: soldering iron]", vocab).loose == ()
    assert parse_tool_call("[check: lockpicks, 14]", vocab).named == {"skill": "lockpicks", "dc": "14"}
    assert parse_tool_call("[roll: thieves' tools]", vocab).loose == ("what",)   # replaced list: loose only
    with pytest.raises(ToolCallError):
        parse_tool_call("[check: thieves' tools, 14]", vocab)


def test_unknown_tool_lists_the_vocabulary():
    with pytest.raises(ToolCallError) as info:
        parse_tool_call("[heal: Elara, 5]", VOCAB)
    assert str(info.value) == "unknown tool 'heal' (expected one of: roll, health, inventory, spellcast, check)"


def test_find_tool_calls_in_text_keeps_order_spans_and_errors():
    text = "You swing. [roll: Mira, longsword attack] Then [heal: Mira, 2] and [health: Ogre, -4]. See [map](x.png)"
    calls, errors = find_tool_calls(text, VOCAB)
    assert [c.name for c in calls] == ["roll", "health"]
    assert all(text[c.span[0]:c.span[1]] == c.raw for c in calls)
    assert [e.code for e in errors] == ["unknown-tool"]
    assert text[errors[0].span[0]:].startswith("[heal:")


def test_label_matching():
    roll = parse_tool_call("[roll: Mira, stealth]", VOCAB)
    assert label_matches("stealth", roll, VOCAB)
    assert label_matches("Mira", roll, VOCAB)
    assert not label_matches("perception", roll, VOCAB)
    item = parse_tool_call("[inventory: Mira, +rope]", VOCAB)
    assert label_matches("Mira", item, VOCAB) and not label_matches("Elara", item, VOCAB)


def test_prompt_lists_every_tool_with_example_and_feedback_form():
    prompt = render_tool_prompt(VOCAB)
    for tool in VOCAB.tools.values():
        assert tool.example in prompt and tool.result in prompt and tool.description in prompt
    assert "<TOOLCALL>\nlabel: result\n</TOOLCALL>" in prompt


def test_data_folder_adds_tools_and_arg_types_without_code(tmp_path):
    (tmp_path / "tools.toml").write_text(
        """
[arg_types]
condition = 'poisoned|stunned|prone|frightened'

[tools.condition]
description = "Apply or clear a condition."
args = [{ name = "target", type = "name" }, { name = "condition", type = "condition" }]
example = "[condition: Mira, prone]"
result = "Mira: *prone*"

[tools.check]
description = "Check with an optional DC."
args = [{ name = "skill", type = "skill" }, { name = "dc", type = "dc", optional = true }]
label = ["skill"]
example = "[check: stealth]"
result = "stealth: *17*"
""",
        encoding="utf-8",
    )
    vocab = load_vocabulary(tmp_path)
    assert list(vocab.tools) == ["roll", "health", "inventory", "spellcast", "check", "condition"]
    assert parse_tool_call("[condition: Mira, stunned]", vocab).named == {"target": "Mira", "condition": "stunned"}
    assert parse_tool_call("[check: stealth]", vocab).named == {"skill": "stealth"}
    with pytest.raises(ToolCallError):
        parse_tool_call("[condition: Mira, sleepy]", vocab)
    with pytest.raises(ToolCallError):  # the default vocabulary is untouched
        parse_tool_call("[condition: Mira, prone]", default_vocabulary())


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[tools.x]\ndescription='d'\nargs=[{name='a', type='nope'}]\nexample='[x: 1]'\nresult='r'", "unknown type 'nope'"),
        ("[arg_types]\nbroken = '(['", "not a valid regex"),
        ("[tools.x]\ndescription='d'\nargs=[{name='a', type='int'}]\nexample='[x: one]'\nresult='r'", "does not parse"),
        ("[tools.x]\nargs=[]", "needs description"),
        ("this is = = not toml", "not valid TOML"),
        ("[arg_types]\nkit = '{kits}'", "names {kits}, which is not a [lists] entry"),
        ("[lists]\nkits = 'not a list'\n[arg_types]\nkit = '{kits}'", "not a [lists] entry"),
        ("[tools.x]\ndescription='d'\nargs=[{name='a', type='int', loose='nope'}]\nexample='[x: 1]'\nresult='r'",
         "unknown type 'nope'"),
    ],
)
def test_bad_vocabulary_files_are_reported(tmp_path, text, fragment):
    (tmp_path / "tools.toml").write_text(text, encoding="utf-8")
    with pytest.raises(VocabularyError, match="tools.toml") as info:
        load_vocabulary(tmp_path)
    assert fragment in str(info.value)
