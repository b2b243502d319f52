import re
from pathlib import Path

import pytest

from dndllama.dataset import (
    BOS,
    END_OF_TURN,
    GEMMA_CHAT_TEMPLATE,
    OPENING_USER_MESSAGE,
    Conversation,
    DatasetError,
    Message,
    TruncationWarning,
    augment_scenario,
    build_dataset,
    conversation_windows,
    label_weights,
    read_jsonl,
    render_gemma,
    split_scenarios,
    system_prompt,
    to_conversation,
    write_jsonl,
)
from dndllama.scenarios import check_scenario, format_scenario, load_folder, parse_scenario
from dndllama.tools import CALL_PATTERN, default_vocabulary

DATA = Path(__file__).parent / "data"
SEED = parse_scenario((DATA / "seed_tavern.md").read_text(encoding="utf-8"), "roleplay/seed_tavern.md",
                      category="roleplay")
INDEPENDENT = load_folder(DATA / "independent")
FIGHT = next(s for s in INDEPENDENT.scenarios if s.category == "combat")


class CharTokenizer:
    """Deterministic test tokenizer: special tokens get fixed ids, every other character its own id."""

    SPECIAL = {"<bos>": 2, "<start_of_turn>": 106, "<end_of_turn>": 107}
    SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL) + ")")

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        ids = [self.SPECIAL["<bos>"]] if add_special else []
        for piece in self.SPLIT.split(text) if parse_special else [text]:
            if piece in self.SPECIAL and parse_special:
                ids.append(self.SPECIAL[piece])
            else:
                ids.extend(1000 + ord(c) for c in piece)
        return ids

    def detokenize(self, ids: list[int]) -> str:
        names = {v: k for k, v in self.SPECIAL.items()}
        return "".join(names[i] if i in names else chr(i - 1000) for i in ids)


# The real llama.cpp tokenizer joins this table once the native core lands: it needs
# tokenize(text, add_special, parse_special) and detokenize(ids) with special tokens rendered.
def LlamaCppTokenizer():
    """The real thing: llama.cpp's SentencePiece tokenizer of a tiny Gemma-3 GGUF made here."""
    import tempfile
    from pathlib import Path

    from dndllama import _native
    from tiny_models import make_tiny_model

    path = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny.gguf")
    return _native.Model(str(path), vocab_only=True)


TOKENIZERS = {"char": CharTokenizer, "llama.cpp": LlamaCppTokenizer}


