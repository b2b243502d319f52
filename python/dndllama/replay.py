"""Replay: the model writes every DM turn of held-out conversations, greedily, from the messages
before it, with its own chat template.

  dm_turns(conversations)          (conversation, message index) of every DM turn
  replay(model, conversations)     generate them all -> Replay (turns, speed, memory, cap hits)

Two engines give the same greedy tokens (see "Identity" below):
- batched (the default): the model's native session decodes each conversation once, incrementally;
  at every DM turn the KV sequence is forked, the turn is generated in the fork, and up to
  `parallel` forks of the conversation's turns advance together, one token each per decode call
  (conversations go one after another: see cpp/replay.cpp). Prompt work is linear in the conversation instead of quadratic, and a memory-bound CPU
  reads the weights once for `parallel` tokens.
- one at a time (`one_at_a_time=True`): a fresh context per turn, the whole conversation decoded
  again, one sequence at a time. Kept as the reference the batched engine is checked against, and
  for the benchmark (scripts/bench_eval.py).

Identity: the prompt tokens are the same (each turn's prompt is tokenized whole, as before; the
session reuses only the common token prefix), so the engines differ only in how the same sums are
grouped: which tokens share a decode call and where the KV cells lie. On the
tiny test models the tokens are identical; on Gemma 3 270M one-token and batched kernels sum in
another order, and a turn can part where its two best tokens were close (first_difference measures
the gap; tests/test_replay.py bounds it on the real model).
"""

from __future__ import annotations

import itertools
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .dataset import END_OF_TURN, GEMMA_CHAT_TEMPLATE, Conversation
from .scoring import turn_calls
from .tools import Vocabulary

DEFAULT_MAX_TOKENS = 128  # above every DM turn of the default corpus (at most 110 Gemma tokens)
# forks generated together: past ~16 a 2-core CPU turns compute-bound and the gain flattens
DEFAULT_PARALLEL = 16
# A reply that writes one call, sentence or line a third time is looping: greedy decoding of an
# undertrained model repeats `[roll: Mira, axe attack]` or "The duergar is a low hum." until max_tokens
# (a third of one short run's call attempts were such loops). No DM turn of the corpora writes any of
# them a third time (a call twice: Extra Attack), so a reply ends before the third copy, here and in the
# app (cactus.ts's endAtLoop), and the app never runs a looped call. The native generation stops as
# that copy is written (stop_reason "loop") instead of running on to max_tokens.
MAX_REPEATS = 2
# the spans compared as written: a call (`[...]`, no bracket inside), or prose up to `.`, `!`, `?` or a
# line's end; prose of under MIN_SENTENCE characters may recur in a good reply ("Tick." three times in
# one scene; no shorter sentence or line of the corpora recurs so, while a base model loops on "<TOOLCALL>")
LOOP_SPAN = re.compile(r"\[[^\[\]]*\]|[^.!?\n\[\]]+[.!?\n]")
MIN_SENTENCE = 8
ASCII_SPACE = " \t\n\r\f\v"   # stripped from spans the same way in C++ and TypeScript


@dataclass
class Turn:
    scenario: str
    message: int                # index of the DM message in its conversation
    reference: str
    prediction: str
    reference_calls: list[str]
    predicted_calls: list[str]  # valid calls, as written
    invalid_calls: list[str]
    prompt_tokens: int
    generated_tokens: int
    stop_reason: str            # "eos" / "stop": ended; "length": cut at max_tokens; "loop": a span's third copy
    prompt_seconds: float       # batched: 0 (prompts are shared; see Replay.seconds)
    generate_seconds: float     # batched: the replay's seconds shared evenly over its turns
    looped: bool = False        # the prediction ends before a span's third copy (end_at_loop)


@dataclass
class Replay:
    turns: list[Turn]
    skipped: int                # DM turns whose prompt + max_tokens exceed n_ctx
    seconds: float
    prompt_tokens_per_s: float | None
    gen_tokens_per_s: float | None
    peak_rss_mb: float          # during this replay (see PeakMemory)
    template: str               # "gguf": the model's own chat template; "fallback": dndllama's Gemma template
    engine: str = "batched"     # or "one-at-a-time"
    cut_at_max_tokens: int = 0  # turns that ran to max_tokens without ending
    tokens: list[list[int]] = field(default_factory=list)   # each turn's generated tokens
    stats: dict = field(default_factory=dict)               # the native replay's counters (batched)


