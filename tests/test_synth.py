"""`dndllama data synth`: generated scenarios are valid, play D&D 5e correctly (checked by replaying
the markdown itself, not only the generator's own log), are seeded and varied, and enter training
as configured (loss masks, cache keys, never the evaluation folder)."""

import hashlib
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from dndllama import pipeline
from dndllama.cli import main
from dndllama.config import ConfigError, load_config
from dndllama.dataset import END_OF_TURN, conversation_windows, to_conversation
from dndllama.loss_mask import loss_spans
from dndllama.scenarios import ERROR, load_folder, parse_scenario
from dndllama.synth import SYNTH_VERSION, generate, generate_many, summarize, training_conversations, write_folder
from dndllama.synth.mechanics import slot_table
from dndllama.synth.tables import CLASSES, SPELLS
from dndllama.tools import default_vocabulary

DATA = Path(__file__).parent / "data"
SAMPLE = 120
DICE_RESULT = re.compile(r"^\d+d\d+(?:\+\d+)?: .*\*(\d+)\*$")
SAVE_RESULT = re.compile(r"^\w+ save: ")
HEALTH_RESULT = re.compile(r"^(?P<name>.+?): (?P<before>\d+) (?P<sign>[+-]) (?P<n>\d+) = \*(?P<after>\d+)/(?P<max>\d+)\*$")


@pytest.fixture(scope="module")
def sample():
    items = generate_many(SAMPLE, seed=7)
    vocab = default_vocabulary()
    return [(item, parse_scenario(item.text, item.path, vocab, item.category)) for item in items]


def dm_and_results(scenario):
    """(DM turn, the TOOLCALL turn after it or None) pairs, in order."""
    turns = scenario.turns
    return [(t, turns[i + 1] if i + 1 < len(turns) and turns[i + 1].kind == "tool" else None)
            for i, t in enumerate(turns) if t.kind == "dm"]


# ---------------------------------------------------------------- validity


def test_written_folder_passes_data_check(tmp_path, capsys):
    write_folder(tmp_path, 40, seed=3)
    check = load_folder(tmp_path)
    assert len(check.scenarios) == 40 and not check.errors
    # the only warnings: health of monsters, who are not in the party ("fine for creatures")
    assert {d.code for d in check.warnings} <= {"unknown-target"}
    assert main(["data", "check", str(tmp_path)]) == 0
    assert "40 files checked: 0 errors" in capsys.readouterr().out


def test_every_category_party_size_and_tool_occurs(sample):
    assert {item.category for item, _ in sample} == {"combat", "exploration", "roleplay", "downtime", "puzzles"}
    assert {len(s.system.party) for _, s in sample} == {1, 2, 3, 4, 5}
    assert {len(c.inventory) for _, s in sample for c in s.system.party} == {1, 2, 3, 4, 5}
    calls = {c.name for _, s in sample for t in s.turns for c in t.tool_calls}
    assert calls == set(default_vocabulary().tools)


# ---------------------------------------------------------------- mechanics, replayed from the markdown


