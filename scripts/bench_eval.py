"""Replay speed of validation: the old path (a fresh context per DM turn, the whole conversation
decoded again, one sequence at a time, each generation running to the end of turn or max_tokens)
against the new one (each conversation decoded once, every turn generated in a fork, forks decoded
together, a generation stopped as it writes a call or sentence a third time), in the same run, on
the embedded base (Gemma 3 270M Q4_K_M) and a Q8_0 copy of it, and any trained GGUF given with --model.

    python scripts/bench_eval.py [--data ai-eval] [--turns N] [--model PATH] [--parallel 16] [--threads 0] [--no-busy]
                                 [--compare-loop-stop]

The evaluation set is ai-eval/ when it exists, else tests/data/independent (every scenario).
`--turns N` takes whole scenarios, in turn from each category, up to about N DM turns: validation
replays whole conversations, and their turns share prefixes.
Greedy tokens of both paths are compared turn by turn (a turn the new path stopped at a loop is
identical when its tokens begin the old path's); where a turn differs, the logit gap between
the two paths' tokens at the first difference says how near a tie it was. Then the batched path runs again on the
Q8_0 copy with one competing CPU-bound process (`python -c "while True: pass"`): busy_slowdown is
its seconds over the quiet run's. The last line is

    turns=<n> s_per_turn_old=<s> s_per_turn_new=<s> speedup=<x> tokens_identical=<true|false|k/n> busy_slowdown=<x>

(s_per_turn over both models' turns). Absolute times drift on shared machines; the ratios measured
in one run are the figures to compare. `--compare-loop-stop` also replays each model batched without
the stop at a call's or sentence's third copy (replay.end_at_loop), and prints the time, the tokens
generated and the replies whose scored text differs: the stop's share of the speedup.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench_train import competing_process   # scripts/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent


def conversations(data: Path | None):
    from dndllama.dataset import build_dataset
    from dndllama.scenarios import load_folder
    from dndllama.tools import load_vocabulary

    folder = data or next(p for p in (ROOT / "ai-eval", ROOT / "tests" / "data" / "independent") if p.is_dir())
    vocab = load_vocabulary(folder)
    split = build_dataset(load_folder(folder, vocab), 1.0)   # every scenario
    return folder, vocab, sorted(split.validation, key=lambda c: c.scenario)


def whole_scenarios(convs, turns: int | None):
    """The conversations a judgement of `turns` DM turns reaches (replay.dm_turns: whole conversations,
    a category at a time), each whole: judging replays whole conversations, whose turns share their
    prefixes; a few turns picked from many conversations would share nothing."""
    from dndllama.replay import dm_turns

    if not turns:
        return convs
    reached = {id(c) for c, _ in dm_turns(convs, turns)}
    return [c for c in convs if id(c) in reached]


def models(cache: Path) -> list[tuple[str, Path]]:
    from dndllama import _native
    from dndllama.base import embedded_gguf

    base = embedded_gguf()
    q8 = cache / "bench-eval-q8_0.gguf"
    if not q8.exists():
        q8.parent.mkdir(parents=True, exist_ok=True)
        _native.quantize(str(base), str(q8), "Q8_0")
    return [("base Q4_K_M", base), ("Q8_0", q8)]


def run(path: Path, convs, vocab, args, one_at_a_time: bool, **kwargs):
    from dndllama import _native
    from dndllama.replay import replay

    model = _native.Model(str(path))
    return replay(model, convs, vocab, max_tokens=args.max_tokens, n_ctx=args.n_ctx, n_threads=args.threads,
                  parallel=args.parallel, one_at_a_time=one_at_a_time, **kwargs)


def loop_stop_line(label: str, path: Path, convs, vocab, args, stopped) -> str:
    """The batched replay with generation running on past a loop, against `stopped` (with the stop)."""
    free = run(path, convs, vocab, args, one_at_a_time=False, max_repeats=0)
    n = len(stopped.turns)
    differ = sum(a.prediction != b.prediction for a, b in zip(stopped.turns, free.turns))
    tokens = [sum(t.generated_tokens for t in r.turns) for r in (free, stopped)]
    return (f"{label}: loop stop: {free.seconds / n:.3f} s/turn without, {stopped.seconds / n:.3f} with "
            f"({free.seconds / stopped.seconds:.2f}x); generated tokens {tokens[0]} -> {tokens[1]}; "
            f"{sum(t.stop_reason == 'loop' for t in stopped.turns)} replies stopped at a loop; "
            f"scored text differs in {differ}/{n} turns")


def compare(path: Path, convs, old, new, n_ctx: int) -> tuple[int, list[float], list[str]]:
    """Turns whose generated tokens are identical (up to where the new path stopped at a loop), the
    logit gap at each first difference (how near a tie the two paths broke differently), and a line
    for each turn that differs."""
    from dndllama import _native
    from dndllama.dataset import GEMMA_CHAT_TEMPLATE
    from dndllama.replay import _prompt, dm_turns, first_difference

    model = _native.Model(str(path))
    template = "" if model.info().chat_template else GEMMA_CHAT_TEMPLATE
    bos = model.detokenize(model.tokenize("", True, True), True)
    where = {(c.scenario, i): c for c, i in dm_turns(convs)}
    same, gaps, notes = 0, [], []
    for turn, stopped, a, b in zip(old.turns, new.turns, old.tokens, new.tokens):
        if a == b or (stopped.stop_reason == "loop" and a[:len(b)] == b):
            same += 1
            continue
        conversation = where[(turn.scenario, turn.message)]
        prompt = model.tokenize(_prompt(model, conversation.messages[:turn.message], template, bos), True, True)
        at, gap = first_difference(model, prompt, a, b, n_ctx)
        gaps += [gap] if gap is not None else []
        notes.append(f"  {turn.scenario} message {turn.message}: first difference at generated token {at} "
                     f"of {len(a)} / {len(b)}" + (f", logit gap there {gap:.3f}" if gap is not None else
                                                 ", where one path stopped"))
    return same, gaps, notes


def busy(path: Path, convs, vocab, args) -> float:
    with competing_process():
        return run(path, convs, vocab, args, one_at_a_time=False).seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--turns", type=int, default=None,
                        help="whole scenarios, taken in turn from each category, up to about N DM turns (default: all)")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="also a trained GGUF (repeatable), e.g. a kept checkpoint")
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="0 = the free cores (as dndllama does)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("DNDLLAMA_CACHE", "~/.cache/dndllama"))
                        .expanduser())
    parser.add_argument("--no-busy", action="store_true", help="skip the run with a competing process")
    parser.add_argument("--compare-loop-stop", action="store_true",
                        help="also time the batched replay without the stop at a loop (replay.end_at_loop)")
    args = parser.parse_args()

    folder, vocab, convs = conversations(args.data)
    convs = whole_scenarios(convs, args.turns)
    print(f"evaluation set: {folder} ({len(convs)} scenarios); cpu: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    total_old = total_new = 0.0
    turns = same = 0
    gaps: list[float] = []
    q8_quiet = 0.0
    for label, path in models(args.cache) + [(p.name, p) for p in args.model]:
        new = run(path, convs, vocab, args, one_at_a_time=False)
        old = run(path, convs, vocab, args, one_at_a_time=True, max_repeats=0)
        n = len(new.turns)
        k, model_gaps, notes = compare(path, convs, old, new, args.n_ctx + args.max_tokens)
        gaps += model_gaps
        print(f"{label}: {n} turns; old {old.seconds / n:.2f} s/turn, new {new.seconds / n:.3f} s/turn "
              f"({old.seconds / new.seconds:.1f}x); identical tokens {k}/{n}; cut at max_tokens "
              f"{new.cut_at_max_tokens}/{n} (old {old.cut_at_max_tokens}); prompt tokens decoded "
              f"{new.stats['fed_tokens']} of {new.stats['prompt_tokens']}; up to {new.stats['max_parallel']} "
              f"forks per batch", flush=True)
        for line in notes:
            print(line)
        if args.compare_loop_stop:
            print(loop_stop_line(label, path, convs, vocab, args, new), flush=True)
        total_old, total_new, turns, same = total_old + old.seconds, total_new + new.seconds, turns + n, same + k
        if label == "Q8_0":
            q8_quiet, q8_path = new.seconds, path
    slowdown = "-"
    if not args.no_busy:
        busy_s = busy(q8_path, convs, vocab, args)
        slowdown = f"{busy_s / q8_quiet:.2f}"
        print(f"Q8_0 with one competing CPU-bound process: {busy_s:.1f} s vs {q8_quiet:.1f} s quiet", flush=True)
    identical = "true" if same == turns else ("false" if same == 0 else f"{same}/{turns}")
    if gaps:
        print(f"differing turns: {turns - same}; they part where two tokens' logits were within "
              f"{max(gaps):.3f} of each other (median {sorted(gaps)[len(gaps) // 2]:.3f}): float summation "
              "order of batched vs one-token kernels")
    print(f"turns={turns} s_per_turn_old={total_old / turns:.3f} s_per_turn_new={total_new / turns:.3f} "
          f"speedup={total_old / total_new:.1f} tokens_identical={identical} busy_slowdown={slowdown}")


if __name__ == "__main__":
    main()
