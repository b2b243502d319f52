"""Scenarios -> chat conversations -> Gemma-formatted token windows with loss masks.

Conversation shape (what the model sees at run time, too):
  system     SYSTEM block + tool list (see `system_prompt`)
  user       the player's turn
  assistant  the DM turn, tool calls verbatim, e.g. "... [roll: perception]"
  user       the tool results, fed back as "<TOOLCALL>\nperception: 15 + 10(skill) = *25*\n</TOOLCALL>"
  assistant  the DM turn that uses them
Consecutive messages of one role merge (joined by a blank line); a conversation that opens with
a DM turn gets a first user message "Begin the scenario.".

Four steps share the conversation types here, hence more than ~400 lines: rendering, token windows,
the train/validation split with augmentation, and the statistics `dndllama data check` prints.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from .files import atomic_path
from .loss_mask import LOSS_MODES, answer_mask, decision_tokens
from .scenarios import FolderCheck, Scenario, ScenarioError, SystemBlock, ToolResult, format_scenario, parse_scenario
from .tools import Vocabulary, default_vocabulary, render_tool_prompt

OPENING_USER_MESSAGE = "Begin the scenario."
FEEDBACK_OPEN, FEEDBACK_CLOSE = "<TOOLCALL>", "</TOOLCALL>"
ROLES = ("system", "user", "assistant")
TURN_ROLES = {"user": "user", "dm": "assistant", "tool": "user"}

BOS, START_OF_TURN, END_OF_TURN = "<bos>", "<start_of_turn>", "<end_of_turn>"
GEMMA_ROLES = {"assistant": "model", "user": "user"}
ASCII_SPACE = " \t\n\v\f\r"  # what llama.cpp's trim() strips (C isspace)

# Google's Gemma 3 chat template, text only. llama.cpp detects it by `<start_of_turn>` and applies
# its built-in gemma formatter, which produces exactly `render_gemma` (plus BOS from the tokenizer).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Replacement names for augmentation: plain, pronounceable, unlikely to be ordinary words.
AUGMENT_NAMES = (
    "Aldric", "Brenna", "Caelum", "Dagny", "Eskel", "Fenna", "Garrick", "Halvard", "Isolde", "Jorun",
    "Kestra", "Lorcan", "Maelis", "Nerys", "Orrin", "Perrin", "Quilla", "Rhosyn", "Sorcha", "Tamsin",
    "Ulric", "Vesna", "Wendel", "Xanthe", "Yorick", "Zelda", "Anwen", "Bastian", "Cerys", "Dorian",
    "Eira", "Faelan", "Gwendolyn", "Hesper", "Ilsa", "Jasper", "Kaelen", "Liesel", "Merrick", "Niamh",
)
HP_SPREAD = (0.8, 1.2)  # augmented max HP is the original times a factor in this range


class DatasetError(ValueError):
    """Bad dataset input (e.g. a malformed JSONL line); the message names the place."""


class TruncationWarning(UserWarning):
    """A single exchange did not fit the context window and was cut."""


class Tokenizer(Protocol):
    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]: ...


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Conversation:
    scenario: str
    category: str
    messages: list[Message]
    loss: str = "all"   # "all": every DM token trains; "calls": the call lines and the sentence before them


@dataclass
class Window:
    tokens: list[int]
    mask: list[bool]  # True where the token is a training target (DM text and its <end_of_turn>)
    scenario: str
    category: str = ""
    decisions: list[bool] = field(default_factory=list)   # loss_mask.decision_tokens, over the window's tokens


@dataclass
class DatasetSplit:
    train: list[Conversation] = field(default_factory=list)
    validation: list[Conversation] = field(default_factory=list)


# ---------------------------------------------------------------- scenario -> messages


def system_prompt(system: SystemBlock, vocab: Vocabulary | None = None) -> str:
    """The system message: the SYSTEM block as written, then the tool list. The app must use the same."""
    return f"{system.render()}\n\n{render_tool_prompt(vocab or default_vocabulary())}"


def feedback_message(results: Iterable[ToolResult | str]) -> str:
    """Tool results as the user message the app feeds back after a DM tool call."""
    lines = [r.render() if isinstance(r, ToolResult) else str(r) for r in results]
    return "\n".join([FEEDBACK_OPEN, *lines, FEEDBACK_CLOSE])


def to_conversation(scenario: Scenario, vocab: Vocabulary | None = None) -> Conversation:
    messages = [Message("system", system_prompt(scenario.system, vocab))]
    for turn in scenario.turns:
        content = feedback_message(turn.results) if turn.kind == "tool" else turn.text.strip(ASCII_SPACE)
        _append(messages, Message(TURN_ROLES[turn.kind], content))
    if len(messages) > 1 and messages[1].role == "assistant":
        messages.insert(1, Message("user", OPENING_USER_MESSAGE))
    return Conversation(scenario.path, scenario.category, messages)


def _append(messages: list[Message], message: Message) -> None:
    if messages[-1].role == message.role:
        messages[-1] = Message(message.role, f"{messages[-1].content}\n\n{message.content}")
    else:
        messages.append(message)


def check_alternation(messages: list[Message]) -> None:
    """Optional system, then user/assistant strictly alternating, ending with assistant."""
    body = messages[1:] if messages and messages[0].role == "system" else messages
    for index, message in enumerate(body):
        wanted = "user" if index % 2 == 0 else "assistant"
        if message.role != wanted:
            raise DatasetError(f"message {index + 1} has role '{message.role}', expected '{wanted}'")
    if not body or body[-1].role != "assistant":
        raise DatasetError("conversation must end with an assistant message")


# ---------------------------------------------------------------- Gemma rendering


def _trim(text: str) -> str:
    return text.strip(ASCII_SPACE)


def render_gemma(messages: list[Message], add_generation_prompt: bool = False) -> str:
    """Exactly what llama.cpp's built-in gemma chat template produces (BOS comes from the tokenizer)."""
    out, system = [], ""
    for message in messages:
        if message.role == "system":
            system += _trim(message.content)
            continue
        role = GEMMA_ROLES.get(message.role, message.role)
        out.append(f"{START_OF_TURN}{role}\n")
        if system and role != "model":
            out.append(f"{system}\n\n")
            system = ""
        out.append(f"{_trim(message.content)}{END_OF_TURN}\n")
    if add_generation_prompt:
        out.append(f"{START_OF_TURN}model\n")
    return "".join(out)


