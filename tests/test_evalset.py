"""The evaluation set: kept out of training, loaded by the pipeline, and its own files right.

The leak tests build real token windows with a tiny GGUF's tokenizer; the content tests read the
repository's ai-eval/, ai-training/ and ai-training-extra/ as shipped.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dndllama import _native as native
from dndllama import pipeline
from dndllama.config import load_config
from dndllama.dataset import dataset_windows
from dndllama.evalset import EvalSetError, ensure_separate, find_eval_dir, load_eval_set, set_stats
from dndllama.scenarios import load_folder, parse_scenario
from dndllama.tools import load_vocabulary
from tiny_models import make_tiny_model

REPO = Path(__file__).parent.parent
INDEPENDENT = Path(__file__).parent / "data" / "independent"
EVAL = REPO / "ai-eval"
TRAINING = REPO / "ai-training"
EXTRA = REPO / "ai-training-extra"      # hand-written, not yet in the default training
MARKER = "The quartz heron sings only at midnight"

HELD_OUT = f"""\
# SYSTEM
Role: Dungeon Master
World: Test world
Location: A quiet mere
Party:
- Ottoline (Human Ranger, Level 2, HP: 18/18)

# CONVERSATION
## User
What is that bird on the mere?

## DM
{MARKER}, the ferryman says, and it has never been seen by day.

## User
I aim my bow at it.

## DM
[roll: Ottoline, longbow attack]

## TOOLCALL
longbow attack: 14 + 5 = *19*

