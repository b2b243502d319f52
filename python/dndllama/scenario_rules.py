"""The rules between a scenario's turns, checked after parsing: the conversation has a DM turn and
does not stop mid-exchange; every DM tool call is followed by its results, one labelled line per
call; results follow a call; arguments name party members or known values (tools.toml).
"""

from __future__ import annotations

from .scenario_records import TURN_HEADINGS, Report, SystemBlock, Turn
from .tools import ToolCall, Vocabulary, label_matches


def check_conversation(turns: list[Turn], heading_line: int, report: Report, vocab: Vocabulary,
                        system: SystemBlock) -> None:
    if not any(t.kind == "dm" for t in turns):
        report.add(turns[0].line if turns else heading_line, "empty-conversation",
                   "conversation has no DM turn", "at least one ## User and one ## DM turn")
        return
    party = _party_names(system)
    for index, turn in enumerate(turns):
        previous = turns[index - 1] if index else None
        following = turns[index + 1] if index + 1 < len(turns) else None
        if turn.kind == "dm":
            _check_dm_turn(turn, following, report, vocab, party)
        elif turn.kind == "tool":
            _check_results(turn, previous, report, vocab)
    last = turns[-1]
    if last.kind == "user":
        report.add(last.line, "truncated", "conversation ends with a User turn", "a ## DM reply after it")
    elif last.kind == "tool" and _attempted(turns[-2] if len(turns) > 1 else None):
        report.add(last.line, "truncated", "conversation ends with tool results", "a ## DM turn that uses them")


def _attempted(turn: Turn | None) -> int:
    return turn.attempted_calls if turn is not None and turn.kind == "dm" else 0


def _check_dm_turn(turn: Turn, following: Turn | None, report: Report, vocab: Vocabulary, party: set[str]) -> None:
    for call in turn.tool_calls:
        _check_loose_args(turn, call, report, vocab, party)
        tool = vocab.tools[call.name]
        for spec in tool.args:
            value = call.named.get(spec.name)
            if spec.type == "name" and value and not _in_party(value, party):
                report.add(_call_line(turn, call), "unknown-target",
                           f"{call.raw.strip()} names '{value}', who is not in the party",
                           "a party member (fine for creatures)")
    if not _attempted(turn):
        return
    if following is None:
        report.add(_call_line(turn, None), "truncated", "conversation ends with a DM tool call awaiting results",
                   "a ## TOOLCALL section with the results, then a ## DM turn")
    elif following.kind != "tool":
        report.add(_call_line(turn, None), "missing-result", "DM tool call with no result",
                   f"a ## TOOLCALL section before the ## {TURN_HEADINGS[following.kind]} at line {following.line}")


def _check_loose_args(turn: Turn, call: ToolCall, report: Report, vocab: Vocabulary, party: set[str]) -> None:
    """A value that fits only its arg's loose type is a warning (the meaning is clear), unless it is
    a party member's name: `[roll: Mira]` lost the comma and the skill, so it is an error."""
    tool = vocab.tools[call.name]
    for spec in tool.args:
        if spec.name not in call.loose:
            continue
        value = call.named[spec.name]
        if _in_party(value, party):
            report.add(_call_line(turn, call), "bad-arguments",
                       f"{call.raw.strip()} names party member '{value}' as its {spec.name}",
                       f"the member first, then what to roll, e.g. [{call.name}: {value}, perception]")
        else:
            report.add(_call_line(turn, call), "unknown-value",
                       f"'{value}' in {call.raw.strip()} is not a known {spec.type} (kept as written)",
                       f"a {spec.type} of tools.toml, e.g. {tool.example}, or add it to the [lists] there")


def _check_results(turn: Turn, previous: Turn | None, report: Report, vocab: Vocabulary) -> None:
    wanted = _attempted(previous)
    if not wanted:
        report.add(turn.line, "orphan-result", "tool results with no tool call before them",
                   "a ## DM turn containing a call such as [roll: perception] right before")
        return
    if len(turn.results) != wanted:
        labels = ", ".join(c.raw.strip() for c in previous.tool_calls) or f"{wanted} calls"
        report.add(turn.line, "result-count", f"{len(turn.results)} result lines for {wanted} tool calls",
                   f"one 'label: result' line per call, in order: {labels}")
        return
    if len(previous.tool_calls) != wanted:
        return  # a malformed call is already reported; pairing would be guesswork
    for call, result in zip(previous.tool_calls, turn.results):
        if result.label and not label_matches(result.label, call, vocab):
            report.add(result.line, "label-mismatch", f"result label '{result.label}' for {call.raw.strip()}",
                       f"a label naming {' or '.join(repr(v) for v in call.label_values(vocab))}")


def _call_line(turn: Turn, call: ToolCall | None) -> int:
    offset = call.span[0] if call else (turn.tool_calls[-1].span[0] if turn.tool_calls else 0)
    return turn.line_at(offset)


def _party_names(system: SystemBlock) -> set[str]:
    names = set()
    for member in system.party:
        names.add(member.name.lower())
        names.add(member.name.split()[0].lower())
    return names


def _in_party(value: str, party: set[str]) -> bool:
    return " ".join(value.lower().split()) in party