@dataclass
class _Exchange:
    user: str
    assistant: str


def _exchanges(messages: list[Message]) -> tuple[str, list[_Exchange]]:
    check_alternation(messages)
    system = _trim(messages[0].content) if messages[0].role == "system" else ""
    body = messages[1:] if messages[0].role == "system" else messages
    return system, [_Exchange(body[i].content, body[i + 1].content) for i in range(0, len(body), 2)]


def _prompt_text(system: str, exchange: _Exchange, first: bool) -> str:
    prefix = f"{system}\n\n" if first and system else ""
    return f"{START_OF_TURN}user\n{prefix}{_trim(exchange.user)}{END_OF_TURN}\n{START_OF_TURN}model\n"


def _answer_text(exchange: _Exchange) -> str:
    return f"{_trim(exchange.assistant)}{END_OF_TURN}"


# ---------------------------------------------------------------- token windows


def conversation_windows(conversation: Conversation, tokenizer: Tokenizer, ctx: int) -> list[Window]:
    """Token windows of at most `ctx` tokens, split between exchanges (user + DM reply).

    Every window starts with BOS + the system prompt + the user message before its first DM turn,
    so each window is itself a well-formed Gemma chat. An exchange that alone exceeds ctx is cut at
    ctx tokens (TruncationWarning); if nothing trainable is left it is dropped.
    """
    system, exchanges = _exchanges(conversation.messages)
    newline = tokenizer.tokenize("\n", False, True)
    windows: list[Window] = []
    tokens: list[int] = []
    mask: list[bool] = []
    decisions: list[bool] = []
    for index, exchange in enumerate(exchanges):
        text = _answer_text(exchange)
        answer = tokenizer.tokenize(text, False, True)
        trained = answer_mask(text, answer, tokenizer, conversation.loss, END_OF_TURN)
        decides = decision_tokens(text, answer, tokenizer, END_OF_TURN)
        follow = tokenizer.tokenize(_prompt_text(system, exchange, first=False), False, True)
        if tokens and len(tokens) + len(follow) + len(answer) + len(newline) <= ctx:
            tokens += follow + answer + newline
            mask += [False] * len(follow) + trained + [False] * len(newline)
            decisions += [False] * len(follow) + decides + [False] * len(newline)
            continue
        if tokens:
            windows.append(Window(tokens, mask, conversation.scenario, conversation.category, decisions))
        head = tokenizer.tokenize(_prompt_text(system, exchange, first=True), True, True)
        tokens = head + answer + newline
        mask = [False] * len(head) + trained + [False] * len(newline)
        decisions = [False] * len(head) + decides + [False] * len(newline)
        if len(tokens) > ctx:
            warnings.warn(
                f"{conversation.scenario}: exchange {index + 1} has {len(tokens)} tokens, cut to ctx={ctx}",
                TruncationWarning,
                stacklevel=2,
            )
            tokens, mask, decisions = tokens[:ctx], mask[:ctx], decisions[:ctx]
            if not any(mask):
                tokens, mask, decisions = [], [], []
    if tokens:
        windows.append(Window(tokens, mask, conversation.scenario, conversation.category, decisions))
    return windows


