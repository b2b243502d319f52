"""Validation: replay, loss, the report files and `dndllama validate` end to end on a tiny real
Gemma-3-architecture model, trained a few steps so that model and baseline differ. The scores on
hand-made turns are in test_scoring.py, the report's rendering in test_report.py."""

from __future__ import annotations

import argparse
import json
import math
import mmap
import shutil
import warnings
from pathlib import Path

import pytest

from dndllama import _native as native
from dndllama import cli
from dndllama.cli.validate import add_validate_command
from dndllama.grammar import tool_call_grammar
from dndllama.dataset import build_dataset, dataset_windows, render_gemma, window_arrays
from dndllama.scenarios import load_folder
from dndllama.tools import load_vocabulary
from dndllama.validate import (LOSS_PNG, REPORT_JSON, REPORT_MD, TOOLS_PNG, PeakMemory, Report, ValidationError,
                               dm_turns, gate, reference_loss, replay, validate_model, write_report)
from tiny_models import make_tiny_model

INDEPENDENT = Path(__file__).parent / "data" / "independent"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the tiny vocabulary is mostly characters: the system prompt alone is ~1,700 tokens
GEN_CTX, LOSS_CTX, MAX_TOKENS, TURNS = 4096, 2048, 16, 3
THREADS = 1   # two cores: one thread per model call stays fast when another process is busy too


# ---- a tiny real model, trained a few steps ------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    vocab = load_vocabulary(INDEPENDENT)
    split = build_dataset(load_folder(INDEPENDENT, vocab), 0.1)
    return vocab, split


@pytest.fixture(scope="module")
def models(tmp_path_factory, data):
    """(base, trained): the trained model records its base, as `dndllama train` does."""
    folder = tmp_path_factory.mktemp("validate")
    base = make_tiny_model(folder / "base.gguf", n_ctx=4096, n_layer=6)
    tokenizer = native.Model(str(base), vocab_only=True)
    tokens, labels = window_arrays(dataset_windows(data[1].train, tokenizer, LOSS_CTX), LOSS_CTX, 0)
    options = native.TrainOptions()
    options.n_ctx, options.epochs, options.max_steps, options.lr, options.n_threads = LOSS_CTX, 1, 2, 1e-2, THREADS
    options.kv = {"dndllama.base": str(base)}
    trained = folder / "trained.gguf"
    native.train(str(base), str(trained), tokens, labels, tokens[:0], labels[:0], options)
    return base, trained


@pytest.fixture(scope="module")
def report(models, data):
    base, trained = models
    vocab, split = data
    said = []
    result = validate_model(trained, split.validation, vocab, baseline_path=base, max_tokens=MAX_TOKENS,
                            n_ctx=GEN_CTX, loss_ctx=LOSS_CTX, max_turns=TURNS, n_threads=THREADS, say=said.append)
    result.said = said
    return result


def test_replay_generates_every_dm_turn_greedily_and_reproducibly(report, models, data):
    vocab, split = data
    model = native.Model(str(models[1]))
    result = replay(model, split.validation, vocab, max_tokens=MAX_TOKENS, n_ctx=GEN_CTX, n_threads=THREADS,
                    max_turns=2)
    assert result.skipped == 0 and len(result.turns) == 2
    # greedy: the same replies as validate_model's replay of the same model, in another call
    assert [t.prediction for t in result.turns] == [t.prediction for t in report.model.turns[:2]]
    for turn, (conversation, index) in zip(result.turns, dm_turns(split.validation, 2)):
        assert turn.message == index and turn.reference == conversation.messages[index].content
        # the prompt is the model's own template over the messages before the turn, plus BOS
        prompt = model.apply_chat_template([vars(m) for m in conversation.messages[:index]], True)
        assert turn.prompt_tokens == len(model.tokenize(prompt, True, True))
        assert 0 < turn.generated_tokens <= MAX_TOKENS and turn.stop_reason in ("eos", "stop", "length")
    assert result.prompt_tokens_per_s > 0 and result.gen_tokens_per_s > 0 and result.peak_rss_mb > 0
    assert result.template == "gguf"


def test_replay_with_the_tool_call_grammar_writes_only_calls_the_parser_accepts(models, data):
    vocab, split = data
    model = native.Model(str(models[1]))
    kwargs = dict(max_tokens=48, n_ctx=GEN_CTX, n_threads=THREADS, max_turns=2)
    free = replay(model, split.validation, vocab, **kwargs)
    constrained = replay(model, split.validation, vocab, grammar=tool_call_grammar(vocab), **kwargs)
    assert not any(t.invalid_calls for t in constrained.turns)
    # a free reply the grammar allows whole is left as it is (greedy: the constrained argmax is the free one)
    assert any("[" not in f.prediction for f in free.turns)
    for f, c in zip(free.turns, constrained.turns):
        if "[" not in f.prediction:
            assert c.prediction == f.prediction