## DM
The arrow passes straight through it: the heron is a reflection.
"""


@pytest.fixture
def project(tmp_path):
    data, held_out = tmp_path / "data", tmp_path / "held-out"
    shutil.copytree(INDEPENDENT, data)
    (held_out / "exploration").mkdir(parents=True)
    (held_out / "exploration" / "quartz_heron.md").write_text(HELD_OUT, encoding="utf-8")
    return data, held_out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    model = make_tiny_model(tmp_path_factory.mktemp("tok") / "tiny.gguf", n_ctx=4096)
    return native.Model(str(model), vocab_only=True)


# ---------------------------------------------------------------- nothing leaks into training


def test_nothing_from_the_evaluation_folder_reaches_the_training_windows(project, tokenizer):
    data_dir, held_out = project
    data = pipeline.load_data(load_config(data_dir, {"eval_data": str(held_out)}))
    windows = dataset_windows(data.train + data.validation, tokenizer, 2048)
    text = "".join(tokenizer.detokenize(w.tokens) for w in windows)
    assert windows and "Ottoline" not in text and MARKER not in text
    # ... while the evaluation set is what gets judged (so the assertion above can fail)
    judged = pipeline.judged_conversations(data)
    assert [c.scenario for c in judged] == ["exploration/quartz_heron.md"]
    assert MARKER in judged[0].messages[2].content


def test_the_in_corpus_split_is_the_fallback_with_a_notice(project):
    data_dir, held_out = project
    data = pipeline.load_data(load_config(data_dir, {"eval_data": str(held_out / "missing")}))
    assert data.evaluation is None and "not found" in data.eval_note and "in-corpus" in data.eval_note
    assert pipeline.judged_conversations(data) == data.validation
    off = pipeline.load_data(load_config(data_dir, {"eval_data": ""}))
    assert off.evaluation is None and off.eval_note == ""


def test_an_evaluation_folder_inside_the_data_or_around_it_is_an_error(project, tmp_path):
    data_dir, held_out = project
    inside = data_dir / "eval"
    shutil.copytree(held_out, inside)
    with pytest.raises(pipeline.DataError, match="inside the training data"):
        pipeline.load_data(load_config(data_dir, {"eval_data": str(inside)}))
    with pytest.raises(EvalSetError, match="is inside eval_data"):
        ensure_separate(tmp_path, data_dir)
    with pytest.raises(EvalSetError, match="inside the training data"):
        find_eval_dir(str(data_dir), data_dir)


def test_an_evaluation_file_copied_from_training_is_an_error(project):
    data_dir, held_out = project
    shutil.copy(data_dir / "combat" / "wolves_at_the_ford.md", held_out / "exploration" / "copy.md")
    with pytest.raises(pipeline.DataError, match="same content as a training scenario"):
        pipeline.load_data(load_config(data_dir, {"eval_data": str(held_out)}))


def test_evaluation_errors_name_the_file_and_line(project):
    data_dir, held_out = project
    (held_out / "exploration" / "quartz_heron.md").write_text(HELD_OUT.replace("[roll: Ottoline,", "[rol: Ottoline,"))
    with pytest.raises(pipeline.DataError, match=r"quartz_heron.md:19: error: unknown tool 'rol'"):
        pipeline.load_data(load_config(data_dir, {"eval_data": str(held_out)}))


def test_the_evaluation_content_is_part_of_its_key(project):
    data_dir, held_out = project
    vocab = load_vocabulary(data_dir)
    before = load_eval_set(held_out, vocab).key
    path = held_out / "exploration" / "quartz_heron.md"
    path.write_text(path.read_text().replace("by day", "by daylight"))
    assert load_eval_set(held_out, vocab).key != before


# ---------------------------------------------------------------- the shipped ai-eval/


@pytest.fixture(scope="module")
def shipped():
    return load_folder(EVAL, load_vocabulary(TRAINING))


@pytest.fixture(scope="module")
def training_sets():
    vocab = load_vocabulary(TRAINING)
    return {root: load_folder(root, vocab) for root in (TRAINING, EXTRA)}


def test_shipped_evaluation_set_passes_data_check_and_meets_the_targets(shipped):
    evaluation = shipped
    assert evaluation.errors == []
    stats = set_stats(evaluation)
    assert stats["scenarios"] >= 13 and stats["dm_turns"] >= 110
    assert set(stats["categories"]) >= {"combat", "exploration"}
    assert set(stats["party_sizes"]) >= {1, 2, 3, 4, 5}
    assert stats["calls"]["health"] >= 20 and stats["calls"]["roll"] >= 20


@pytest.fixture(params=[TRAINING, EXTRA], ids=lambda p: p.name)
def training_folder(request, training_sets):
    return request.param, training_sets[request.param]


def test_shipped_evaluation_set_is_written_fresh(shipped, training_folder):
    """No file and no DM paragraph of 10+ words is shared with training data (copies and edited copies)."""
    evaluation, (root, training) = shipped, training_folder
    assert not {s.digest for s in evaluation.scenarios} & {s.digest for s in training.scenarios}
    training_text = _folded(" ".join(p.read_text(encoding="utf-8") for p in root.rglob("*.md")))
    shared = [(s.path, para[:60]) for s in evaluation.scenarios for t in s.turns if t.kind == "dm"
              for para in t.text.split("\n\n") if len(para.split()) >= 10 and _folded(para) in training_text]
    assert shared == []


def test_shipped_evaluation_parties_are_new_names(shipped, training_folder):
    evaluation, (_, training) = shipped, training_folder
    taken = {m.name.split()[0].lower() for s in training.scenarios for m in s.system.party}
    reused = sorted({(s.path, m.name) for s in evaluation.scenarios for m in s.system.party
                     if m.name.split()[0].lower() in taken})
    assert reused == []


def _folded(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- the shipped set's mechanics

TERMS = re.compile(r"([+-]?)\s*(\d+)(?:\([a-z]+\))?")
SUM_RESULT = re.compile(r"^(?:(?:(?P<other>\d+),\s*)?(?P<terms>\d+(?:\([a-z]+\))?(?:\s*[+-]\s*\d+(?:\([a-z]+\))?)*)"
                        r"\s*=\s*)?\*(?P<total>-?\d+)\*(?:\s*vs DC (?P<dc>\d+), (?P<outcome>success|failure))?$")
HEALTH_RESULT = re.compile(r"^(?P<before>\d+) (?P<sign>[+-]) (?P<amount>\d+) = \*(?P<after>\d+)/(?P<max>\d+)\*$")
DICE = re.compile(r"^(?P<count>\d*)d(?P<sides>\d+)(?P<mods>(?:\s*[+-]\s*\d+)*)$")
SLOT_LABEL = re.compile(r"\((?:(?P<level>\d)(?:st|nd|rd|th)-level slot|(?P<cantrip>cantrip))[,)]")


def mechanics_problems(scenario) -> list[str]:
    """5e bookkeeping a reader can check: sums add up, dice stay on their faces, advantage keeps the
    right die, DCs decide success, HP moves by exactly the call's amount from the last known HP, a
    damage call's amount is a damage roll just made (or half of it), spell slots match the call."""
    problems, hp = [], {m.name.lower(): m.hp for m in scenario.system.party}
    previous_rolls: list[int] = []
    for index, turn in enumerate(scenario.turns):
        if turn.kind != "tool":
            continue
        calls = scenario.turns[index - 1].tool_calls
        for call, result in zip(calls, turn.results):
            where = f"{scenario.path}:{result.line}"
            problems += [f"{where}: {p}" for p in _check_result(call, result, hp, previous_rolls)]
        previous_rolls = [int(m.group("total")) for call, result in zip(calls, turn.results)
                          if call.name == "roll" and DICE.match(call.named["what"])
                          and (m := SUM_RESULT.match(result.text))]
    return problems


