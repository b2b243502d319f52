"""Chat with a trained GGUF the way the app does: the GGUF's own chat template, the system prompt
training used, tool calls answered by a user message of results.

The conversation has exactly the shape training rendered (see dataset.to_conversation):

  system     the SYSTEM block (a scenario's, or DEFAULT_SYSTEM) + the tool list (dataset.system_prompt)
  user       the player's message                            <- ChatSession.send(text)
  assistant  the DM's reply, tool calls verbatim: "... [roll: perception]"
  user       "<TOOLCALL>\\nperception: 15 + 10(skill) = *25*\\n</TOOLCALL>"
                                                             <- ChatSession.send_tool_results(lines)
  assistant  the DM's continuation
  ...

Each player message opens a *round* (the player's message, the DM's reply, any tool results and
continuations). When the prompt plus the reply budget no longer fits the context, whole rounds are
dropped from the oldest on (the system message is always kept) and the reply says how many.

`dndllama chat` (cli/chat.py) is the terminal front end; everything here runs without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import END_OF_TURN, Message, feedback_message, system_prompt
from .replay import MAX_REPEATS, end_reply
from .scenarios import RESULT_LINE, Character, SystemBlock, check_scenario
from .tools import ToolCall, ToolCallError, Vocabulary, default_vocabulary, find_tool_calls

# The party and setting used when no --scenario is given: a scenario's SYSTEM block, as data.
DEFAULT_SYSTEM = SystemBlock(
    role="Dungeon Master",
    world="Forgotten Realms",
    location="The Yawning Portal, a tavern in Waterdeep",
    scene="Late evening; rain drums on the shutters and the common room is packed.",
    party=[
        Character("Thordak", "Dragonborn", "Fighter", 5, 45, 45, inventory=["longsword", "shield"]),
        Character("Elara", "High Elf", "Wizard", 5, 21, 28, xp=6500, inventory=["spellbook", "healing potion"]),
        Character("Mira", "Halfling", "Rogue", 5, 33, 33, inventory=["shortsword", "thieves' tools", "rope"]),
    ],
)

# A scenario file lends only its SYSTEM block, so only these errors make it unusable.
SYSTEM_ERRORS = {"unreadable", "internal", "missing-system", "missing-field", "bad-system-line",
                 "bad-party-line", "hp-above-max"}


class ChatError(ValueError):
    """A message the session cannot take (wrong order, malformed results, too long); says what to do."""


class ContextFull(ChatError):
    """Even the system prompt and the current round do not fit the context."""


@dataclass
class ChatSettings:
    """Sampling and context; the defaults are the app's (cactus.config.json of a trained version)."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    seed: int = 0
    n_ctx: int = 2048
    threads: int = 0    # 0 = the free cores


@dataclass
class Reply:
    text: str                          # the DM's reply, tool calls verbatim
    tool_calls: list[ToolCall]         # valid calls, in order: the results must come back for these
    invalid_calls: list[ToolCallError] = field(default_factory=list)   # `[word: ...]` that did not parse
    dropped: int = 0                   # oldest rounds dropped before this reply to fit the context
    n_prompt: int = 0
    n_generated: int = 0
    stop_reason: str = ""
    tokens_per_s: float = 0.0
    looped: bool = False               # the reply ends before a span's third copy (replay.end_at_loop)

    @property
    def awaiting_results(self) -> bool:
        return bool(self.tool_calls)


# A generate function: (prompt text, settings, seed) -> the native module's result dict
# ({"text", "stop_reason", "n_prompt", "n_generated", "gen_tokens_per_s"}). Tests may pass their own.
Generate = Callable[[str, ChatSettings, int], dict]


def load_system(path: str | Path, vocab: Vocabulary | None = None) -> SystemBlock:
    """The SYSTEM block of a scenario file. The file may be a whole scenario or just `# SYSTEM`;
    conversation problems are ignored (only the SYSTEM block is used)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ChatError(f"cannot read scenario '{path}': {exc.strerror}") from None
    scenario, diagnostics = check_scenario(data, str(path), vocab)
    errors = [d for d in diagnostics if d.code in SYSTEM_ERRORS]
    if scenario is None or errors:
        shown = "\n".join(f"  {d}" for d in errors) or "  the file could not be parsed"
        raise ChatError(f"the SYSTEM block of '{path}' is not usable:\n{shown}")
    return scenario.system


def result_example(call: ToolCall, vocab: Vocabulary) -> str:
    """The result line of the call's tool from the vocabulary, as a hint of the form."""
    return vocab.tools[call.name].result


