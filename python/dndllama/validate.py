"""Validation: does the model call the DM's tools right? Replay every DM turn of held-out scenarios
through a GGUF, score the replies' tool calls against the reference turns, measure loss, speed and
memory, and put a baseline (by default the base before fine-tuning) side by side.

  tool_metrics(pairs, vocab)      pure scores over (reference, prediction) DM texts -> ToolMetrics
  replay(model, conversations)    greedy generation of every DM turn (replay.py: batched, shared prefixes)
  reference_loss(path, convs)     loss / perplexity on the reference DM tokens, windows as in training
  validate_model(path, convs)     all of it for the model and the baseline -> Report
  write_report(report, out_dir)   report.json, report.md, tool_metrics.png (+ loss_curve.png)
  gate(report)                    the quality gate: the model's tool-call F1 must beat the baseline's

How calls are scored (one DM turn = one (reference, prediction) pair):
- A *call attempt* is `[word: ...]`, or `[tool ...]` without the colon when `tool` is a tool name
  (`[roll perception]`). Other bracketed text (`[sighs]`) is prose. An attempt is *valid* when it
  parses against the tool vocabulary; malformed calls, unknown tools and bad arguments are invalid.
- Tool-name precision / recall / F1 are micro-averaged over turns: per turn, the multiset of valid
  predicted tool names is matched against the reference's. Every attempt counts in precision's
  denominator, so an invalid call is a miss: it is a call the app could not run.
- Exact match compares (tool, argument name -> value) after folding case, typographic apostrophes
  and whitespace (runs collapse to one space, none around `+`/`-`: `1d6 + 4` == `1D6+4`). Optional
  arguments must agree too (`[roll: Sella, initiative]` != `[roll: initiative]`).
- Turn exact match: the turn's calls equal the reference's as a multiset (no calls == no calls);
  an invalid attempt makes the turn wrong.
- No-call accuracy: of the turns whose reference calls no tool, the share with no attempt at all
  (over-calling is an error).
Undefined ratios (a denominator of 0) are None, never NaN, so report.json stays valid JSON.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .dataset import (Conversation, TruncationWarning, dataset_windows,
                      window_arrays)
from .files import atomic_path, write_json, write_text
from .tools import ToolCall, Vocabulary, find_tool_calls
# the replay lives in replay.py; its names stay importable from here
from .replay import DEFAULT_MAX_TOKENS, PeakMemory, Replay, Turn, dm_turns, replay  # noqa: F401

REPORT_JSON, REPORT_MD, TOOLS_PNG, LOSS_PNG = "report.json", "report.md", "tool_metrics.png", "loss_curve.png"
PROGRESS_EVERY_S = 10.0  # replay progress lines at most this often
EXAMPLE_TURNS = 4        # example turns shown in report.md
EXAMPLE_CHARS = 600      # characters of each example text shown

# `[roll perception]`, `[roll]`, `[roll perception: 5]`: a tool's name in brackets, no valid `name:` head
NEAR_CALL = re.compile(r"\[\s*([A-Za-z_][\w-]*)(?:[\s:][^\[\]\n]*)?\](?!\()")


class ValidationError(ValueError):
    """Nothing could be validated (no DM turn, or none fits the context); the message says what to change."""


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class InvalidCall:
    raw: str
    name: str      # the tool's name, or the bracket's first word in lower case
    reason: str    # "malformed", "unknown-tool" or "bad-arguments"


@dataclass
class TurnCalls:
    valid: list[ToolCall]
    invalid: list[InvalidCall]

    @property
    def attempts(self) -> int:
        return len(self.valid) + len(self.invalid)


def turn_calls(text: str, vocab: Vocabulary) -> TurnCalls:
    """Every call attempt in a DM text, split into valid calls and invalid ones (in text order)."""
    calls, errors = find_tool_calls(text, vocab)
    tools = {name.lower(): name for name in vocab.tools}
    starts = {c.span[0] for c in calls} | {e.span[0] for e in errors}
    invalid = [(e.span[0], InvalidCall(e.raw.strip(), _head(e.raw, tools), e.code)) for e in errors]
    for match in NEAR_CALL.finditer(text):
        if match.start() not in starts and match.group(1).lower() in tools:
            invalid.append((match.start(), InvalidCall(match.group(0), _head(match.group(0), tools), "malformed")))
    return TurnCalls(calls, [bad for _, bad in sorted(invalid, key=lambda pair: pair[0])])


def _head(raw: str, tools: dict[str, str]) -> str:
    """The bracket's first word: the tool's own name when it is one, else lower case."""
    match = re.match(r"\[\s*([A-Za-z_][\w-]*)", raw.strip())
    word = match.group(1).lower() if match else ""
    return tools.get(word, word)


def normalize_value(value: str) -> str:
    """Case, typographic apostrophes and whitespace folded: `1d6 + 4` and `1D6+4` are equal."""
    value = " ".join(value.replace("\u2019", "'").casefold().split())
    return re.sub(r"\s*([+-])\s*", r"\1", value)


def call_key(call: ToolCall) -> tuple:
    """What exact match compares: the tool and each bound argument's normalized value."""
    return call.name, tuple(sorted((arg, normalize_value(v)) for arg, v in call.named.items()))


