"""`dndllama chat` (chat.py, cli/chat.py) on a tiny random GGUF: the replies are noise, so the tests
check structure — the messages training would have built, the prompt the GGUF's own template
renders, tool calls answered by the `<TOOLCALL>` user message, trimming to the context — and the
command driven from stdin. Replies with tool calls come from a scripted `generate` (the tiny model
cannot write them); everything else goes through the native model."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dndllama import _native, cli
from dndllama.chat import DEFAULT_SYSTEM, ChatError, ChatSession, ChatSettings, ContextFull, load_system
from dndllama.cli.chat import Output, interactive, scripted
from dndllama.cli.common import resolve_model
from dndllama.dataset import check_alternation, render_gemma, to_conversation
from dndllama.scenarios import parse_scenario
from tiny_models import make_tiny_model

DATA = Path(__file__).parent / "data" / "independent"
PERCEPTION = "perception: 15 + 10(skill) = *25*"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    # the default system prompt is ~1,600 characters and this vocabulary is mostly single characters
    return make_tiny_model(tmp_path_factory.mktemp("chat") / "tiny.gguf", n_ctx=4096)


@pytest.fixture(scope="module")
def model(tiny_path):
    return _native.Model(str(tiny_path))


class Scripted:
    """A generate function that answers with the given DM texts and records every prompt."""

    def __init__(self, *replies: str):
        self.replies, self.prompts = list(replies), []

    def __call__(self, prompt: str, settings: ChatSettings, seed: int) -> dict:
        self.prompts.append(prompt)
        text = self.replies.pop(0)
        return {"text": text, "stop_reason": "eos", "n_prompt": 0, "n_generated": len(text), "gen_tokens_per_s": 1.0}


def settings(**changes) -> ChatSettings:
    return ChatSettings(**{"max_tokens": 12, "n_ctx": 4096, "seed": 1, **changes})


# ---------------------------------------------------------------- the session


def test_the_chat_keeps_its_kv_cache_between_turns(tiny_path):
    model = _native.Model(str(tiny_path))    # its own session: the cache is this chat's alone
    session = ChatSession(model, settings=settings(temperature=0.0))
    session.send("We push open the door of the tavern.")
    first = model.cached_tokens()
    reply = session.send("We order two ales.")
    # the second prompt starts with the first (system, player, DM reply): it was not decoded again
    assert first > 0 and model.cached_tokens() >= reply.n_prompt > first
    # and the reused cache changes nothing: the first reply is what a fresh context gives
    first_prompt = model.apply_chat_template([{"role": m.role, "content": m.content} for m in session.messages()[:2]])
    fresh = model.generate(first_prompt, max_tokens=12, temperature=0.0, n_ctx=4096, fresh_context=True)
    assert fresh["text"].split("<end_of_turn>")[0].strip() == session.rounds[0][-1].content


def test_a_turn_goes_through_the_ggufs_template_and_the_native_model(model):
    session = ChatSession(model, settings=settings())
    reply = session.send("We push open the door of the tavern.")

    messages = session.messages()
    assert [m.role for m in messages] == ["system", "user", "assistant"]
    assert messages[-1].content == reply.text
    assert 0 < reply.n_generated <= 12 and reply.stop_reason in ("length", "eos", "stop")
    assert messages[0].content.startswith("Role: Dungeon Master\nWorld: Forgotten Realms")
    assert "Available tools:" in messages[0].content
    # the prompt the GGUF's own template (llama.cpp's code) gave is exactly what training rendered
    prompt = model.apply_chat_template([{"role": m.role, "content": m.content} for m in messages[:2]])
    assert prompt == render_gemma(messages[:2], add_generation_prompt=True)
    assert reply.n_prompt == len(model.tokenize(prompt, True, True))


def test_tool_calls_are_found_and_results_go_back_as_trainings_feedback_message(model):
    generate = Scripted("The bartender eyes you. [roll: perception]", "You notice a hooded figure in the corner.")
    session = ChatSession(model, settings=settings(), generate=generate)

    reply = session.send("I ask the bartender about rumors.")
    assert [c.raw for c in reply.tool_calls] == ["[roll: perception]"] and reply.awaiting_results
    with pytest.raises(ChatError, match=r"waiting for the results of \[roll: perception\]"):
        session.send("I leave.")
    reply = session.send_tool_results([PERCEPTION])
    assert reply.text == "You notice a hooded figure in the corner." and not reply.awaiting_results

    # the same conversation written as a scenario file gives the same messages through training's code
    scenario = parse_scenario(f"# SYSTEM\n{DEFAULT_SYSTEM.render()}\n\n# CONVERSATION\n## User\n"
                              "I ask the bartender about rumors.\n\n## DM\nThe bartender eyes you. [roll: perception]\n\n"
                              f"## TOOLCALL\n{PERCEPTION}\n\n## DM\nYou notice a hooded figure in the corner.\n")
    assert session.messages() == to_conversation(scenario).messages
    assert generate.prompts[1].endswith(f"<start_of_turn>user\n<TOOLCALL>\n{PERCEPTION}\n</TOOLCALL><end_of_turn>\n"
                                        "<start_of_turn>model\n")


def test_a_reply_that_loops_on_one_call_or_sentence_ends_before_its_third_copy(model):
    looped = "You swing. [roll: Thordak, axe attack]\n[roll: Thordak, axe attack]\n[roll: Thordak, axe attack]\n[roll: Th"
    session = ChatSession(model, settings=settings(), generate=Scripted(looped))
    reply = session.send("I attack twice.")
    assert reply.text == "You swing. [roll: Thordak, axe attack]\n[roll: Thordak, axe attack]"
    assert reply.looped and len(reply.tool_calls) == 2                   # Extra Attack: two of the same call
    assert session.messages()[-1].content == reply.text                  # the history holds the reply as ended
    hum = ChatSession(model, settings=settings(), generate=Scripted("The forge is a low hum. " * 4))
    assert hum.send("I listen.").text == "The forge is a low hum. The forge is a low hum."


def test_results_must_match_the_calls_and_a_refused_message_changes_nothing(model):
    session = ChatSession(model, settings=settings(),
                          generate=Scripted("Both of you, roll. [roll: Thordak, initiative] [roll: Elara, initiative]"))
    session.send("Goblins!")
    before = session.messages()
    with pytest.raises(ChatError, match=r"2 tool call\(s\) wait for results .* got 1 line"):
        session.send_tool_results(["Thordak: initiative 8 + 1 = *9*"])
    with pytest.raises(ChatError, match="is not `label: result`"):
        session.send_tool_results(["Thordak: initiative 8 + 1 = *9*", "eighteen"])
    assert session.messages() == before and len(session.pending) == 2
    session.reset()
    assert session.messages()[1:] == [] and not session.pending
    with pytest.raises(ChatError, match="no tool call is waiting"):
        session.send_tool_results([PERCEPTION])


def test_malformed_calls_are_reported_and_need_no_results(model):
    session = ChatSession(model, settings=settings(), generate=Scripted("You try. [fly: away] [health: Elara, lots]"))
    reply = session.send("I jump.")
    assert reply.tool_calls == [] and not reply.awaiting_results
    assert [e.raw for e in reply.invalid_calls] == ["[fly: away]", "[health: Elara, lots]"]


def test_a_full_context_drops_the_oldest_exchanges_and_keeps_the_system_message(model):
    session = ChatSession(model, "You are the DM.", settings=settings(n_ctx=256, max_tokens=16))
    said = [f"Step {i}: we walk further down the corridor and look around carefully." for i in range(8)]
    replies = [session.send(text) for text in said]       # real generation: it fails past n_ctx

    assert sum(r.dropped for r in replies) > 0 and replies[0].dropped == 0
    assert all(r.n_prompt + 16 <= 256 for r in replies)
    messages = session.messages()
    assert messages[0].content == "You are the DM."
    check_alternation(messages)                            # user first after system, ends with the DM
    kept = [m.content for m in messages if m.role == "user"]
    assert kept == said[-len(kept):] and len(kept) < len(said)    # the newest survive, in order


def test_a_round_too_long_for_the_context_is_refused_and_changes_nothing(model):
    session = ChatSession(model, "You are the DM.", settings=settings(n_ctx=256, max_tokens=16))
    session.send("Hello.")
    before = session.messages()
    with pytest.raises(ContextFull, match="raise the context"):
        session.send("We talk for a very long time. " * 20)
    assert session.messages() == before


def test_the_system_block_comes_from_a_scenario_file(tmp_path):
    system = load_system(DATA / "combat" / "wolves_at_the_ford.md")
    assert system.world == "Greyhawk" and [c.name for c in system.party] == ["Brakka", "Sella"]

    only_system = tmp_path / "party.md"   # a file with just the SYSTEM block is fine
    only_system.write_text("# SYSTEM\nRole: Dungeon Master\nWorld: Eberron\nLocation: Sharn\nParty:\n"
                           "- Vex (Tiefling Warlock, Level 2, HP: 14/14)\n")
    assert load_system(only_system).party[0].char_class == "Warlock"

    broken = tmp_path / "broken.md"
    broken.write_text("# SYSTEM\nRole: Dungeon Master\nWorld: Eberron\nLocation: Sharn\nParty:\n- Vex (Warlock, Level 2)\n")
    with pytest.raises(ChatError, match=r"broken.md:6: error"):
        load_system(broken)


# ---------------------------------------------------------------- the terminal front end


def test_scripted_input_answers_tool_calls_by_tool_lines_and_blocks(model, capsys):
    generate = Scripted("The bartender eyes you. [roll: perception]", "You spot a hooded figure.",
                        "A goblin slashes Thordak. [health: Thordak, -7]", "He stays up. [check: stealth, 15]",
                        "Nobody saw you.")
    session = ChatSession(model, settings=settings(), generate=generate)
    lines = ["I ask about rumors.", f"tool: {PERCEPTION}", "", "We attack!", "<TOOLCALL>", "Thordak: 45 - 7 = *38/45*",
             "</TOOLCALL>", "<TOOLCALL>stealth: 12 + 5(skill) = *17* vs DC 15, success</TOOLCALL>"]
    assert scripted(session, Output("plain"), lines) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("DM: ")] == [
        "DM: The bartender eyes you. [roll: perception]", "DM: You spot a hooded figure.",
        "DM: A goblin slashes Thordak. [health: Thordak, -7]", "DM: He stays up. [check: stealth, 15]",
        "DM: Nobody saw you."]
    assert [line for line in out if line.startswith("TOOL CALL: ")] == [
        "TOOL CALL: [roll: perception]", "TOOL CALL: [health: Thordak, -7]", "TOOL CALL: [check: stealth, 15]"]
    assert "<start_of_turn>user\n<TOOLCALL>\nThordak: 45 - 7 = *38/45*\n</TOOLCALL><end_of_turn>" in generate.prompts[3]


def test_interactive_session_asks_for_each_result_and_reasks_after_a_bad_line(model, capsys, monkeypatch):
    generate = Scripted("The bartender eyes you. [roll: perception]", "You spot a hooded figure.")
    session = ChatSession(model, settings=settings(), generate=generate)
    answers, asked = iter(["/system", "I ask about rumors.", "twenty-five", PERCEPTION, "/quit"]), []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or next(answers))

    assert interactive(session, Output("plain"), Path("tiny.gguf")) == 0
    out, err = capsys.readouterr()
    hint = f"  result 1/1 for [roll: perception] (e.g. {PERCEPTION})> "
    assert asked == ["You> ", "You> ", hint, hint, "You> "]
    assert "SYSTEM: Role: Dungeon Master" in out and "TOOL CALL: [roll: perception]" in out
    assert "DM: You spot a hooded figure." in out
    assert "error: result line 'twenty-five' is not `label: result`" in err


def test_rich_output_highlights_tool_calls(model):
    from rich.console import Console

    session = ChatSession(model, settings=settings(), generate=Scripted("Roll it. [roll: perception] [fly: away]"))
    out = Output("rich")
    out.console = Console(record=True, file=io.StringIO(), width=200, force_terminal=True, color_system="truecolor")
    out.reply(session.send("I look around."), "player")
    html = out.console.export_html(inline_styles=True)
    assert re.search(r'<span style="[^"]*background-color[^"]*">\[roll: perception\]</span>', html)
    assert re.search(r'<span style="[^"]*text-decoration: underline[^"]*">\[fly: away\]</span>', html)
    assert not re.search(r'<span[^>]*>[^<]*Roll it', html)     # the DM's prose keeps its plain style


def test_resolve_model_needs_a_trained_version_or_a_file(tmp_path, tiny_path):
    with pytest.raises(cli.CliError) as excinfo:
        resolve_model(None, tmp_path / "models")
    assert "no current version" in excinfo.value.what and "dndllama train" in excinfo.value.what
    with pytest.raises(cli.CliError, match="not found"):
        resolve_model("nowhere.gguf", tmp_path)
    assert resolve_model(str(tiny_path), tmp_path) == tiny_path
    models = registry_with(tmp_path / "models", tiny_path)
    assert resolve_model(None, models) == resolve_model("v0001", models) == models / "v0001" / "tiny.gguf"


def registry_with(models: Path, model: Path) -> Path:
    """A registry holding `model` as v0001 (current), with the app's settings of a trained version."""
    version = models / "v0001"
    version.mkdir(parents=True)
    shutil.copy(model, version / "tiny.gguf")
    (version / "metadata.json").write_text(json.dumps({"model_file": "tiny.gguf", "config": {"data": str(DATA)}}))
    (version / "cactus.config.json").write_text(json.dumps(
        {"n_ctx": 4096, "sampling": {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "n_predict": 5}}))
    os.symlink("v0001", models / "current")
    return models