class ChatSession:
    """A conversation with one model. `send` and `send_tool_results` each generate one DM reply."""

    def __init__(self, model, system: SystemBlock | str = DEFAULT_SYSTEM, vocab: Vocabulary | None = None,
                 settings: ChatSettings | None = None, generate: Generate | None = None):
        self.model = model
        self.vocab = vocab or default_vocabulary()
        self.system = system if isinstance(system, str) else system_prompt(system, self.vocab)
        self.settings = settings or ChatSettings()
        self._generate = generate or self._native_generate
        self.rounds: list[list[Message]] = []
        self.pending: list[ToolCall] = []
        self.turns = 0

    # ---------------------------------------------------------------- what the app sends

    def messages(self, rounds: list[list[Message]] | None = None) -> list[Message]:
        rounds = self.rounds if rounds is None else rounds
        return [Message("system", self.system)] + [m for r in rounds for m in r]

    def prompt(self, rounds: list[list[Message]] | None = None) -> str:
        """The prompt text for the next DM reply, by the GGUF's own template (BOS comes from tokenizing)."""
        messages = [{"role": m.role, "content": m.content} for m in self.messages(rounds)]
        return self.model.apply_chat_template(messages, add_assistant=True)

    def prompt_tokens(self, rounds: list[list[Message]] | None = None) -> int:
        return len(self.model.tokenize(self.prompt(rounds), True, True))

    # ---------------------------------------------------------------- turns

    def send(self, text: str) -> Reply:
        """The player's message; returns the DM's reply."""
        text = text.strip()
        if not text:
            raise ChatError("empty message; type what the party does")
        if self.pending:
            calls = ", ".join(c.raw for c in self.pending)
            raise ChatError(f"the DM's last reply is waiting for the results of {calls}; send one "
                            f"`label: result` line per call first (or reset the chat)")
        self.rounds.append([Message("user", text)])
        return self._reply(undo=lambda: self.rounds.pop())

    def send_tool_results(self, lines: list[str]) -> Reply:
        """One `label: result` line per pending tool call, in order; returns the DM's continuation."""
        lines = [line.strip() for line in lines if line.strip()]
        if not self.pending:
            raise ChatError("no tool call is waiting for results; send a player message instead")
        if len(lines) != len(self.pending):
            raise ChatError(f"{len(self.pending)} tool call(s) wait for results ({', '.join(c.raw for c in self.pending)}), "
                            f"got {len(lines)} line(s); send one line per call, in order")
        bad = [line for line in lines if not RESULT_LINE.match(line)]
        if bad:
            raise ChatError(f"result line {bad[0]!r} is not `label: result` "
                            f"(e.g. {result_example(self.pending[0], self.vocab)})")
        pending, current = self.pending, self.rounds[-1]
        current.append(Message("user", feedback_message(lines)))

        def undo():
            current.pop()
            self.pending = pending

        self.pending = []
        return self._reply(undo)

    def reset(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.rounds, self.pending = [], []

    # ---------------------------------------------------------------- internals

    def _reply(self, undo: Callable[[], None]) -> Reply:
        try:
            dropped, n_prompt = self._fit()
            seed = self.settings.seed + self.turns
            result = self._generate(self.prompt(self.rounds[dropped:]), self.settings, seed)
        except BaseException:
            undo()    # the message was not answered: the conversation is as it was before it
            raise
        del self.rounds[:dropped]
        self.turns += 1
        text, looped = end_reply(result["text"].split(END_OF_TURN)[0])   # as validation and the app end it
        calls, invalid = find_tool_calls(text, self.vocab)
        self.rounds[-1].append(Message("assistant", text))
        self.pending = calls
        return Reply(text, calls, invalid, dropped, result.get("n_prompt", n_prompt), result.get("n_generated", 0),
                     result.get("stop_reason", ""), result.get("gen_tokens_per_s", 0.0), looped)

    def _fit(self) -> tuple[int, int]:
        """How many of the oldest rounds to drop so that prompt + max_tokens fits n_ctx, and the prompt's
        tokens then. Changes nothing: the caller drops them once the reply exists."""
        budget = self.settings.n_ctx - self.settings.max_tokens
        dropped, n_prompt = 0, self.prompt_tokens()
        while n_prompt > budget and dropped < len(self.rounds) - 1:
            dropped += 1
            n_prompt = self.prompt_tokens(self.rounds[dropped:])
        if n_prompt > budget:
            raise ContextFull(f"the system prompt and this round need {n_prompt} tokens, plus {self.settings.max_tokens} "
                              f"for the reply: more than the context of {self.settings.n_ctx}; raise the context "
                              "(--ctx), lower --max-tokens, or send a shorter message")
        return dropped, n_prompt

    def _native_generate(self, prompt: str, s: ChatSettings, seed: int) -> dict:
        # the model's native session keeps its KV cache between replies: each prompt extends the last
        # one, so only the new messages are decoded (dropping old rounds decodes from the first change)
        return self.model.generate(prompt, max_tokens=s.max_tokens, temperature=s.temperature, top_k=s.top_k,
                                   top_p=s.top_p, seed=seed, stop=[END_OF_TURN], n_ctx=s.n_ctx, n_threads=s.threads,
                                   max_repeats=MAX_REPEATS)
