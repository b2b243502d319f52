"""`dndllama data synth --out DIR --scenarios N --seed S`: write generated scenarios (dndllama.synth)
as markdown files a user can read, edit and check. Registered under the data group by cli/data.py."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..files import write_text
from ..scenarios import ERROR, load_folder
from ..synth import SYNTH_VERSION, generate, summarize
from .common import CliError, command

EVAL_FOLDER = "ai-eval"    # the evaluation set: never written into (nor read by the generator)


def add_synth_command(commands) -> None:
    synth = command(commands, "synth", cmd_data_synth,
                    "write generated scenarios (seeded D&D 5e mechanics) as markdown files")
    synth.add_argument("--out", required=True, metavar="DIR", help="folder to write <category>/synth_*.md into")
    synth.add_argument("--scenarios", type=int, default=100, metavar="N", help="how many (default 100)")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="generator seed (default 0)")


def cmd_data_synth(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.scenarios < 1:
        raise CliError(f"--scenarios {args.scenarios} writes nothing", "pass --scenarios 1 or more")
    if EVAL_FOLDER in out.resolve().parts:
        raise CliError(f"{out} is inside the evaluation folder {EVAL_FOLDER}/",
                           "write synthetic scenarios elsewhere (e.g. --out synth-data); the evaluation set must "
                           "stay hand-written and unseen by training")
    t0 = time.perf_counter()
    items = [generate(args.seed, index) for index in range(args.scenarios)]
    seconds = time.perf_counter() - t0
    for item in items:
        write_text(out / item.path, item.text)
    check = load_folder(out)
    written = {item.path for item in items}
    mine = [s for s in check.scenarios if s.path in written]
    errors = [d for d in check.errors if d.path in written]
    for diagnostic in errors[:20]:
        print(diagnostic)
    stats = summarize(mine, seconds)
    print(f"wrote {len(items)} scenarios to {out}/ (generator v{SYNTH_VERSION}, seed {args.seed}) in "
          f"{seconds:.1f} s ({stats['scenarios_per_second']} scenarios/s)")
    print(f"  categories: {', '.join(f'{k} {v}' for k, v in stats['categories'].items())}")
    print(f"  turns: {stats['turns']}, DM turns: {stats['dm_turns']}, "
          f"without a call: {stats['no_call_share']:.0%}")
    print(f"  calls: {', '.join(f'{k} {v}' for k, v in stats['calls'].items())}")
    print(f"  check: {len(errors)} errors, {sum(d.path in written for d in check.warnings)} warnings "
          "(unknown-target warnings are monsters' health: fine for creatures)")
    return 1 if any(d.severity == ERROR for d in errors) else 0