@pytest.fixture(params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


def roles(conversation):
    return [m.role for m in conversation.messages]


# ---------------------------------------------------------------- messages


def test_seed_conversation_messages():
    conversation = to_conversation(SEED)
    assert (conversation.scenario, conversation.category) == ("roleplay/seed_tavern.md", "roleplay")
    assert roles(conversation) == ["system", "user", "assistant", "user", "assistant"]
    system, user, dm, feedback, dm2 = [m.content for m in conversation.messages]
    assert system == system_prompt(SEED.system)
    assert system.startswith("Role: Dungeon Master\nWorld: Forgotten Realms\nLocation: Tavern\nParty:\n"
                             "- Thordak (Dragonborn Fighter, Level 5, HP: 45/45)\n")
    for tool in default_vocabulary().tools.values():
        assert tool.example in system
    assert user == SEED.turns[0].text
    assert dm.endswith("[roll: perception]")
    assert feedback == "<TOOLCALL>\nperception: 15 + 10(skill) = *25*\n</TOOLCALL>"
    assert dm2.startswith("With your keen awareness")


def test_dm_first_gets_opening_user_message_and_same_roles_merge():
    chapel = next(s for s in INDEPENDENT.scenarios if s.category == "exploration")
    conversation = to_conversation(chapel)
    assert conversation.messages[1] == Message("user", OPENING_USER_MESSAGE)
    body = roles(conversation)[1:]
    assert body == ["user", "assistant"] * (len(body) // 2)
    # a DM turn followed by a DM turn merges into one assistant message, joined by a blank line
    doubled = parse_scenario(
        "# SYSTEM\nRole: DM\nWorld: W\nLocation: L\nParty:\n- A (Elf Bard, Level 1, HP: 5/5)\n"
        "# CONVERSATION\n## User\nHi\n## User\nAgain\n## DM\nOne\n## DM\nTwo\n")
    assert [(m.role, m.content) for m in to_conversation(doubled).messages[1:]] == [
        ("user", "Hi\n\nAgain"), ("assistant", "One\n\nTwo")]


def test_gemma_rendering_matches_the_jinja_template():
    jinja2 = pytest.importorskip("jinja2")

    def raise_exception(message):
        raise ValueError(message)

    environment = jinja2.Environment()
    environment.globals["raise_exception"] = raise_exception
    template = environment.from_string(GEMMA_CHAT_TEMPLATE)
    for scenario in [SEED, *INDEPENDENT.scenarios]:
        messages = to_conversation(scenario).messages
        as_dicts = [{"role": m.role, "content": m.content} for m in messages]
        for prompt in (False, True):
            expected = BOS + render_gemma(messages, add_generation_prompt=prompt)
            assert template.render(messages=as_dicts, bos_token=BOS, add_generation_prompt=prompt) == expected
    with pytest.raises(ValueError, match="alternate"):
        template.render(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], bos_token="")


def test_gemma_rendering_shape():
    text = render_gemma([Message("system", " S "), Message("user", " hi\n"), Message("assistant", "yo ")])
    assert text == "<start_of_turn>user\nS\n\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n"


# ---------------------------------------------------------------- windows and masks


def masked_runs(window):
    runs, current = [], []
    for token, trained in zip(window.tokens, window.mask):
        if trained:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("scenario", [SEED, FIGHT], ids=["seed", "fight"])
def test_mask_covers_exactly_dm_text_and_end_of_turn(tokenizer, scenario):
    conversation = to_conversation(scenario)
    [window] = conversation_windows(conversation, tokenizer, ctx=100_000)
    assert len(window.tokens) == len(window.mask)
    assert window.scenario == scenario.path
    assert tokenizer.detokenize(window.tokens) == BOS + render_gemma(conversation.messages)
    answers = [m.content.strip() + END_OF_TURN for m in conversation.messages if m.role == "assistant"]
    assert [tokenizer.detokenize(run) for run in masked_runs(window)] == answers
    end_of_turn = tokenizer.tokenize(END_OF_TURN, False, True)
    assert len(end_of_turn) == 1
    trained_ends = [t for t, m in zip(window.tokens, window.mask) if m and t == end_of_turn[0]]
    assert len(trained_ends) == len(answers)  # the user turns' <end_of_turn> are not trained


def test_decision_tokens_are_each_answers_start_call_openings_and_end(tokenizer):
    """The tokens that decide whether a DM turn calls: where each answer starts, the token holding each
    call's '[' and each answer's <end_of_turn>; their labels (one position earlier) get the weight."""
    conversation = to_conversation(FIGHT)
    [window] = conversation_windows(conversation, tokenizer, ctx=100_000)
    answers = [m.content.strip() for m in conversation.messages if m.role == "assistant"]
    calls = sum(len(CALL_PATTERN.findall(a)) for a in answers)
    assert calls >= 3
    marked = [i for i, d in enumerate(window.decisions) if d]
    assert all(window.mask[i] for i in marked)
    assert len(marked) == 2 * len(answers) + calls   # no answer here starts with its call
    pieces = [tokenizer.detokenize([window.tokens[i]]) for i in marked]
    assert sum(p == END_OF_TURN for p in pieces) == len(answers)
    assert sum("[" in p for p in pieces) >= calls   # an answer may start with its call
    starts = [i for i, m in enumerate(window.mask) if m and not window.mask[i - 1]]
    assert len(starts) == len(answers) and all(window.decisions[i] for i in starts)

    weights = label_weights([window], len(window.tokens) + 3, 4.0)
    assert weights.shape == (1, len(window.tokens) + 3)
    assert [i for i, w in enumerate(weights[0]) if w == 4.0] == [i - 1 for i in marked]
    assert set(weights[0].tolist()) == {1.0, 4.0}


def largest_exchange(conversation, tokenizer):
    """Tokens of the largest window holding a single exchange (system + user + DM reply)."""
    system, body = conversation.messages[0], conversation.messages[1:]
    pairs = [Conversation("x", "", [system, *body[i:i + 2]]) for i in range(0, len(body), 2)]
    return max(len(conversation_windows(p, tokenizer, ctx=10**9)[0].tokens) for p in pairs)


def test_windows_split_on_exchanges_and_restart_with_system(tokenizer):
    conversation = to_conversation(FIGHT)
    system, body = conversation.messages[0], conversation.messages[1:]
    ctx = largest_exchange(conversation, tokenizer) + 200
    windows = conversation_windows(conversation, tokenizer, ctx=ctx)
    assert len(windows) >= 2
    start = 0
    trained = []
    for window in windows:
        assert len(window.tokens) <= ctx
        text = tokenizer.detokenize(window.tokens)
        # each window is a complete chat: BOS, system + the user message before its first DM turn
        end = start
        while end < len(body) and BOS + render_gemma([system, *body[start:end + 2]]) != text:
            end += 2
        assert end < len(body), "window is not a run of whole exchanges"
        trained += [tokenizer.detokenize(run) for run in masked_runs(window)]
        start = end + 2
    assert start == len(body)
    assert trained == [m.content.strip() + END_OF_TURN for m in body if m.role == "assistant"]


def test_exchange_longer_than_ctx_is_truncated_with_warning(tokenizer):
    conversation = to_conversation(SEED)
    ctx = largest_exchange(conversation, tokenizer) - 20
    with pytest.warns(TruncationWarning, match="roleplay/seed_tavern.md"):
        windows = conversation_windows(conversation, tokenizer, ctx=ctx)
    assert len(windows) == 2 and all(len(w.tokens) <= ctx and any(w.mask) for w in windows)
    with pytest.warns(TruncationWarning):
        assert conversation_windows(conversation, tokenizer, ctx=50) == []  # nothing trainable left


# ---------------------------------------------------------------- JSONL


def test_jsonl_round_trip_is_lossless(tmp_path):
    conversations = [to_conversation(s) for s in [SEED, *INDEPENDENT.scenarios]]
    conversations.append(Conversation("odd/ünïcode.md", "odd", [
        Message("system", "  spaces kept  \n"), Message("user", "\"quotes\"\n\ttabs ✓"), Message("assistant", "")]))
    path = write_jsonl(conversations, tmp_path / "out" / "train.jsonl")
    assert read_jsonl(path) == conversations
    assert path.read_text(encoding="utf-8").count("\n") == len(conversations)
    assert not list(path.parent.glob(".*tmp"))


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n{"messages": [{"role": "narrator", "content": "x"}]}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: unknown roles \['narrator'\]"):
        read_jsonl(path)


# ---------------------------------------------------------------- split, weights, augmentation


def test_split_is_stable_when_files_are_added():
    paths = [f"combat/fight_{i:03d}.md" for i in range(60)]
    train, validation = split_scenarios(paths)
    assert 1 <= len(validation) <= 15 and set(train) | set(validation) == set(paths)
    more = paths + [f"social/talk_{i:03d}.md" for i in range(100)]
    train2, validation2 = split_scenarios(more)
    assert set(validation) <= set(validation2) and set(train) <= set(train2)
    assert split_scenarios(reversed(more)) == (train2, validation2)


def test_split_keeps_one_validation_scenario_when_there_are_two():
    for pair in (["a.md", "b.md"], ["x/1.md", "y/2.md"]):
        train, validation = split_scenarios(pair)
        assert len(train) == 1 and len(validation) == 1
    assert split_scenarios(["only.md"]) == (["only.md"], [])


def test_augmentation_renames_everywhere_and_stays_valid():
    variant = augment_scenario(FIGHT, seed=3)
    assert variant == augment_scenario(FIGHT, seed=3)
    assert variant != augment_scenario(FIGHT, seed=4)
    old = [c.name for c in FIGHT.system.party]
    new = [c.name for c in variant.system.party]
    assert len(set(new)) == len(new) and not set(old) & set(new)
    _, diagnostics = check_scenario(format_scenario(variant), "combat/x.md")
    assert not [d for d in diagnostics if d.severity == "error"]
    variant_text = format_scenario(variant)
    for name in old:
        assert not re.search(rf"\b{name}\b", variant_text)
    assert [c.named.get("actor") for t in variant.turns for c in t.tool_calls][:2] == new
    assert variant.turns[-2].results[0].label == new[0]  # "Brakka: 32 - 6 = *26/32*" follows the rename
    assert [d.code for d in variant.warnings] == [d.code for d in FIGHT.warnings]
    # Brakka takes damage in the text, so his HP stays; HP never exceeds max.
    assert (variant.system.party[0].hp, variant.system.party[0].max_hp) == (32, 32)
    assert all(0 <= c.hp <= c.max_hp for c in variant.system.party)


def test_augmentation_varies_hidden_hp():
    seen = {(c.hp, c.max_hp) for seed in range(20) for c in augment_scenario(SEED, seed).system.party[:1]}
    assert len(seen) > 3 and all(hp == max_hp for hp, max_hp in seen)  # full health stays full


def write_corpus(root, count):
    base = (DATA / "seed_tavern.md").read_text(encoding="utf-8")
    for i in range(count):
        folder = root / ("combat" if i % 2 else "social")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"scene_{i:03d}.md").write_text(base.replace("Tavern", f"Tavern number {i}"), encoding="utf-8")


def test_build_dataset_keeps_validation_clean(tmp_path):
    write_corpus(tmp_path, 30)
    check = load_folder(tmp_path)
    assert not check.errors
    plain = build_dataset(check)
    split = build_dataset(check, augment_copies=2, seed=11)
    assert split.validation == plain.validation and split.validation
    validation_paths = {c.scenario for c in split.validation}
    sources = {c.scenario.split("#")[0] for c in split.train}
    assert not validation_paths & sources
    assert any("#aug2" in c.scenario for c in split.train)
    for conversation in split.validation:  # validation is the untouched originals
        original = next(s for s in check.scenarios if s.path == conversation.scenario)
        assert conversation == to_conversation(original)
    assert len(split.train) == 3 * len(plain.train)
