"""Validation: does the model call the DM's tools right? Replay every DM turn of held-out scenarios
through a GGUF, score the replies' tool calls against the reference turns, measure loss, speed and
memory, and put a baseline (by default the base before fine-tuning) side by side.

  replay(model, conversations)    greedy generation of every DM turn (replay.py: batched, shared prefixes)
  reference_loss(path, convs)     loss / perplexity on the reference DM tokens, windows as in training
  validate_one(label, path, ...)  one file's replay, scores, speed and memory -> ModelResult
  validate_model(path, convs)     all of it for the model and the baseline -> Report
  gate(report)                    the quality gate: the model's tool-call F1 must beat the baseline's

The scores themselves are defined in `scoring.py` (tool_metrics, RATES); report.md, report.json and
the charts are written by `report.py` (write_report). Both are re-exported here for callers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .dataset import Conversation, token_windows
from .grammar import tool_call_grammar
from .report import (LOSS_PNG, REPORT_JSON, REPORT_MD, TOOLS_PNG, metric_rows, render_markdown,  # noqa: F401
                     write_report)
from .scoring import (RATES, InvalidCall, ToolMetrics, TurnCalls, _ratio, call_key, normalize_value,  # noqa: F401
                      paired_change, tool_metrics, turn_calls, turn_context)
from .tools import Vocabulary, render_tool_prompt
# the replay lives in replay.py; its names stay importable from here
from .replay import DEFAULT_MAX_TOKENS, PeakMemory, Replay, Turn, dm_turns, replay  # noqa: F401

PROGRESS_EVERY_S = 10.0  # replay progress lines at most this often
LOSS_CHUNK = 32           # windows per native evaluate call when the loss reports progress


class ValidationError(ValueError):
    """Nothing could be validated (no DM turn, or none fits the context); the message says what to change."""

# ---------------------------------------------------------------- replay: see replay.py


# ---------------------------------------------------------------- loss


@dataclass
class LossResult:
    loss: float | None          # mean cross-entropy per reference DM token
    perplexity: float | None
    token_accuracy: float | None
    windows: int
    tokens: int                 # labelled (DM) tokens evaluated
    truncated: int              # exchanges cut to the window, as in training


def reference_loss(model_path: str | Path, conversations: list[Conversation], ctx: int = 768, n_threads: int = 0,
                   n_gpu_layers: int = 0, say=None) -> LossResult:
    """Loss on the reference DM tokens, over windows built exactly as training builds them. Many
    windows (one long scenario can make hundreds) are evaluated LOSS_CHUNK windows at a time, with a
    line of progress after each, so a long evaluation is never silent."""
    from . import _native

    tokenizer = _native.Model(str(model_path), vocab_only=True)
    tokens, labels, cut = token_windows(conversations, tokenizer, ctx)
    labelled = int((labels >= 0).sum())
    if not labelled:
        return LossResult(None, None, None, len(tokens), 0, len(cut))
    loss, accuracy = _chunked_evaluate(str(model_path), tokens, labels, n_threads, n_gpu_layers, say)
    if not math.isfinite(loss):
        return LossResult(None, None, accuracy, len(tokens), labelled, len(cut))
    return LossResult(loss, math.exp(min(loss, 700.0)), accuracy, len(tokens), labelled, len(cut))


def _chunked_evaluate(path: str, tokens, labels, n_threads: int, n_gpu_layers: int, say) -> tuple[float, float]:
    """The native evaluate over all windows, in chunks; the means weighted by each chunk's DM tokens."""
    from . import _native

    started, total, done = time.perf_counter(), len(tokens), 0
    loss_sum = correct = weight = 0.0
    for start in range(0, total, LOSS_CHUNK):
        chunk_labels = labels[start: start + LOSS_CHUNK]
        n = int((chunk_labels >= 0).sum())
        if n:
            loss, accuracy = _native.evaluate(path, tokens[start: start + LOSS_CHUNK], chunk_labels, n_threads,
                                              n_gpu_layers)
            loss_sum, correct, weight = loss_sum + loss * n, correct + accuracy * n, weight + n
        done = min(total, start + LOSS_CHUNK)
        if say and total > LOSS_CHUNK:
            per_window = (time.perf_counter() - started) / done
            say(f"loss: {done}/{total} windows, ~{per_window * (total - done):.0f} s left")
    return loss_sum / weight, correct / weight


