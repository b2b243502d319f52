"""What validation decodes with travels to the app: cactus.config.json carries the tool-call grammar
(or null when the config turns it off), both snippets pass it as the completion's `grammar`, and
their reply() ends a looping reply as validation does (endAtLoop, run with Node)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dndllama.cactus import cactus_config
from dndllama.config import ConfigError, load_config
from dndllama.grammar import GRAMMAR_FILE, tool_call_grammar
from dndllama.replay import end_at_loop
from dndllama.snippets import cactus_ts, llama_rn_ts
from dndllama.tools import default_vocabulary

VOCAB = default_vocabulary()


def config_for(tmp_path: Path, toml: str = "") -> dict:
    (tmp_path / "dndllama.toml").write_text(toml)
    return cactus_config(tmp_path / "m.gguf", None, load_config(tmp_path), VOCAB, "Q8_0", "v0001")


def test_the_cactus_config_carries_the_grammar_by_default_and_none_when_off(tmp_path):
    on = config_for(tmp_path)
    assert on["grammar"] == tool_call_grammar(VOCAB) and on["grammarFile"] == GRAMMAR_FILE
    off = config_for(tmp_path, "grammar = false\n")
    assert off["grammar"] is None and off["grammarFile"] is None
    assert json.loads(json.dumps(on)) == on
    with pytest.raises(ConfigError, match="grammar = 'yes' is not true or false"):
        config_for(tmp_path, 'grammar = "yes"\n')


@pytest.mark.parametrize("make", [cactus_ts, llama_rn_ts])
def test_snippets_pass_the_grammar_to_the_completion(make, tmp_path):
    on, off = make(config_for(tmp_path)), make(config_for(tmp_path, "grammar = false\n"))
    assert "  grammar: GRAMMAR,\n" in on and "export const GRAMMAR = " in on
    literal = on.split("export const GRAMMAR = ", 1)[1].split(";\n", 1)[0]
    assert json.loads(literal) == tool_call_grammar(VOCAB)        # the text verbatim, escaped for TypeScript
    assert "GRAMMAR" not in off and "grammar:" not in off


LOOPS = ["Quiet night.", "[roll: perception]", "Two swings. [roll: Mira, axe attack]\n[roll: Mira, axe attack]",
         "Swing. [roll: Mira, axe attack] [roll: Mira, axe attack] [health: orc, -5]  [roll: Mira, axe attack] [roll: Mi",
         "[check: stealth, 15] x [roll: 1d6] [check: stealth, 15] [roll: 1d6] [roll: 1d6]\n\n[check: stealth, 15]",
         "The duergar is a low hum. The duergar is a low hum!\nThe duergar is a low hum.\n  The duergar is a low hum.",
         "Tick. Tick. Tick. Tick.",                                      # too short to be a loop
         "**Round two**\n**Round two**\n  **Round two**  \nAnd [roll: x. The end is near.] The end is near.",
         "Écu d'or brillant. Écu d'or brillant. Écu d'or brillant.",      # 17 code points, 19 bytes
         "Ça été. Ça été. Ça été."]                                     # 7 code points, 10 bytes: too short


def test_end_at_loop_keeps_two_copies_of_a_call_or_sentence_and_ends_before_the_third():
    assert [end_at_loop(text) for text in (LOOPS[0], LOOPS[2], LOOPS[6], LOOPS[9])] == [None] * 4
    assert end_at_loop(LOOPS[3]) == "Swing. [roll: Mira, axe attack] [roll: Mira, axe attack] [health: orc, -5]"
    assert end_at_loop(LOOPS[4]) == "[check: stealth, 15] x [roll: 1d6] [check: stealth, 15] [roll: 1d6]"
    assert end_at_loop(LOOPS[3], limit=1) == "Swing. [roll: Mira, axe attack]"
    # sentences and lines compare as written, without the space around them
    assert end_at_loop(LOOPS[5]) == "The duergar is a low hum. The duergar is a low hum!\nThe duergar is a low hum."
    assert end_at_loop(LOOPS[7]) == "**Round two**\n**Round two**"
    assert end_at_loop(LOOPS[8]) == "Écu d'or brillant. Écu d'or brillant."


@pytest.mark.parametrize("make", [cactus_ts, llama_rn_ts])
def test_the_snippets_end_looping_replies_as_validation_does(make, tmp_path):
    """The TypeScript endAtLoop, run by Node on the same texts, gives what validation scored."""
    ts = make(config_for(tmp_path))
    assert "return endAtLoop(result.text).trim();" in ts
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the TypeScript function is not run")
    function = ts[ts.index("export function endAtLoop"):]
    function = function[:function.index("\n}\n") + 2].replace("export ", "")
    js = re.sub(r"<string, number>|: string", "", function)   # the only type annotations it has
    script = f"{js}\nconsole.log(JSON.stringify({json.dumps(LOOPS)}.map(endAtLoop)));"
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [t if end_at_loop(t) is None else end_at_loop(t) for t in LOOPS]
