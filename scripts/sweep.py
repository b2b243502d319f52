"""A grid of training settings, each run judged as a curve: tool calls on the evaluation set at every
checkpoint, so a recipe is chosen by measurement (issue 15, item 5).

    python scripts/sweep.py [--grid "lr=5e-5,1e-4 method=full,lora16"] [--grid-file sweep.toml]
                            [--quick] [--runs SUBSTRING,...] [--max-turns N] [--out DIR] [--docs]
                            [--points-per-epoch N] [--keep-checkpoints] [--data DIR] [--set KEY=VALUE ...]

Every run trains with the pipeline's own stages (data, base, dataset, training) and keeps a
checkpoint every `eval_every` steps (default: `--points-per-epoch` per epoch) with its validation
loss; after training each checkpoint is replayed on the evaluation set through a Q8_0 copy, as
`dndllama train` chooses its checkpoint (selection.select_checkpoint), and its F32 file is deleted unless
--keep-checkpoints (each is ~4 bytes per parameter). The base itself is the curve's epoch-0 point.

A grid is axes of `dndllama.toml` settings plus `method` = full | lora16 | lora64 (LoRA and its
rank). `vary = "one"` (the default grid) varies one axis at a time around each axis's first value;
`vary = "all"` runs their product. The default grid is both: one axis at a time over 8 epochs, and
the 20x synthetic mix over 2. `--grid` axes replace the grid (their product). A TOML grid file:

    vary = "all"
    [settings]            # fixed for every run
    epochs = 4
    [grid]
    lr = [5e-5, 1e-4]
    method = ["full", "lora16"]

Writes into --out (default sweep/): sweep.json (resumable: a rerun skips judged points and finished
runs), sweep.md (each run's best point, with 95 % Wilson intervals) and sweep.png (tool-name and
exact-call F1 against epoch, one line per run); --docs also puts the table and the PNG into docs/
(docs/training.md between its sweep markers, docs/sweep-curves.png).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP_VERSION = 1
METHODS = {"full": {"method": "full"}, "lora16": {"method": "lora", "lora_rank": 16},
           "lora64": {"method": "lora", "lora_rank": 64}}
# one axis at a time around the first values (1 + 2 + 2 + 2 + 1 = 8 runs of 8 epochs), then the
# 20x mix alone: 21x the hand-written windows per epoch, so 2 epochs already see each turn 42 times
DEFAULT_GRIDS = [{"vary": "one", "settings": {"epochs": 8},
                  "grid": {"lr": [5e-5, 1e-4, 2e-5], "method": ["full", "lora16", "lora64"],
                           "synth": [1.0, 0.0, 5.0], "synth_loss": ["calls", "all"]}},
                 {"vary": "all", "settings": {"epochs": 2, "lr": 5e-5, "method": "full"}, "grid": {"synth": [20.0]}}]
QUICK_GRID = {"vary": "all", "settings": {"epochs": 1, "max_steps": 2, "eval_every": 1},
              "grid": {"method": ["full", "lora16"]}}
QUICK_MAX_TURNS = 4
MAX_POINTS = 100   # checkpoints a run keeps: the most checkpoint_candidates accepts (settings.py)
NAME_PREFIX = {"method": "", "synth_loss": "loss_"}   # run names: "full", "loss_calls"; other axes their key
# (sweep.json key, ToolMetrics field): what each point records of the replay
METRICS = [("tool_name_f1", "name_f1"), ("exact_f1", "exact_f1"), ("consequence_exact", "consequence_exact"),
           ("no_call_accuracy", "no_call_accuracy"), ("must_call_accuracy", "must_call_accuracy"),
           ("format_validity", "format_validity"), ("calls_per_reference", "calls_per_reference")]
# the table's rate columns: (header, ToolMetrics field with counts and a Wilson interval)
TABLE_RATES = [("tool-name F1", "name_f1"), ("exact-call F1", "exact_f1"), ("consequence exact", "consequence_exact"),
               ("no-call acc.", "no_call_accuracy"), ("must-call acc.", "must_call_accuracy")]
DOCS_BEGIN, DOCS_END = "<!-- sweep:begin -->", "<!-- sweep:end -->"


class SweepError(ValueError):
    """A bad grid or a sweep.json made with other judging settings; the message says what to change."""


# ---------------------------------------------------------------- the grid


def parse_grid_arg(text: str) -> dict:
    """`lr=5e-5,1e-4 method=full,lora16` -> {"lr": [5e-5, 1e-4], "method": ["full", "lora16"]}."""
    axes = {}
    for part in text.split():
        key, sep, values = part.partition("=")
        if not sep or not values:
            raise SweepError(f"--grid: '{part}' is not KEY=V1,V2,...; e.g. --grid \"lr=5e-5,1e-4 method=full,lora16\"")
        axes[key.strip()] = [_value(v) for v in values.split(",")]
    return axes


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def load_grid_file(path: Path) -> dict:
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SweepError(f"--grid-file {path}: {exc}") from None
    unknown = set(spec) - {"vary", "settings", "grid"}
    if unknown or not isinstance(spec.get("grid", {}), dict):
        raise SweepError(f"{path}: a grid file holds vary, [settings] and [grid] only "
                         f"(found {', '.join(sorted(spec))})")
    return spec


def expand(spec: dict) -> list[dict]:
    """The runs of a grid spec: each one's settings (fixed settings, then its axis values)."""
    axes = {k: v if isinstance(v, list) else [v] for k, v in spec.get("grid", {}).items()}
    if any(not values for values in axes.values()):
        raise SweepError("every grid axis needs at least one value")
    vary = spec.get("vary", "all")
    if vary == "all":
        combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    elif vary == "one":
        centre = {k: v[0] for k, v in axes.items()}
        combos = [centre] + [{**centre, k: v} for k, values in axes.items() for v in values[1:]]
    else:
        raise SweepError(f"vary must be 'one' or 'all', not {vary!r}")
    runs, seen = [], set()
    for combo in combos:
        fixed = spec.get("settings", {})
        if not {**fixed, **combo}.get("synth"):   # no synthetic turns: their loss setting changes nothing
            combo = {k: v for k, v in combo.items() if k != "synth_loss"}
        key = json.dumps([fixed, combo], sort_keys=True)
        if key not in seen:
            seen.add(key)
            runs.append({"name": run_name({**fixed, **combo}, list(axes)), "fixed": fixed, "axes": combo})
    return runs


