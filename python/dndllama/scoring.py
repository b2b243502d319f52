"""Scoring: how right are a model's tool calls? Pure functions over DM turns, no model needed.

  turn_calls(text, vocab)          every call attempt in a DM text: valid calls and invalid ones
  tool_metrics(turns, vocab)       scores over (reference, prediction[, context]) DM turns -> ToolMetrics
  consequence_kind(call, context)  whether a reference call follows from the conversation (see below)
  wilson(k, n)                     the 95 % Wilson interval of a rate
  paired_difference(a, b, rate)    one model's rate minus another's on the same turns, with a 95 %
                                   interval from resampling whole scenarios (ToolMetrics.groups);
                                   paired_change(a, b, rate) does it for two ToolMetrics

What each score means is written once, in RATES (label, numerator, denominator); tool_metrics
counts, and every rate comes with its counts and a Wilson interval, so report.md can say how much
a figure could move on another set of turns. Wilson treats turns as independent; the turns of one
scenario are not (a model that misreads a scene misreads its next turns too), so a comparison of two
models on the same turns resamples whole scenarios instead (paired_difference).

How calls are matched (one DM turn = one (reference, prediction) pair):
- A *call attempt* is `[word: ...]`, or `[tool ...]` without the colon when `tool` is a tool name
  (`[roll perception]`). Other bracketed text (`[sighs]`) is prose. An attempt is *valid* when it
  parses against the tool vocabulary; malformed calls, unknown tools and bad arguments are invalid.
  Every attempt counts in precision's denominator: an invalid call is a call the app could not run.
- Names match as multisets per turn; exact match compares (tool, argument -> value) after the
  normalisation BFCL uses: case, typographic apostrophes (’ ‘ ʼ ′ ` -> '), whitespace (runs
  collapse to one space, none around `+`/`-`: `1d6 + 4` == `1D6+4`). An optional argument of type
  `name` that one side leaves out matches only where the reference leaves no doubt: the party has
  one member and the other side names exactly them (`[roll: perception]` == `[roll: Sella,
  perception]` when Sella plays alone). Otherwise optional arguments must agree.
- The argument score pairs each reference call with the same-name prediction that shares most
  arguments and counts the reference's arguments that prediction gets right.

Consequence calls are reference calls whose arguments follow from the conversation before the turn,
so a good model can write them exactly (the rule, applied to the reference data):
- `health` whose amount, without its sign, equals the total (`*N*`) of a roll result fed back in the
  message just before the turn: the damage of a hit (or the healing rolled) reaching hit points.
  Results of checks against a DC and hit-point results (`*14/30*`) are not totals.
- `inventory` whose item (sign, an article or possessive removed) and owner are both written in the
  conversation before the turn (the party's inventories in the SYSTEM block, what the player buys,
  takes or hands over), so nothing in the call is invented.
Undefined ratios (a denominator of 0) are None, never NaN, so report.json stays valid JSON.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Iterable, Sequence

from .tools import ToolCall, Vocabulary, find_tool_calls

# `[roll perception]`, `[roll]`, `[roll perception: 5]`: a tool's name in brackets, no valid `name:` head
NEAR_CALL = re.compile(r"\[\s*([A-Za-z_][\w-]*)(?:[\s:][^\[\]\n]*)?\](?!\()")
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "`": "'"})
Z95 = 1.959963984540054

# One rate per row: (field, label, short label for the chart). tool_metrics stores each one's counts
# in ToolMetrics.counts[field] = (numerator, denominator); what they count is said in the label.
RATES = [
    ("name_f1", "tool-name F1", "name F1"),
    ("name_precision", "tool-name precision (of all attempts)", "name P"),
    ("name_recall", "tool-name recall (of reference calls)", "name R"),
    ("exact_f1", "exact-call F1 (tool and arguments)", "exact F1"),
    ("exact_precision", "exact-call precision", "exact P"),
    ("exact_recall", "exact-call recall", "exact R"),
    ("argument_accuracy", "arguments right, in calls with the right tool", "args"),
    ("consequence_exact", "consequence calls written exactly", "conseq."),
    ("turn_exact_match", "turns with exactly the reference calls", "turn exact"),
    ("no_call_accuracy", "no-call accuracy (no attempt where none is due)", "no-call"),
    ("no_call_after_result", "no-call accuracy right after a tool result", "no-call after result"),
    ("must_call_accuracy", "must-call accuracy (a valid call where one is due)", "must-call"),
    ("format_validity", "tool-call format validity", "format"),
]
# F1 = 2·hits / (predicted + reference): its interval treats (predicted + reference) / 2 as the trials
F1_FIELDS = {"name_f1", "exact_f1"}


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


@dataclass(frozen=True)
class Context:
    """What a DM turn follows: the party (from the SYSTEM block), the text written before the turn
    (SYSTEM block and earlier messages, without the tool prompt), the tool results fed back just
    before it ("" when the turn answers the player) and the DM turn whose calls they answer."""

    party: tuple[str, ...] = ()
    before: str = ""
    results: str = ""
    resolved: str = ""


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
    """Case, apostrophe variants and whitespace folded: `1d6 + 4` and `1D6+4` are equal."""
    value = " ".join(value.translate(APOSTROPHES).casefold().split())
    return re.sub(r"\s*([+-])\s*", r"\1", value)


def call_key(call: ToolCall, vocab: Vocabulary | None = None, context: Context | None = None) -> tuple:
    """What exact match compares: the tool and each bound argument's normalized value. With a solo
    party, an optional `name` argument left out stands for that one member (no doubt who it is)."""
    named = {arg: normalize_value(v) for arg, v in call.named.items()}
    if vocab and context and len(context.party) == 1 and call.name in vocab.tools:
        for spec in vocab.tools[call.name].args:
            if spec.optional and spec.type == "name" and spec.name not in named:
                named[spec.name] = normalize_value(context.party[0])
    return call.name, tuple(sorted(named.items()))


def turn_context(messages: Sequence, index: int, tool_prompt: str = "") -> Context:
    """The Context of DM message `index` in a conversation's messages (objects with role and
    content; the first is the system message, whose `tool_prompt` part is left out: its examples
    are not the conversation)."""
    before = [m.content for m in messages[:index]]
    system = before[0].replace(tool_prompt, "") if before and messages[0].role == "system" else ""
    previous = before[-1] if before and messages[index - 1].role == "user" else ""
    results = previous if previous.lstrip().startswith("<TOOLCALL>") else ""
    resolved = before[-2] if results and index >= 2 and messages[index - 2].role == "assistant" else ""
    return Context(party_names(system), "\n".join([system, *before[1:]]) if system else "\n".join(before), results,
                   resolved)


def party_names(system_block: str) -> tuple[str, ...]:
    """Names of the `- Name (Race Class, Level ...)` lines under `Party:` in a SYSTEM block."""
    party = system_block.split("Party:", 1)[1] if "Party:" in system_block else ""
    return tuple(m.group(1).strip() for m in PARTY_LINE.finditer(party))


# ---------------------------------------------------------------- consequence calls

TOTAL = re.compile(r"\*\s*(\d+)\s*\*")
PARTY_LINE = re.compile(r"^\s*[-*+]\s+([^()\n]+?)\s*\(", re.MULTILINE)
ARTICLE = re.compile(r"^(?:a|an|the|some|my|his|her|their|your|its)\s+", re.IGNORECASE)


def consequence_kind(call: ToolCall, context: Context | None) -> str | None:
    """"damage"/"healing" for a health call whose amount is a total just fed back, "item" for an
    inventory call whose item and owner are already in the conversation, else None."""
    if context is None:
        return None
    if call.name == "health" and "amount" in call.named:
        amount = call.named["amount"].replace(" ", "")
        if amount.lstrip("+-").isdigit() and int(amount.lstrip("+-")) in roll_totals(context.results):
            return "damage" if amount.startswith("-") else "healing"
    if call.name == "inventory" and {"owner", "item"} <= set(call.named):
        item = ARTICLE.sub("", call.named["item"].lstrip("+- "))
        before = normalize_value(context.before)
        if item and all(_mentions(before, v) for v in (item, call.named["owner"])):
            return "item"
    return None


def roll_totals(results: str) -> set[int]:
    """The totals of roll results in a fed-back message: `2d8+5: 4 + 7 + 5 = *16*` -> 16."""
    totals = set()
    for line in results.splitlines():
        match = TOTAL.search(line)
        if match and "dc" not in line.casefold():
            totals.add(int(match.group(1)))
    return totals


def _mentions(text: str, value: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(normalize_value(value)), text) is not None


# ---------------------------------------------------------------- metrics


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
    argument_accuracy: float | None = None
    consequence_exact: float | None = None
    turn_exact_match: float | None = None
    no_call_turns: int = 0
    no_call_accuracy: float | None = None
    must_call_turns: int = 0
    must_call_accuracy: float | None = None
    calls_per_reference: float | None = None   # attempts per reference call: 1 is right, > 1 over-calls
    over_calling_turns: int = 0       # no-call reference, at least one attempt predicted
    missed_call_turns: int = 0        # reference calls a tool, prediction attempts none
    # valid attempts that repeat (exactly) a call whose result was just fed back: the app would run it
    # again. Tells copying the previous call apart from other over-calling (docs/evaluation.md).
    repeated_calls: int = 0
    consequence_calls: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> reference, exact
    per_tool: dict[str, dict[str, int]] = field(default_factory=dict)  # see _tool_counts
    # "tool.argument" -> [right, of]: each argument of the paired calls (argument_score), so a wrong
    # `health` says whether the target or the amount was wrong
    per_argument: dict[str, list[int]] = field(default_factory=dict)
    # calls missed or added by name, paired within a turn: reference tool (NOTHING: none due) -> tool
    # written instead (NOTHING: none) -> count. Says e.g. that `check` stands in for `roll`.
    confusions: dict[str, dict[str, int]] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)             # reason -> count
    # lists, not tuples, so that report.json reads back equal
    counts: dict[str, list[int]] = field(default_factory=dict)              # rate -> [numerator, denominator]
    intervals: dict[str, list[float] | None] = field(default_factory=dict)  # rate -> 95 % Wilson [low, high]
    groups: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # scenario -> its own counts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tool_metrics(turns: Iterable[Sequence], vocab: Vocabulary, groups: Sequence[str] | None = None) -> ToolMetrics:
    """Score DM turns given as (reference, prediction) or (reference, prediction, Context); with
    `groups` (one key per turn, e.g. its scenario), each group's counts are kept too."""
    turns = list(turns)
    m = _score(turns, vocab)
    if groups is not None:
        keys = list(groups)
        m.groups = {group: _score([t for t, k in zip(turns, keys) if k == group], vocab).counts
                    for group in dict.fromkeys(keys)}
    return m