# ---------------------------------------------------------------- one model, model vs baseline


@dataclass
class ModelResult:
    label: str                  # "model" or "baseline"
    path: str
    name: str
    arch: str
    n_params: int
    file_bytes: int
    tools: ToolMetrics
    loss: LossResult
    turns: list[Turn]
    skipped_turns: int
    seconds: float
    seconds_per_turn: float | None
    prompt_tokens_per_s: float | None
    gen_tokens_per_s: float | None
    peak_rss_mb: float          # loading the model and generating, as the app does (not the loss evaluation)
    peak_rss_scope: str         # "block": measured for this model alone; "process": the process's peak so far
    template: str               # see Replay.template


@dataclass
class Report:
    model: ModelResult
    baseline: ModelResult | None
    settings: dict
    scenarios: list[str]
    train_log: str | None = None
    created: str = ""
    choices: dict = field(default_factory=dict)   # "checkpoints" / "quant": rows of what `train` chose from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_model(model_path: str | Path, conversations: list[Conversation], vocab: Vocabulary, *,
                   baseline_path: str | Path | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, n_ctx: int = 2048,
                   loss_ctx: int = 768, seed: int = 0, max_turns: int | None = None, n_threads: int = 0,
                   n_gpu_layers: int = 0, grammar: bool = False, train_log: str | Path | None = None,
                   say: Callable[[str], None] | None = None,
                   loss_conversations: list[Conversation] | None = None) -> Report:
    """Replay, score and measure the model (and the baseline, with the same turns and settings); the
    loss is taken on `loss_conversations` when given (a smaller set than the replayed one)."""
    conversations = list(conversations)
    total = len(dm_turns(conversations, max_turns))
    if not total:
        raise ValidationError("the conversations hold no DM turn to replay; pass scenarios with DM turns")
    settings = {"max_tokens": max_tokens, "n_ctx": n_ctx, "loss_ctx": loss_ctx, "seed": seed,
                "max_turns": max_turns, "n_threads": n_threads, "n_gpu_layers": n_gpu_layers, "grammar": grammar}
    run = dict(conversations=conversations, vocab=vocab, max_tokens=max_tokens, n_ctx=n_ctx, loss_ctx=loss_ctx,
               seed=seed, max_turns=max_turns, n_threads=n_threads, n_gpu_layers=n_gpu_layers, grammar=grammar, say=say,
               loss_conversations=loss_conversations)
    model = validate_one("model", model_path, **run)
    baseline = validate_one("baseline", baseline_path, **run) if baseline_path else None
    report = make_report(model, baseline, conversations, settings, train_log)
    if loss_conversations:
        report.settings["loss_on"] = f"{len(loss_conversations)} in-corpus validation scenarios"
    return report


def make_report(model: ModelResult, baseline: ModelResult | None, conversations: list[Conversation],
                settings: dict, train_log: str | Path | None = None, choices: dict | None = None) -> Report:
    decoding = "greedy, constrained by the tool-call grammar" if settings.get("grammar") else "greedy"
    settings = {"decoding": decoding, "dm_turns": len(dm_turns(conversations, settings.get("max_turns"))),
                **settings}
    return Report(model, baseline, settings, sorted({c.scenario for c in conversations}),
                  str(train_log) if train_log else None, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  choices or {})


