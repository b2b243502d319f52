"""report.md from a hand-made Report (no model needed): every rate with its counts and 95 % interval,
the per-tool rows with the argument score, and the consequence calls."""

from __future__ import annotations

import dataclasses
import json

from dndllama.replay import Turn
from dndllama.report import REPORT_JSON, REPORT_MD, metric_rows, render_markdown, write_report
from dndllama.scoring import RATES, Context, tool_metrics
from dndllama.tools import default_vocabulary
from dndllama.validate import LossResult, ModelResult, Report

VOCAB = default_vocabulary()
DAMAGE = Context(("Gorran",), "Gorran guards.", "<TOOLCALL>\n2d8+5: 4 + 7 + 5 = *16*\n</TOOLCALL>")
TURNS = [("The claws hit. [health: Gorran, -16]", DAMAGE), ("Roll it. [check: stealth, 15]", None),
         ("The hall is quiet.", None), ("Roll. [spellcast: Gorran, bless, 1]", None)]
SCENARIOS = ["combat/a.md", "combat/a.md", "roleplay/b.md", "roleplay/b.md"]


def result(label: str, predictions: list[str]) -> ModelResult:
    turns = [(ref, pred, ctx) if ctx else (ref, pred) for (ref, ctx), pred in zip(TURNS, predictions)]
    return ModelResult(label=label, path=f"/m/{label}.gguf", name=label, arch="gemma3", n_params=270_000_000,
                       file_bytes=10**8, tools=tool_metrics(turns, VOCAB, groups=SCENARIOS),
                       loss=LossResult(3.0, 20.1, 0.4, 2, 100, 0),
                       turns=[], skipped_turns=0, seconds=1.0, seconds_per_turn=0.25, prompt_tokens_per_s=900.0,
                       gen_tokens_per_s=40.0, peak_rss_mb=500.0, peak_rss_scope="block", template="gguf")


def report() -> Report:
    model = result("model", ["Ouch. [health: Gorran, -16]", "[check: stealth, 12]", "Quiet.",
                             "[spellcast: Gorran, bless, 2]"])
    base = result("baseline", ["[health: Gorran, -7]", "Hm.", "[roll: perception]", "[spellcast bless]"])
    settings = {"decoding": "greedy", "seed": 0, "max_tokens": 64, "n_ctx": 2048, "loss_ctx": 768}
    return Report(model, base, settings, ["combat/a.md"], created="2026-11-29T00:00:00+00:00")


def test_every_rate_is_shown_with_its_counts_and_interval():
    rows = {row[0]: row for row in metric_rows(report(), intervals=True)}
    for _, label, _ in RATES:
        assert label in rows, label
    # model: 3 turns call something, all 3 call something valid; baseline: 2 of 3 (one invalid attempt)
    assert rows["must-call accuracy (a valid call where one is due)"][1:] == [
        "1.000 (3/3) [0.44, 1.00]", "0.333 (1/3) [0.06, 0.79]", "+0.667 [+0.50, +1.00]"]
    assert rows["consequence calls written exactly"][1].startswith("1.000 (1/1) [0.21, 1.00]")
    assert rows["consequence calls written exactly"][2].startswith("0.000 (0/1) [0.00, 0.79]")
    assert rows["calls per reference call (1 is right)"][1:3] == ["1.00", "1.00"]
    plain = {row[0]: row for row in metric_rows(report())}            # the console table: figures only
    assert plain["tool-name F1"][1] == "1.000"


def test_report_counts_calls_in_looping_replies_and_calls_repeated_after_their_result():
    looped = "Swing. " + "[roll: Gorran, axe attack]\n" * 5
    paid = Context(("Gorran",), "Gorran buys rope.", "<TOOLCALL>\nGorran: +rope\n</TOOLCALL>", "[inventory: Gorran, +rope]")
    tools = tool_metrics([("Swing. [roll: Gorran, axe attack]", looped), ("He coils it.", "[inventory: Gorran, +rope]", paid),
                          ("Quiet.", "Quiet.")], VOCAB)
    turns = [Turn("a.md", 2, "", looped, [], ["[roll: Gorran, axe attack]"] * 5, [], 10, 64, "length", 0, 0),
             Turn("a.md", 4, "", "", [], ["[inventory: Gorran, +rope]"], [], 10, 9, "eos", 0, 0),
             Turn("a.md", 6, "", "", [], [], ["[roll"], 10, 64, "length", 0, 0, looped=True)]
    model = dataclasses.replace(result("model", ["", "", "", ""]), tools=tools, turns=turns)
    rows = {row[0]: row for row in metric_rows(Report(model, None, {}, ["a.md"]))}
    assert rows["replies cut at max_tokens"][1] == "2 / 3"
    assert rows["attempts in those replies / all attempts"][1] == "6 / 6"
    assert rows["attempts repeating the call just resolved"][1] == "1"
    assert rows["replies ended before a call's or sentence's third copy (loops)"][1] == "1 / 3"


def test_report_md_has_the_per_tool_argument_score_and_the_consequence_table(tmp_path):
    written = write_report(report(), tmp_path)
    md = (tmp_path / REPORT_MD).read_text()
    assert "95 % Wilson interval" in md and "resamplings of whole scenarios" in md
    assert "| exact-call F1 (tool and arguments) | 0.333 (2/6) [" in md
    assert "| spellcast | 1 | 1 / 1 / 0 / 0 / 2 of 3 | 0 / 0 / 0 / 1 / 0 of 0 |" in md
    assert "## Consequence calls" in md and "| damage | 1 | 1 (1.00 [0.21, 1.00]) | 0 (0.00 [0.00, 0.79]) |" in md
    assert "## Wrong tool or none" not in md   # the model wrote every tool the reference called, no more
    assert "| spellcast.slot | 0 of 1 (0.00 [0.00, 0.79]) |" in md and "| spellcast.caster | 1 of 1 (1.00 [" in md
    data = json.loads((tmp_path / REPORT_JSON).read_text())
    assert data["model"]["tools"]["intervals"]["must_call_accuracy"][0] > 0.4
    assert set(written) >= {"json", "md"}


def test_report_md_says_which_tool_stood_in_for_another():
    wrong = Report(result("model", ["Ouch. [health: Gorran, -16]", "[roll: stealth]", "Quiet. [check: insight, 10]",
                                    "Roll."]), None, report().settings, ["combat/a.md"], created="2026-11-29")
    md = render_markdown(wrong)   # columns: the tools involved, in the vocabulary's order
    assert "| reference call | wrote roll | wrote spellcast | wrote check | wrote nothing |" in md
    assert "| check | 1 |  |  |  |" in md and "| spellcast |  |  |  | 1 |" in md and "| none due |  |  | 1 |  |" in md


def test_a_report_cached_before_the_new_rates_still_renders():
    old = report()
    for key in ("argument_accuracy", "consequence_exact", "must_call_accuracy", "calls_per_reference", "counts",
                "intervals", "consequence_calls", "groups"):
        delattr(old.baseline.tools, key)          # what unpickling an older ToolMetrics gives
    delattr(old.model.tools, "confusions")
    md = render_markdown(old)
    assert "| must-call accuracy (a valid call where one is due) | 1.000 (3/3) [0.44, 1.00] | - |" in md