def dm_turns(conversations: Iterable[Conversation], max_turns: int | None = None) -> list[tuple[Conversation, int]]:
    """(conversation, message index) of every DM turn, in order. With `max_turns`, that many from whole
    conversations taken in turn from each category (the last one's first turns make up the count): the
    turns of one conversation share their prefixes, which the batched replay decodes once (a turn costs
    about a fifth of one whose prefix is shared with nothing), and a short judgement still sees every
    category rather than the first scenario's opening turns."""
    conversations = list(conversations)
    every = [(c, i) for c in conversations for i, m in enumerate(c.messages) if m.role == "assistant"]
    if not max_turns or max_turns >= len(every):
        return every
    categories: dict[str, list[Conversation]] = {}
    for c in conversations:
        categories.setdefault(c.category, []).append(c)
    indices: dict[int, list[int]] = {}   # id(conversation) -> its turns' places in `every`
    for k, (c, _) in enumerate(every):
        indices.setdefault(id(c), []).append(k)
    taken: set[int] = set()
    for c in itertools.chain.from_iterable(itertools.zip_longest(*categories.values())):
        if c is not None:
            taken.update(indices.get(id(c), [])[:max_turns - len(taken)])
    return [turn for k, turn in enumerate(every) if k in taken]


def replay(model, conversations: Iterable[Conversation], vocab: Vocabulary, max_tokens: int = DEFAULT_MAX_TOKENS,
           seed: int = 0, n_ctx: int = 2048, n_threads: int = 0, max_turns: int | None = None,
           progress: Callable[[int, int, Turn | None], None] | None = None, parallel: int = DEFAULT_PARALLEL,
           one_at_a_time: bool = False, grammar: str = "", max_repeats: int = MAX_REPEATS) -> Replay:
    """Generate every DM turn from the messages before it, greedily, with `model`'s own chat template.

    `model` is a loaded `dndllama._native.Model`. A GGUF without a chat template (the embedded
    Gemma 3 270M base has none) is prompted with the Gemma template training uses. Greedy decoding
    makes the result a function of the model and the data (`seed` is passed on for completeness).
    Turns whose prompt does not leave `max_tokens` of room in `n_ctx` are skipped and counted.
    `progress(done, total, turn)` is called as turns finish (`turn` is None in the batched engine,
    which finishes them out of order). Greedy output can differ with `n_threads` (float sums in
    another order), so compare reports made with the same settings. `grammar` (GBNF, "" = none)
    constrains decoding as the app's completion grammar does (grammar.py). A generation stops as it
    writes one span more than `max_repeats` times (end_at_loop; 0: never, the benchmark's reference).
    """
    todo = dm_turns(conversations, max_turns)
    template = "" if model.info().chat_template else GEMMA_CHAT_TEMPLATE
    bos = model.detokenize(model.tokenize("", True, True), True)
    jobs, skipped = [], 0
    for conversation, index in todo:
        prompt = _prompt(model, conversation.messages[:index], template, bos)
        tokens = model.tokenize(prompt, True, True)
        if len(tokens) + max_tokens > n_ctx:
            skipped += 1
        else:
            jobs.append((conversation, index, prompt, tokens))
    run = _one_at_a_time if one_at_a_time else _batched
    with PeakMemory() as memory:
        start = time.perf_counter()
        outs, stats = run(model, jobs, max_tokens, seed, n_ctx, n_threads, parallel, len(todo), progress, vocab,
                          grammar, max_repeats)
        seconds = time.perf_counter() - start
    turns = [_turn(c, i, out, vocab) for (c, i, _, _), out in zip(jobs, outs)]
    if stats:   # batched: rates of the whole run (prompt work is shared between turns)
        for turn in turns:
            turn.prompt_seconds, turn.generate_seconds = 0.0, seconds / len(turns)
        rates = (_ratio(stats["fed_tokens"], stats["prompt_seconds"]), _ratio(stats["generated"], seconds))
    else:
        rates = (_ratio(sum(t.prompt_tokens for t in turns), sum(t.prompt_seconds for t in turns)),
                 _ratio(sum(t.generated_tokens for t in turns), sum(t.generate_seconds for t in turns)))
    return Replay(turns, skipped, seconds, *rates, memory.peak_mb, "fallback" if template else "gguf",
                  engine="one-at-a-time" if one_at_a_time else "batched",
                  cut_at_max_tokens=sum(t.stop_reason == "length" for t in turns),
                  tokens=[list(out.get("tokens", [])) for out in outs], stats=stats)