def run_settings(run: dict, common: dict) -> dict:
    """A run's settings: the grid's fixed settings, then --set, then the run's own axis values."""
    return {**run["fixed"], **common, **run["axes"]}


def run_name(settings: dict, axes: list[str]) -> str:
    """A short, readable, file-safe name from the varied settings (all settings when none vary)."""
    keys = [k for k in axes if k in settings] or sorted(settings)
    parts = [f"{NAME_PREFIX.get(k, k)}{settings[k]:g}" if isinstance(settings[k], float)
             else f"{NAME_PREFIX.get(k, k)}{settings[k]}" for k in keys]
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", "-".join(parts)) or "default"


def config_overrides(settings: dict) -> dict:
    """A run's settings as Config overrides: `method` = lora16 is LoRA at rank 16; `lr` is the
    learning rate of the run's method (lora_lr for LoRA), so one lr axis spans both methods."""
    out = dict(settings)
    method = out.pop("method", None)
    if method is not None:
        if method not in METHODS:
            raise SweepError(f"method '{method}' is not one of {', '.join(METHODS)}")
        out.update(METHODS[method])
    if out.get("method") == "lora" and "lr" in out:
        out["lora_lr"] = out.pop("lr")
    return out


# ---------------------------------------------------------------- the record


def load_record(path: Path, judging: dict) -> dict:
    """sweep.json, or a fresh one; refuses one judged with other settings (its points would not compare)."""
    if not path.exists():
        return {"version": SWEEP_VERSION, "judging": judging, "base": None, "runs": {}}
    record = json.loads(path.read_text(encoding="utf-8"))
    record["judging"] = {"grammar": False, **record.get("judging", {})}   # records before it decoded freely
    if record.get("judging") != judging:
        raise SweepError(f"{path} was judged with {record.get('judging')}, not {judging}; "
                         "rerun with the same --max-turns and data, or pass another --out")
    return record


