"""Generation speed, statistics and diversity of `dndllama data synth`, next to the hand-written corpus.

    python scripts/bench_synth.py [--scenarios 500] [--seed 0] [--data ai-training]

Prints the generator's speed (scenarios/s, generation only, and with validation), the statistics of
the generated scenarios (turns, DM turns, no-call share, calls per tool) and of the hand-written ones,
and a diversity figure: distinct word 4-grams / all 4-grams of the DM prose (tool-call lines left out),
on the whole of each corpus and on equal-size samples (the first DM prose words of the synthetic
corpus, as many as the hand-written corpus has), since the ratio falls as a corpus grows. The last
line is `synth_per_s=... no_call_share=... distinct4_synth=... distinct4_hand=...` (equal-size).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from dndllama.scenarios import load_folder, parse_scenario
from dndllama.synth import generate, summarize
from dndllama.tools import CALL_PATTERN

WORD = re.compile(r"[a-z0-9']+")


def prose_words(scenarios) -> list[str]:
    words = []
    for scenario in scenarios:
        for turn in scenario.turns:
            if turn.kind == "dm":
                words += WORD.findall(CALL_PATTERN.sub(" ", turn.text).lower())
    return words


def distinct_4grams(words: list[str]) -> float:
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return len(set(grams)) / max(1, len(grams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="ai-training")
    args = parser.parse_args()

    t0 = time.perf_counter()
    items = [generate(args.seed, i) for i in range(args.scenarios)]
    t1 = time.perf_counter()
    synthetic = [parse_scenario(item.text, item.path, category=item.category) for item in items]
    t2 = time.perf_counter()
    hand = load_folder(args.data).scenarios

    for name, scenarios, seconds in (("synthetic", synthetic, t1 - t0), ("hand-written", hand, 0.0)):
        stats = summarize(scenarios, seconds)
        per_tool = {k: round(v / max(1, stats["dm_turns"]), 3) for k, v in stats["calls"].items()}
        print(f"{name}: {stats['scenarios']} scenarios, {stats['turns']} turns "
              f"({stats['turns'] / max(1, stats['scenarios']):.1f} per scenario), {stats['dm_turns']} DM turns, "
              f"no-call share {stats['no_call_share']:.3f}")
        print(f"  calls: {stats['calls']}")
        print(f"  calls per DM turn: {per_tool}")
        print(f"  categories: {stats['categories']}")
    print(f"speed: {args.scenarios / (t1 - t0):.0f} scenarios/s generated, "
          f"{args.scenarios / (t2 - t0):.0f} scenarios/s generated and parsed")

    synth_words, hand_words = prose_words(synthetic), prose_words(hand)
    equal = synth_words[: len(hand_words)]
    print(f"DM prose: synthetic {len(synth_words)} words, hand-written {len(hand_words)} words")
    print(f"distinct 4-grams / all: synthetic {distinct_4grams(synth_words):.3f} (all {args.scenarios}), "
          f"{distinct_4grams(equal):.3f} (first {len(equal)} words); hand-written {distinct_4grams(hand_words):.3f}")
    stats = summarize(synthetic)
    print(f"synth_per_s={args.scenarios / (t1 - t0):.0f} no_call_share={stats['no_call_share']:.3f} "
          f"distinct4_synth={distinct_4grams(equal):.3f} distinct4_hand={distinct_4grams(hand_words):.3f}")


if __name__ == "__main__":
    main()
