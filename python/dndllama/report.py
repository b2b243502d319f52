"""Report files: report.json, report.md and the charts of a validation Report (see validate.py).

  write_report(report, out_dir)   report.json, report.md, tool_metrics.png (+ loss_curve.png)
  render_markdown(report)         the report as markdown: scores with 95 % intervals, per tool, examples
  metric_rows(report)             (label, model, baseline, change) rows, also printed by `dndllama validate`
  fmt_value(value)                a figure as text, "-" when undefined

Every rate is shown with its 95 % Wilson interval (scoring.wilson): on a few dozen turns an F1 can
move by ±0.2 from one set of turns to another, and the interval says so next to the figure. A change
against the baseline gets the interval of the paired difference over resampled scenarios
(scoring.paired_difference): the two models replayed the same turns, so that is the interval that
says whether one beats the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .files import atomic_path, write_json, write_text
from .scoring import NOTHING, RATES, paired_change, wilson

if TYPE_CHECKING:   # validate.py imports this module; the types are only for reading
    from .validate import Report

REPORT_JSON, REPORT_MD, TOOLS_PNG, LOSS_PNG = "report.json", "report.md", "tool_metrics.png", "loss_curve.png"
EXAMPLE_TURNS = 4        # example turns shown in report.md
EXAMPLE_CHARS = 600      # characters of each example text shown
# the rates drawn in tool_metrics.png (all of them are in report.md)
CHART_RATES = ("name_f1", "exact_f1", "argument_accuracy", "consequence_exact", "no_call_accuracy",
               "must_call_accuracy", "format_validity")


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
        f"n_ctx {s['n_ctx']}, loss windows of {s['loss_ctx']} tokens"
        + (f" on {s['loss_on']}" if s.get("loss_on") else ""),
        f"- **created**: {report.created}",
    ]
    if base:
        from .validate import gate   # at call time: validate.py imports this module

        passed, reason = gate(report)
        lines.append(f"- **gate** (default): {'passed' if passed else 'FAILED'}: {reason}")
    lines += ["", "## Tool calls", ""]
    lines += _md_table(["metric", *_columns(report)], metric_rows(report, intervals=True))
    lines += ["", "Rates with (numerator/denominator) and their 95 % Wilson interval; F1's interval counts "
              "(predicted + reference) / 2 trials."
              + (" A change's interval is the paired difference's over 2,000 resamplings of whole scenarios "
                 "(the same draw for both models); one that excludes 0 is a real difference on this set."
                 if base else "") + " Definitions: `scoring.py`."]
    lines += ["", "## Per tool", ""]
    lines += _md_table(["tool", "reference", *[f"{r.label}: predicted / name match / exact / invalid / args right"
                                               for r in (model, base) if r]], _per_tool_rows(report))
    lines += _argument_section(report)
    lines += _confusion_section(report.model)
    lines += _consequence_section(report)
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
                  ("candidate_nll", "loss on the screened DM tokens"),
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
    return fmt_value(value, {"gen_tokens_per_s": "{:.1f}", "step": "{}", "mean_kl": "{:.4f}"}.get(key, "{:.3f}"))


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _columns(report: Report) -> list[str]:
    return ["model", "baseline", "change"] if report.baseline else ["model"]


def metric_rows(report: Report, intervals: bool = False) -> list[list[str]]:
    """(label, model, baseline, change) rows for every metric: tool calls, loss, speed, memory.
    With `intervals`, each rate's cell also holds its counts and 95 % interval."""
    model, base = report.model, report.baseline
    rows = []

    def row(label: str, get, fmt: str = "{:.3f}", detail=None, rate: str = "") -> None:
        a, b = get(model), get(base) if base else None
        cells = [label, fmt_value(a, fmt) + (detail(model) if detail else "")]
        if base:
            change = _change(a, b, fmt) + (_paired(model.tools, base.tools, rate) if rate and intervals else "")
            cells += [fmt_value(b, fmt) + (detail(base) if detail else ""), change]
        rows.append(cells)

    for key, label, _ in RATES:
        # getattr: results cached by an older version lack the newer rates
        row(label, lambda r, k=key: getattr(r.tools, k, None), detail=(lambda r, k=key: _interval(r.tools, k)) if intervals else None,
            rate=key)
    row("calls per reference call (1 is right)", lambda r: getattr(r.tools, "calls_per_reference", None), "{:.2f}")
    row("reference calls / predicted attempts", lambda r: f"{r.tools.reference_calls} / {r.tools.predicted_calls}")
    row("over-calling turns / no-call turns", lambda r: f"{r.tools.over_calling_turns} / {r.tools.no_call_turns}")
    row("attempts repeating the call just resolved", lambda r: getattr(r.tools, "repeated_calls", None), "{}")
    row("replies cut at max_tokens", lambda r: f"{sum(t.stop_reason == 'length' for t in r.turns)} / {len(r.turns)}")
    row("attempts in those replies / all attempts",
        lambda r: f"{_attempts_in_cut_replies(r.turns)} / {r.tools.predicted_calls}")
    row("replies ended before a call's or sentence's third copy (loops)",
        lambda r: f"{sum(getattr(t, 'looped', False) for t in r.turns)} / {len(r.turns)}")
    row("validation loss (reference DM tokens)", lambda r: r.loss.loss)
    row("perplexity", lambda r: r.loss.perplexity, "{:.2f}")
    row("token accuracy", lambda r: r.loss.token_accuracy)
    row("prompt tokens/s", lambda r: r.prompt_tokens_per_s, "{:,.0f}")
    row("generation tokens/s", lambda r: r.gen_tokens_per_s, "{:.1f}")
    row("seconds per DM turn", lambda r: r.seconds_per_turn, "{:.2f}")
    row("peak memory (MB)", lambda r: r.peak_rss_mb, "{:,.0f}")
    return rows


