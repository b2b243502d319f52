"""The tool-call grammar: every reference call of the corpus is inside it, everything it allows the
parser accepts, untranslatable arg types fall back visibly, and the app's own llama.cpp (the
cactus-0.2 runtime) parses it and decodes only valid calls with it."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dndllama.grammar import (GENERIC_VALUE, UNIVERSE, arg_rules, call_regex, to_gbnf, tool_call_grammar,
                              translate)
from dndllama.scenarios import load_folder
from dndllama.tools import (ToolCallError, default_vocabulary, load_vocabulary, merge_vocabulary_data,
                            parse_tool_call)

ROOT = Path(__file__).resolve().parents[1]
CORPORA = [p for p in (ROOT / "ai-training", ROOT / "ai-eval", ROOT / "tests" / "data" / "independent") if p.is_dir()]
VOCAB = default_vocabulary()


@pytest.mark.parametrize("folder", CORPORA, ids=lambda p: p.name)
def test_every_reference_dm_turn_is_inside_the_grammar(folder):
    vocab = load_vocabulary(folder)
    one_call = call_regex(vocab)
    turn = re.compile(rf"(?:[^\[]|{one_call.pattern})*")
    checked = 0
    for scenario in load_folder(folder, vocab).scenarios:
        for dm in (t for t in scenario.turns if t.kind == "dm"):
            for call in dm.tool_calls:
                assert one_call.fullmatch(call.raw.strip()), f"{scenario.path}: {call.raw}"
                checked += 1
            assert turn.fullmatch(dm.text), f"{scenario.path}: {dm.text[:80]}"
    assert checked > 0


def test_the_grammar_rejects_what_the_parser_rejects():
    one_call = call_regex(VOCAB)
    for bad in ("[roll perception]", "[fly: away]", "[health: Mira, 7]", "[check: stealth, 41]",
                "[spellcast: Elara, fireball]", "[roll: Mira, Sella, stealth]", "[inventory: Mira, rope]"):
        with pytest.raises(ToolCallError):
            parse_tool_call(bad, VOCAB)
        assert not one_call.fullmatch(bad), bad


def sample(node: tuple, rng: random.Random) -> str:
    """A random string of the grammar tree (repeats kept short)."""
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "set":
        chars = [c for c in UNIVERSE if c not in node[1]] if node[2] else sorted(node[1])
        return rng.choice(chars)
    if kind == "seq":
        return "".join(sample(n, rng) for n in node[1])
    if kind == "alt":
        return sample(rng.choice(node[1]), rng)
    _, body, lo, hi = node
    return "".join(sample(body, rng) for _ in range(rng.randint(lo, min(hi if hi is not None else lo + 3, lo + 3))))


def test_every_call_the_grammar_allows_parses_as_that_call():
    rng = random.Random(0)
    rules, one_call = arg_rules(VOCAB), call_regex(VOCAB)
    for tool in VOCAB.tools.values():
        for _ in range(300):
            kept = [a for a in tool.args if not a.optional or rng.random() < 0.5]
            values = [sample(rules[a.type].node, rng) for a in kept]
            raw = f"[{tool.name}: {', '.join(values)}]"
            assert one_call.fullmatch(raw), raw
            call = parse_tool_call(raw, VOCAB)         # raises when the parser disagrees
            assert call.name == tool.name and all(
                VOCAB.arg_types[a.type].fullmatch(call.named[a.name]) for a in kept), raw


def test_regex_constructs_translate_to_the_same_language():
    for pattern, good, bad in [(r"(?x) ab | c\d{2,3}", ["AB", "c12", "C123"], ["c1", "abc", "c1234"]),
                               (r"[^\W\d_]+(?: x)?", ["Zoë", "tom X"], ["t0m", "tom_"]),
                               (r"\S(?:.*\S)?", ["a b", "x"], [" a", "a,b", "a]"]),
                               (r"^d\d+$", ["d20"], ["d"])]:
        mirror = re.compile(_regex(pattern))
        for text in good:
            assert mirror.fullmatch(text), (pattern, text)
        for text in bad:
            assert not mirror.fullmatch(text), (pattern, text)


def _regex(pattern: str) -> str:
    from dndllama.grammar import to_regex

    return to_regex(translate(pattern))


def test_an_untranslatable_arg_type_falls_back_to_a_generic_value_and_says_so():
    data = merge_vocabulary_data(
        {"arg_types": {k: v.pattern for k, v in VOCAB.arg_types.items()}, "tools": {}},
        {"arg_types": {"code": r"(?=[A-Z])\w+"},
         "tools": {"unlock": {"description": "Unlock.", "args": [{"name": "code", "type": "code"}],
                              "example": "[unlock: ABC]", "result": "ABC: open"}}})
    from dndllama.tools import _build

    vocab = _build(data, ("test",))
    grammar = tool_call_grammar(vocab)
    assert "# arg type 'code': generic value: " in grammar
    assert f"arg-code ::= {to_gbnf(('rep', GENERIC_VALUE, 1, None))}" in grammar
    assert call_regex(vocab).fullmatch("[unlock: ABC]")


def test_the_grammar_text_is_well_formed():
    grammar = tool_call_grammar(VOCAB)
    rules = [line.split(" ::= ", 1) for line in grammar.splitlines() if line and not line.startswith("#")]
    names = [name for name, _ in rules]
    assert len(names) == len(set(names)) and names[0] == "root"
    # a rule reference is a bare word outside quotes and classes
    refs = {word for _, body in rules
            for word in re.findall(r"[a-z][a-z0-9-]*", re.sub(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]', " ", body))}
    assert refs <= set(names), refs - set(names)
    assert all(name in refs for name in names[1:]), "a rule nothing uses"
    assert all(ord(c) < 128 for c in grammar)            # non-ASCII written as escapes


PROBE = r"""
import json, sys
from llama_cpp import Llama, LlamaGrammar
llm = Llama(sys.argv[1], n_ctx=512, n_threads=1, verbose=False, seed=0)
out = []
for path, prompt, temperature, seed in json.loads(sys.argv[2]):
    grammar = LlamaGrammar.from_string(open(path).read(), verbose=False)
    r = llm.create_completion(prompt, grammar=grammar, max_tokens=64, temperature=temperature, seed=seed)
    out.append([r["choices"][0]["text"], r["choices"][0]["finish_reason"]])