@dataclass
class ToolMetrics:
    turns: int = 0
    reference_calls: int = 0
    predicted_calls: int = 0          # every attempt in the predictions, valid or not
    valid_calls: int = 0
    format_validity: float | None = None
    name_precision: float | None = None
    name_recall: float | None = None
    name_f1: float | None = None
    exact_precision: float | None = None
    exact_recall: float | None = None
    exact_f1: float | None = None
    turn_exact_match: float | None = None
    no_call_turns: int = 0
    no_call_accuracy: float | None = None
    over_calling_turns: int = 0       # no-call reference, at least one attempt predicted
    missed_call_turns: int = 0        # reference calls a tool, prediction attempts none
    per_tool: dict[str, dict[str, int]] = field(default_factory=dict)  # reference, predicted, name_match, exact
    invalid: dict[str, int] = field(default_factory=dict)             # reason -> count

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# (field, label, short label for the chart) of the scores in [0, 1], in report order
SCORES = [
    ("name_f1", "tool-name F1", "name F1"),
    ("name_precision", "tool-name precision", "name P"),
    ("name_recall", "tool-name recall", "name R"),
    ("exact_f1", "exact-call F1 (with arguments)", "exact F1"),
    ("turn_exact_match", "turns with exactly the reference calls", "turn exact"),
    ("no_call_accuracy", "no-call accuracy (no over-calling)", "no-call acc"),
    ("format_validity", "tool-call format validity", "format valid"),
]


def tool_metrics(pairs: Iterable[tuple[str, str]], vocab: Vocabulary) -> ToolMetrics:
    """Score (reference, prediction) DM texts; see the module docstring for the definitions."""
    m = ToolMetrics(per_tool={name: _tool_counts() for name in vocab.tools})
    name_hits = exact_hits = exact_turns = no_call_right = 0
    for reference, prediction in pairs:
        ref, pred = turn_calls(reference, vocab).valid, turn_calls(prediction, vocab)
        m.turns += 1
        m.reference_calls += len(ref)
        m.predicted_calls += pred.attempts
        m.valid_calls += len(pred.valid)
        names = Counter(c.name for c in ref) & Counter(c.name for c in pred.valid)
        exact = Counter(map(call_key, ref)) & Counter(map(call_key, pred.valid))
        name_hits += sum(names.values())
        exact_hits += sum(exact.values())
        exact_turns += not pred.invalid and Counter(map(call_key, ref)) == Counter(map(call_key, pred.valid))
        if not ref:
            m.no_call_turns += 1
            no_call_right += pred.attempts == 0
            m.over_calling_turns += pred.attempts > 0
        elif pred.attempts == 0:
            m.missed_call_turns += 1
        for call in ref:
            m.per_tool.setdefault(call.name, _tool_counts())["reference"] += 1
        for call in pred.valid:
            m.per_tool.setdefault(call.name, _tool_counts())["predicted"] += 1
        for name, count in names.items():
            m.per_tool[name]["name_match"] += count
        for (name, _), count in exact.items():
            m.per_tool[name]["exact"] += count
        for bad in pred.invalid:
            m.invalid[bad.reason] = m.invalid.get(bad.reason, 0) + 1
            if bad.name in m.per_tool:
                m.per_tool[bad.name]["invalid"] += 1
    m.format_validity = _ratio(m.valid_calls, m.predicted_calls)
    m.name_precision, m.name_recall = _ratio(name_hits, m.predicted_calls), _ratio(name_hits, m.reference_calls)
    m.name_f1 = _ratio(2 * name_hits, m.predicted_calls + m.reference_calls)
    m.exact_precision, m.exact_recall = _ratio(exact_hits, m.predicted_calls), _ratio(exact_hits, m.reference_calls)
    m.exact_f1 = _ratio(2 * exact_hits, m.predicted_calls + m.reference_calls)
    m.turn_exact_match = _ratio(exact_turns, m.turns)
    m.no_call_accuracy = _ratio(no_call_right, m.no_call_turns)
    return m