def _score(turns: list[Sequence], vocab: Vocabulary) -> ToolMetrics:
    m = ToolMetrics(per_tool={name: _tool_counts() for name in vocab.tools})
    tally = Counter()
    for turn in turns:
        reference, prediction = turn[0], turn[1]
        context = turn[2] if len(turn) > 2 else None
        _score_turn(m, tally, turn_calls(reference, vocab).valid, turn_calls(prediction, vocab), vocab, context)
    _finish(m, tally)
    return m


def _score_turn(m: ToolMetrics, tally: Counter, ref: list[ToolCall], pred: TurnCalls, vocab: Vocabulary,
                context: Context | None) -> None:
    key = lambda call: call_key(call, vocab, context)  # noqa: E731
    m.turns += 1
    m.reference_calls += len(ref)
    m.predicted_calls += pred.attempts
    m.valid_calls += len(pred.valid)
    names = Counter(c.name for c in ref) & Counter(c.name for c in pred.valid)
    exact = Counter(map(key, ref)) & Counter(map(key, pred.valid))
    tally["name_hits"] += sum(names.values())
    tally["exact_hits"] += sum(exact.values())
    tally["exact_turns"] += not pred.invalid and Counter(map(key, ref)) == Counter(map(key, pred.valid))
    if not ref:
        m.no_call_turns += 1
        tally["no_call_right"] += pred.attempts == 0
        m.over_calling_turns += pred.attempts > 0
        if context and context.results:
            tally["no_call_after_result"] += 1
            tally["no_call_after_result_right"] += pred.attempts == 0
    else:
        m.must_call_turns += 1
        tally["must_call_right"] += bool(pred.valid)
        m.missed_call_turns += pred.attempts == 0
    if context and context.resolved:
        resolved = {key(c) for c in turn_calls(context.resolved, vocab).valid}
        m.repeated_calls += sum(key(c) in resolved for c in pred.valid)
    for name in dict.fromkeys(c.name for c in ref):
        right, total = argument_score([c for c in ref if c.name == name], [p for p in pred.valid if p.name == name],
                                      key, m.per_argument)
        tally["args_right"] += right
        tally["args_total"] += total
        m.per_tool.setdefault(name, _tool_counts())["args_right"] += right
        m.per_tool[name]["args_total"] += total
    _consequences(m, tally, ref, exact.copy(), key, context)
    _per_tool(m, ref, pred, names, exact)
    _confusions(m, Counter(c.name for c in ref), Counter(c.name for c in pred.valid))