def save_record(path: Path, record: dict) -> None:
    from dndllama.files import write_json

    write_json(path, record)   # a temp file renamed into place: a kill never leaves half a record


def point_of(result, step: int, epoch: float, checkpoint: str, val_loss) -> dict:
    tools = result.tools
    return {"step": step, "epoch": round(epoch, 4), "checkpoint": checkpoint, "val_loss": val_loss,
            **{key: getattr(tools, field) for key, field in METRICS},
            "counts": {f: tools.counts.get(f) for _, f in TABLE_RATES},
            "intervals": {f: tools.intervals.get(f) for _, f in TABLE_RATES},
            "turns": len(result.turns), "generated_tokens": sum(t.generated_tokens for t in result.turns),
            # replies cut at max_tokens: a looping model (the "runes glow in a glow") shows here first
            "at_max_tokens": sum(t.stop_reason == "length" for t in result.turns),
            "seconds": round(result.seconds, 1)}


def best_point(points: list[dict]) -> dict | None:
    """As `dndllama train` chooses: exact-call F1, then tool-name F1, then the lower validation loss."""
    trained = [p for p in points if p["step"] > 0]
    return max(trained, key=lambda p: (p["exact_f1"] or 0.0, p["tool_name_f1"] or 0.0,
                                       -(p["val_loss"] if p["val_loss"] is not None else float("inf"))),
               default=None)


# ---------------------------------------------------------------- training and judging