def _tool_counts() -> dict[str, int]:
    return {"reference": 0, "predicted": 0, "name_match": 0, "exact": 0, "invalid": 0}


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


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
                   n_gpu_layers: int = 0) -> LossResult:
    """Loss on the reference DM tokens, over windows built exactly as training builds them."""
    from . import _native

    tokenizer = _native.Model(str(model_path), vocab_only=True)
    pad = int(tokenizer.info().metadata.get("tokenizer.ggml.padding_token_id", 0))
    with warnings.catch_warnings(record=True) as cut:
        warnings.simplefilter("always", TruncationWarning)
        windows = dataset_windows(conversations, tokenizer, ctx)
    tokens, labels = window_arrays(windows, ctx, pad)
    labelled = int((labels >= 0).sum())
    if not labelled:
        return LossResult(None, None, None, len(windows), 0, len(cut))
    loss, accuracy = _native.evaluate(str(model_path), tokens, labels, n_threads, n_gpu_layers)
    if not math.isfinite(loss):
        return LossResult(None, None, accuracy, len(windows), labelled, len(cut))
    return LossResult(loss, math.exp(min(loss, 700.0)), accuracy, len(windows), labelled, len(cut))


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
                   n_gpu_layers: int = 0, train_log: str | Path | None = None,
                   say: Callable[[str], None] | None = None) -> Report:
    """Replay, score and measure the model (and the baseline, with the same turns and settings)."""
    conversations = list(conversations)
    total = len(dm_turns(conversations)[:max_turns])
    if not total:
        raise ValidationError("the conversations hold no DM turn to replay; pass scenarios with DM turns")
    settings = {"max_tokens": max_tokens, "n_ctx": n_ctx, "loss_ctx": loss_ctx, "seed": seed,
                "max_turns": max_turns, "n_threads": n_threads, "n_gpu_layers": n_gpu_layers}
    run = dict(conversations=conversations, vocab=vocab, max_tokens=max_tokens, n_ctx=n_ctx, loss_ctx=loss_ctx,
               seed=seed, max_turns=max_turns, n_threads=n_threads, n_gpu_layers=n_gpu_layers, say=say)
    model = validate_one("model", model_path, **run)
    baseline = validate_one("baseline", baseline_path, **run) if baseline_path else None
    return make_report(model, baseline, conversations, settings, train_log)


def make_report(model: ModelResult, baseline: ModelResult | None, conversations: list[Conversation],
                settings: dict, train_log: str | Path | None = None, choices: dict | None = None) -> Report:
    settings = {"decoding": "greedy", "dm_turns": len(dm_turns(conversations)[:settings.get("max_turns")]),
                **settings}
    return Report(model, baseline, settings, sorted({c.scenario for c in conversations}),
                  str(train_log) if train_log else None, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  choices or {})