def dataset_windows(conversations: Iterable[Conversation], tokenizer: Tokenizer, ctx: int) -> list[Window]:
    return [w for c in conversations for w in conversation_windows(c, tokenizer, ctx)]


def windows_and_cuts(conversations: Iterable[Conversation], tokenizer: Tokenizer,
                     ctx: int) -> tuple[list[Window], list[str]]:
    """dataset_windows, plus one line per exchange cut to fit `ctx` (what TruncationWarning says).
    A cut exchange trains a DM turn without its end and breaks the template check, so training
    refuses these before it starts, and `data check --base` reports them."""
    with warnings.catch_warnings(record=True) as cut:
        warnings.simplefilter("always", TruncationWarning)
        windows = dataset_windows(conversations, tokenizer, ctx)
    return windows, [str(w.message) for w in cut if issubclass(w.category, TruncationWarning)]


def padding_id(tokenizer) -> int:
    """What short windows are filled with: the GGUF's padding token (0 when it names none)."""
    return int(tokenizer.info().metadata.get("tokenizer.ggml.padding_token_id", 0))


def labelled_per_window(labels: np.ndarray) -> np.ndarray:
    """Labelled positions of each window (row): the logit rows a training step holds (patch 0013)."""
    return (np.asarray(labels) >= 0).sum(axis=-1)