def argument_score(ref: list[ToolCall], pred: list[ToolCall], key,
                   per_argument: dict[str, list[int]] | None = None) -> tuple[int, int]:
    """(arguments right, arguments of the paired reference calls): reference and predicted calls of the
    same tool are paired best first (most shared arguments), each call used once. `per_argument`, when
    given, gains each paired argument's [right, of] under "tool.argument"."""
    want = [dict(key(c)[1]) for c in ref]
    have = [dict(key(p)[1]) for p in pred]
    shared = sorted(((sum(h.get(a) == v for a, v in w.items()), i, j)
                     for i, (c, w) in enumerate(zip(ref, want)) for j, (p, h) in enumerate(zip(pred, have))
                     if c.name == p.name), key=lambda t: (-t[0], t[1], t[2]))
    right = total = 0
    used_ref, used_pred = set(), set()
    for score, i, j in shared:
        if i not in used_ref and j not in used_pred:
            used_ref.add(i)
            used_pred.add(j)
            right += score
            total += len(want[i])
            if per_argument is not None:
                for arg, value in want[i].items():
                    counts = per_argument.setdefault(f"{ref[i].name}.{arg}", [0, 0])
                    counts[0] += have[j].get(arg) == value
                    counts[1] += 1
    return right, total


def _consequences(m: ToolMetrics, tally: Counter, ref: list[ToolCall], exact: Counter, key, context) -> None:
    for call in ref:
        kind = consequence_kind(call, context)
        if kind is None:
            continue
        row = m.consequence_calls.setdefault(kind, {"reference": 0, "exact": 0})
        row["reference"] += 1
        tally["consequence"] += 1
        if exact[key(call)] > 0:       # each exact prediction is credited to one reference call
            exact[key(call)] -= 1
            row["exact"] += 1
            tally["consequence_exact"] += 1


