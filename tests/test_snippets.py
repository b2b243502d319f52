"""The tool-call grammar travels to the app: cactus.config.json carries it (or null when the config
turns it off) and both snippets pass it as the completion's `grammar`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dndllama.cactus import cactus_config
from dndllama.config import ConfigError, load_config
from dndllama.grammar import GRAMMAR_FILE, tool_call_grammar
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
