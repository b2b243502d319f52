"""A second writer's DM turns for the evaluation set: how far two competent writers agree on tool calls.

    python scripts/writer_replies.py export OUT [--groups N] [--eval-data DIR]
    python scripts/writer_replies.py collect OUT                        # OUT/replies.jsonl
    python scripts/writer_replies.py report OUT/replies.jsonl writer.json [--eval-data DIR]
    python scripts/compare_reports.py writer.json MODEL/report.json

`export` writes every DM turn of the evaluation set as its own file, `OUT/group-G/NN-scenario/turn-KKK.md`:
what happened since the previous DM turn (the system prompt with the tool list first, then the
original author's DM turn, the tool results and the player's message), never the turn to write nor
a later one. A writer (a person or a helper session, one per group) reads turn-001.md, writes the
DM's reply to turn-001.reply.md, then opens turn-002.md, and so on. `collect` gathers the reply files
into one replies.jsonl (docs/data/second-writer-ai-eval.jsonl is ai-eval's), and `report` makes it a
report.json in `dndllama validate`'s form, so `compare_reports.py` scores the writer exactly as it
scores a model, on the same turns, with paired intervals. The writer's figures against the
original author say how much of a model's shortfall is the task itself: two writers choose when to
roll differently (docs/evaluation.md, "What a second writer scores").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADINGS = {"system": "System prompt (what the DM model is given)",
            "user": "User (the player; tool results arrive here too)",
            "assistant": "DM (as the scenario's own author wrote it)"}


def conversations(eval_data: Path):
    from dndllama.evalset import load_eval_set
    from dndllama.tools import load_vocabulary

    vocab = load_vocabulary(ROOT / "ai-training")
    return vocab, load_eval_set(eval_data, vocab).conversations


def dm_indices(conversation) -> list[int]:
    return [i for i, m in enumerate(conversation.messages) if m.role == "assistant"]


def export(out: Path, groups: int, eval_data: Path) -> None:
    """Conversations dealt to `groups` writers, longest first to the least loaded, one file per DM turn."""
    _, convs = conversations(eval_data)
    loads, scenarios, index = [0] * groups, [0] * groups, []
    for conversation in sorted(convs, key=lambda c: -len(dm_indices(c))):
        group = loads.index(min(loads))
        loads[group] += len(dm_indices(conversation))
        scenarios[group] += 1
        slug = re.sub(r"[^a-z0-9]+", "-", conversation.scenario.lower()).strip("-")
        folder = out / f"group-{group + 1}" / f"{scenarios[group]:02d}-{slug}"
        folder.mkdir(parents=True, exist_ok=True)
        last = 0
        for turn, i in enumerate(dm_indices(conversation), start=1):
            parts = [f"# Turn {turn}: what happened since your previous reply\n"]
            parts += [f"## {HEADINGS[m.role]}\n\n{m.content}\n" for m in conversation.messages[last:i]]
            parts.append(f"## Your reply as the DM goes in turn-{turn:03d}.reply.md\n")
            (folder / f"turn-{turn:03d}.md").write_text("\n".join(parts))
            index.append({"group": group + 1, "folder": str(folder.relative_to(out)), "turn": turn,
                          "scenario": conversation.scenario, "message": i})
            last = i
    (out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"{len(index)} DM turns of {len(convs)} scenarios in {groups} groups ({', '.join(map(str, loads))} turns)")


def collect(out: Path) -> None:
    """OUT/replies.jsonl: one line per reply file written (scenario, message, reply); turns without one are left out."""
    lines, missing = [], 0
    for entry in json.loads((out / "index.json").read_text()):
        reply = out / entry["folder"] / f"turn-{entry['turn']:03d}.reply.md"
        if reply.exists():
            lines.append(json.dumps({"scenario": entry["scenario"], "message": entry["message"],
                                     "reply": reply.read_text()}))
        else:
            missing += 1
    if not lines:
        sys.exit(f"error: no reply file under {out}; writers put turn-KKK.reply.md next to turn-KKK.md")
    (out / "replies.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} replies collected, {missing} turns without one: {out / 'replies.jsonl'}")


def writer_turns(replies: Path, convs, vocab) -> dict:
    """(scenario, message) -> Turn of each reply whose DM turn is in `convs`, read as a replayed turn
    is: ended at a loop, stripped, its calls parsed with the same vocabulary."""
    from dndllama.replay import _turn

    by_name = {c.scenario: c for c in convs}
    turns = {}
    for line in replies.read_text().splitlines():
        entry = json.loads(line)
        conversation = by_name.get(entry["scenario"])
        if conversation is None or entry["message"] >= len(conversation.messages):
            continue
        written = {"text": entry["reply"], "n_prompt": 0, "n_generated": 0, "stop_reason": "eos",
                   "prompt_tokens_per_s": 0, "gen_tokens_per_s": 0}
        turns[(entry["scenario"], entry["message"])] = _turn(conversation, entry["message"], written, vocab)
    return turns


def report(replies: Path, out: Path, eval_data: Path) -> None:
    """`out`: a report.json in `dndllama validate`'s form whose model turns are the writer's replies."""
    vocab, convs = conversations(eval_data)
    turns = writer_turns(replies, convs, vocab).values()
    out.write_text(json.dumps({"model": {"turns": [asdict(t) for t in turns]}}, indent=1))
    print(f"{len(turns)} turns: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["export", "collect", "report"])
    parser.add_argument("path", type=Path, help="export, collect: the turns' folder; report: a replies.jsonl")
    parser.add_argument("report", type=Path, nargs="?", help="report: the report.json to write")
    parser.add_argument("--groups", type=int, default=8, help="how many writers share the turns (export)")
    parser.add_argument("--eval-data", type=Path, default=ROOT / "ai-eval")
    args = parser.parse_args()
    if args.command == "export":
        if args.path.exists() and any(args.path.iterdir()):
            sys.exit(f"error: {args.path} is not empty; export into a new folder")
        export(args.path, max(1, args.groups), args.eval_data)
    elif args.command == "collect":
        collect(args.path)
    elif args.report is None:
        sys.exit("error: report needs the report.json to write: writer_replies.py report REPLIES.jsonl OUT.json")
    else:
        report(args.path, args.report, args.eval_data)


if __name__ == "__main__":
    main()
