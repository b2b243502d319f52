"""Run the fault suite outside pytest and print the tally.

    python scripts/fault_suite.py [--fuzz N] [--race N] [--keep DIR]

Runs every case of tests/fault_cases.py (bad settings, flags, data, registry damage) as the real CLI
in a subprocess on a tiny real model, N fuzzed CLI runs (mutated GGUF headers, hostile flag
values), and N racing pairs of `models use`; prints one line per case that did not end in a clear
error or a correct result, and last:

    cases=... clear_errors=... works=... unclear=... crashes=0 silent_wrong=0 lost_versions=0

crashes counts native aborts/segfaults and Python tracebacks shown without --debug; silent_wrong,
a bad input accepted with exit 0 or a wrong result (a registry whose current and
cactus.config.json disagree); lost_versions, versions changed or deleted by a case that was not
meant to. The exit status is 1 when any of those three is not 0.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_cases import (CASES, CRASH_STATUSES, Result, fuzz_runs, make_base, make_env,  # noqa: E402
                         run_case, use_and_check)


def fuzz_results(root: Path, base: Path, n: int) -> list[Result]:
    env = make_env(root / "fuzz", base)
    results = []
    for argv, code, err in fuzz_runs(env, n, seed=2026):
        name = "fuzz: dndllama " + " ".join(argv)[:160]
        if code in CRASH_STATUSES or "Traceback" in err or "GGML_ASSERT" in err:
            results.append(Result(name, "crash", f"exit {code}: {err[-400:]}", returncode=code))
        elif code == 0 or any(line.startswith(("error:", "usage:")) for line in err.splitlines()):
            results.append(Result(name, "clear_error" if code else "works", "", returncode=code))
        else:
            results.append(Result(name, "unclear", err[-400:], returncode=code))
    return results


def race_result(root: Path, base: Path, pairs: int) -> Result:
    env = make_env(root / "race", base)
    jobs = [(str(env.models), name) for _ in range(pairs) for name in ("v0001", "v0002")]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        problems = [p for p in pool.imap_unordered(use_and_check, jobs, chunksize=10) if p]
    name = f"{pairs} racing pairs of models use"
    if problems:
        return Result(name, "silent_wrong", f"{len(problems)} disagreements, e.g. {problems[0]}")
    return Result(name, "works", "current and cactus.config.json agreed after every command")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=32, help="fuzzed CLI runs (default 32)")
    parser.add_argument("--race", type=int, default=500, help="racing pairs of models use (default 500)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fault-suite-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        base = make_base(root)
        results = []
        for i, case in enumerate(CASES):
            results.append(run_case(case, make_env(root / f"case-{i:02d}", base)))
            _report(results[-1])
        for result in fuzz_results(root, base, args.fuzz) + [race_result(root, base, args.race)]:
            results.append(result)
            _report(result)
    counts = Counter(r.outcome for r in results)
    lost = sum(len(r.lost) for r in results)
    print(f"cases={len(results)} clear_errors={counts['clear_error']} works={counts['works']} "
          f"unclear={counts['unclear']} crashes={counts['crash']} silent_wrong={counts['silent_wrong']} "
          f"lost_versions={lost}")
    return 1 if counts["crash"] or counts["silent_wrong"] or lost else 0


def _report(result: Result) -> None:
    if result.outcome not in ("clear_error", "works") or result.lost:
        print(f"{result.outcome}: {result.case}: {result.detail}" + (f" (lost {result.lost})" if result.lost else ""),
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
