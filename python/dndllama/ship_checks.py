"""Checks before a model ships (pipeline's check stage): the GGUF's own chat template, rendered and
tokenized by llama.cpp, must give exactly the tokens training used; and the file must load and answer.

A stale or different template in a GGUF is the most common way fine-tunes silently break after
export: the model was trained on one token sequence and is prompted with another.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dataset import Conversation, Message, Tokenizer, conversation_windows

CHECKED_CONVERSATIONS = 3
CONTEXT_TOKENS = 8   # tokens shown on each side of a mismatch


class TemplateMismatch(RuntimeError):
    """The runtime's rendering differs from training; the message shows where."""


@dataclass
class SmokeTest:
    reply: str
    n_generated: int
    gen_tokens_per_s: float


def check_chat_template(model, conversations: list[Conversation], ctx: int) -> int:
    """Compare, for the first exchange of a few conversations, the training window's tokens with
    what llama.cpp makes of the GGUF's template: the prompt a runtime sends (generation prompt
    added) and the whole exchange. Returns the number of conversations checked."""
    checked = 0
    for conversation in conversations[:CHECKED_CONVERSATIONS]:
        window = conversation_windows(conversation, model, ctx)[0]
        answer_start = window.mask.index(True)
        exchange = first_exchange(conversation.messages)
        prompt = model.apply_chat_template(_as_dicts(exchange[:-1]), add_assistant=True)
        _compare(model, window.tokens[:answer_start], _tokens(model, prompt), conversation.scenario, "prompt")
        whole = model.apply_chat_template(_as_dicts(exchange), add_assistant=False)
        answer_end = answer_start + window.mask[answer_start:].index(False) + 1   # + the newline after <end_of_turn>
        _compare(model, window.tokens[:answer_end], _tokens(model, whole), conversation.scenario, "exchange")
        checked += 1
    return checked


def first_prompt(model, conversation: Conversation, ctx: int) -> tuple[list[Message], list[int]]:
    """The messages before the first DM reply, and the tokens training put before that reply."""
    window = conversation_windows(conversation, model, ctx)[0]
    return first_exchange(conversation.messages)[:-1], window.tokens[: window.mask.index(True)]


def first_exchange(messages: list[Message]) -> list[Message]:
    """System (if any), the first user message and the DM's reply to it."""
    first_assistant = next(i for i, m in enumerate(messages) if m.role == "assistant")
    return messages[: first_assistant + 1]


def _as_dicts(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _tokens(model: Tokenizer, text: str) -> list[int]:
    return model.tokenize(text, True, True)


def _compare(model, trained: list[int], runtime: list[int], where: str, what: str) -> None:
    if trained == runtime:
        return
    at = next((i for i, (a, b) in enumerate(zip(trained, runtime)) if a != b), min(len(trained), len(runtime)))
    lo, hi = max(0, at - CONTEXT_TOKENS), at + CONTEXT_TOKENS
    raise TemplateMismatch(
        f"{where}: the GGUF's chat template renders the {what} differently from training at token {at} "
        f"(training has {len(trained)} tokens, runtime {len(runtime)}):\n"
        f"  training: {model.detokenize(trained[lo:hi], True)!r}\n"
        f"  runtime:  {model.detokenize(runtime[lo:hi], True)!r}")


def smoke_test(model, conversation: Conversation, n_ctx: int, max_tokens: int = 32, seed: int = 0) -> SmokeTest:
    """Load-and-answer proof: the first user turn of a scenario, prompted through the GGUF's template."""
    prompt_messages = first_exchange(conversation.messages)[:-1]
    prompt = model.apply_chat_template(_as_dicts(prompt_messages), add_assistant=True)
    result = model.generate(prompt, max_tokens=max_tokens, temperature=0.0, seed=seed, n_ctx=n_ctx,
                            stop=["<end_of_turn>"])
    return SmokeTest(result["text"].strip(), result["n_generated"], result["gen_tokens_per_s"])