def test_replay_skips_turns_whose_prompt_does_not_fit(models, data):
    vocab, split = data
    model = native.Model(str(models[1]))
    conversations = split.train[:1]
    prompts = [len(model.tokenize(model.apply_chat_template([vars(m) for m in c.messages[:i]], True), True, True))
               for c, i in dm_turns(conversations)]
    n_ctx = min(prompts) + MAX_TOKENS                           # the shortest prompt fits, longer ones do not
    result = replay(model, conversations, vocab, max_tokens=MAX_TOKENS, n_ctx=n_ctx, n_threads=THREADS)
    fitting = sum(p + MAX_TOKENS <= n_ctx for p in prompts)
    assert 0 < fitting < len(prompts)
    assert len(result.turns) == fitting and result.skipped == len(prompts) - fitting


def test_a_model_without_a_chat_template_is_prompted_as_training_was(tmp_path, data):
    # the embedded Gemma 3 270M base has no tokenizer.chat_template
    vocab, split = data
    bare = native.Model(str(make_tiny_model(tmp_path / "bare.gguf", n_ctx=4096, n_layer=6, chat_template=None)))
    result = replay(bare, split.validation, vocab, max_tokens=4, n_ctx=GEN_CTX, n_threads=THREADS, max_turns=1)
    (conversation, index), = dm_turns(split.validation)[:1]
    training_prompt = bare.tokenize(render_gemma(conversation.messages[:index], add_generation_prompt=True), True, True)
    assert result.template == "fallback" and result.turns[0].prompt_tokens == len(training_prompt)


def test_reference_loss_is_an_evaluation_of_the_training_windows(report, models, data):
    split = data[1]
    loss = report.baseline.loss                # reference_loss(base, validation, LOSS_CTX)
    tokenizer = native.Model(str(models[0]), vocab_only=True)
    tokens, labels = window_arrays(dataset_windows(split.validation, tokenizer, LOSS_CTX), LOSS_CTX, 0)
    assert loss.tokens == int((labels >= 0).sum()) > 0 and loss.windows == len(tokens) and loss.truncated == 0
    assert loss.loss == pytest.approx(native.evaluate(str(models[0]), tokens, labels, THREADS)[0])
    assert loss.perplexity == pytest.approx(math.exp(loss.loss)) and 0 <= loss.token_accuracy <= 1
    # random weights: about uniform over the vocabulary
    assert abs(loss.loss - math.log(tokenizer.info().n_vocab)) < 1.0


def test_a_judged_replay_is_reused_when_only_its_loss_is_asked_for(models, data, tmp_path, monkeypatch):
    """The quant choice replays types without their loss (it has the screen's); the shipped one then
    gets its loss added, not a second replay."""
    from dndllama import selection

    vocab, split = data
    settings = dict(max_tokens=MAX_TOKENS, n_ctx=GEN_CTX, loss_ctx=LOSS_CTX, seed=0, max_turns=2, n_threads=THREADS,
                    n_gpu_layers=0)
    judge = selection.Judge(split.validation, vocab, settings, tmp_path)
    bare = judge(models[1], with_loss=False)
    assert bare.loss.loss is None

    def no_replay(*args, **kwargs):
        raise AssertionError("replayed again")

    monkeypatch.setattr(selection, "validate_one", no_replay)
    full = judge(models[1])
    assert full.loss.loss == reference_loss(models[1], split.validation, LOSS_CTX, THREADS).loss
    assert [t.prediction for t in full.turns] == [t.prediction for t in bare.turns]
    assert judge(models[1]).loss == full.loss   # and cached


