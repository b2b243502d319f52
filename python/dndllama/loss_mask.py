"""Which tokens of a DM answer carry loss: all of them (hand-written scenarios, the default), or with
`loss = "calls"` only the tool calls, the sentence before them and the answer's end, so that
generated scenarios (dndllama.synth) teach the mechanics without training their templated prose.

Spans are found on the text and mapped onto the answer's own tokens (tokenized whole, exactly as
training sees them), so the mask never changes the tokenization.
"""

from __future__ import annotations

import re

from .tools import CALL_PATTERN

LOSS_MODES = ("all", "calls")
END_OF_TURN = "<end_of_turn>"   # Gemma's; the dataset passes its own marker


def loss_spans(answer: str, loss: str = "all", end: str = END_OF_TURN) -> list[tuple[int, int]]:
    """Character spans of a DM answer (its text + <end_of_turn>) that carry loss.

    "all": everything. "calls": each block of tool-call lines together with the sentence just before
    it, and the answer's end: <end_of_turn> right after the last calls (stopping to wait for the
    results is part of calling), or else the last sentence and <end_of_turn>. So an answer without
    calls keeps only its last sentence and end, and still teaches when *not* to call without training
    the rest of its prose.
    """
    if loss == "all":
        return [(0, len(answer))]
    body = answer[: len(answer) - len(end)] if end and answer.endswith(end) else answer
    blocks = _call_blocks(body)
    if not blocks:
        return [(_sentence_start(body, len(body)), len(answer))]
    spans = [(_sentence_start(body, start), end) for start, end in blocks]
    if not body[blocks[-1][1]:].strip():
        spans[-1] = (spans[-1][0], len(answer))
    else:
        spans.append((_sentence_start(body, len(body)), len(answer)))
    return spans


def _call_blocks(body: str) -> list[tuple[int, int]]:
    """(start, end) of each run of lines that hold tool calls (blank lines between calls join the run)."""
    blocks: list[list[int]] = []
    offset = 0
    for line in body.split("\n"):
        start, end = offset, offset + len(line)
        offset = end + 1
        if CALL_PATTERN.search(line):
            if blocks and not body[blocks[-1][1]:start].strip():
                blocks[-1][1] = end
            else:
                blocks.append([start, end])
    return [(a, b) for a, b in blocks]


SENTENCE_END = re.compile(r"[.!?][\"”')\]]*\s+")


def _sentence_start(body: str, before: int) -> int:
    """Where the sentence that ends just before `before` starts (the start of its paragraph at most)."""
    end = len(body[:before].rstrip())
    paragraph = body.rfind("\n\n", 0, end)
    floor = paragraph + 2 if paragraph >= 0 else 0
    starts = [m.end() for m in SENTENCE_END.finditer(body, floor, end) if m.end() < end]
    start = starts[-1] if starts else floor
    return start + (len(body[start:end]) - len(body[start:end].lstrip()))


def answer_mask(answer: str, ids: list[int], tokenizer, loss: str, end: str = END_OF_TURN) -> list[bool]:
    """Token mask of the answer's loss spans. A token that straddles a span's edge is included."""
    if loss == "all":
        return [True] * len(ids)
    mask = [False] * len(ids)
    for start, stop in loss_spans(answer, loss, end):
        first = _token_at(answer, start, ids, tokenizer, straddler=0)
        last = _token_at(answer, stop, ids, tokenizer, straddler=1)
        mask[first:last] = [True] * (last - first)
    return mask


def decision_tokens(answer: str, ids: list[int], tokenizer, end: str = END_OF_TURN) -> list[bool]:
    """The tokens of a DM answer where it decides whether to call a tool: its first token (a call or
    prose first), the token that opens each call, and its end of turn (stop, or call after all).
    Over-calling is decided at these few tokens among the many of a turn's prose."""
    marks = [False] * len(ids)
    if not ids:
        return marks
    marks[0] = True
    if end and answer.endswith(end):
        marks[-1] = True
    for call in CALL_PATTERN.finditer(answer):
        at = _token_at(answer, call.start(), ids, tokenizer, straddler=0)
        if at < len(ids):
            marks[at] = True
    return marks


def _token_at(text: str, offset: int, ids: list[int], tokenizer, straddler: int) -> int:
    """How many of `ids` lie before char `offset`: the prefix's own tokens when they are a prefix of
    the whole text's tokens, else the common part plus `straddler` (the token across the edge)."""
    if offset <= 0:
        return 0
    if offset >= len(text):
        return len(ids)
    prefix = tokenizer.tokenize(text[:offset], False, True)
    common = 0
    while common < min(len(prefix), len(ids)) and prefix[common] == ids[common]:
        common += 1
    return common if common == len(prefix) else min(len(ids), common + straddler)