def validate_one(label: str, path: str | Path, *, conversations, vocab, max_tokens, n_ctx, loss_ctx, seed,
                 max_turns, n_threads, n_gpu_layers, say=None, with_loss: bool = True) -> ModelResult:
    """One file's replay, scores, speed and memory (and its reference loss unless `with_loss` is off)."""
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
                          n_threads=n_threads, max_turns=max_turns, progress=progress)
        del model
    if not replayed.turns:
        raise ValidationError(f"{label} {path.name}: none of the {replayed.skipped} DM turns fits n_ctx={n_ctx} "
                              f"with max_tokens={max_tokens}; raise the context or lower max_tokens")
    # outside the memory measurement: evaluate() holds every position's logits, which inference never does
    if with_loss:
        say(f"{label}: loss on the reference DM tokens (windows of {loss_ctx} tokens)")
        loss = reference_loss(path, conversations, loss_ctx, n_threads, n_gpu_layers)
    else:
        loss = LossResult(None, None, None, 0, 0, 0)
    n = len(replayed.turns)
    return ModelResult(
        label=label, path=str(path), name=info.name, arch=info.arch, n_params=info.n_params,
        file_bytes=path.stat().st_size,
        tools=tool_metrics([(t.reference, t.prediction) for t in replayed.turns], vocab),
        loss=loss, turns=replayed.turns, skipped_turns=replayed.skipped, seconds=replayed.seconds,
        seconds_per_turn=replayed.seconds / n, prompt_tokens_per_s=replayed.prompt_tokens_per_s,
        gen_tokens_per_s=replayed.gen_tokens_per_s, peak_rss_mb=memory.peak_mb, peak_rss_scope=memory.scope,
        template=replayed.template,
    )


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
    verdict = f"tool-call F1 {model_f1:.3f} vs baseline {base_f1:.3f} ({gain:+.3f}, needed > {min_f1_gain:+.3f})"
    return gain > min_f1_gain, verdict


# ---------------------------------------------------------------- report files


def write_report(report: Report, out_dir: str | Path, train_log: str | Path | None = None) -> dict[str, Path]:
    """report.json, report.md and the PNGs (when matplotlib is installed) in `out_dir`; returns them by name."""
    out = Path(out_dir)
    train_log = train_log or report.train_log
    written = {"json": write_json(out / REPORT_JSON, report.to_dict())}
    charts = {}
    tools_png = plot_tool_metrics(report, out / TOOLS_PNG)
    if tools_png:
        charts["tools"] = written["tools_png"] = tools_png
    if train_log and Path(train_log).is_file():
        loss_png = plot_loss_curve(Path(train_log), out / LOSS_PNG)
        if loss_png:
            charts["loss"] = written["loss_png"] = loss_png
    written["md"] = write_text(out / REPORT_MD, render_markdown(report, {k: p.name for k, p in charts.items()}))
    return written


def render_markdown(report: Report, charts: dict[str, str] | None = None) -> str:
    charts = charts or {}
    model, base = report.model, report.baseline
    s = report.settings
    lines = [f"# Validation report: {model.name or Path(model.path).name}", ""]
    for result in (model, base):
        if result:
            template = "" if result.template == "gguf" else "; no chat template in the GGUF: prompted with training's"
            lines.append(f"- **{result.label}**: `{result.path}` ({result.arch}, {result.n_params / 1e6:.1f} M "
                         f"parameters, {result.file_bytes / 1e6:.1f} MB{template})")
    replayed = len(model.turns)
    lines += [
        f"- **data**: {_count(len(report.scenarios), 'scenario')} ({_some(report.scenarios)}); {replayed} DM turns "
        f"replayed, {model.skipped_turns} skipped (prompt + max_tokens over n_ctx)",
        f"- **settings**: {s['decoding']} decoding, seed {s['seed']}, max_tokens {s['max_tokens']}, "
        f"n_ctx {s['n_ctx']}, loss windows of {s['loss_ctx']} tokens",
        f"- **created**: {report.created}",
    ]
    if base:
        passed, reason = gate(report)
        lines.append(f"- **gate** (default): {'passed' if passed else 'FAILED'}: {reason}")
    lines += ["", "## Tool calls", ""]
    lines += _md_table(["metric", *_columns(report)], metric_rows(report))
    lines += ["", "## Per tool", ""]
    lines += _md_table(["tool", "reference", *[f"{r.label}: predicted / name match / exact / invalid"
                                               for r in (model, base) if r]], _per_tool_rows(report))
    if any(r.tools.invalid for r in (model, base) if r):
        lines += ["", "Invalid calls by reason: " + "; ".join(
            f"{r.label}: " + (", ".join(f"{k} {v}" for k, v in sorted(r.tools.invalid.items())) or "none")
            for r in (model, base) if r)]
    for key, title in (("tools", "Tool metrics"), ("loss", "Training loss")):
        if key in charts:
            lines += ["", f"![{title}]({charts[key]})"]
    lines += _choice_sections(report.choices)
    lines += ["", "## Example turns", ""]
    lines += _examples(report)
    return "\n".join(lines) + "\n"


