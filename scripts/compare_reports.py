"""Two models' tool calls on the same evaluation turns: the difference of every rate, and whether the
evaluation set can tell them apart.

    python scripts/compare_reports.py A/report.json B/report.json [--eval-data DIR] [--data DIR]

Each report.json is what `dndllama validate` or `dndllama train` writes. The turns both replayed are
scored again with this checkout's scoring (so reports from older versions compare too), per
scenario, and each difference A - B gets the 95 % interval of resampling whole scenarios, the same
draw for both (scoring.paired_change). An interval that holds 0 means this evaluation set cannot
tell the two models apart on that rate, however different the figures look. Use it before calling a
recipe better than another (and compare several training seeds of each: this interval covers the
choice of turns, not the swing between training runs).

The last line: `compared_turns=… name_f1_diff=… name_f1_ci=lo,hi exact_f1_diff=… exact_f1_ci=lo,hi`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ("name_f1", "exact_f1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="report.json of model A")
    parser.add_argument("b", type=Path, help="report.json of model B")
    parser.add_argument("--eval-data", default=str(ROOT / "ai-eval"), help="the evaluation folder both replayed")
    parser.add_argument("--data", default=str(ROOT / "ai-training"), help="the folder whose tool vocabulary scores")
    args = parser.parse_args()

    from dndllama.evalset import EvalSetError, load_eval_set
    from dndllama.replay import Turn
    from dndllama.report import fmt_value
    from dndllama.scoring import RATES, paired_change
    from dndllama.tools import load_vocabulary
    from dndllama.validate import score_turns

    turns = [_turns(path, Turn) for path in (args.a, args.b)]
    shared = turns[0].keys() & turns[1].keys()
    if not shared:
        sys.exit("error: the two reports replayed no DM turn in common; compare reports of the same evaluation set")
    vocab = load_vocabulary(Path(args.data))
    try:
        conversations = load_eval_set(Path(args.eval_data), vocab).conversations
    except EvalSetError as exc:
        sys.exit(f"error: {exc}")
    known = {c.scenario for c in conversations}
    keys = sorted(k for k in shared if k[0] in known)
    if not keys:
        sys.exit(f"error: none of the reports' scenarios is in {args.eval_data}; pass the folder they replayed "
                 "with --eval-data")
    scored = [score_turns([t[k] for k in keys], conversations, vocab) for t in turns]
    print(f"{len(keys)} DM turns of {len({k[0] for k in keys})} scenarios replayed by both "
          f"(A: {args.a}, B: {args.b})")
    print(f"{'rate':<52} {'A':>7} {'B':>7} {'A - B':>7}  95 % interval    differ?")
    summary = {}
    for key, label, _ in RATES:
        a, b = getattr(scored[0], key), getattr(scored[1], key)
        found = paired_change(scored[0], scored[1], key)
        if found is None:
            print(f"{label:<52} {fmt_value(a):>7} {fmt_value(b):>7}")
            continue
        diff, low, high = found
        differ = "A better" if low > 0 else "B better" if high < 0 else "no"
        print(f"{label:<52} {fmt_value(a):>7} {fmt_value(b):>7} {diff:>+7.3f}  [{low:+.3f}, {high:+.3f}]  {differ}")
        if key in SUMMARY:
            summary[key] = (diff, low, high)
    informed = informedness_change(scored[0], scored[1])
    if informed:
        (a, b, diff), low, high = informed
        differ = "A better" if low > 0 else "B better" if high < 0 else "no"
        print(f"{'call decision informedness (must-call + no-call - 1)':<52} {a:>7.3f} {b:>7.3f} {diff:>+7.3f}  "
              f"[{low:+.3f}, {high:+.3f}]  {differ}")
    a, b = (f"{m.repeated_calls} of {m.predicted_calls}" for m in scored)
    print(f"{'attempts repeating the call just resolved':<52} {a:>9} {b:>9}")
    _print_arguments(scored)
    print("compared_turns=" + str(len(keys)) + "".join(
        f" {k}_diff={d:+.3f} {k}_ci={lo:+.3f},{hi:+.3f}" for k, (d, lo, hi) in summary.items()))


def informedness_change(a, b, resamples: int = 2000, seed: int = 0):
    """Whether a model knows *when* to call, apart from how often it calls: must-call + no-call
    accuracy - 1 (Youden's J; 0 = calling at random, 1 = every decision right). A recipe that only
    makes the model call less trades must-call for no-call accuracy and leaves this where it was.
    ((J of A, J of B, A - B), low, high) with the interval of resampling whole scenarios as
    scoring.paired_difference draws them; None without per-scenario counts."""
    import numpy as np

    rates = ("must_call_accuracy", "no_call_accuracy")
    groups = [getattr(m, "groups", {}) for m in (a, b)]
    if not groups[0] or groups[0].keys() != groups[1].keys():
        return None
    counts = np.array([[c for g in groups for r in rates for c in g[s][r]] for s in groups[0]], dtype=float)

    def informedness(sums):   # columns: must k, n, no-call k, n of A, then of B
        with np.errstate(divide="ignore", invalid="ignore"):
            return [sums[..., i] / sums[..., i + 1] + sums[..., i + 2] / sums[..., i + 3] - 1 for i in (0, 4)]

    ja, jb = informedness(counts.sum(axis=0))
    if not (np.isfinite(ja) and np.isfinite(jb)):
        return None
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    da, db = informedness(counts[draws].sum(axis=1))
    diffs = (da - db)[np.isfinite(da - db)]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return (float(ja), float(jb), float(ja - jb)), float(low), float(high)


def _print_arguments(scored) -> None:
    """Each argument of the paired calls, right / of, for A and B: which part of the calls moved."""
    names = list(dict.fromkeys(n for m in scored for n in m.per_argument))
    if names:
        print(f"{'argument (right / of the paired calls)':<52} {'A':>9} {'B':>9}")
    for name in names:
        a, b = (m.per_argument.get(name, [0, 0]) for m in scored)
        print(f"{name:<52} {f'{a[0]}/{a[1]}':>9} {f'{b[0]}/{b[1]}':>9}")


def _turns(path: Path, turn_type) -> dict:
    """(scenario, message) -> Turn of the model (not the baseline) in a report.json."""
    try:
        report = json.loads(path.read_text())
        return {(t["scenario"], t["message"]): turn_type(**t) for t in report["model"]["turns"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"error: {path} is not a readable report.json of `dndllama validate` ({exc})")


if __name__ == "__main__":
    main()