def first_difference(model, prompt_tokens: list[int], a: list[int], b: list[int],
                     n_ctx: int = 4096) -> tuple[int, float | None] | None:
    """Where two greedy generations of one prompt part, and how close a call it was there: the index
    of the first differing token and the gap between the two tokens' logits after the common part
    (None when one generation stopped there). None when the generations are identical."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if i is None:
        return None if len(a) == len(b) else (min(len(a), len(b)), None)
    logits = model.next_logits(list(prompt_tokens) + list(a[:i]), n_ctx)
    return i, abs(float(logits[a[i]]) - float(logits[b[i]]))


def _batched(model, jobs, max_tokens, seed, n_ctx, n_threads, parallel, total, progress, vocab, grammar,
             max_repeats):
    streams: dict[int, int] = {}
    ids = [streams.setdefault(id(conversation), len(streams)) for conversation, _, _, _ in jobs]
    skipped = total - len(jobs)

    def report(done: int, _: int) -> None:
        if progress:
            progress(done + skipped, total, None)

    return model.replay([tokens for _, _, _, tokens in jobs], ids, max_tokens=max_tokens, stop=[END_OF_TURN],
                        n_ctx=n_ctx, n_parallel=parallel, n_threads=n_threads, grammar=grammar,
                        max_repeats=max_repeats, progress=report)


def _one_at_a_time(model, jobs, max_tokens, seed, n_ctx, n_threads, parallel, total, progress, vocab, grammar,
                   max_repeats):
    outs, skipped = [], total - len(jobs)
    for done, (conversation, index, prompt, _) in enumerate(jobs, start=1):
        out = model.generate(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, top_p=1.0, seed=seed,
                             stop=[END_OF_TURN], n_ctx=n_ctx, n_threads=n_threads, grammar=grammar, fresh_context=True,
                             max_repeats=max_repeats)
        outs.append(out)
        if progress:
            progress(done + skipped, total, _turn(conversation, index, out, vocab))
    return outs, {}


def _prompt(model, messages, template: str, bos: str) -> str:
    prompt = model.apply_chat_template([{"role": m.role, "content": m.content} for m in messages], True, template)
    # tokenizing adds BOS itself; a template that writes it too would double it
    return prompt[len(bos):] if bos and prompt.startswith(bos) else prompt


def end_at_loop(text: str, limit: int = MAX_REPEATS) -> str | None:
    """`text` up to the first span (a call, or a sentence or line of MIN_SENTENCE characters or more)
    written for the (limit + 1)-th time, without trailing space; None when nothing is written that often.
    cpp/generate.cpp's repeats_a_span and snippets.py's endAtLoop find the same spans."""
    seen: dict[str, int] = {}
    for match in LOOP_SPAN.finditer(text):
        span = match.group(0).strip(ASCII_SPACE)
        if span.startswith("[") or len(span) >= MIN_SENTENCE:
            seen[span] = seen.get(span, 0) + 1
            if seen[span] > limit:
                return text[:match.start()].rstrip()
    return None


def end_reply(text: str) -> tuple[str, bool]:
    """A generated reply as validation, chat and the app keep it: ended at a loop, stripped; and whether it
    looped. The loop is looked for before strip(): a copy may end in the newline strip() drops."""
    ended = end_at_loop(text)
    return (text if ended is None else ended).strip(), ended is not None


def _turn(conversation: Conversation, index: int, out: dict, vocab: Vocabulary) -> Turn:
    reference = conversation.messages[index].content
    prediction, looped = end_reply(out["text"])
    pred = turn_calls(prediction, vocab)
    rates = out["prompt_tokens_per_s"], out["gen_tokens_per_s"]
    return Turn(
        scenario=conversation.scenario, message=index, reference=reference, prediction=prediction,
        reference_calls=[c.raw.strip() for c in turn_calls(reference, vocab).valid],
        predicted_calls=[c.raw.strip() for c in pred.valid], invalid_calls=[c.raw for c in pred.invalid],
        prompt_tokens=out["n_prompt"], generated_tokens=out["n_generated"], stop_reason=out["stop_reason"],
        prompt_seconds=out["n_prompt"] / rates[0] if rates[0] > 0 else 0.0,
        generate_seconds=out["n_generated"] / rates[1] if rates[1] > 0 else 0.0, looped=looped,
    )


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


class PeakMemory:
    """Peak resident memory (MB) inside a `with` block.

    On Linux the kernel's high-water mark is reset on entry (/proc/self/clear_refs), so a baseline
    validated after the model, or validation after training in the same process, reports its own
    peak. Elsewhere this is resource.getrusage's peak of the whole process so far (`scope` says which).
    """

    _open: list[PeakMemory] = []   # only the outermost block resets the mark: it must see the inner peaks

    def __enter__(self) -> PeakMemory:
        self.peak_mb = 0.0
        if PeakMemory._open:
            self.scope = PeakMemory._open[0].scope   # measured from the enclosing block's reset
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.scope = "block"
            except OSError:
                self.scope = "process"
        PeakMemory._open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        PeakMemory._open.remove(self)
        self.peak_mb = _vm_hwm_mb() if self.scope == "block" else None
        if self.peak_mb is None:
            self.scope = "process"
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux, bytes on macOS
            self.peak_mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
