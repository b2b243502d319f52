"""Tool-call quality of a model and of its base, replayed on the same evaluation turns in one run.

    python scripts/bench_quality.py [MODEL] [--max-turns N] [--data DIR] [--models-dir DIR] [--threads N]

MODEL is a .gguf, a version (v0002, 2), `current` (the default) or `embedded` (the embedded Gemma 3
270M). The evaluation set is `ai-eval/` when it exists, else `tests/data/independent/`, else the
validation split of `ai-training/` (--data picks another folder: every scenario of it is replayed).
The base is the one the model records (GGUF key `dndllama.base`), else the embedded base.

The last two lines are the base's figures, then the model's:
    base: tool_name_f1=… exact_f1=… consequence_exact=… no_call_acc=… must_call_acc=… format_valid=… calls_per_ref=…
    tool_name_f1=… exact_f1=… consequence_exact=… no_call_acc=… must_call_acc=… format_valid=… calls_per_ref=…
On ai-eval/ a line before them (`second writer: …`) scores a second writer's replies on the same
turns, what two careful writers agree on (docs/evaluation.md, "What a second writer scores").
Each rate's definition is in dndllama/scoring.py; `-` marks an undefined rate (no turn of its kind).
Greedy decoding constrained by the tool-call grammar, as `dndllama validate` and the app
(`--no-grammar`: free decoding); generation is CPU-bound, so on a shared machine the time
per turn varies, the scores do not.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_FOLDERS = ("ai-eval", "tests/data/independent")   # in order of preference; then ai-training's split
BASE_KEY = "dndllama.base"
WRITER = ROOT / "docs" / "data" / "second-writer-ai-eval.jsonl"   # a second writer's ai-eval/ turns
# (printed name, ToolMetrics field, format)
FIGURES = [("tool_name_f1", "name_f1", "{:.3f}"), ("exact_f1", "exact_f1", "{:.3f}"),
           ("consequence_exact", "consequence_exact", "{:.3f}"), ("no_call_acc", "no_call_accuracy", "{:.3f}"),
           ("must_call_acc", "must_call_accuracy", "{:.3f}"), ("format_valid", "format_validity", "{:.3f}"),
           ("calls_per_ref", "calls_per_reference", "{:.2f}")]


def evaluation_set(data: str | None):
    """(vocabulary, conversations, description) of the evaluation turns."""
    from dndllama.config import load_config
    from dndllama.tools import load_vocabulary

    folders = [Path(data)] if data else [ROOT / f for f in EVAL_FOLDERS]
    for folder in folders:
        if folder.is_dir():
            vocab = load_vocabulary(folder)
            return vocab, _split(folder, vocab, 1.0).validation, f"every scenario of {folder}"
    if data:
        sys.exit(f"error: evaluation folder '{data}' not found; pass a folder of scenarios to --data")
    training = ROOT / "ai-training"
    vocab = load_vocabulary(training)
    split = _split(training, vocab, load_config(training).val_fraction)
    return vocab, split.validation, f"the validation split of {training}"


def _split(folder: Path, vocab, fraction: float):
    from dndllama.dataset import build_dataset
    from dndllama.scenarios import ScenarioError, load_folder

    try:
        return build_dataset(load_folder(folder, vocab), fraction)
    except ScenarioError as exc:
        sys.exit(f"error: {len(exc.diagnostics)} error(s) in the scenarios under '{folder}'; "
                 f"run `dndllama data check {folder}` and fix what it reports")


def resolve(spec: str, models_dir: Path) -> Path:
    from dndllama import registry
    from dndllama.base import embedded_gguf

    if spec == "embedded":
        return embedded_gguf()
    try:
        return registry.resolve(models_dir, spec)
    except registry.RegistryError as exc:
        sys.exit(f"error: {exc}\n(pass a .gguf, a version, or `embedded` for the embedded base)")


def base_of(model: Path) -> Path:
    """The base `model` was trained from, when it records one that is here; else the embedded base."""
    from dndllama import _native
    from dndllama.base import embedded_gguf

    source = _native.Model(str(model), vocab_only=True).info().metadata.get(BASE_KEY, "")
    if source and source != "embedded" and Path(source).expanduser().is_file():
        return Path(source).expanduser()
    return embedded_gguf()


def figures(tools) -> str:
    cells = []
    for name, field, fmt in FIGURES:
        value = getattr(tools, field)
        cells.append(f"{name}={'-' if value is None else fmt.format(value)}")
    return " ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="current", metavar="MODEL")
    parser.add_argument("--max-turns", type=int, metavar="N", help="replay only the first N DM turns")
    parser.add_argument("--data", metavar="DIR", help="evaluation folder (default: ai-eval/, then "
                        "tests/data/independent/, then ai-training's validation split)")
    parser.add_argument("--models-dir", default="models", metavar="DIR")
    parser.add_argument("--max-tokens", type=int, default=128, metavar="N")
    parser.add_argument("--ctx", type=int, default=2048, metavar="N", help="generation context (the app's)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads (default: all)")
    parser.add_argument("--grammar", action=argparse.BooleanOptionalAction, default=True,
                        help="decode with the tool-call grammar, as the app does (default: on)")
    args = parser.parse_args(argv)

    from dndllama.validate import dm_turns, validate_one

    vocab, conversations, which = evaluation_set(args.data)
    model = resolve(args.model, Path(args.models_dir))
    base = base_of(model)
    turns = len(dm_turns(conversations, args.max_turns))
    print(f"evaluation set: {which}: {turns} DM turns of {len(conversations)} scenarios", flush=True)
    run = dict(conversations=conversations, vocab=vocab, max_tokens=args.max_tokens, n_ctx=args.ctx,
               loss_ctx=768, seed=0, max_turns=args.max_turns, n_threads=args.threads, n_gpu_layers=0,
               grammar=args.grammar, with_loss=False)
    results = {}
    for label, path in (("model", model), ("base", base)):
        if label == "base" and path == model:     # the model is the base: greedy replays are identical
            results["base"] = results["model"]
            print("base: the model itself", flush=True)
            continue
        start = time.perf_counter()
        print(f"{label}: {path}", flush=True)
        results[label] = validate_one(label, path, **run)
        tools = results[label].tools
        print(f"{label}: {len(results[label].turns)} turns in {time.perf_counter() - start:.0f} s; "
              f"{tools.reference_calls} reference calls, {tools.predicted_calls} attempts", flush=True)
    writer = second_writer(results["model"].turns, conversations, vocab)
    if writer is not None:
        print(f"second writer: {figures(writer)}")
    print(f"base: {figures(results['base'].tools)}")
    print(figures(results["model"].tools))
    return 0


def second_writer(turns, conversations, vocab):
    """A second writer's scores on the same turns (docs/evaluation.md, "What a second writer scores"),
    when its replies cover them all; else None (another evaluation set, or ai-eval/ edited since)."""
    from writer_replies import writer_turns   # scripts/ is on sys.path when run as a script

    from dndllama.validate import score_turns

    if not WRITER.exists():
        return None
    written = writer_turns(WRITER, conversations, vocab)
    keys = [(t.scenario, t.message) for t in turns]
    if not keys or any(k not in written or written[k].reference != t.reference for k, t in zip(keys, turns)):
        return None
    return score_turns([written[k] for k in keys], conversations, vocab)


if __name__ == "__main__":
    sys.exit(main())
