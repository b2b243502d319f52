"""The training stage: native fine-tuning with a live display, a JSONL log, a loss plot,
checkpoints, resume after any interruption, early stopping and the best checkpoints kept.

A run lives in one folder:
  train-log.jsonl     one JSON object per step / eval / checkpoint event (the resume record)
  checkpoints/        epoch-N.gguf and step-N.gguf while training (the newest resume point and the
                      candidates: the checkpoints after the best few evaluations)
  loss.png            the loss curves
  model-f32.gguf      the best checkpoint by validation loss, else the last
  candidates/         the other candidates, for choosing by tool-call F1 (selection.select_checkpoint)

With LoRA every model file x.gguf (the merged model) has its adapter next to it, x.lora.gguf, and the
two move and go together.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import Config, validate
from .files import atomic_path, write_json

LOG_FILE, PLOT_FILE, MODEL_FILE, SUMMARY_FILE = "train-log.jsonl", "loss.png", "model-f32.gguf", "summary.json"
CANDIDATES_DIR = "candidates"
MIN_IMPROVEMENT = 1e-4   # a validation loss must beat the best by this much to count as better


class TrainingError(RuntimeError):
    """Training could not finish; the message says what to do."""


@dataclass
class Arrays:
    tokens: np.ndarray
    labels: np.ndarray
    val_tokens: np.ndarray
    val_labels: np.ndarray
    weights: np.ndarray | None = None   # each training label's loss weight (dataset.label_weights); None: all 1


@dataclass
class TrainOutcome:
    model: Path
    summary: dict
    log: Path
    plot: Path | None


@dataclass
class _State:
    """What the log says so far: enough to resume, to stop early and to keep the candidate checkpoints."""

    resume_step: int = 0
    resume_from: Path | None = None
    best_val: float = math.inf
    evals_since_best: int = 0
    last_eval: float | None = None          # its checkpoint comes next and becomes a candidate
    candidates: list[tuple[float, int, Path]] = field(default_factory=list)   # (val loss, step, file), best first

    @property
    def best_checkpoint(self) -> Path | None:
        return self.candidates[0][2] if self.candidates else None


def total_steps(n_windows: int, config: Config) -> int:
    steps = config.epochs * n_windows // config.grad_accum
    return min(steps, config.max_steps) if config.max_steps else steps


def native_options(config: Config, steps: int, checkpoint_dir: Path, kv: dict[str, str]):
    from . import _native

    validate(config, "training settings")   # a Config built in code meets the same table as the CLI's
    o = _native.TrainOptions()
    o.n_ctx, o.epochs, o.max_steps = config.ctx, config.epochs, config.max_steps or -1
    o.lr, o.lr_min_ratio, o.weight_decay = config.learning_rate, config.lr_min_ratio, config.weight_decay
    o.warmup_steps = int(config.warmup * steps)
    o.grad_accum, o.trainable, o.seed = config.grad_accum, config.trainable, config.seed
    o.n_threads, o.n_gpu_layers, o.matmul_precision = config.threads, config.gpu_layers, config.matmul_precision
    o.checkpoint_dir, o.save_every, o.eval_every, o.kv = str(checkpoint_dir), config.save_every, config.eval_every, kv
    if config.method == "lora":
        o.method, o.lora_rank, o.lora_alpha, o.lora_targets = "lora", config.lora_rank, config.lora_alpha, config.lora_targets
    return o


def matmul_precision(config: Config) -> str:
    """What config.matmul_precision means on this machine: "bf16" or "f32" (the native core decides,
    as training will)."""
    from . import _native

    return _native.resolve_matmul_precision(config.matmul_precision)


def adapter_of(model: Path) -> Path:
    """The LoRA adapter saved next to a merged model file."""
    from . import _native

    return Path(_native.adapter_path(str(model)))


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)
    if adapter_of(src).exists():
        os.replace(adapter_of(src), adapter_of(dst))


def train_model(base_path: Path, arrays: Arrays, config: Config, run_dir: Path, kv: dict[str, str],
                quiet: bool = False, say=print, adapter: Path | None = None) -> TrainOutcome:
    """Train (or resume training) in `run_dir`; returns the chosen model. Safe to kill at any time.
    With LoRA, `adapter` is where training starts (a warm start), else a fresh one."""
    from . import _native

    run_dir.mkdir(parents=True, exist_ok=True)
    log_path, checkpoints = run_dir / LOG_FILE, run_dir / "checkpoints"
    state = _resume_state(log_path, config, lambda p: checkpoint_problem(p, base_path, config), say)
    steps = total_steps(len(arrays.tokens), config)
    options = native_options(config, steps, checkpoints, kv)
    options.lora_init = str(adapter) if adapter else ""
    start = base_path
    if state.resume_from:
        options.start_step = state.resume_step
        if config.method == "lora":
            options.lora_init = str(adapter_of(state.resume_from))   # the base stays the original
        else:
            start = state.resume_from
        say(f"resuming from {state.resume_from.name} at step {state.resume_step}/{steps} "
            "(optimizer moments restart)")
    view = _ProgressView(steps, state.resume_step, quiet)
    log = open(log_path, "a", encoding="utf-8")

    def on_event(event: dict):
        if event["event"] == "eval_progress":   # shown, not logged: the log is the resume record
            view.eval_progress(event)
            return True
        record = {k: v for k, v in event.items() if v is not None and k not in ("eval_done", "eval_total")}
        record["time"] = round(time.time(), 3)
        log.write(json.dumps(record) + "\n")
        log.flush()
        keep_going = _update(state, event, config, checkpoints)
        view.update(event, state)
        return keep_going

    try:
        with view:
            result = _native.train(str(start), "", arrays.tokens, arrays.labels, arrays.val_tokens,
                                   arrays.val_labels, options, on_event, arrays.weights)
    except _native.NativeError as e:
        raise TrainingError(str(e)) from None
    finally:
        log.close()
    chosen = state.best_checkpoint or state.resume_from
    if chosen is None or not chosen.exists():
        raise TrainingError("training produced no checkpoint; run again with --debug")
    candidates = _keep_candidates(state, chosen, run_dir)
    for leftover in checkpoints.glob("*.gguf"):
        leftover.unlink()
    records = read_log(log_path)
    summary = _summary(records, state, result, chosen, candidates)
    write_json(run_dir / SUMMARY_FILE, summary)
    return TrainOutcome(run_dir / MODEL_FILE, summary, log_path, plot_losses(records, run_dir / PLOT_FILE))


def _keep_candidates(state: _State, chosen: Path, run_dir: Path) -> list[dict]:
    """The best checkpoint by validation loss becomes model-f32.gguf; the other candidates move to
    candidates/, where a later stage may prefer one of them by tool-call F1."""
    _move(chosen, run_dir / MODEL_FILE)
    kept = []
    for val_loss, step, path in state.candidates or [(None, state.resume_step, chosen)]:
        name = MODEL_FILE if path == chosen else f"{CANDIDATES_DIR}/{path.name}"
        if path != chosen:
            (run_dir / CANDIDATES_DIR).mkdir(exist_ok=True)
            _move(path, run_dir / name)
        kept.append({"file": name, "step": step, "val_loss": val_loss, "checkpoint": path.name})
    return kept


def _update(state: _State, event: dict, config: Config, checkpoints: Path) -> bool:
    """Apply one event; returns False to stop early (patience exhausted)."""
    kind = event["event"]
    if kind == "eval":
        state.last_eval = event["val_loss"]
        if event["val_loss"] < state.best_val - MIN_IMPROVEMENT:
            state.best_val, state.evals_since_best = event["val_loss"], 0
        else:
            state.evals_since_best += 1
            if config.patience and state.evals_since_best >= config.patience:
                return False
    elif kind == "checkpoint":
        path = Path(event["checkpoint"])
        previous = state.resume_from
        state.resume_from, state.resume_step = path, event["step"]
        if state.last_eval is not None:
            state.candidates.append((state.last_eval, event["step"], path))
            state.candidates.sort(key=lambda c: (c[0], -c[1]))
            for _, _, dropped in state.candidates[config.checkpoint_candidates:]:
                _remove(dropped, keep=path)
            del state.candidates[config.checkpoint_candidates:]
            state.last_eval = None
        if previous not in {c[2] for c in state.candidates}:
            _remove(previous, keep=path)
    return True


def _remove(path: Path | None, keep: Path | None) -> None:
    # checkpoints are ~4 bytes per parameter: keep only the resume point and the candidates
    if path is not None and path != keep:
        path.unlink(missing_ok=True)
        adapter_of(path).unlink(missing_ok=True)


def checkpoint_problem(path: Path, base_path: Path, config: Config) -> str | None:
    """Why a checkpoint cannot be resumed from (cut short, not a GGUF, a tensor table unlike the
    base's, a LoRA run's adapter missing or damaged), or None when it can."""
    from .gguf_header import GGUFError, read_header

    try:
        header = read_header(path)
        expected = len(read_header(base_path).tensors)
        if config.method == "lora":
            read_header(adapter_of(path))
    except (GGUFError, OSError) as e:
        return str(e) or type(e).__name__
    if len(header.tensors) != expected:
        return f"it has {len(header.tensors)} tensors, the model it trains has {expected}"
    return None


def _resume_state(path: Path, config: Config, verify=lambda p: None, say=print) -> _State:
    """Replay a run's log up to its last checkpoint that still exists and passes `verify`, and cut
    the log there: what happened after it (before a kill -9, say) is redone by the resumed run. A
    checkpoint that fails is set aside (renamed *.damaged) and the one before it is tried; with
    none left the run starts over."""
    state = _State()
    if not path.exists():
        return state
    records = read_log(path)
    resumable = [i for i, r in enumerate(records) if r.get("event") == "checkpoint" and Path(r["checkpoint"]).exists()]
    while resumable and (problem := verify(Path(records[resumable[-1]]["checkpoint"]))):
        damaged = Path(records[resumable.pop()]["checkpoint"])
        aside = damaged.with_name(damaged.name + ".damaged")
        os.replace(damaged, aside)
        if adapter_of(damaged).exists():
            os.replace(adapter_of(damaged), adapter_of(damaged).with_name(adapter_of(damaged).name + ".damaged"))
        say(f"warning: checkpoint {damaged.name} is damaged ({problem}); set aside as {aside.name}, "
            + ("resuming from the one before" if resumable else "training starts over"))
    records = records[: resumable[-1] + 1] if resumable else []
    for record in records:
        if record.get("event") == "checkpoint" and not Path(record["checkpoint"]).exists():
            state.last_eval = None   # a candidate dropped back then
            continue
        _update(state, record, replace(config, patience=0), path.parent / "checkpoints")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return state


def read_log(path: Path) -> list[dict]:
    """The records of a train-log.jsonl."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue   # a line cut by a crash
    return records