class Sweep:
    """What every run shares: the common settings, the output folder, the record and its judging."""

    def __init__(self, args, say=print):
        from dndllama.config import load_config

        self.args, self.say, self.out = args, say, Path(args.out)
        self.common = {"data": args.data, **dict(args.set)}
        self.config = load_config(args.data, self.common)
        self.record = None
        self.timings: list[tuple[float, float]] = []   # (training s/step, judging s/point) of runs done here

    def prepare(self, config):
        """Data, base, resolved config, data key and dataset key for one run's settings."""
        from dndllama import pipeline, plan
        from dndllama.base import resolve_base

        data = pipeline.load_data(config)
        base = resolve_base(config.base, Path(config.cache_dir).expanduser(), lambda line: None)
        config, _ = plan.resolve(config, base.header)
        data_key = pipeline.data_cache_key(data)
        return data, base, config, data_key, pipeline.dataset_cache_key(config, data_key, base.sha256)

    def judge(self, data, config):
        """`judge(path, label)`: the file replayed on the evaluation turns through a Q8_0 copy, as
        selection.select_checkpoint does, with a progress line about once a minute."""
        from dndllama import pipeline
        from dndllama.validate import validate_one

        settings = {**pipeline.validation_settings(config), "max_turns": self.args.max_turns or None}

        def judge(path: Path, label: str):
            copy = self.q8_0(path)
            try:
                return validate_one(label, copy, conversations=pipeline.judged_conversations(data), vocab=data.vocab,
                                    with_loss=False, say=self.throttled(), **settings)
            finally:
                copy.unlink(missing_ok=True)
        return judge

    def throttled(self, every_s: float = 60.0):
        last = [time.monotonic()]

        def say(line: str) -> None:
            if "DM turn" in line and time.monotonic() - last[0] >= every_s:
                last[0] = time.monotonic()
                self.say(f"  {line}")
        return say

    def open_record(self) -> None:
        """sweep.json, opened for the judging settings it was made with."""
        from dndllama import pipeline

        data, base, config, _, _ = self.prepare(self.config)
        judging = {"max_turns": self.args.max_turns or None, "max_tokens": config.validate_max_tokens,
                   "n_ctx": config.app_ctx, "eval": pipeline.eval_key(data), "base": base.sha256,
                   "grammar": config.grammar}
        self.record = load_record(self.out / "sweep.json", judging)
        self.say(f"evaluation: {data.evaluation.describe() if data.evaluation else 'the in-corpus validation split'}"
                 f", {self.args.max_turns or 'all'} DM turns per point")

    def judge_base(self) -> None:
        """The base as every curve's epoch-0 point, judged once. After the runs: the base never ends
        its turns, so it is the slowest point to judge, and the runs' own points come first."""
        from dndllama.validate import reference_loss

        if self.record["base"] is not None:
            return
        data, base, config, _, _ = self.prepare(self.config)
        self.say(f"base {base.gguf.name}: replaying the evaluation turns (epoch-0 point of every curve) ...")
        result = self.judge(data, config)(base.train_path, "base")
        loss = reference_loss(base.train_path, data.in_corpus, config.ctx, config.threads).loss
        self.record["base"] = point_of(result, 0, 0.0, base.gguf.name, loss)
        save_record(self.out / "sweep.json", self.record)

    def q8_0(self, path: Path) -> Path:
        """The Q8_0 copy a checkpoint is replayed through, as selection.select_checkpoint does."""
        from dndllama import _native
        from dndllama.selection import CHECKPOINT_STAND_IN

        out = self.out / f"replaying-{path.stem}-{CHECKPOINT_STAND_IN.lower()}.gguf"   # removed after
        out.parent.mkdir(parents=True, exist_ok=True)
        _native.quantize(str(path), str(out), CHECKPOINT_STAND_IN, self.config.threads)
        return out

    def run(self, index: int, total: int, run: dict) -> None:
        from dndllama import pipeline
        from dndllama.config import load_config
        from dndllama.train import MODEL_FILE, adapter_of, total_steps

        name, done = run["name"], self.record["runs"].get(run["name"], {})
        if done.get("done"):
            self.say(f"run {index}/{total} {name}: finished before, {len(done['points'])} points; skipped")
            return
        settings = run_settings(run, self.common)
        config = load_config(self.args.data, config_overrides(settings))
        data, base, config, data_key, dataset_key = self.prepare(config)
        cache = Path(config.cache_dir).expanduser()
        arrays, _ = pipeline.build_arrays(data, base, config, cache, dataset_key, self.say)
        per_epoch = max(1, len(arrays.tokens) // config.grad_accum)
        every = settings.get("eval_every") or max(1, per_epoch // self.args.points_per_epoch)
        # every evaluated checkpoint kept (a curve, not a point) and no early stop: the curve says when to stop
        config = replace(config, eval_every=every, patience=0, checkpoint_candidates=MAX_POINTS)
        steps = total_steps(len(arrays.tokens), config)
        self.say(f"run {index}/{total} {name}: {steps} steps ({per_epoch} per epoch), a point every {every} steps"
                 + self.estimate(steps, -(-steps // every)))
        entry = self.record["runs"].setdefault(name, {"settings": settings, "points": []})
        entry.update(training=config.training_settings(), steps_per_epoch=per_epoch, eval_every=every)
        run_dir = self.out / "runs" / name
        trained = pipeline.train_weights(config, base, data, data_key, arrays, run_dir, quiet=self.args.quiet,
                                         say=self.say)
        entry["train_seconds"] = trained.summary.get("seconds")
        self.judge_points(entry, trained.summary.get("candidates") or [], run_dir, self.judge(data, config),
                          per_epoch)
        entry["done"] = True
        save_record(self.out / "sweep.json", self.record)
        if not self.args.keep_checkpoints:   # kept until now: while it exists a rerun does not retrain
            for path in (run_dir / MODEL_FILE, adapter_of(run_dir / MODEL_FILE)):
                path.unlink(missing_ok=True)
        if trained.summary.get("seconds") and trained.summary.get("steps"):
            judged = [p["seconds"] for p in entry["points"]]
            self.timings.append((trained.summary["seconds"] / trained.summary["steps"],
                                 sum(judged) / max(1, len(judged))))

    def judge_points(self, entry: dict, candidates: list[dict], run_dir: Path, judge, per_epoch: int) -> None:
        from dndllama.train import MODEL_FILE, adapter_of

        judged = {p["checkpoint"] for p in entry["points"]}
        todo = sorted((c for c in candidates if c["checkpoint"] not in judged), key=lambda c: c["step"])
        started = time.monotonic()
        for i, candidate in enumerate(todo, start=1):
            path = run_dir / candidate["file"]
            if not path.exists():
                self.say(f"  {candidate['checkpoint']}: its file is gone (deleted after judging?); skipped")
                continue
            result = judge(path, candidate["checkpoint"])
            point = point_of(result, candidate["step"], candidate["step"] / per_epoch, candidate["checkpoint"],
                             candidate["val_loss"])
            entry["points"] = sorted(entry["points"] + [point], key=lambda p: p["step"])
            save_record(self.out / "sweep.json", self.record)
            left = (time.monotonic() - started) / i * (len(todo) - i)
            self.say(f"  step {point['step']} (epoch {point['epoch']:.2f}): tool-name F1 {_f(point['tool_name_f1'])}, "
                     f"exact F1 {_f(point['exact_f1'])}, validation loss {_f(point['val_loss'])}; "
                     f"point {i}/{len(todo)}, ~{_duration(left)} left for this run")
            if not self.args.keep_checkpoints and path.name != MODEL_FILE:
                path.unlink(missing_ok=True)
                adapter_of(path).unlink(missing_ok=True)

    def estimate(self, steps: int, points: int) -> str:
        if not self.timings:
            return ""
        per_step = sum(t[0] for t in self.timings) / len(self.timings)
        per_point = sum(t[1] for t in self.timings) / len(self.timings)
        return f"; ~{_duration(steps * per_step + points * per_point)} by the runs before it"


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------- table, curves, docs


def table(record: dict) -> str:
    """Markdown: the base, then each run's best point, every rate with its 95 % Wilson interval."""
    from dndllama.scoring import wilson

    def cell(point: dict, field: str) -> str:
        counts = point["counts"].get(field)
        if not counts or not counts[1]:
            return "-"
        k, n = counts
        low, high = wilson(k / 2, n / 2) if field.endswith("_f1") else wilson(k, n)
        return f"{k / n:.3f} [{low:.2f}, {high:.2f}]"

    judging = record["judging"]
    head = ["run", "best at epoch (step)", "val loss", *[h for h, _ in TABLE_RATES], "calls / ref.",
            "cut at max tokens"]
    lines = [f"Best point of each run (by exact-call F1, then tool-name F1, then validation loss), judged on "
             f"{judging['max_turns'] or 'all'} evaluation DM turns, greedy, at most {judging['max_tokens']} tokens; "
             "95 % Wilson intervals in brackets.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [("base (no training)", record["base"])] if record.get("base") else []
    rows += [(name, best_point(run["points"])) for name, run in record["runs"].items()]
    for name, point in rows:
        if point is None:
            lines.append(f"| {name} | (not judged yet) |" + " |" * (len(head) - 2))
            continue
        where = "-" if point["step"] == 0 else f"{point['epoch']:.2f} ({point['step']})"
        cpr = "-" if point["calls_per_reference"] is None else f"{point['calls_per_reference']:.2f}"
        lines.append("| " + " | ".join([name, where, _f(point["val_loss"]),
                                         *[cell(point, field) for _, field in TABLE_RATES], cpr,
                                         f"{point.get('at_max_tokens', 0)}/{point['turns']}"]) + " |")
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> Path:
    """Tool-name F1 and exact-call F1 against epoch, one line per run, the base at epoch 0."""
    from matplotlib.figure import Figure   # no pyplot: no global backend
    from dndllama.files import atomic_path

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    base = [record["base"]] if record.get("base") else []
    for ax, (key, label) in zip(axes, [("tool_name_f1", "tool-name F1"), ("exact_f1", "exact-call F1")]):
        for name, run in record["runs"].items():
            points = base + run["points"]
            ax.plot([p["epoch"] for p in points], [p[key] or 0.0 for p in points], "o-", markersize=3,
                    linewidth=1.2, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("on the evaluation set")
    axes[1].legend(fontsize=7, loc="best")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def write_outputs(record: dict, out: Path, docs: bool, say) -> None:
    from dndllama.files import write_text

    write_text(out / "sweep.md", table(record))
    plot(record, out / "sweep.png")
    say(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    if docs:
        shutil.copyfile(out / "sweep.png", ROOT / "docs" / "sweep-curves.png")
        training = ROOT / "docs" / "training.md"
        text = training.read_text(encoding="utf-8")
        if DOCS_BEGIN not in text or DOCS_END not in text:
            raise SweepError(f"{training} has no {DOCS_BEGIN} ... {DOCS_END} block to fill; add the two lines")
        block = f"{DOCS_BEGIN}\n{table(record)}\n![sweep curves](sweep-curves.png)\n{DOCS_END}"
        before, rest = text.split(DOCS_BEGIN, 1)
        write_text(training, before + block + rest.split(DOCS_END, 1)[1])
        say(f"wrote the table into {training} and the curves to docs/sweep-curves.png")


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", help='axes as "KEY=V1,V2 KEY=V1,...": their product (see the module docstring)')
    p.add_argument("--grid-file", type=Path, help="a TOML grid: vary, [settings], [grid]")
    p.add_argument("--quick", action="store_true", help="a tiny smoke grid: full vs LoRA 16, 2 steps, 4 turns")
    p.add_argument("--runs", help="only runs whose name contains one of these comma-separated strings")
    p.add_argument("--max-turns", type=int, help="evaluation DM turns replayed per point (default: all)")
    p.add_argument("--points-per-epoch", type=int, default=2, help="checkpoints judged per epoch (default 2)")
    p.add_argument("--out", default="sweep", help="output folder (default sweep/)")
    p.add_argument("--docs", action="store_true", help="also write the table and PNG into docs/")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each judged F32 checkpoint")
    p.add_argument("--data", default="ai-training", help="training scenarios (default ai-training)")
    p.add_argument("--set", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                   help="a dndllama.toml setting for every run (repeatable), e.g. --set threads=2")
    p.add_argument("--quiet", action="store_true", help="no per-step training lines")
    args = p.parse_args(argv)
    if args.points_per_epoch < 1:
        p.error("--points-per-epoch must be at least 1")
    if args.quick and args.max_turns is None:
        args.max_turns = QUICK_MAX_TURNS
    return args


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    return key.strip(), _value(value)


def grid_runs(args) -> list[dict]:
    specs = [QUICK_GRID] if args.quick else [load_grid_file(args.grid_file)] if args.grid_file else DEFAULT_GRIDS
    if args.grid:   # axes from the command line replace the grid; fixed settings stay
        specs = [{**specs[0], "vary": "all", "grid": parse_grid_arg(args.grid)}]
    return [run for spec in specs for run in expand(spec)]


def main(argv: list[str] | None = None) -> int:
    from dndllama.config import ConfigError
    from dndllama.pipeline import DataError

    args = parse_args(argv)
    try:
        runs = grid_runs(args)
        if args.runs:
            wanted = [w for w in args.runs.split(",") if w]
            runs = [r for r in runs if any(w in r["name"] for w in wanted)]
            if not runs:
                raise SweepError(f"--runs {args.runs}: no run's name contains it; names: "
                                 + ", ".join(r["name"] for r in grid_runs(args)))
        print(f"sweep: {len(runs)} run(s): {', '.join(r['name'] for r in runs)}", flush=True)
        sweep = Sweep(args, say=lambda line: print(line, flush=True))
        sweep.open_record()
        for i, run in enumerate(runs, start=1):
            sweep.run(i, len(runs), run)
            write_outputs(sweep.record, Path(args.out), False, lambda line: None)
        sweep.judge_base()
        write_outputs(sweep.record, Path(args.out), args.docs, print)
    except (SweepError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