def _per_tool(m: ToolMetrics, ref: list[ToolCall], pred: TurnCalls, names: Counter, exact: Counter) -> None:
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


NOTHING = "-"


def _confusions(m: ToolMetrics, ref: Counter, pred: Counter) -> None:
    """Pairs a turn's reference calls that no prediction matched by name with the predicted calls that
    matched no reference, in order; the unpaired rest of either side pairs with NOTHING."""
    missed, added = sorted((ref - pred).elements()), sorted((pred - ref).elements())
    for want, got in zip_longest(missed, added, fillvalue=NOTHING):
        row = m.confusions.setdefault(want, {})
        row[got] = row.get(got, 0) + 1


def _finish(m: ToolMetrics, t: Counter) -> None:
    """Every rate from its counts (the single place where RATES' definitions are written down)."""
    both = m.predicted_calls + m.reference_calls
    m.counts = {
        "name_f1": (2 * t["name_hits"], both), "exact_f1": (2 * t["exact_hits"], both),
        "name_precision": (t["name_hits"], m.predicted_calls), "name_recall": (t["name_hits"], m.reference_calls),
        "exact_precision": (t["exact_hits"], m.predicted_calls), "exact_recall": (t["exact_hits"], m.reference_calls),
        "argument_accuracy": (t["args_right"], t["args_total"]),
        "consequence_exact": (t["consequence_exact"], t["consequence"]),
        "turn_exact_match": (t["exact_turns"], m.turns),
        "no_call_accuracy": (t["no_call_right"], m.no_call_turns),
        "no_call_after_result": (t["no_call_after_result_right"], t["no_call_after_result"]),
        "must_call_accuracy": (t["must_call_right"], m.must_call_turns),
        "format_validity": (m.valid_calls, m.predicted_calls),
    }
    for name, (k, n) in m.counts.items():
        setattr(m, name, _ratio(k, n))
        interval = wilson(k / 2, n / 2) if name in F1_FIELDS else wilson(k, n)
        m.counts[name] = [k, n]
        m.intervals[name] = list(interval) if interval else None
    m.calls_per_reference = _ratio(m.predicted_calls, m.reference_calls)


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials (95 % by default); None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: dict[str, dict[str, list[int]]], b: dict[str, dict[str, list[int]]], rate: str,
                      resamples: int = 2000, seed: int = 0) -> tuple[float, float, float] | None:
    """`rate` of model a minus model b, both scored on the same turns and given as per-scenario counts
    (ToolMetrics.groups), with the 95 % percentile interval of that difference over `resamples`
    draws of whole scenarios with replacement, the same draw for both. None when the two were not
    scored on the same scenarios or the rate is undefined."""
    import numpy as np

    if not a or a.keys() != b.keys() or any(rate not in a[g] or rate not in b[g] for g in a):
        return None
    counts = np.array([[*a[g][rate], *b[g][rate]] for g in a], dtype=float)   # k_a, n_a, k_b, n_b
    if not counts[:, 1].sum() or not counts[:, 3].sum():
        return None
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    sums = counts[draws].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        diffs = sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3]
    diffs = diffs[np.isfinite(diffs)]   # a draw without any turn the rate counts says nothing
    total = counts.sum(axis=0)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(total[0] / total[1] - total[2] / total[3]), float(low), float(high)


def paired_change(a: ToolMetrics, b: ToolMetrics, rate: str) -> tuple[float, float, float] | None:
    """paired_difference of two results; None for a result scored without per-scenario counts (one
    cached by an older version)."""
    return paired_difference(getattr(a, "groups", {}), getattr(b, "groups", {}), rate)


def _tool_counts() -> dict[str, int]:
    """Per tool: reference calls, valid predictions, name matches, exact matches, invalid attempts,
    and the argument score's counts (arguments right / arguments of name-matched reference calls)."""
    return {"reference": 0, "predicted": 0, "name_match": 0, "exact": 0, "invalid": 0, "args_right": 0,
            "args_total": 0}


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None