def _attempts_in_cut_replies(turns) -> int:
    """Call attempts in replies that ran to max_tokens: how much of the over-calling greedy loops make
    (a loop of one call or sentence is ended before its third copy; a loop of several calls is not)."""
    return sum(len(t.predicted_calls) + len(t.invalid_calls) for t in turns if t.stop_reason == "length")


def _interval(tools, key: str) -> str:
    """` (k/n) [lo, hi]` after a rate; nothing when the rate is undefined. Old reports lack the counts."""
    counts, interval = getattr(tools, "counts", {}).get(key), getattr(tools, "intervals", {}).get(key)
    if not counts or interval is None:
        return ""
    k, n = counts
    return f" ({k:g}/{n:g}) [{interval[0]:.2f}, {interval[1]:.2f}]"


def _paired(model_tools, base_tools, key: str) -> str:
    """` [lo, hi]` after a change: its 95 % interval over resampled scenarios (scoring.paired_change);
    nothing for results scored without per-scenario counts."""
    found = paired_change(model_tools, base_tools, key)
    return f" [{found[1]:+.2f}, {found[2]:+.2f}]" if found else ""


def _consequence_section(report: Report) -> list[str]:
    """Consequence calls by kind: how many the reference makes, how many each model writes exactly."""
    results = [r for r in (report.model, report.baseline) if r]
    kinds = list(dict.fromkeys(k for r in results for k in getattr(r.tools, "consequence_calls", {})))
    if not kinds:
        return []
    rows = []
    for kind in kinds:
        counts = [getattr(r.tools, "consequence_calls", {}).get(kind, {}) for r in results]
        rows.append([kind, str(max(c.get("reference", 0) for c in counts)), *[_exact_cell(c) for c in counts]])
    lines = ["", "## Consequence calls", "",
             "Reference calls whose arguments follow from the conversation (damage or healing just rolled -> "
             "`health`; an item and owner already named -> `inventory`), so they can be written exactly.", ""]
    return lines + _md_table(["kind", "reference", *[f"{r.label}: exact" for r in results]], rows)


def _exact_cell(counts: dict) -> str:
    k, n = counts.get("exact", 0), counts.get("reference", 0)
    return f"{k}" + _rate_suffix(k, n)