# ---------------------------------------------------------------- the command, from a script


def run_chat(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dndllama", "chat", *args], input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


def test_chat_reads_player_lines_from_stdin_and_prints_dm_lines(tiny_path):
    done = run_chat(str(tiny_path), "--ctx", "4096", "--max-tokens", "8", "--temperature", "0",
                    stdin="We enter the tavern.\n\n/system\nWe order two ales.\n")
    assert done.returncode == 0, done.stderr
    dm = [line for line in done.stdout.splitlines() if line.startswith("DM: ")]
    assert len(dm) == 2
    assert "SYSTEM: Role: Dungeon Master" in done.stdout
    assert "You>" not in done.stdout and "Traceback" not in done.stderr


def test_chat_json_mode_and_the_current_versions_app_settings(tmp_path, tiny_path):
    models = registry_with(tmp_path / "models", tiny_path)
    done = run_chat("--models-dir", str(models), "--json", stdin="We enter the tavern.\n/reset\nWe leave.\n")
    assert done.returncode == 0, done.stderr
    turns = [json.loads(line) for line in done.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2] and all(t["input"] == "player" for t in turns)
    assert all(0 < t["n_generated"] <= 5 for t in turns)       # n_predict of the version's cactus.config.json
    assert set(turns[0]) >= {"text", "tool_calls", "invalid_tool_calls", "awaiting_results", "dropped_exchanges"}
    assert "conversation reset" in done.stderr


def test_chat_from_stdin_fails_with_the_line_number(tmp_path, tiny_path):
    done = run_chat(str(tiny_path), "--ctx", "4096", "--max-tokens", "4", stdin=f"Hello.\ntool: {PERCEPTION}\n")
    assert done.returncode == 1
    assert "error: stdin line 2: no tool call is waiting for results" in done.stderr
    assert "what to do:" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.startswith("DM: ")

    done = run_chat("--models-dir", str(tmp_path / "none"), stdin="Hello.\n")
    assert done.returncode == 1 and "no current version" in done.stderr and "dndllama train" in done.stderr