def test_reference_loss_without_a_whole_window_is_undefined(models, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # the cuts are counted, not warned about
        loss = reference_loss(models[0], data[1].validation, 256, n_threads=THREADS)
    assert (loss.loss, loss.perplexity, loss.tokens, loss.windows) == (None, None, 0, 0) and loss.truncated > 0


def test_validation_compares_model_and_baseline_on_the_same_turns(report, models, data):
    split = data[1]
    assert [r.label for r in (report.model, report.baseline)] == ["model", "baseline"]
    assert report.model.path == str(models[1]) and report.baseline.path == str(models[0])
    assert report.scenarios == [c.scenario for c in split.validation]
    total = len(dm_turns(split.validation, TURNS))
    for result in (report.model, report.baseline):
        assert len(result.turns) + result.skipped_turns == total and result.tools.turns == len(result.turns)
        assert result.tools.reference_calls == sum(len(t.reference_calls) for t in result.turns) > 0
        for key in ("name_f1", "exact_f1", "turn_exact_match", "no_call_accuracy"):
            value = getattr(result.tools, key)
            assert value is None or 0 <= value <= 1, key
        assert math.isfinite(result.loss.loss) and result.loss.perplexity > 1
        assert result.prompt_tokens_per_s > 0 and result.gen_tokens_per_s > 0 and result.seconds_per_turn > 0
        assert result.peak_rss_mb > 0 and result.peak_rss_scope in ("block", "process")
    # trained three steps at a high rate: different weights, so a different loss
    assert report.model.loss.loss != pytest.approx(report.baseline.loss.loss, rel=1e-4)
    where = lambda result: [(t.scenario, t.message) for t in result.turns]  # noqa: E731
    assert where(report.model) == where(report.baseline)
    assert any("DM turn 1/" in line for line in report.said) and any("baseline" in line for line in report.said)


def test_gate_passes_only_when_the_f1_gain_exceeds_the_margin(report):
    gain = (report.model.tools.name_f1 or 0) - (report.baseline.tools.name_f1 or 0)
    passed, reason = gate(report)
    assert passed == (gain > 0) and "baseline" in reason and "over resampled scenarios" in reason
    assert gate(report, min_f1_gain=gain + 0.01)[0] is False
    assert gate(report, min_f1_gain=gain - 0.01)[0] is True
    alone = Report(report.model, None, report.settings, report.scenarios)
    assert gate(alone) == (True, "no baseline to compare with: gate not applied")


def test_report_files(report, tmp_path):
    log = tmp_path / "train-log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in [
        {"event": "step", "step": 1, "loss": 5.0}, {"event": "step", "step": 2, "loss": 4.0},
        {"event": "eval", "step": 2, "val_loss": 4.5}]) + "{cut by a cra")
    written = write_report(report, tmp_path / "out", train_log=log)
    data = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert data["model"]["tools"]["name_f1"] == report.model.tools.name_f1
    assert data["baseline"]["loss"]["loss"] == pytest.approx(report.baseline.loss.loss)
    assert len(data["model"]["turns"]) == len(report.model.turns) and data["settings"]["max_tokens"] == MAX_TOKENS
    md = (tmp_path / "out" / REPORT_MD).read_text()
    assert "| metric | model | baseline | change |" in md and "| tool-name F1 |" in md
    assert "| validation loss (reference DM tokens) |" in md and "| peak memory (MB) |" in md
    assert f"![Tool metrics]({TOOLS_PNG})" in md and f"![Training loss]({LOSS_PNG})" in md
    assert "**reference** (calls: `[" in md and "**baseline** (calls:" in md and "- **gate** (default):" in md
    for name in (TOOLS_PNG, LOSS_PNG):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    assert set(written) == {"json", "md", "tools_png", "loss_png"}
    assert not list((tmp_path / "out").glob(".*.tmp"))           # every file renamed into place


def test_peak_memory_sees_an_allocation_inside_the_block():
    with PeakMemory() as before:
        pass
    with PeakMemory() as during:
        # fresh pages from the kernel (a heap block could reuse pages an earlier test left resident)
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"x" * len(block))                              # 64 MB, touched
        block.close()
    assert during.peak_mb >= before.peak_mb + 50 or during.scope == "process"


def test_validation_without_turns_or_room_says_what_to_change(models, data):
    vocab, split = data
    with pytest.raises(ValidationError, match="no DM turn"):
        validate_model(models[1], [], vocab)
    with pytest.raises(ValidationError, match="fits n_ctx=512"):
        validate_model(models[1], split.validation, vocab, n_ctx=512, max_tokens=MAX_TOKENS, n_threads=THREADS)


# ---- the command -------------------------------------------------------------------------------

@pytest.fixture
def command(monkeypatch):
    """cli.main with the validate command registered (cli/__init__.py's COMMAND_GROUPS holds it)."""
    if add_validate_command not in cli.COMMAND_GROUPS:
        monkeypatch.setattr(cli, "COMMAND_GROUPS", [*cli.COMMAND_GROUPS, add_validate_command])
    return cli.main