def _rate_suffix(k: int, n: int) -> str:
    """` (rate [lo, hi])` with the 95 % Wilson interval; nothing when n is 0."""
    interval = wilson(k, n)
    return f" ({k / n:.2f} [{interval[0]:.2f}, {interval[1]:.2f}])" if interval else ""


def _change(a, b, fmt: str) -> str:
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return ""
    text = fmt.format(a - b)
    if text.lstrip("+-") == fmt.format(0):
        return fmt.format(0)                   # no "-0" for a change that rounds away
    return text if text.startswith("-") else "+" + text


def fmt_value(value, fmt: str = "{:.3f}") -> str:
    """A figure as text: "-" for an undefined one (None), text as it is."""
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
        cells = [" / ".join(str(c.get(k, 0)) for k in ("predicted", "name_match", "exact", "invalid"))
                 + f" / {c.get('args_right', 0)} of {c.get('args_total', 0)}" for c in counts]
        rows.append([name, str(reference), *cells])
    return rows


def _argument_section(report: Report) -> list[str]:
    """Each argument of the calls that were paired with a reference call of the same tool: how often
    it was right, so a wrong call says which part was wrong (a `health` target, or its amount)."""
    results = [r for r in (report.model, report.baseline) if r]
    names = list(dict.fromkeys(a for r in results for a in getattr(r.tools, "per_argument", {})))
    if not names:                                   # no paired call, or a result cached before it
        return []
    rows = [[name, *[_rate_cell(*getattr(r.tools, "per_argument", {}).get(name, [0, 0])) for r in results]]
            for name in names]
    return ["", "## Arguments", "",
            "Each argument of the calls paired with a reference call of the same tool: right / of.", "",
            *_md_table(["argument", *[f"{r.label}: right" for r in results]], rows)]


def _rate_cell(k: int, n: int) -> str:
    return f"{k} of {n}" + _rate_suffix(k, n)


def _confusion_section(result) -> list[str]:
    """Which tool the model wrote where the reference called another, or nothing (rows: reference)."""
    confusions = getattr(result.tools, "confusions", None)   # absent from results cached before it
    if not confusions:
        return []
    tools = [t for t in result.tools.per_tool if t in confusions or any(t in row for row in confusions.values())]
    rows = [["none due" if want == NOTHING else want,
             *[str(confusions[want].get(got, "")) for got in [*tools, NOTHING]]]
            for want in [*tools, NOTHING] if want in confusions]
    return ["", "## Wrong tool or none", "",
            f"Each reference call {result.label} did not make by name, paired with a call it made in the same turn "
            "that the reference does not have; \"none due\" rows are calls beyond the reference's, \"nothing\" "
            "misses without a stand-in.", "",
            *_md_table(["reference call", *[f"wrote {t}" for t in tools], "wrote nothing"], rows)]


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
    scores = [(key, short) for key, _, short in RATES if key in CHART_RATES]
    labels = [short for _, short in scores]
    width = 0.8 / len(results)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for n, result in enumerate(results):
        values = [getattr(result.tools, key, None) for key, _ in scores]
        xs = [i + (n - (len(results) - 1) / 2) * width for i in range(len(scores))]
        intervals = [getattr(result.tools, "intervals", {}).get(key) for key, _ in scores]
        errors = [[max(0.0, (v or 0.0) - i[0]) if i else 0.0 for v, i in zip(values, intervals)],
                  [max(0.0, i[1] - (v or 0.0)) if i else 0.0 for v, i in zip(values, intervals)]]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, yerr=errors, capsize=2, ecolor="0.4",
                      error_kw={"lw": 0.8}, label=f"{result.label} ({Path(result.path).name})")
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if value is None else f"{value:.2f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(scores)), labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(f"Tool calls on {len(report.model.turns)} validation DM turns (whiskers: 95 % intervals)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_loss_curve(train_log: Path, path: Path) -> Path | None:
    """The training run's loss curve (train.plot_losses draws it, as for loss.png)."""
    from .train import plot_losses, read_log

    return plot_losses(read_log(train_log), path)
