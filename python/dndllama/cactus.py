"""The app side: the Cactus config (`cactus.config.json`) and a ready `cactus.ts` snippet, both from
one dict, so the printed paths, the file on disk and the snippet never disagree."""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .dataset import END_OF_TURN
from .grammar import GRAMMAR_FILE, tool_call_grammar
from .tools import Vocabulary, render_tool_prompt


def cactus_config(model: Path, mmproj: Path | None, config: Config, vocab: Vocabulary, quant: str,
                  version: str) -> dict:
    """What the app needs: paths (mmprojPath is null for text-only models, never an invented file),
    context, sampling, and how to build the system prompt the model was trained with."""
    return {
        "version": version,
        "modelPath": str(model.resolve()),
        "mmprojPath": str(mmproj.resolve()) if mmproj else None,
        "quant": quant,
        "n_ctx": config.app_ctx,
        "n_gpu_layers": 99,
        "sampling": {
            "temperature": config.sampling.temperature,
            "top_k": config.sampling.top_k,
            "top_p": config.sampling.top_p,
            "n_predict": config.sampling.max_tokens,
            "stop": [END_OF_TURN],
        },
        # the system message = the scenario's SYSTEM block, a blank line, then this tool prompt
        "toolPrompt": render_tool_prompt(vocab),
        "tools": sorted(vocab.tools),
        "toolResultFormat": "<TOOLCALL>\\nlabel: result\\n</TOOLCALL> as the next user message",
        # constrained decoding: every `[` the model writes opens a valid call (also in the version
        # folder as grammarFile); null when the config's `grammar` is off
        "grammar": tool_call_grammar(vocab) if config.grammar else None,
        "grammarFile": GRAMMAR_FILE if config.grammar else None,
    }