def validate_one(label: str, path: str | Path, *, conversations, vocab, max_tokens, n_ctx, loss_ctx, seed,
                 max_turns, n_threads, n_gpu_layers, grammar: bool = False, say=None, with_loss: bool = True,
                 loss_conversations=None) -> ModelResult:
    """One file's replay, scores, speed and memory (and its reference loss unless `with_loss` is off);
    with `grammar`, decoding is constrained by the vocabulary's tool-call grammar, as in the app."""
    from . import _native

    say = say or (lambda line: None)
    path = Path(path)
    say(f"{label}: loading {path}")
    with PeakMemory() as memory:
        model = _native.Model(str(path), n_gpu_layers=n_gpu_layers)
        info = model.info()

        said = [0.0]

        def progress(done: int, total: int, turn: Turn | None) -> None:
            now = time.perf_counter()
            if done < total and now - said[0] < PROGRESS_EVERY_S:
                return
            said[0] = now
            per_turn = (now - started) / done
            where = f" ({turn.scenario})" if turn else ""
            say(f"{label}: DM turn {done}/{total}{where}, {per_turn:.2f} s/turn, ~{per_turn * (total - done):.0f} s left")

        started = time.perf_counter()
        replayed = replay(model, conversations, vocab, max_tokens=max_tokens, seed=seed, n_ctx=n_ctx,
                          n_threads=n_threads, max_turns=max_turns, progress=progress,
                          grammar=tool_call_grammar(vocab) if grammar else "")
        del model
    if not replayed.turns:
        raise ValidationError(f"{label} {path.name}: none of the {replayed.skipped} DM turns fits n_ctx={n_ctx} "
                              f"with max_tokens={max_tokens}; raise the context or lower max_tokens")
    # outside the memory measurement: evaluate() holds every position's logits, which inference never does
    if with_loss:
        say(f"{label}: loss on the reference DM tokens (windows of {loss_ctx} tokens)")
        loss = reference_loss(path, loss_conversations or conversations, loss_ctx, n_threads, n_gpu_layers, say)
    else:
        loss = LossResult(None, None, None, 0, 0, 0)
    n = len(replayed.turns)
    return ModelResult(
        label=label, path=str(path), name=info.name, arch=info.arch, n_params=info.n_params,
        file_bytes=path.stat().st_size,
        tools=score_turns(replayed.turns, conversations, vocab),
        loss=loss, turns=replayed.turns, skipped_turns=replayed.skipped, seconds=replayed.seconds,
        seconds_per_turn=replayed.seconds / n, prompt_tokens_per_s=replayed.prompt_tokens_per_s,
        gen_tokens_per_s=replayed.gen_tokens_per_s, peak_rss_mb=memory.peak_mb, peak_rss_scope=memory.scope,
        template=replayed.template,
    )


def score_turns(turns: list[Turn], conversations: list[Conversation], vocab: Vocabulary) -> ToolMetrics:
    """tool_metrics over replayed turns, each with the conversation before it (for consequence calls)."""
    by_name = {c.scenario: c for c in conversations}
    tool_prompt = render_tool_prompt(vocab)
    return tool_metrics([(t.reference, t.prediction, turn_context(by_name[t.scenario].messages, t.message, tool_prompt))
                         for t in turns], vocab, groups=[t.scenario for t in turns])


# ---------------------------------------------------------------- gate


def gate(report: Report, min_f1_gain: float = 0.0) -> tuple[bool, str]:
    """Pass when the model's tool-name F1 beats the baseline's by more than `min_f1_gain`."""
    if report.baseline is None:
        return True, "no baseline to compare with: gate not applied"
    model, base = report.model.tools, report.baseline.tools
    if not model.reference_calls:
        return True, "the validation turns call no tool: tool-call F1 is undefined, gate not applied"
    model_f1, base_f1 = model.name_f1 or 0.0, base.name_f1 or 0.0
    gain = model_f1 - base_f1
    paired = paired_change(model, base, "name_f1")
    interval = f" [{paired[1]:+.3f}, {paired[2]:+.3f}] over resampled scenarios" if paired else ""
    verdict = (f"tool-call F1 {model_f1:.3f} vs baseline {base_f1:.3f} ({gain:+.3f}{interval}, "
               f"needed > {min_f1_gain:+.3f})")
    return gain > min_f1_gain, verdict