def test_damage_reaches_health_exactly(sample):
    checked = 0
    for _, scenario in sample:
        previous_results = []
        for dm, results in dm_and_results(scenario):
            rolled = [int(DICE_RESULT.match(r.render()).group(1)) for r in previous_results
                      if DICE_RESULT.match(r.render())]
            saves = any(SAVE_RESULT.match(r.render()) for r in previous_results)
            for call in dm.tool_calls:
                amount = int(call.named["amount"]) if call.name == "health" else 0
                if amount < 0:
                    allowed = {t for t in rolled} | ({t // 2 for t in rolled} if saves else set())
                    assert -amount in allowed, (scenario.path, call.raw, rolled)
                    checked += 1
            previous_results = results.results if results else []
    assert checked > 100


def test_hits_follow_ac_and_misses_roll_no_damage(sample):
    attacks = 0
    for item, _ in sample:
        events = item.events
        for index, event in enumerate(events):
            if event["event"] != "attack":
                continue
            attacks += 1
            natural = event["d20"]
            assert event["hit"] == (natural == 20 or (natural != 1 and event["total"] >= event["ac"]))
            following = events[index + 1] if index + 1 < len(events) else {"event": "end"}
            assert (following["event"] == "damage") == event["hit"], (item.path, event, following)
            if event["hit"]:
                damage = following
                health = next(e for e in events[index + 2:] if e["event"] == "health")
                assert (health["target"], health["change"]) == (event["target"], -damage["amount"])
                if event["crit"]:   # a critical hit doubles the dice: 1d8+3 -> 2d8+3
                    assert int(damage["expr"].split("d")[0]) % 2 == 0
    assert attacks > 100


def test_hit_points_add_up_from_the_party_line(sample):
    for _, scenario in sample:
        hp = {c.name: (c.hp, c.max_hp) for c in scenario.system.party}
        for turn in scenario.turns:
            for result in turn.results:
                match = HEALTH_RESULT.match(result.render())
                if not match:
                    continue
                name, before, maximum = match["name"], int(match["before"]), int(match["max"])
                if name in hp:
                    assert (before, maximum) == hp[name], (scenario.path, result.render())
                change = int(match["n"]) * (1 if match["sign"] == "+" else -1)
                assert int(match["after"]) == max(0, min(maximum, before + change))
                hp[name] = (int(match["after"]), maximum)


def test_spell_levels_and_slots_add_up(sample):
    casts = 0
    for _, scenario in sample:
        party = {c.name: c for c in scenario.system.party}
        used = defaultdict(int)
        for turn in scenario.turns:
            for call in turn.tool_calls:
                if call.name != "spellcast":
                    continue
                casts += 1
                caster, spell, slot = party[call.named["caster"]], SPELLS[call.named["spell"]], int(call.named["slot"])
                assert spell.name in CLASSES[caster.char_class].spells
                assert slot == 0 if spell.level == 0 else slot >= spell.level
                if slot:
                    used[(caster.name, slot)] += 1
                    assert used[(caster.name, slot)] <= slot_table(CLASSES[caster.char_class], caster.level)[slot]
    assert casts > 30


def test_items_and_gold_add_up(sample):
    moves = 0
    for _, scenario in sample:
        held = {c.name: list(c.inventory) for c in scenario.system.party}
        gold = {name: sum(int(i.split()[0]) for i in items if re.fullmatch(r"\d+ gp", i)) for name, items in held.items()}
        for turn in scenario.turns:
            for call in turn.tool_calls:
                if call.name != "inventory":
                    continue
                moves += 1
                owner, change = call.named["owner"], call.named["item"]
                sign, item = change[0], change[1:].strip()
                if re.fullmatch(r"\d+ gp", item):
                    gold[owner] += int(item.split()[0]) * (1 if sign == "+" else -1)
                    assert gold[owner] >= 0, (scenario.path, call.raw)
                elif sign == "+":
                    held[owner].append(item)
                else:
                    assert item in held[owner], (scenario.path, call.raw, held[owner])
                    held[owner].remove(item)
    assert moves > 50


def test_checks_report_success_against_the_dc(sample):
    for _, scenario in sample:
        for turn in scenario.turns:
            for result in turn.results:
                match = re.search(r"= \*(\d+)\* vs DC (\d+), (success|failure)$", result.text)
                if match:
                    assert (int(match[1]) >= int(match[2])) == (match[3] == "success")


ROLL_MODE = re.compile(r"^(?P<what>.+) \((?P<mode>advantage|disadvantage)\): (?P<a>\d+), (?P<b>\d+) "
                       r"(?P<sign>[+-]) (?P<mod>\d+)(?:\(\w+\))? = \*(?P<total>\d+)\*$")


def test_advantage_keeps_the_right_die_and_group_checks_need_half(sample):
    modes, groups = set(), 0
    for item, scenario in sample:
        party = {c.name for c in scenario.system.party}
        for turn in scenario.turns:
            for result in turn.results:
                match = ROLL_MODE.match(result.render())
                if match:
                    kept = (max if match["mode"] == "advantage" else min)(int(match["a"]), int(match["b"]))
                    modifier = int(match["mod"]) * (1 if match["sign"] == "+" else -1)
                    assert int(match["total"]) == kept + modifier, result.render()
                    modes.add(match["mode"])
                if result.label.startswith("group "):
                    names = [part.rsplit(" ", 1)[0] for part in result.text.split(", ")]
                    assert set(names) <= party and len(names) >= 2
        for event in item.events:
            if event["event"] == "group":
                groups += 1
                passed = sum(total >= event["dc"] for total in event["totals"].values())
                assert event["success"] == (passed * 2 >= len(event["totals"]))
    assert modes == {"advantage", "disadvantage"} and groups > 5


def test_tool_checks_come_from_a_tool_the_character_carries(sample):
    from dndllama.synth.tables import TOOLS
    tool_calls = 0
    for _, scenario in sample:
        held = {c.name: set(c.inventory) for c in scenario.system.party}
        carried = set().union(*held.values())
        for turn in scenario.turns:
            for call in turn.tool_calls:
                value = call.named.get("skill") or call.named.get("what")
                if value in TOOLS:
                    tool_calls += 1
                    assert value in (held[call.named["actor"]] if call.named.get("actor") else carried)
    assert tool_calls > 10


# ---------------------------------------------------------------- seeds, variety, talk


def test_output_is_byte_stable_across_processes():
    digest = hashlib.sha256("".join(generate(5, i).text for i in range(6)).encode()).hexdigest()
    code = ("import hashlib; from dndllama.synth import generate; "
            "print(hashlib.sha256(''.join(generate(5, i).text for i in range(6)).encode()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == digest


def test_different_seeds_and_indices_differ():
    texts = {generate(seed, index).text for seed in (0, 1, 2) for index in range(10)}
    assert len(texts) == 30


def test_at_least_40_percent_of_dm_turns_make_no_call(sample):
    stats = summarize([s for _, s in sample])
    assert stats["no_call_share"] >= 0.4
    assert stats["dm_turns"] >= 5 * SAMPLE


def test_narration_is_not_one_sentence_per_event(sample):
    dm_texts = [t.text.split("\n")[0] for _, s in sample for t in s.turns if t.kind == "dm" and t.text.strip()]
    assert len(set(dm_texts)) / len(dm_texts) > 0.6


# ---------------------------------------------------------------- training: masks, keys, no evaluation data


def char_tokenizer():
    from test_dataset import CharTokenizer
    return CharTokenizer()


def test_calls_loss_trains_exactly_the_call_lines_and_the_sentence_before():
    answer = "The goblin snarls. You step in, blade high.\n\n[roll: Brom, longsword attack]" + END_OF_TURN
    assert [answer[a:b] for a, b in loss_spans(answer, "calls")] == [
        "You step in, blade high.\n\n[roll: Brom, longsword attack]" + END_OF_TURN]
    quiet = "It misses! The goblin laughs. What do you do?" + END_OF_TURN
    assert [quiet[a:b] for a, b in loss_spans(quiet, "calls")] == ["What do you do?" + END_OF_TURN]
    middle = "Hit! Roll it.\n[roll: 1d8+3]\n\nMore prose after. The end." + END_OF_TURN
    assert [middle[a:b] for a, b in loss_spans(middle, "calls")] == [
        "Roll it.\n[roll: 1d8+3]", "The end." + END_OF_TURN]
    assert loss_spans(quiet, "all") == [(0, len(quiet))]


@pytest.mark.parametrize("tokenizer_name", ["char", "llama.cpp"])
def test_calls_mask_covers_the_intended_tokens(tokenizer_name):
    from test_dataset import TOKENIZERS
    tokenizer = TOKENIZERS[tokenizer_name]()
    item = generate(11, 2)
    conversation = to_conversation(parse_scenario(item.text, item.path, category=item.category))
    conversation.loss = "calls"
    [window] = conversation_windows(conversation, tokenizer, ctx=100_000)
    runs, current = [], []
    for token, trained in zip(window.tokens, window.mask):
        if trained:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    runs += [current] if current else []
    answers = [m.content.strip() + END_OF_TURN for m in conversation.messages if m.role == "assistant"]
    wanted = [answer[a:b] for answer in answers for a, b in loss_spans(answer, "calls")]
    got = [tokenizer.detokenize(run) for run in runs]
    if tokenizer_name == "char":
        assert got == wanted
    else:   # a token across a span's edge is included, so each run holds its span and at most a token more
        assert len(got) == len(wanted)
        for text, span in zip(got, wanted):
            assert span.strip() in text and len(text) <= len(span) + 16, (text, span)
    all_trained = sum(window.mask)
    conversation.loss = "all"
    assert sum(conversation_windows(conversation, tokenizer, ctx=100_000)[0].mask) > all_trained


def test_training_conversations_reach_the_ratio_and_read_no_files(monkeypatch):
    vocab = default_vocabulary()

    def refuse(*args, **kwargs):
        raise AssertionError(f"the generator touched the file system: {args[:1]}")

    for name in ("read_text", "read_bytes", "open", "iterdir", "rglob", "glob"):
        monkeypatch.setattr(Path, name, refuse)
    monkeypatch.setattr("builtins.open", refuse)
    monkeypatch.setattr(os, "listdir", refuse)
    monkeypatch.setattr(os, "scandir", refuse)
    conversations = training_conversations(2.0, seed=4, loss="calls", hand_dm_turns=30, vocab=vocab)
    dm = sum(m.role == "assistant" for c in conversations for m in c.messages)
    assert dm >= 60 and dm - max(sum(m.role == "assistant" for m in c.messages) for c in conversations) < 60
    assert all(c.loss == "calls" and c.scenario.startswith("synth/") for c in conversations)


def test_load_data_adds_synthetic_training_only(tmp_path):
    base = {"cache_dir": str(tmp_path / "cache"), "val_fraction": 0.3}
    plain = pipeline.load_data(load_config(DATA / "independent", {**base, "synth": 0}))
    mixed = pipeline.load_data(load_config(DATA / "independent", {**base, "synth": 3, "synth_loss": "all"}))
    assert plain.synthetic == 0 and mixed.synthetic > 0
    assert [c.scenario for c in mixed.validation] == [c.scenario for c in plain.validation]
    assert mixed.train[: len(plain.train)] == plain.train
    synthetic = mixed.train[len(plain.train):]
    assert len(synthetic) == mixed.synthetic and {c.loss for c in synthetic} == {"all"}
    hand = sum(m.role == "assistant" for c in plain.train for m in c.messages)
    assert sum(m.role == "assistant" for c in synthetic for m in c.messages) >= 3 * hand


def test_dataset_cache_key_follows_the_synth_settings(tmp_path):
    def key(**settings):
        return pipeline.dataset_cache_key(load_config(tmp_path, settings), "data", "base")

    off = key(synth=0)
    assert off == pipeline.digest("dataset", "data", "base", 768, 0.1, 0, 0, pipeline.code_version())
    assert off == key(synth=0, synth_seed=9, synth_loss="all")          # settings of an unused generator do not matter
    variants = [key(synth=1), key(synth=5), key(synth=5, synth_seed=1), key(synth=5, synth_loss="all")]
    assert len({off, *variants}) == 5
    assert pipeline.synth_settings(load_config(tmp_path, {"synth": 1}))[-1] == SYNTH_VERSION


def test_synth_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"--synth = -1.0 is out of range; accepted: a number, in \[0, "):
        load_config(tmp_path, {"synth": -1.0})
    with pytest.raises(ConfigError, match="--synth-loss = 'prose' is not one of the choices; accepted: .*calls, all"):
        load_config(tmp_path, {"synth_loss": "prose"})
    assert "synth" not in load_config(tmp_path, {"synth": 0}).training_settings()
    assert load_config(tmp_path).training_settings()["synth"] == 2.0   # the default recipe
    assert load_config(tmp_path, {"synth": 5}).training_settings()["synth_loss"] == "calls"


# ---------------------------------------------------------------- the command


def test_data_synth_writes_checked_files_and_a_summary(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--scenarios", "12", "--seed", "2"]) == 0
    said = capsys.readouterr().out
    files = sorted(out.rglob("*.md"))
    assert len(files) == 12 and not list(out.rglob(".*.tmp"))
    assert "wrote 12 scenarios" in said and "without a call" in said and "0 errors" in said
    before = {f: f.read_bytes() for f in files}
    assert main(["data", "synth", "--out", str(out), "--scenarios", "12", "--seed", "2"]) == 0
    assert {f: f.read_bytes() for f in files} == before


def test_data_synth_refuses_the_evaluation_folder(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "ai-eval"), "--scenarios", "3"]) != 0
    assert "evaluation folder" in capsys.readouterr().err
    assert not (tmp_path / "ai-eval").exists()


def test_dataset_stage_trains_fewer_synthetic_tokens_with_calls_loss(tmp_path):
    from tiny_models import make_tiny_model

    base = SimpleNamespace(gguf=make_tiny_model(tmp_path / "tiny.gguf", n_ctx=4096))
    targets = {}
    for loss in ("calls", "all"):
        config = load_config(DATA / "independent", {"synth": 1, "synth_loss": loss, "ctx": 2048,
                                                     "cache_dir": str(tmp_path / "cache")})
        data = pipeline.load_data(config)
        key = pipeline.dataset_cache_key(config, "data", "base")
        arrays, stats = pipeline.build_arrays(data, base, config, tmp_path / "cache", key, print)
        assert (tmp_path / "cache" / "datasets" / f"{key}.npz").exists()
        assert stats["train_windows"] > len(data.train) - data.synthetic   # the synthetic ones are in
        targets[loss] = stats["train_targets"]
    assert 0 < targets["calls"] < targets["all"]


def test_generated_scenarios_too_long_for_the_window_are_left_out_not_refused(tmp_path):
    """No file names a generated exchange for the user to fix, so the dataset stage leaves such a
    scenario out (where a hand-written one that does not fit stops training)."""
    from tiny_models import make_tiny_model

    from dndllama import _native
    from dndllama.corpus import fitting_synthetic
    from dndllama.dataset import windows_and_cuts

    tokenizer = _native.Model(str(make_tiny_model(tmp_path / "tiny.gguf", n_ctx=4096)), vocab_only=True)
    conversations = training_conversations(1, 0, "calls", 300, default_vocabulary())
    too_long = [bool(windows_and_cuts([c], tokenizer, 2048)[1]) for c in conversations]   # small vocabulary: many tokens
    kept, dropped = fitting_synthetic(conversations, tokenizer, 2048)
    assert 0 < dropped == sum(too_long) < len(conversations)
    assert kept == [w for c, long in zip(conversations, too_long) if not long
                    for w in conversation_windows(c, tokenizer, 2048)]
