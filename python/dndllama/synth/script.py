"""A scenario being written: the turns, the event log the tests replay, and the markdown writer.

The writer emits exactly the layout of ai-training/: `# SYSTEM` lines, a party list, then
`## User` / `## DM` / `## TOOLCALL` sections, each DM call on its own line after the prose.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

SLOT = re.compile(r"\{(\w+)\}")


@dataclass
class Turn:
    kind: str                                   # "user", "dm", "tool"
    text: str = ""
    calls: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)


class ScriptError(RuntimeError):
    """The generator tried to write an invalid conversation (a bug in a scene, never user input)."""


class Script:
    def __init__(self, rng: random.Random, grammar: dict[str, tuple[str, ...]]):
        self.rng, self.grammar = rng, grammar
        self.turns: list[Turn] = []
        self.events: list[dict] = []            # what happened, for tests and statistics
        self.party_size = 1
        self.fixed: dict[str, str] = {}          # rules with one expansion per scenario (its weather)

    # ---------------------------------------------------------------- text

    def say(self, template: str, **slots) -> str:
        """Expand a template: `{name}` takes a slot value or a random expansion of a grammar rule."""
        slots = {**self.fixed, **{k: str(v) for k, v in slots.items()}}
        return _dedupe(_sentence_case(_expand(self.rng, template, self.grammar, slots)))

    def pick(self, rule: str, **slots) -> str:
        return self.say(self.rng.choice(self.grammar[rule]), **slots)

    # ---------------------------------------------------------------- turns

    def user(self, text: str, actor: str = "") -> None:
        """A player's turn; with several characters, one the text does not name is named first."""
        merging = bool(self.turns) and self.turns[-1].kind == "user"
        named = actor in text or (merging and actor in self.turns[-1].text)
        if actor and self.party_size > 1 and not named:
            form = self.rng.choice(("{a}: {t}", "{a}, {t}", "({a}) {t}", "{a} here. {t}"))
            if form == "{a}, {t}" and not re.match(r"I\b|\W", text):
                text = text[:1].lower() + text[1:]     # "Kora, how many ..." not "Kora, How many ..."
            text = form.format(a=actor, t=text)
        if self.turns and self.turns[-1].kind == "tool":
            raise ScriptError("a User turn right after tool results; the DM must narrate them first")
        if self.turns and self.turns[-1].kind == "user":
            self.turns[-1].text += " " + text
        else:
            self.turns.append(Turn("user", text))

    def dm(self, text: str) -> None:
        """DM prose without a call; it joins a previous DM turn that has no call yet."""
        last = self.turns[-1] if self.turns else None
        text = text.strip()
        if not text:
            if not self.awaiting_narration:
                return
            text = self.pick("dm_after_results")   # results always get some prose after them
        if last and last.kind == "dm" and not last.calls:
            last.text = _dedupe(f"{last.text} {text}".strip())
        else:
            self.turns.append(Turn("dm", text))

    def call(self, text: str, calls: list[tuple[str, str]]) -> None:
        """DM prose ending in tool calls, then the TOOLCALL section with one result per call."""
        if not calls:
            raise ScriptError("call() without calls")
        last = self.turns[-1] if self.turns else None
        if text.strip() or self.awaiting_narration:
            self.dm(text)
        elif not (last and last.kind == "dm" and not last.calls):
            self.turns.append(Turn("dm", ""))      # a turn that is only calls
        turn = self.turns[-1]
        turn.calls = [c for c, _ in calls]
        self.turns.append(Turn("tool", results=[r for _, r in calls]))

    def log(self, kind: str, **data) -> None:
        self.events.append({"event": kind, **data})

    @property
    def awaiting_narration(self) -> bool:
        return bool(self.turns) and self.turns[-1].kind == "tool"

    # ---------------------------------------------------------------- markdown

    def render(self, system: list[str]) -> str:
        if not self.turns or self.turns[-1].kind != "dm" or self.turns[-1].calls:
            raise ScriptError("a scenario must end with DM prose")
        out = ["# SYSTEM", *system, "", "# CONVERSATION"]
        for turn in self.turns:
            if turn.kind == "user":
                out += ["## User", turn.text, ""]
            elif turn.kind == "tool":
                out += ["## TOOLCALL", *turn.results, ""]
            else:
                out += ["## DM", *_dm_lines(turn, self.rng), ""]
        return "\n".join(out).rstrip() + "\n"


def _dm_lines(turn: Turn, rng: random.Random) -> list[str]:
    if not turn.calls:
        return [turn.text]
    gap = [""] if rng.random() < 0.8 else []     # most hand-written turns leave a blank line before calls
    return [turn.text, *gap, *turn.calls] if turn.text else list(turn.calls)


def _expand(rng: random.Random, template: str, grammar: dict, slots: dict[str, str], depth: int = 0) -> str:
    if depth > 12:
        raise ScriptError(f"grammar recursion too deep at '{template[:40]}'")

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key in slots:
            return slots[key]
        if key not in grammar:
            raise ScriptError(f"grammar has no rule or slot '{key}' (in '{template[:60]}')")
        return _expand(rng, rng.choice(grammar[key]), grammar, slots, depth + 1)

    return SLOT.sub(fill, template)


def _sentence_case(text: str) -> str:
    """Capitalise the first letter and every letter after a sentence end; fold doubled spaces."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"([.!?][\"”]?\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return text[:1].upper() + text[1:]


def _dedupe(text: str) -> str:
    """Drop a sentence that repeats an earlier one word for word (two expansions can meet)."""
    seen, kept = set(), []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if sentence not in seen or len(sentence) < 12:
            kept.append(sentence)
        seen.add(sentence)
    return " ".join(kept)