print(json.dumps(out))
"""


@pytest.mark.compat
def test_the_apps_llama_cpp_decodes_only_valid_calls_with_the_grammar(tmp_path):
    """llama-cpp-python 0.3.9 (cactus-0.2's llama.cpp) on the embedded Gemma 3 270M: greedy and sampled."""
    from dndllama.base import embedded_gguf
    from dndllama.app_runtime import find_runtime_env

    env = find_runtime_env("cactus-0.2")
    calls, full = tmp_path / "calls.gbnf", tmp_path / "full.gbnf"
    calls.write_text(tool_call_grammar(VOCAB, prose=False))
    full.write_text(tool_call_grammar(VOCAB))
    prompt = "The goblin swings its scimitar at Mira. "
    jobs = [[str(calls), prompt, 0.0, 0], *[[str(calls), prompt, 1.0, seed] for seed in range(4)],
            [str(full), prompt, 0.0, 0], [str(full), prompt + "Roll for it:", 1.0, 1]]
    proc = subprocess.run([str(env.python), "-c", PROBE, str(embedded_gguf()), json.dumps(jobs)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    print(json.dumps(results, indent=1), file=sys.stderr)
    calls_seen = 0
    for (text, reason), (path, *_rest) in zip(results, jobs):
        if reason == "length" and text.rfind("[") > text.rfind("]"):
            text = text[:text.rfind("[")]      # cut at max_tokens inside a call: the part before it
        for start in (m.start() for m in re.finditer(r"\[", text)):
            parse_tool_call(text[start:text.index("]", start) + 1], VOCAB)   # every `[` opens a valid call
            calls_seen += 1
        if path == str(calls):
            assert reason == "length" or text.startswith("["), text
    assert calls_seen >= 2, results