def token_windows(conversations: Iterable[Conversation], tokenizer, ctx: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The one way from conversations to model input, shared by training, the reference loss and the
    quant screening: training's windows as (tokens, labels) arrays, and one line per exchange cut to fit."""
    windows, cuts = windows_and_cuts(conversations, tokenizer, ctx)
    tokens, labels = window_arrays(windows, ctx, padding_id(tokenizer))
    return tokens, labels, cuts


def ctx_for(cuts: list[str]) -> int:
    """The smallest ctx (a multiple of 256) that holds every exchange the lines of `cuts` name."""
    longest = max((int(m.group(1)) for m in map(re.compile(r"has (\d+) tokens").search, cuts) if m), default=0)
    return -(-longest // 256) * 256


def window_arrays(windows: list[Window], ctx: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, labels) int32 arrays of shape (n, ctx) for the native trainer.

    labels[i] is the token the model should predict after tokens[i]: tokens[i + 1] where that
    token is a training target, else -1 (no loss). Short windows are padded with `pad_id`.
    """
    tokens = np.full((len(windows), ctx), pad_id, dtype=np.int32)
    labels = np.full((len(windows), ctx), -1, dtype=np.int32)
    for row, window in enumerate(windows):
        ids = np.asarray(window.tokens[:ctx], dtype=np.int32)
        target = np.asarray(window.mask[:ctx], dtype=bool)
        tokens[row, : len(ids)] = ids
        labels[row, : len(ids) - 1] = np.where(target[1:], ids[1:], -1)
    return tokens, labels


def label_weights(windows: list[Window], ctx: int, decision_weight: float) -> np.ndarray:
    """The loss weight of each label of window_arrays: `decision_weight` where the label is a decision
    token (Window.decisions), 1 elsewhere (masked labels carry no loss whatever their weight)."""
    weights = np.ones((len(windows), ctx), dtype=np.float32)
    for row, window in enumerate(windows):
        decides = np.asarray(window.decisions[1:ctx], dtype=bool)
        weights[row, : len(decides)][decides] = decision_weight
    return weights


# ---------------------------------------------------------------- JSONL (`messages` format)


def conversation_to_json(conversation: Conversation) -> dict:
    data = {
        "messages": [{"role": m.role, "content": m.content} for m in conversation.messages],
        "scenario": conversation.scenario,
        "category": conversation.category,
    }
    return data | ({"loss": conversation.loss} if conversation.loss != "all" else {})


def conversation_from_json(data: dict) -> Conversation:
    try:
        messages = [Message(str(m["role"]), str(m["content"])) for m in data["messages"]]
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"expected {{'messages': [{{'role': ..., 'content': ...}}]}}, missing {exc}") from None
    unknown = {m.role for m in messages} - set(ROLES)
    if unknown:
        raise DatasetError(f"unknown roles {sorted(unknown)}; expected {', '.join(ROLES)}")
    loss = str(data.get("loss", "all"))
    if loss not in LOSS_MODES:
        raise DatasetError(f"unknown loss '{loss}'; expected one of {', '.join(LOSS_MODES)}")
    return Conversation(str(data.get("scenario", "")), str(data.get("category", "")), messages, loss)


def write_jsonl(conversations: Iterable[Conversation], path: str | Path) -> Path:
    """Write one JSON object per line; written to a temp file and renamed into place."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for conversation in conversations:
            out.write(json.dumps(conversation_to_json(conversation), ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | Path) -> list[Conversation]:
    conversations = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                conversations.append(conversation_from_json(json.loads(line)))
            except (json.JSONDecodeError, DatasetError) as exc:
                raise DatasetError(f"{path}:{number}: {exc}") from None
    return conversations


# ---------------------------------------------------------------- split, augmentation


def _unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (not Python's salted hash())."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_scenarios(paths: Iterable[str], validation_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, validation) by a hash of each relative path, so adding files never moves others.

    A path is in validation when its hash is below the fraction. With two or more paths and none
    below it, the lowest-hash path is borrowed for validation (it may return to train once some
    other file falls below the fraction naturally).
    """
    paths = sorted(set(paths))
    validation = [p for p in paths if _unit_hash("split", p) < validation_fraction]
    if not validation and len(paths) >= 2 and validation_fraction > 0:
        validation = [min(paths, key=lambda p: _unit_hash("split", p))]
    chosen = set(validation)
    return [p for p in paths if p not in chosen], validation


def augment_scenario(scenario: Scenario, seed: int, copy: int = 1, vocab: Vocabulary | None = None) -> Scenario:
    """A renamed, HP-varied variant of a valid scenario, reproducible from (seed, path, copy).

    Party members get new names everywhere (system, user and DM text, tool calls, results). Current
    and max HP change only for members whose HP cannot show up in the conversation (no `health`
    call on them, their HP numbers not in the text); HP stays between 0 and max. The variant is
    parsed again, so it is as valid as the original.
    """
    rng = random.Random(f"{seed}:{scenario.path}:{copy}")
    system = replace(scenario.system, party=[_vary_hp(c, scenario, rng) for c in scenario.system.party])
    text = format_scenario(replace(scenario, system=system))
    text = _rename(text, _name_map(scenario, text, rng))
    path = f"{scenario.path}#aug{copy}"
    variant = parse_scenario(text, path, vocab, scenario.category)
    return variant


def _name_map(scenario: Scenario, text: str, rng: random.Random) -> dict[str, str]:
    words = {w.lower() for w in re.findall(r"\w+", text)}
    pool = [n for n in AUGMENT_NAMES if n.lower() not in words]
    rng.shuffle(pool)
    mapping = {}
    for member, new in zip(scenario.system.party, pool):
        mapping[member.name] = new
        mapping.setdefault(member.name.split()[0], new)
    return mapping


def _rename(text: str, mapping: dict[str, str]) -> str:
    if not mapping:
        return text
    names = sorted(mapping, key=len, reverse=True)
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(n) for n in names) + r")(?!\w)")
    return pattern.sub(lambda m: mapping[m.group(1)], text)


def _vary_hp(member, scenario: Scenario, rng: random.Random):
    if not _hp_is_private(member, scenario):
        return member
    new_max = max(1, round(member.max_hp * rng.uniform(*HP_SPREAD)))
    if member.hp >= member.max_hp:
        new_hp = new_max
    elif member.hp <= 0:
        new_hp = 0
    else:
        new_hp = min(new_max, max(1, round(member.hp * new_max / member.max_hp) + rng.randint(-2, 2)))
    return replace(member, hp=new_hp, max_hp=new_max)


def _hp_is_private(member, scenario: Scenario) -> bool:
    first = member.name.split()[0].lower()
    for turn in scenario.turns:
        for call in turn.tool_calls:
            if call.name == "health" and call.named.get("target", "").lower() in (member.name.lower(), first):
                return False
    numbers = set(re.findall(r"\d+", " ".join(t.text for t in scenario.turns)))
    return str(member.hp) not in numbers and str(member.max_hp) not in numbers


def build_dataset(
    check: FolderCheck,
    validation_fraction: float = 0.1,
    augment_copies: int = 0,
    seed: int = 0,
) -> DatasetSplit:
    """Conversations from a validated folder: split by path, then augment train only.

    Validation holds each of its scenarios once and never augmented, so it stays a
    clean measure. Raises ScenarioError when the folder has errors.
    """
    if check.errors:
        raise ScenarioError(check.errors)
    by_path = {s.path: s for s in check.scenarios}
    train_paths, validation_paths = split_scenarios(by_path, validation_fraction)
    train = [to_conversation(by_path[p], check.vocab) for p in train_paths]
    for copy in range(1, augment_copies + 1):
        train += [to_conversation(augment_scenario(by_path[p], seed, copy, check.vocab), check.vocab)
                  for p in train_paths]
    return DatasetSplit(
        train=train,
        validation=[to_conversation(by_path[p], check.vocab) for p in validation_paths],
    )


# ---------------------------------------------------------------- statistics (for `data check`)


@dataclass
class DataStats:
    unit: str  # "tokens" when a tokenizer was given, else "words"
    categories: dict[str, dict[str, int]]  # category -> files, turns, dm_turns, size, chars
    tool_calls: dict[str, int]
    dm_turns: int
    dm_turns_without_calls: int
    dm_lengths: list[int]

    def dm_length_summary(self) -> dict[str, int]:
        """min / median / p90 / max of DM-turn length (nearest-rank percentiles)."""
        values = sorted(self.dm_lengths) or [0]
        rank = lambda q: values[max(0, math.ceil(q * len(values)) - 1)]  # noqa: E731
        return {"min": values[0], "median": rank(0.5), "p90": rank(0.9), "max": values[-1]}


def data_stats(scenarios: list[Scenario], vocab: Vocabulary, tokenizer: Tokenizer | None = None) -> DataStats:
    if tokenizer is not None:
        size, unit = (lambda text: len(tokenizer.tokenize(text, False, False))), "tokens"
    else:
        size, unit = (lambda text: len(text.split())), "words"
    stats = DataStats(unit, {}, {name: 0 for name in vocab.tools}, 0, 0, [])
    for scenario in scenarios:
        row = stats.categories.setdefault(
            scenario.category or "uncategorized", {"files": 0, "turns": 0, "dm_turns": 0, "size": 0, "chars": 0})
        row["files"] += 1
        row["turns"] += len(scenario.turns)
        for turn in scenario.turns:
            length = size(turn.text)
            row["size"] += length
            row["chars"] += len(turn.text)
            if turn.kind != "dm":
                continue
            row["dm_turns"] += 1
            stats.dm_turns += 1
            stats.dm_lengths.append(length)
            stats.dm_turns_without_calls += not turn.tool_calls
            for call in turn.tool_calls:
                stats.tool_calls[call.name] = stats.tool_calls.get(call.name, 0) + 1
    return stats
