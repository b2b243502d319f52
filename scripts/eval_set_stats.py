"""The evaluation set's figures, next to the targets of issue 15 (>= 25 scenarios, >= 200 DM turns,
>= 40 % of DM turns without a tool call, >= 20 reference calls of every default tool, party sizes
1-5), so they can be checked at a glance:

    python scripts/eval_set_stats.py [EVAL_DIR] [--data ai-training] [--fit] [--json]

The folder is parsed with the tool vocabulary of --data (the one the model is taught), as training
and validation do. --fit also counts DM turns whose replay prompt leaves fewer than --max-tokens
tokens in --ctx with the embedded Gemma tokenizer: `validate` skips those turns. Exit status 1 when
the folder has errors or a target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys

from dndllama.evalset import set_stats
from dndllama.scenarios import load_folder
from dndllama.tools import load_vocabulary

TARGETS = {"scenarios": 25, "dm_turns": 200, "no_call_share": 0.40, "calls_per_tool": 20}
PARTY_SIZES = {1, 2, 3, 4, 5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", nargs="?", default="ai-eval")
    parser.add_argument("--data", default="ai-training", help="the training folder: its tools.toml is used")
    parser.add_argument("--fit", action="store_true", help="count DM turns too long to replay (needs the native core)")
    parser.add_argument("--ctx", type=int, default=2048, help="replay context for --fit (app_ctx)")
    parser.add_argument("--max-tokens", type=int, default=128, help="room kept for the reply (validate_max_tokens)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)

    check = load_folder(args.eval_dir, load_vocabulary(args.data))
    stats = set_stats(check)
    stats["no_call_share"] = stats["no_call_turns"] / max(stats["dm_turns"], 1)
    stats["errors"] = len(check.errors)
    if args.fit:
        stats["turns_over_ctx"] = turns_over_ctx(check, args.ctx, args.max_tokens)
    missed = missed_targets(stats)
    if args.json:
        print(json.dumps({**stats, "missed": missed}, sort_keys=True))
    else:
        print_table(args.eval_dir, stats, missed)
    return 1 if missed or check.errors else 0


def missed_targets(stats: dict) -> list[str]:
    missed = [f"{key} {stats[key]} < {TARGETS[key]}" for key in ("scenarios", "dm_turns") if stats[key] < TARGETS[key]]
    if stats["no_call_share"] < TARGETS["no_call_share"]:
        missed.append(f"no_call_share {stats['no_call_share']:.2f} < {TARGETS['no_call_share']}")
    missed += [f"{tool} calls {n} < {TARGETS['calls_per_tool']}" for tool, n in stats["calls"].items()
               if n < TARGETS["calls_per_tool"]]
    absent = sorted(PARTY_SIZES - set(stats["party_sizes"]))
    if absent:
        missed.append(f"no party of size {', '.join(map(str, absent))}")
    if stats.get("turns_over_ctx"):
        missed.append(f"{stats['turns_over_ctx']} DM turns do not fit the replay context")
    return missed


def turns_over_ctx(check, ctx: int, max_tokens: int) -> int:
    from dndllama import _native
    from dndllama.base import embedded_gguf
    from dndllama.dataset import to_conversation
    from dndllama.validate import GEMMA_CHAT_TEMPLATE, _prompt, dm_turns

    model = _native.Model(str(embedded_gguf()), vocab_only=True)
    template = "" if model.info().chat_template else GEMMA_CHAT_TEMPLATE
    bos = model.detokenize(model.tokenize("", True, True), True)
    conversations = [to_conversation(s, check.vocab) for s in check.scenarios]
    return sum(1 for c, i in dm_turns(conversations)
               if len(model.tokenize(_prompt(model, c.messages[:i], template, bos), True, True)) + max_tokens > ctx)


def print_table(root: str, stats: dict, missed: list[str]) -> None:
    rows = [("scenarios", stats["scenarios"]), ("DM turns", stats["dm_turns"]),
            ("DM turns without a call", f"{stats['no_call_turns']} ({stats['no_call_share']:.0%})"),
            ("DM turns with 2+ calls", stats["multi_call_turns"])]
    rows += [(f"{tool} calls", n) for tool, n in stats["calls"].items()]
    rows += [("party sizes", ", ".join(f"{k}: {v}" for k, v in stats["party_sizes"].items())),
             ("categories", ", ".join(f"{k}: {v}" for k, v in stats["categories"].items())),
             ("errors (dndllama data check)", stats["errors"])]
    if "turns_over_ctx" in stats:
        rows.append(("DM turns too long to replay", stats["turns_over_ctx"]))
    print(f"evaluation set {root}")
    for name, value in rows:
        print(f"  {name:30s} {value}")
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))


if __name__ == "__main__":
    sys.exit(main())