def test_validate_command_writes_the_report_and_prints_the_table(command, models, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(INDEPENDENT, data)
    (data / "dndllama.toml").write_text("ctx = 256\n")   # training's windows: too short, so no loss (quick)
    out = tmp_path / "report"
    flags = ["--data", str(data), "--max-turns", "1", "--ctx", str(GEN_CTX), "--max-tokens", "8", "--threads", "1"]
    code = command(["validate", str(models[1]), "--out", str(out), "--eval-data", "", *flags])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"against {models[0]}" in printed                         # the base recorded in the model
    assert "tool-name F1" in printed and "quality gate:" in printed and f"report: {out / REPORT_MD}" in printed
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["settings"]["loss_ctx"] == 256 and report["settings"]["n_ctx"] == GEN_CTX
    assert report["model"]["loss"]["loss"] is None and report["model"]["loss"]["truncated"] > 0
    assert len(report["model"]["turns"]) == len(report["baseline"]["turns"]) == 1
    assert report["scenarios"] == ["roleplay/the_spice_merchant.md"]  # the validation split
    assert (out / TOOLS_PNG).read_bytes()[:8] == PNG_MAGIC and not (out / LOSS_PNG).exists()

    code = command(["validate", str(models[1]), "--out", str(tmp_path / "all"), "--all", "--baseline", "none", *flags])
    printed = capsys.readouterr().out
    assert code == 0 and "no baseline" in printed and "quality gate" not in printed
    assert len(json.loads((tmp_path / "all" / REPORT_JSON).read_text())["scenarios"]) == 3


def test_validate_command_replays_the_evaluation_folder_by_default(command, models, tmp_path, monkeypatch, capsys):
    data, held_out = tmp_path / "data", tmp_path / "ai-eval"
    shutil.copytree(INDEPENDENT, data)
    (data / "dndllama.toml").write_text("ctx = 256\n")
    (held_out / "combat").mkdir(parents=True)
    shutil.move(data / "combat" / "wolves_at_the_ford.md", held_out / "combat" / "wolves_at_the_ford.md")
    monkeypatch.chdir(tmp_path)   # eval_data's default, ai-eval, is found like data: from the working folder
    flags = ["--data", "data", "--max-turns", "1", "--ctx", str(GEN_CTX), "--max-tokens", "8", "--threads", "1",
             "--baseline", "none"]
    assert command(["validate", str(models[1]), "--out", "with", *flags]) == 0
    assert "evaluation scenario(s)" in capsys.readouterr().out
    report = json.loads((tmp_path / "with" / REPORT_JSON).read_text())
    assert report["scenarios"] == ["combat/wolves_at_the_ford.md"]
    assert report["settings"]["loss_on"] == "1 in-corpus validation scenarios"    # the loss stays on --data's split
    markdown = (tmp_path / "with" / REPORT_MD).read_text()
    assert "loss windows of 256 tokens on 1 in-corpus validation scenarios" in markdown

    shutil.rmtree(held_out)   # no evaluation folder: the in-corpus split, with a notice
    assert command(["validate", str(models[1]), "--out", "without", *flags]) == 0
    assert "evaluation folder 'ai-eval' not found" in capsys.readouterr().out
    without = json.loads((tmp_path / "without" / REPORT_JSON).read_text())
    assert without["scenarios"] == ["roleplay/the_spice_merchant.md"] and "loss_on" not in without["settings"]

    assert command(["validate", str(models[1]), "--eval-data", "data/combat", *flags]) == 1
    assert "inside the training data" in capsys.readouterr().err


def test_validate_command_errors_say_what_to_do(command, models, tmp_path, capsys):
    assert command(["validate", str(tmp_path / "missing.gguf")]) == 1
    err = capsys.readouterr().err
    assert "error: model" in err and "what to do:" in err
    assert command(["validate", str(models[1]), "--data", str(tmp_path / "nowhere")]) == 1
    assert "data folder" in capsys.readouterr().err
    assert command(["validate", str(models[1]), "--data", str(INDEPENDENT), "--baseline", "none",
                    "--ctx", "512", "--max-tokens", "8", "--out", str(tmp_path / "o")]) == 1
    assert "larger --ctx" in capsys.readouterr().err


def test_validate_command_is_callable_without_cli_main(models, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_validate_command(parser.add_subparsers())
    args = parser.parse_args(["validate", "7", "--models-dir", str(tmp_path)])
    with pytest.raises(cli.CliError, match="no version 'v0007'"):
        args.func(args)