def _check_result(call, result, hp: dict, rolls: list[int]) -> list[str]:
    if call.name == "health":
        return _check_health(call, result, hp, rolls)
    if call.name == "spellcast":
        slot = SLOT_LABEL.search(result.text)
        level = slot and ("0" if slot.group("cantrip") else slot.group("level"))
        return [] if level == call.named["slot"] else [f"{result.text!r} does not match slot {call.named['slot']}"]
    if call.name not in ("roll", "check") or call.named.get("what", "").startswith("group"):
        return []
    match = SUM_RESULT.match(result.text)
    if not match:
        return [f"unreadable roll result {result.text!r}"]
    return _check_sum(call, match)


def _check_sum(call, match) -> list[str]:
    terms = [(sign, int(value)) for sign, value in TERMS.findall(match.group("terms") or match.group("total"))]
    total = sum(-v if s == "-" else v for s, v in terms)
    problems = [] if total == int(match.group("total")) else [f"{match.group(0)!r} does not add up"]
    mode, dice = call.named.get("mode", "").lower(), DICE.match(call.named.get("what", ""))
    if match.group("other"):
        kept, other = terms[0][1], int(match.group("other"))
        if mode not in ("advantage", "disadvantage") or kept != (max if mode == "advantage" else min)(kept, other):
            problems.append(f"{match.group(0)!r} keeps the wrong d20 for {mode or 'a normal roll'}")
    if dice:
        faces = [v for _, v in terms][: int(dice.group("count") or 1)]
        if any(not 1 <= v <= int(dice.group("sides")) for v in faces):
            problems.append(f"{match.group(0)!r} has a die off the faces of {dice.group(0)}")
    succeeded = match.group("dc") and int(match.group("total")) >= int(match.group("dc"))
    if match.group("dc") and bool(succeeded) != (match.group("outcome") == "success"):
        problems.append(f"{match.group(0)!r} states the wrong outcome")
    return problems