def _summary(records: list[dict], state: _State, result: dict, chosen: Path, candidates: list[dict]) -> dict:
    steps = [r for r in records if r.get("event") == "step"]
    evals = [r for r in records if r.get("event") == "eval"]
    return {
        "steps": steps[-1]["step"] if steps else 0,
        "first_loss": steps[0]["loss"] if steps else None,
        "final_loss": steps[-1]["loss"] if steps else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "best_val_loss": None if math.isinf(state.best_val) else state.best_val,
        "chosen_checkpoint": chosen.name,
        "candidates": candidates,
        "stopped_early": bool(result.get("cancelled")),
        "tokens_per_s": result.get("tokens_per_s"),
        "matmul_precision": result.get("matmul_precision"),
        "seconds": result.get("seconds"),
        "n_trainable": result.get("n_trainable"),
    }


# ---------------------------------------------------------------- display


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class _ProgressView:
    """A rich progress bar on a terminal, plain lines in logs and CI."""

    def __init__(self, total: int, done: int, quiet: bool):
        self.total, self.done, self.quiet = total, done, quiet
        self.rich = sys.stdout.isatty() and not quiet
        self.last_val = None
        self.progress = None
        self.eval_first: tuple[int, float] | None = None   # (windows, time) at a long evaluation's first report

    def __enter__(self):
        if self.rich:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeRemainingColumn())
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=self.done, stats="")
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def eval_progress(self, event: dict) -> None:
        """A long evaluation's coarse progress: printed even with --quiet (a silent minute looks hung)."""
        done, total, now = event["eval_done"], event["eval_total"], time.monotonic()
        if self.eval_first is None or done <= self.eval_first[0]:   # the first report of this evaluation
            self.eval_first = (done, now)
        first_done, first_time = self.eval_first
        line = f"evaluating: {done}/{total} validation windows"
        if done > first_done:
            line += f", ~{_eta((now - first_time) / (done - first_done) * (total - done))} left"
        if self.progress:
            self.progress.console.print(line)
        else:
            print(line, flush=True)

    def update(self, event: dict, state: _State) -> None:
        kind = event["event"]
        if kind == "eval":
            self.last_val = event["val_loss"]
        val = f"val {self.last_val:.3f}" if self.last_val is not None else "val -"
        stats = (f"epoch {event['epoch']}/{event['epochs']}  loss {event['loss']:.3f}  {val}  "
                 f"{event['tokens_per_s']:.0f} tok/s on {event['threads']} thread(s)")
        if self.progress:
            self.progress.update(self.task, completed=event["step"], stats=stats)
            if kind in ("eval", "checkpoint"):
                self.progress.console.print(_event_line(event, val))
        elif not self.quiet and kind in ("step", "eval", "checkpoint"):
            line = (f"step {event['step']}/{event['total_steps']}  {stats}  eta {_eta(event['eta_s'])}"
                    if kind == "step" else _event_line(event, val))
            print(line, flush=True)


def _event_line(event: dict, val: str) -> str:
    if event["event"] == "eval":
        return f"epoch {event['epoch']}: {val}, accuracy {event['val_accuracy']:.1%}"
    return f"checkpoint {Path(event['checkpoint']).name} (step {event['step']})"


# ---------------------------------------------------------------- loss plot


def plot_losses(records: list[dict], path: Path) -> Path | None:
    """Training and validation loss against steps as a PNG; None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure   # no pyplot: no global backend switch, safe in threads
    except ImportError:
        return None
    steps = [(r["step"], r["loss"]) for r in records if r.get("event") == "step"]
    evals = [(r["step"], r["val_loss"]) for r in records if r.get("event") == "eval"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if steps:
        ax.plot(*zip(*steps), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (DM tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path