CHOICE_COLUMNS = (("size", "size (MB)"), ("step", "step"),
                  # quant types, teacher-forced against the F32 checkpoint (llama.cpp's perplexity --kl-divergence)
                  ("mean_kl", "mean KL vs F32"), ("top1_agreement", "top-1 agreement"),
                  ("tool_top1_agreement", "top-1 in tool calls"),
                  ("tool_name_f1", "tool-call F1"), ("exact_call_f1", "exact-call F1"),
                  ("format_validity", "format validity"), ("val_loss", "validation loss"),
                  ("gen_tokens_per_s", "generation tokens/s"))


def _choice_sections(choices: dict) -> list[str]:
    """What `train` chose from: checkpoints and quant types with their tool-call scores."""
    lines = []
    for key, title, first in (("checkpoints", "Checkpoint choice", "checkpoint"), ("quant", "Quantization choice", "type")):
        rows = choices.get(key) or []
        if not rows:
            continue
        columns = [(k, label) for k, label in CHOICE_COLUMNS if any(r.get(k) is not None for r in rows)]
        table = [[r[first], *[_choice_cell(k, r.get(k)) for k, _ in columns], "chosen" if r.get("chosen") else ""]
                 for r in rows]
        lines += ["", f"## {title}", ""]
        lines += _md_table([first, *[label for _, label in columns], ""], table)
    return lines


def _choice_cell(key: str, value) -> str:
    if key == "size" and value is not None:
        return f"{value / 1e6:.1f}"
    return _fmt(value, {"gen_tokens_per_s": "{:.1f}", "step": "{}", "mean_kl": "{:.4f}"}.get(key, "{:.3f}"))


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _columns(report: Report) -> list[str]:
    return ["model", "baseline", "change"] if report.baseline else ["model"]


def metric_rows(report: Report) -> list[list[str]]:
    """(label, model, baseline, change) rows for every metric: tool calls, loss, speed, memory."""
    model, base = report.model, report.baseline
    rows = []

    def row(label: str, get, fmt: str = "{:.3f}") -> None:
        a, b = get(model), get(base) if base else None
        cells = [label, _fmt(a, fmt)]
        if base:
            change = _change(a, b, fmt)
            cells += [_fmt(b, fmt), change]
        rows.append(cells)

    for key, label, _ in SCORES:
        row(label, lambda r, k=key: getattr(r.tools, k))
    row("reference calls / predicted attempts", lambda r: f"{r.tools.reference_calls} / {r.tools.predicted_calls}")
    row("over-calling turns / no-call turns", lambda r: f"{r.tools.over_calling_turns} / {r.tools.no_call_turns}")
    row("replies cut at max_tokens", lambda r: f"{sum(t.stop_reason == 'length' for t in r.turns)} / {len(r.turns)}")
    row("validation loss (reference DM tokens)", lambda r: r.loss.loss)
    row("perplexity", lambda r: r.loss.perplexity, "{:.2f}")
    row("token accuracy", lambda r: r.loss.token_accuracy)
    row("prompt tokens/s", lambda r: r.prompt_tokens_per_s, "{:,.0f}")
    row("generation tokens/s", lambda r: r.gen_tokens_per_s, "{:.1f}")
    row("seconds per DM turn", lambda r: r.seconds_per_turn, "{:.2f}")
    row("peak memory (MB)", lambda r: r.peak_rss_mb, "{:,.0f}")
    return rows