def _check_health(call, result, hp: dict, rolls: list[int]) -> list[str]:
    match = HEALTH_RESULT.match(result.text)
    if not match:
        return [f"unreadable health result {result.text!r}"]
    amount, target = int(call.named["amount"]), call.named["target"].lower()
    before, after, top = int(match.group("before")), int(match.group("after")), int(match.group("max"))
    expected = max(0, before + amount) if amount < 0 else min(top, before + amount)
    problems = []
    if int(f"{match.group('sign')}{match.group('amount')}") != amount or after != expected:
        problems.append(f"{result.text!r} is not {before} {amount:+d}")
    if hp.get(target, before) != before:
        problems.append(f"{result.text!r} starts from {before}, but {target} was at {hp[target]}")
    hp[target] = after
    sources = set(rolls) | {r // 2 for r in rolls} | ({sum(rolls)} if rolls else set())
    if (amount < 0 or rolls) and abs(amount) not in sources:
        problems.append(f"{call.raw} does not follow from the rolls just made {rolls}")
    return problems


def test_shipped_evaluation_mechanics_add_up(shipped):
    evaluation = shipped
    problems = [p for s in evaluation.scenarios for p in mechanics_problems(s)]
    assert problems == []


def test_second_writer_replies_are_for_the_shipped_evaluation_set():
    """docs/data/second-writer-ai-eval.jsonl (docs/evaluation.md, "What a second writer scores") was
    written for ai-eval/ as it is: every reply names one of its DM turns, once, and all but the one
    left out have a reply. An edit of ai-eval/ that moves its turns makes this fail: write them again."""
    conversations = {c.scenario: c for c in load_eval_set(EVAL, load_vocabulary(TRAINING)).conversations}
    lines = (REPO / "docs" / "data" / "second-writer-ai-eval.jsonl").read_text().splitlines()
    replies = [json.loads(line) for line in lines]
    keys = [(r["scenario"], r["message"]) for r in replies]
    turns = {(name, i) for name, c in conversations.items() for i, m in enumerate(c.messages) if m.role == "assistant"}
    assert len(set(keys)) == len(keys) and set(keys) <= turns
    assert len(turns - set(keys)) == 1 and all(r["reply"].strip() for r in replies)


def test_extra_training_scenarios_parse_cleanly_and_add_up(training_sets):
    """ai-training-extra/ is held to the evaluation set's bookkeeping. ai-training/ predates this
    check: its DMs often deal damage they did not roll (24 findings)."""
    extra = training_sets[EXTRA]
    assert extra.errors == [] and len(extra.scenarios) >= 160
    assert [p for s in extra.scenarios for p in mechanics_problems(s)] == []


def test_the_mechanics_check_can_fail():
    vocab = load_vocabulary(TRAINING)
    text = (EVAL / "combat" / "stirge_belfry_solo.md").read_text(encoding="utf-8")
    broken = text.replace("Kesh: 17 - 5 = *12/17*", "Kesh: 17 - 5 = *13/17*")
    broken = broken.replace("1d4+3: 2 + 3 = *5*", "1d4+3: 6 + 3 = *9*")
    assert broken.count("*13/17*") == 1 and broken.count("1d4+3: 6 + 3 = *9*") == 1, "the scenario changed"
    problems = mechanics_problems(parse_scenario(broken, "combat/stirge_belfry_solo.md", vocab))
    assert any("is not 17 -5" in p for p in problems)                       # the subtraction
    assert any("starts from 12, but kesh was at 13" in p for p in problems)  # the next hit
    assert any("off the faces of 1d4+3" in p for p in problems)              # a 6 on a d4
    assert any("does not follow from the rolls just made [9]" in p for p in problems)


def test_stats_script_prints_the_figures_and_fails_on_missed_targets(project, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_set_stats", REPO / "scripts" / "eval_set_stats.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data_dir, held_out = project
    assert script.main([str(held_out), "--data", str(data_dir), "--json"]) == 1
    stats = json.loads(capsys.readouterr().out)
    assert (stats["scenarios"], stats["dm_turns"], stats["no_call_turns"]) == (1, 3, 2)
    assert stats["calls"]["roll"] == 1 and stats["party_sizes"] == {"1": 1}
    assert "scenarios 1 < 25" in stats["missed"] and "health calls 0 < 20" in stats["missed"]
    assert script.main([str(EVAL), "--data", str(TRAINING)]) in (0, 1)   # the shipped set: 1 while one half is missing
    assert "DM turns without a call" in capsys.readouterr().out
