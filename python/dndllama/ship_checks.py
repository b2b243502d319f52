"""Checks before a model ships (pipeline's check stage): the GGUF's own chat template, rendered and
tokenized by llama.cpp, must give exactly the tokens training used; the file must load and answer;
and, when the app's runtime is installed (app_runtime.py), it must do both there too, and the LoRA
adapter, when there is one, must load over the base there (`check_model` runs them all).

A stale or different template in a GGUF is the most common way fine-tunes silently break after
export: the model was trained on one token sequence and is prompted with another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Config
from .dataset import Conversation, Message, Tokenizer, conversation_windows
from .runtime_profiles import RuntimeCompatError

CHECKED_CONVERSATIONS = 3
CONTEXT_TOKENS = 8   # tokens shown on each side of a mismatch


class TemplateMismatch(RuntimeError):
    """The runtime's rendering differs from training; the message shows where."""


@dataclass
class SmokeTest:
    reply: str
    n_generated: int
    gen_tokens_per_s: float


@dataclass
class ShipChecks:
    template_conversations: int      # conversations whose rendering matched training token for token
    smoke: SmokeTest
    runtime: dict                    # the app runtime's report (app_runtime.report_json), or why skipped


def check_model(path: Path, base_gguf: Path, adapter: Path | None, conversations: list[Conversation],
                config: Config, say: Callable[[str], None]) -> ShipChecks:
    """Every check of a quantized model before it ships; raises when it must not ship."""
    from . import _native

    model = _native.Model(str(path))
    checked = check_chat_template(model, conversations, config.ctx)
    say(f"chat template: the GGUF's template gives the training tokens exactly ({checked} conversations)")
    smoke = smoke_test(model, conversations[0], config.app_ctx)
    say(f"loads and answers: {smoke.reply[:100]!r} ({smoke.gen_tokens_per_s:.0f} tokens/s)")
    runtime = app_runtime_check(model, path, conversations[0], config, say)
    if adapter:
        runtime["adapter"] = adapter_runtime_check(base_gguf, adapter, conversations[0], config, say)
    return ShipChecks(checked, smoke, runtime)


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


def app_runtime_check(model, path: Path, conversation: Conversation, config: Config, say) -> dict:
    """Load the GGUF in the app's own (older) llama.cpp, when that runtime is installed, and check it
    renders the first prompt exactly as training did and answers. Refuses to ship on failure."""
    from .app_runtime import check_runtime, find_runtime_env, report_json

    if not config.runtime.startswith("cactus") or find_runtime_env(config.runtime) is None:
        reason = (f"the {config.runtime} runtime is not installed; `dndllama runtime install {config.runtime}` "
                  "(about 2 minutes, once) enables it" if config.runtime.startswith("cactus")
                  else f"{config.runtime} is the llama.cpp this tool runs, checked above")
        say(f"app-runtime check skipped: {reason}")
        return {"skipped": reason}
    messages, tokens = first_prompt(model, conversation, config.ctx)
    report = check_runtime(path, config.runtime, messages, expected_tokens=tokens, n_ctx=config.app_ctx,
                           max_tokens=24)
    if not report.ok:
        raise RuntimeCompatError(f"the GGUF does not work in {config.runtime} ({report.runtime_version}): "
                                 + (report.error or f"its prompt tokens differ from training at token "
                                                    f"{report.first_token_difference}"))
    calls = ", ".join(c.raw for c in report.tool_calls) or "none"
    say(f"{config.runtime} ({report.runtime_version}) loads it, renders the prompt token for token as in "
        f"training and answers ({report.tokens_per_s:.0f} tokens/s; tool calls: {calls})")
    return report_json(report)


def adapter_runtime_check(base_gguf: Path, adapter: Path, conversation: Conversation, config: Config, say) -> dict:
    """Load the LoRA adapter over the base in the app's llama.cpp, as its `lora` option would. The
    merged model is what ships, so a failure here is reported, not fatal."""
    from .app_runtime import check_runtime, find_runtime_env

    if not config.runtime.startswith("cactus") or find_runtime_env(config.runtime) is None:
        return {"skipped": "the app's runtime is not installed"}
    messages = first_exchange(conversation.messages)[:-1]
    report = check_runtime(base_gguf, config.runtime, messages, n_ctx=config.app_ctx, max_tokens=8, lora=adapter)
    if report.loaded and not report.error:
        say(f"{config.runtime} ({report.runtime_version}) loads the LoRA adapter over {base_gguf.name} and answers")
        return {"loaded": True, "generated_tokens": report.generated_tokens}
    say(f"warning: {config.runtime} could not use the LoRA adapter over {base_gguf.name}: {report.error}; "
        "the merged model is unaffected")
    return {"loaded": False, "error": report.error}