def _change(a, b, fmt: str) -> str:
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return ""
    text = fmt.format(a - b)
    if text.lstrip("+-") == fmt.format(0):
        return fmt.format(0)                   # no "-0" for a change that rounds away
    return text if text.startswith("-") else "+" + text


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else fmt.format(value)


def _per_tool_rows(report: Report) -> list[list[str]]:
    results = [r for r in (report.model, report.baseline) if r]
    names = list(dict.fromkeys(n for r in results for n in r.tools.per_tool))
    rows = []
    for name in names:
        counts = [r.tools.per_tool.get(name, {}) for r in results]
        reference = max(c.get("reference", 0) for c in counts)
        cells = [" / ".join(str(c.get(k, 0)) for k in ("predicted", "name_match", "exact", "invalid")) for c in counts]
        rows.append([name, str(reference), *cells])
    return rows


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---", *["---:"] * (len(headers) - 1)]
    lines = [headers, align, *[[str(c).replace("|", "\\|") for c in row] for row in rows]]
    return ["| " + " | ".join(cells) + " |" for cells in lines]


def example_turns(report: Report, count: int = EXAMPLE_TURNS) -> list[int]:
    """Indices into model.turns: turns with reference calls first, then one that should call nothing."""
    turns = report.model.turns
    calling = [i for i, t in enumerate(turns) if t.reference_calls]
    silent = [i for i, t in enumerate(turns) if not t.reference_calls]
    picked = calling[: count - 1] + silent[:1]
    rest = [i for i in range(len(turns)) if i not in picked]
    return sorted(picked + rest[: count - len(picked)])


def _examples(report: Report) -> list[str]:
    baseline = {(t.scenario, t.message): t for t in report.baseline.turns} if report.baseline else {}
    lines = []
    for index in example_turns(report):
        turn = report.model.turns[index]
        lines += [f"### {turn.scenario}, message {turn.message}", ""]
        lines += _example_block("reference", turn.reference, turn.reference_calls, [])
        lines += _example_block("model", turn.prediction, turn.predicted_calls, turn.invalid_calls)
        other = baseline.get((turn.scenario, turn.message))
        if other:
            lines += _example_block("baseline", other.prediction, other.predicted_calls, other.invalid_calls)
    return lines or ["(no turn was replayed)"]


def _some(items: list[str], shown: int = 5) -> str:
    more = f", … ({len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _example_block(label: str, text: str, calls: list[str], invalid: list[str]) -> list[str]:
    shown = text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " …"
    found = _some([f"`{c}`" for c in calls]) or "none"
    bad = f"; invalid: {_some([f'`{c}`' for c in invalid])}" if invalid else ""
    return [f"**{label}** (calls: {found}{bad})", "", "````text", shown.replace("````", "'''"), "````", ""]


# ---------------------------------------------------------------- charts


def plot_tool_metrics(report: Report, path: Path) -> Path | None:
    """Grouped bars of the tool scores, model vs baseline; None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure   # no pyplot: no global backend switch, safe in threads
    except ImportError:
        return None
    results = [r for r in (report.model, report.baseline) if r]
    labels = [short for _, _, short in SCORES]
    width = 0.8 / len(results)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for n, result in enumerate(results):
        values = [getattr(result.tools, key) for key, _, _ in SCORES]
        xs = [i + (n - (len(results) - 1) / 2) * width for i in range(len(SCORES))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=f"{result.label} ({Path(result.path).name})")
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if value is None else f"{value:.2f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(SCORES)), labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(f"Tool calls on {len(report.model.turns)} validation DM turns")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_loss_curve(train_log: Path, path: Path) -> Path | None:
    """The training run's loss curve (train.plot_losses draws it, as for loss.png)."""
    from .train import plot_losses, read_log

    return plot_losses(read_log(train_log), path)
