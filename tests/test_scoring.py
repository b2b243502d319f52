"""Scoring on hand-made (reference, prediction[, context]) DM turns: every metric, and what makes it fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dndllama.dataset import Message
from dndllama.scoring import (RATES, Context, consequence_kind, normalize_value, paired_difference, roll_totals,
                              tool_metrics, turn_calls, turn_context, wilson)
from dndllama.tools import default_vocabulary, parse_tool_call, render_tool_prompt

VOCAB = default_vocabulary()
ROOT = Path(__file__).resolve().parents[1]
INDEPENDENT = ROOT / "tests" / "data" / "independent"


def metrics(*turns):
    return tool_metrics(turns, VOCAB)


# ---- metrics on hand-made predictions ----------------------------------------------------------

def test_perfect_predictions_score_one_everywhere():
    m = metrics(("You scan the room. [roll: perception]", "You scan the room. [roll: perception]"),
                ("The wolf bites. [health: Brakka, -6]", "The wolf bites. [health: Brakka, -6]"),
                ("The night is quiet.", "Nothing stirs."))
    assert (m.turns, m.reference_calls, m.predicted_calls, m.valid_calls) == (3, 2, 2, 2)
    for score in ("format_validity", "name_precision", "name_recall", "name_f1", "exact_precision", "exact_recall",
                  "exact_f1", "turn_exact_match", "no_call_accuracy", "must_call_accuracy", "argument_accuracy"):
        assert getattr(m, score) == 1.0, score
    assert m.per_tool["roll"] == {"reference": 1, "predicted": 1, "name_match": 1, "exact": 1, "invalid": 0,
                                  "args_right": 1, "args_total": 1}
    assert m.per_tool["health"]["exact"] == 1 and m.per_tool["inventory"]["reference"] == 0
    assert m.invalid == {} and m.over_calling_turns == m.missed_call_turns == 0


def test_a_missing_call_costs_recall_not_precision():
    m = metrics(("Roll for it. [roll: stealth]", "Roll for it."), ("[roll: perception]", "[roll: perception]"))
    assert (m.name_precision, m.name_recall) == (1.0, 0.5)
    assert m.name_f1 == pytest.approx(2 / 3)
    assert m.missed_call_turns == 1 and m.turn_exact_match == 0.5
    assert m.no_call_accuracy is None        # no turn without a reference call


def test_a_call_on_a_no_call_turn_is_over_calling():
    m = metrics(("The innkeeper nods.", "The innkeeper nods. [roll: insight]"),
                ("The bar is empty.", "The bar is empty."))
    assert m.no_call_turns == 2 and m.over_calling_turns == 1 and m.no_call_accuracy == 0.5
    assert m.name_precision == 0.0 and m.name_recall is None and m.name_f1 == 0.0
    assert m.format_validity == 1.0          # a valid call, at the wrong time
    assert m.turn_exact_match == 0.5


def test_confusions_pair_each_missed_call_with_the_call_written_instead():
    m = metrics(("Roll it. [roll: stealth]", "Roll it. [check: stealth, 12]"),      # check for roll
                ("[roll: 1d8+3]", "[health: Brakka, -6]"),                        # health without the damage roll
                ("[roll: perception]\n[inventory: Mira, +rope]", "[roll: perception]"),   # one right, one missed
                ("The inn is quiet.", "The inn is quiet. [check: insight, 12]"),   # a call where none is due
                ("[spellcast: Mira, bless, 1]", "[spellcast: Mira, bless, 2]"))    # right tool: no confusion
    assert m.confusions == {"roll": {"check": 1, "health": 1}, "inventory": {"-": 1}, "-": {"check": 1}}


def test_malformed_and_unknown_tool_calls_are_invalid_and_never_match():
    m = metrics(("[roll: perception]", "Let me see. [roll perception]"), ("[roll: stealth]", "[fly: away]"),
                ("You rest.", "You rest. [Sighs]"))   # prose in brackets is not a call
    assert (m.predicted_calls, m.valid_calls, m.format_validity) == (2, 0, 0.0)
    assert m.invalid == {"malformed": 1, "unknown-tool": 1}
    assert m.name_precision == m.name_recall == m.name_f1 == 0.0
    assert m.per_tool["roll"]["invalid"] == 1 and "fly" not in m.per_tool
    assert m.no_call_accuracy == 1.0
    calls = turn_calls("[fly: away] then [roll perception] and [health: Mira, 7]", VOCAB)
    assert [(c.name, c.reason) for c in calls.invalid] == [
        ("fly", "unknown-tool"), ("roll", "malformed"), ("health", "bad-arguments")]   # text order


def test_a_wrong_argument_keeps_the_name_but_not_the_exact_match():
    m = metrics(("[health: Brakka, -6]", "[health: Brakka, -5]"), ("[roll: Sella, initiative]", "[roll: initiative]"))
    assert m.name_f1 == 1.0 and m.exact_f1 == 0.0 and m.turn_exact_match == 0.0
    assert m.per_tool["health"] == {"reference": 1, "predicted": 1, "name_match": 1, "exact": 0, "invalid": 0,
                                    "args_right": 1, "args_total": 2}


def test_multiple_calls_match_as_multisets():
    reference = "Both of you. [roll: Brakka, initiative] [roll: Sella, initiative] [health: Sella, -2]"
    m = metrics((reference, "[roll: Sella, initiative] [roll: Brakka, initiative]"),       # order is free
                (reference, "[roll: Sella, initiative] [roll: Sella, initiative] [roll: Sella, initiative]"))
    assert m.reference_calls == 6 and m.predicted_calls == 5
    # turn 1: both rolls by name and exactly; turn 2: two of three rolls by name, one exactly
    assert m.name_precision == pytest.approx(4 / 5) and m.name_recall == pytest.approx(4 / 6)
    assert m.exact_precision == pytest.approx(3 / 5) and m.exact_recall == pytest.approx(3 / 6)
    assert m.per_tool["roll"] == {"reference": 4, "predicted": 5, "name_match": 4, "exact": 3, "invalid": 0,
                                  "args_right": 7, "args_total": 8}    # Brakka's roll paired with Sella's: 1 of 2
    assert m.per_tool["health"]["reference"] == 2 and m.turn_exact_match == 0.0


def test_case_and_whitespace_do_not_break_an_exact_match():
    m = metrics(("[roll: 1d6 + 4] [inventory: Mira, +rope]", "[ROLL:   1D6+4 ] [Inventory: mira,  + Rope]"),
                ("[check: Sleight of Hand, 15]", "[check:SLEIGHT of hand,15 ]"),
                ("[health: Old\u2019Tom, -3]", "[health: Old'Tom, -3]"))
    assert m.exact_f1 == 1.0 and m.turn_exact_match == 1.0
    assert normalize_value("  Sleight   OF hand ") == "sleight of hand" and normalize_value("2d6 - 1") == "2d6-1"
    # but what the vocabulary rejects stays invalid: the app's parser would reject it too
    assert metrics(("[check: sleight of hand, 15]", "[check: sleight  of hand, 15]")).invalid == {"bad-arguments": 1}


def test_no_turns_give_undefined_scores_not_nan():
    m = metrics()
    assert m.turns == 0 and m.name_f1 is None and m.format_validity is None
    assert json.loads(json.dumps(m.to_dict())) == m.to_dict()




# ---- must-call, calls per reference, arguments ------------------------------------------------

def test_must_call_accuracy_counts_turns_that_call_something_valid_where_a_call_is_due():
    m = metrics(("Roll. [roll: stealth]", "Roll. [roll: perception]"),      # a call: right for must-call
                ("Roll. [roll: stealth]", "Roll. [roll stealth]"),          # only an invalid attempt: wrong
                ("Roll. [roll: stealth]", "You sneak."),                    # nothing: wrong
                ("You rest.", "You rest."))                                 # no call due: not counted
    assert m.must_call_turns == 3 and m.must_call_accuracy == pytest.approx(1 / 3)
    assert m.counts["must_call_accuracy"] == [1, 3] and m.missed_call_turns == 1


def test_calls_per_reference_call_shows_over_calling():
    m = metrics(("[roll: stealth]", "[roll: stealth] [roll: stealth] [check: stealth, 12]"), ("Quiet.", "[roll: d20]"))
    assert m.calls_per_reference == 4.0
    assert metrics(("[roll: stealth] [roll: perception]", "[roll: stealth]")).calls_per_reference == 0.5
    assert metrics(("Quiet.", "Quiet.")).calls_per_reference is None


def test_argument_score_counts_the_right_arguments_of_calls_with_the_right_tool():
    m = metrics(("[spellcast: Elara, fireball, 3]", "[spellcast: Elara, fireball, 2]"),      # 2 of 3
                ("[check: stealth, 15]", "[roll: stealth]"),                                 # wrong tool: not counted
                ("[health: Brakka, -6] [health: Sella, -3]", "[health: Sella, -3]"))          # 2 of 2, one unpaired
    assert m.counts["argument_accuracy"] == [4, 5] and m.argument_accuracy == pytest.approx(0.8)
    assert (m.per_tool["spellcast"]["args_right"], m.per_tool["spellcast"]["args_total"]) == (2, 3)
    assert m.per_tool["check"]["args_total"] == 0 and m.exact_f1 == pytest.approx(2 / 7)


def test_per_argument_counts_say_which_argument_of_a_paired_call_was_wrong():
    m = metrics(("[health: hill giant, -13]", "[health: Giant, -13]"),            # the amount copied, not the target
                ("[health: Sella, -4] [health: Brakka, -9]", "[health: Brakka, -9] [health: Sella, -5]"),
                ("[spellcast: Elara, fireball, 3]", "[roll: 8d6]"))                  # no spellcast: nothing paired
    assert m.per_argument == {"health.target": [2, 3], "health.amount": [2, 3]}
    assert sum(r for r, _ in m.per_argument.values()) == m.counts["argument_accuracy"][0]


# ---- normalisation and optional arguments -----------------------------------------------------

def test_every_apostrophe_variant_folds_to_one():
    for variant in ("\u2019", "\u2018", "\u02bc", "\u2032", "`"):
        assert normalize_value(f"Old{variant}Tom") == "old'tom", variant
    m = metrics(("[inventory: Mira, +thieves\u2019 tools]", "[inventory: mira, +Thieves' Tools]"))
    assert m.exact_f1 == 1.0


SOLO, PAIR = Context(party=("Sella",)), Context(party=("Sella", "Brakka"))


def test_an_optional_actor_may_be_left_out_only_when_the_party_leaves_no_doubt():
    both = [("[roll: Sella, perception]", "[roll: perception]"), ("[roll: perception]", "[roll: sella, perception]")]
    assert tool_metrics([(r, p, SOLO) for r, p in both], VOCAB).exact_f1 == 1.0
    assert tool_metrics([(r, p, PAIR) for r, p in both], VOCAB).exact_f1 == 0.0       # which of the two?
    assert tool_metrics([(r, p) for r, p in both], VOCAB).exact_f1 == 0.0             # no context: no guess
    # the solo member is the only value left out silently: another name is another call
    assert tool_metrics([("[roll: Brakka, perception]", "[roll: perception]", SOLO)], VOCAB).exact_f1 == 0.0


# ---- consequence calls ------------------------------------------------------------------------

DAMAGE = Context(("Gorran", "Rowan"), "Gorran stands guard.", "<TOOLCALL>\n2d8+5: 4 + 7 + 5 = *16*\n</TOOLCALL>")


def call(text: str):
    return parse_tool_call(text, VOCAB)


def test_health_after_a_rolled_total_is_a_consequence_call():
    assert consequence_kind(call("[health: Gorran, -16]"), DAMAGE) == "damage"
    assert consequence_kind(call("[health: Rowan, +16]"), DAMAGE) == "healing"
    assert consequence_kind(call("[health: Gorran, -15]"), DAMAGE) is None           # not the rolled total
    assert consequence_kind(call("[health: Gorran, -16]"), Context(("Gorran",), "", "")) is None   # nothing rolled
    checked = Context((), "", "<TOOLCALL>\nathletics: 16 + 9(skill) = *25* vs DC 18, success\n</TOOLCALL>")
    assert consequence_kind(call("[health: Hask, -25]"), checked) is None           # a check is not damage
    assert roll_totals("Gorran: 30 - 16 = *14/30*\nclaws attack: 15 + 7 = *22*") == {22}


def test_inventory_of_an_item_already_named_is_a_consequence_call():
    bought = Context(("Yusra",), "Party:\n- Yusra (Human Bard, ...)\nI buy the saffron and a healing potion.", "")
    assert consequence_kind(call("[inventory: Yusra, +saffron]"), bought) == "item"
    assert consequence_kind(call("[inventory: Yusra, +a healing potion]"), bought) == "item"   # article dropped
    assert consequence_kind(call("[inventory: Yusra, +golden apple]"), bought) is None        # invented by the DM
    assert consequence_kind(call("[inventory: Mira, +saffron]"), bought) is None             # owner never named
    assert consequence_kind(call("[inventory: Yusra, +saffron]"), None) is None


def test_consequence_exact_scores_those_calls_on_their_own():
    m = tool_metrics([("The claws tear in. [health: Gorran, -16]", "It hurts. [health: Gorran, -16]", DAMAGE),
                      ("[health: Gorran, -16] [roll: perception]", "[health: Gorran, -61] [roll: perception]", DAMAGE),
                      ("[health: Gorran, -7]", "[health: Gorran, -7]", DAMAGE)], VOCAB)       # -7: not a consequence
    assert m.consequence_calls == {"damage": {"reference": 2, "exact": 1}}
    assert m.counts["consequence_exact"] == [1, 2] and m.consequence_exact == 0.5
    assert m.exact_recall == pytest.approx(3 / 4)


def test_turn_context_reads_the_party_and_the_results_and_leaves_out_the_tool_prompt():
    system = "Role: DM\nParty:\n- Mira (Elf Rogue, Level 2, HP: 9/9)\n- Old Tom (Human Fighter, Level 2, HP: 12/12)"
    messages = [Message("system", f"{system}\n\n{render_tool_prompt(VOCAB)}"), Message("user", "I look around."),
                Message("assistant", "Roll. [roll: 1d6]"), Message("user", "<TOOLCALL>\n1d6: *4*\n</TOOLCALL>"),
                Message("assistant", "[health: Mira, -4]")]
    context = turn_context(messages, 4, render_tool_prompt(VOCAB))
    assert context.party == ("Mira", "Old Tom") and "*4*" in context.results and "I look around." in context.before
    assert "rope" not in context.before                   # the tool prompt's example is not the conversation
    assert turn_context(messages, 2, render_tool_prompt(VOCAB)).results == ""   # answers the player
    assert context.resolved == "Roll. [roll: 1d6]" and turn_context(messages, 2, render_tool_prompt(VOCAB)).resolved == ""
    assert consequence_kind(call("[inventory: Mira, +rope]"), context) is None


def test_turns_after_a_tool_result_count_their_own_no_call_accuracy_and_repeated_calls():
    paid = Context(("Mira",), "I buy the rope.", "<TOOLCALL>\nMira: +rope\n</TOOLCALL>", "Done. [inventory: Mira, +rope]")
    m = tool_metrics([("She coils it over her shoulder.", "Done. [inventory: mira, +Rope]", paid),   # the same call again
                      ("The road is quiet.", "The road is quiet.", paid),
                      ("The inn is warm.", "[roll: perception]", Context(("Mira",), "I walk in.")),      # answers the player
                      ("[roll: 1d6]", "[roll: 1d6] [inventory: Mira, +rope]", paid)], VOCAB)
    assert m.counts["no_call_after_result"] == [1, 2] and m.no_call_after_result == 0.5
    assert m.no_call_accuracy == pytest.approx(1 / 3)
    assert m.repeated_calls == 2                  # a must-call turn can repeat the resolved call too
    fresh = Context(("Mira",), "", "<TOOLCALL>\nMira: +rope\n</TOOLCALL>", "Done. [inventory: Mira, +rope]")
    assert tool_metrics([("[inventory: Mira, -rope]", "[inventory: Mira, -rope]", fresh)], VOCAB).repeated_calls == 0
    assert metrics(("Quiet.", "Quiet.")).no_call_after_result is None   # no turn follows a result


# ---- intervals --------------------------------------------------------------------------------

def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    assert wilson(0, 10)[0] == 0.0 and round(wilson(0, 10)[1], 4) == 0.2775
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(0, 0) is None
    assert wilson(50, 100)[1] - wilson(50, 100)[0] < high - low       # more turns, a narrower interval


def test_every_rate_has_its_counts_and_an_interval():
    m = metrics(("[roll: stealth]", "[roll: stealth]"), ("[check: stealth, 15]", "[check: stealth, 12]"), ("Hi.", "Hi."))
    assert {key for key, _, _ in RATES} == set(m.counts) == set(m.intervals)
    for key, _, _ in RATES:
        k, n = m.counts[key]
        assert getattr(m, key) == (k / n if n else None), key
        if n:
            low, high = m.intervals[key]
            assert low <= k / n <= high, key
    assert m.intervals["consequence_exact"] is None        # no consequence call: undefined, not [0, 1]
    assert m.counts["name_f1"] == [4, 4] and m.counts["exact_f1"] == [2, 4]
    assert json.loads(json.dumps(m.to_dict()))["counts"]["exact_f1"] == [2, 4]


def test_each_scenarios_counts_add_up_to_the_totals():
    turns = [("[roll: stealth]", "[roll: stealth]"), ("Hi.", "[roll: perception]"), ("[check: arcana, 12]", "Hm.")]
    m = tool_metrics(turns, VOCAB, groups=["a.md", "b.md", "a.md"])
    assert list(m.groups) == ["a.md", "b.md"]
    for key, _, _ in RATES:
        assert [sum(g[key][i] for g in m.groups.values()) for i in (0, 1)] == m.counts[key], key
    assert m.groups["b.md"]["no_call_accuracy"] == [0, 1] and metrics(*turns).groups == {}


def scenario_counts(right_per_scenario: list[int], turns: int = 4) -> dict:
    """Per-scenario counts of no-call accuracy: `right` of `turns` no-call turns in each scenario."""
    return {f"s{i}.md": {"no_call_accuracy": [right, turns]} for i, right in enumerate(right_per_scenario)}


def test_a_paired_difference_is_zero_for_the_same_model_and_clear_for_a_much_better_one():
    same = scenario_counts([1, 3, 2, 4, 0, 2])
    assert paired_difference(same, same, "no_call_accuracy") == (0.0, 0.0, 0.0)
    diff, low, high = paired_difference(scenario_counts([4] * 10), scenario_counts([1] * 10), "no_call_accuracy")
    assert diff == 0.75 and low == high == 0.75       # every scenario moves alike: nothing to resample
    diff, low, high = paired_difference(scenario_counts([4, 3, 4, 2, 4, 3]), scenario_counts([1, 2, 0, 2, 1, 1]),
                                        "no_call_accuracy")
    assert 0 < low < diff < high and diff == pytest.approx(13 / 24)


def test_a_paired_difference_is_wide_when_the_scenarios_disagree_and_refuses_other_turns():
    diff, low, high = paired_difference(scenario_counts([4, 0, 4, 0]), scenario_counts([0, 4, 0, 4]),
                                        "no_call_accuracy")
    assert diff == 0.0 and low < -0.4 and high > 0.4      # a draw of two scenarios says nothing
    assert paired_difference(scenario_counts([1, 2]), scenario_counts([1, 2, 3]), "no_call_accuracy") is None
    assert paired_difference(scenario_counts([1, 2]), scenario_counts([1, 2]), "exact_f1") is None
    assert paired_difference({}, {}, "no_call_accuracy") is None
    assert paired_difference(scenario_counts([0, 0], turns=0), scenario_counts([0, 0], turns=0),
                             "no_call_accuracy") is None


def independent_turns(predict) -> tuple[list, list]:
    """The scenarios of tests/data/independent and their DM turns replayed as `predict(reference)`."""
    from pathlib import Path

    from dndllama.dataset import build_dataset
    from dndllama.scenarios import load_folder
    from dndllama.tools import load_vocabulary
    from dndllama.validate import Turn, dm_turns

    conversations = build_dataset(load_folder(INDEPENDENT, load_vocabulary(INDEPENDENT)), 1.0).validation
    turns = [Turn(c.scenario, i, c.messages[i].content, predict(c.messages[i].content), [], [], [], 0, 0, "eos", 0, 0)
             for c, i in dm_turns(conversations)]
    return conversations, turns


def test_replayed_turns_are_scored_with_the_conversation_before_them():
    """validate.score_turns: each replayed turn gets its context, so consequence calls are found."""
    from dndllama.tools import load_vocabulary
    from dndllama.validate import score_turns

    vocab = load_vocabulary(INDEPENDENT)
    conversations, perfect_turns = independent_turns(lambda ref: ref)
    perfect = score_turns(perfect_turns, conversations, vocab)
    assert perfect.consequence_calls == {"item": {"reference": 3, "exact": 3}} and perfect.consequence_exact == 1.0
    silent = score_turns(independent_turns(lambda ref: "The DM nods.")[1], conversations, vocab)
    assert silent.consequence_exact == 0.0 and silent.must_call_accuracy == 0.0 and silent.no_call_accuracy == 1.0
    assert set(silent.groups) == {c.scenario for c in conversations}       # counts per scenario, for comparisons


def test_compare_reports_tells_a_better_model_from_a_worse_one_on_the_same_turns(tmp_path):
    """scripts/compare_reports.py over two report.json files of the same evaluation folder."""
    import dataclasses
    import subprocess
    import sys

    script = [sys.executable, str(ROOT / "scripts" / "compare_reports.py")]
    for name, predict in (("good", lambda ref: ref), ("silent", lambda ref: "The DM nods.")):
        _, turns = independent_turns(predict)
        (tmp_path / f"{name}.json").write_text(json.dumps({"model": {"turns": [dataclasses.asdict(t) for t in turns]}}))
    run = subprocess.run(script + [str(tmp_path / "good.json"), str(tmp_path / "silent.json"),
                                   "--eval-data", str(INDEPENDENT), "--data", str(INDEPENDENT)],
                         capture_output=True, text=True, check=True)
    last = dict(field.split("=") for field in run.stdout.strip().splitlines()[-1].split())
    assert int(last["compared_turns"]) == len(turns) and "A better" in run.stdout
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines() if line.startswith("inventory.")}
    (right, of), silent = rows["inventory.item"][0].split("/"), rows["inventory.item"][1]
    assert right == of != "0" and silent == "0/0"      # every item right; the silent model paired no call
    assert float(last["name_f1_diff"]) == 1.0 and last["name_f1_ci"] == "+1.000,+1.000"
    # the reference decides every turn right (J = 1); never calling decides nothing (J = 0)
    [informed] = [line for line in run.stdout.splitlines() if line.startswith("call decision informedness")]
    assert informed.split(")")[1].split()[:3] == ["1.000", "0.000", "+1.000"]
    refused = subprocess.run(script + [str(tmp_path / "good.json"), str(tmp_path / "missing.json")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "not a readable report.json" in refused.stderr
