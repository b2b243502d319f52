"""The fault suite: no input a user can type crashes the process or ships a wrong model.

Every case of fault_cases.CASES runs the real CLI in a subprocess on a tiny real model (exit status,
stderr and the models folder are judged, see fault_cases); the tests below it cover what a CLI case
cannot: the native core's own input checks, concurrent `models use`, the registry lock, `rm` that
cannot finish, resuming from a damaged checkpoint, and a fuzz of GGUF headers and settings.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from dndllama import _native as native
from dndllama import registry
from dndllama.config import Config, ConfigError, Sampling, check_setting, validate
from dndllama.settings import SETTINGS
from fault_cases import CASES, CRASH_STATUSES, INDEPENDENT, fuzz_runs, make_base, make_env, run_case, use_and_check

THREADS = 2


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("fault-base"))


@pytest.fixture
def env(tmp_path, base):
    return make_env(tmp_path, base)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_case(case, env):
    result = run_case(case, env)
    assert result.outcome in ("clear_error", "works"), f"{result.outcome}: {result.detail}"
    assert result.lost == [], f"versions changed or lost: {result.lost}"


# ---------------------------------------------------------------- the settings table


def test_every_setting_has_a_rule_and_the_defaults_pass():
    keys = {f.name for f in fields(Config) if f.name != "sampling"} | {f"sampling.{f.name}" for f in fields(Sampling)}
    assert keys == set(SETTINGS)
    validate(Config())


@pytest.mark.parametrize("key, value, words", [
    ("lr", 1e-300, "float32"), ("lr", 1e39, "float32"), ("lr", float("inf"), "finite"), ("lr", True, "not a number"),
    ("weight_decay", 1.0, "[0, 1)"), ("threads", 513, "[0, 512]"), ("seed", 2**32, "[0, 4294967295]"),
    ("name", "a/b", "file name"), ("name", ".hidden", "file name"), ("size_cap", "-1GB", "size"),
    ("data", "a\0b", "NUL"), ("sampling.top_p", 1.5, "[0, 1]"), ("ctx", 512.0, "an integer"),
])
def test_a_bad_value_names_the_setting_the_value_and_the_range(key, value, words):
    with pytest.raises(ConfigError) as error:
        check_setting(key, value, "dndllama.toml")
    message = str(error.value)
    assert message.startswith(f"dndllama.toml: {key} = {value!r}") and words in message


def test_a_config_built_in_code_meets_the_same_table():
    with pytest.raises(ConfigError, match="weight_decay"):
        validate(replace(Config(), weight_decay=2.0))


# ---------------------------------------------------------------- the native core's own checks


def _windows(n: int = 2, ctx: int = 256, vocab: int = 300):
    rng = np.random.default_rng(0)
    tokens = rng.integers(10, vocab, size=(n, ctx), dtype=np.int32)
    return tokens, tokens.copy()


@pytest.mark.parametrize("field, value", [
    ("lr", math.inf), ("lr", 1e39), ("lr", 1e-300), ("lr", 0.0), ("lr", math.nan), ("weight_decay", 2.0),
    ("weight_decay", -0.5), ("lr_min_ratio", -5.0), ("n_threads", 100000), ("n_threads", -4), ("beta1", 3.0),
    ("grad_accum", 0), ("warmup_steps", -1),
])
def test_native_train_refuses_options_ggml_would_assert_on(base, tmp_path, field, value):
    options = native.TrainOptions()
    options.n_ctx, options.epochs, options.max_steps, options.n_threads = 256, 1, 1, THREADS
    setattr(options, field, value)
    tokens, labels = _windows()
    with pytest.raises(native.NativeError, match=field.replace("n_threads", "threads")):
        native.train(str(base), "", tokens, labels, tokens[:0], labels[:0], options)


def test_native_seed_is_range_checked():
    options = native.TrainOptions()
    for seed in (-1, 2**32):
        with pytest.raises(native.NativeError, match="seed"):
            options.seed = seed
    options.seed = 2**32 - 1
    assert options.seed == 2**32 - 1


@pytest.mark.parametrize("changes, words", [
    ({"n_threads": 100000}, "threads"), ({"n_threads": -1}, "threads"), ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": math.nan}, "temperature"), ({"top_p": 2.0}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"seed": -1}, "seed"), ({"n_ctx": 0}, "n_ctx"),
])
def test_native_generate_refuses_bad_sampling(base, changes, words):
    model = native.Model(str(base))
    with pytest.raises(native.NativeError, match=words):
        model.generate("hello", **{"max_tokens": 2, "n_threads": THREADS, **changes})


def test_native_text_that_is_not_utf8_is_a_native_error_not_a_dump(base):
    model = native.Model(str(base))
    text = b"hi \xff there".decode("utf-8", "surrogateescape")
    for call in (lambda: model.generate(text, max_tokens=1), lambda: model.tokenize(text),
                 lambda: model.apply_chat_template([{"role": "user", "content": text}])):
        with pytest.raises(native.NativeError, match="not valid UTF-8") as error:
            call()
        assert "there" not in str(error.value)        # the argument is not dumped


def test_native_thread_counts_are_checked_everywhere(base, tmp_path):
    tokens, labels = _windows(1)
    with pytest.raises(native.NativeError, match="threads"):
        native.evaluate(str(base), tokens, labels, 100000)
    with pytest.raises(native.NativeError, match="threads"):
        native.quantize(str(base), str(tmp_path / "q.gguf"), "Q8_0", 100000)
    with pytest.raises(native.NativeError, match="threads"):
        native.logits(str(base), [1, 2, 3], "", 100000)
    assert not (tmp_path / "q.gguf").exists()


# ---------------------------------------------------------------- the registry under concurrency


def test_500_racing_pairs_of_models_use_always_agree(env):
    jobs = [(str(env.models), name) for _ in range(500) for name in ("v0001", "v0002")]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        problems = [p for p in pool.imap_unordered(use_and_check, jobs, chunksize=10) if p]
    assert problems == []
    assert registry.repair(env.models) == []
    active = registry.current(env.models)
    assert json.loads((env.models / registry.CACTUS_CONFIG).read_text())["version"] == active.name
    assert not list(env.models.glob(".*.tmp"))


def test_a_second_writer_waits_then_fails_clearly(env):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from dndllama import registry\n"
        "with registry.lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(30)\n"), str(env.models)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(registry.RegistryError, match=f"another dndllama command \\(pid {holder.pid}\\)"):
            with registry.lock(env.models, wait_s=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    registry.set_current(env.models, "v0002")       # released with the process
    assert registry.current(env.models).name == "v0002"


def test_rm_that_cannot_rename_deletes_nothing(env, monkeypatch):
    before = sorted(p.name for p in (env.models / "v0002").iterdir())

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(registry.os, "replace", refuse)
    with pytest.raises(registry.RegistryError, match="nothing was deleted"):
        registry.remove(env.models, "v0002")
    monkeypatch.undo()
    assert sorted(p.name for p in (env.models / "v0002").iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may delete in a read-only folder")
def test_rm_in_a_read_only_version_deletes_nothing(env):
    folder = env.models / "v0002"
    before = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o555)
    try:
        with pytest.raises(registry.RegistryError, match="nothing was deleted"):
            registry.remove(env.models, "v0002")
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_rm_cut_short_after_the_rename_is_finished_by_repair(env, monkeypatch):
    monkeypatch.setattr(registry.shutil, "rmtree", lambda *a, **k: None)   # killed right after the rename
    registry.remove(env.models, "v0002")
    monkeypatch.undo()
    assert [v.name for v in registry.versions(env.models)] == ["v0001"]
    assert registry.repair(env.models) == ["finished removing v0002 (.v0002.trash)"]
    assert not (env.models / ".v0002.trash").exists()


# ---------------------------------------------------------------- fuzz: GGUF headers and settings


def test_fuzzed_headers_and_settings_never_crash_or_dump_a_traceback(env):
    for argv, code, err in fuzz_runs(env, 16, seed=18):
        assert code not in CRASH_STATUSES, f"{argv}: exit {code}: {err[-800:]}"
        assert "Traceback" not in err and "GGML_ASSERT" not in err, f"{argv}: {err[-800:]}"
        # llama.cpp's own error lines may come first (the native log echoes errors); ours follows
        assert code == 0 or any(line.startswith(("error:", "usage:")) for line in err.splitlines()), \
            f"{argv}: {err[-800:]}"


# ---------------------------------------------------------------- resume from a damaged checkpoint


def _interrupted_run(base: Path, run_dir: Path, monkeypatch, stop_after: int):
    """A training run stopped (as by Ctrl-C) after `stop_after` checkpoints; returns its config and arrays."""
    from dndllama import train

    config = replace(Config(), ctx=256, max_steps=4, save_every=1, eval_every=1, checkpoint_candidates=3,
                     threads=THREADS, lr=1e-3, patience=0)
    tokens, labels = _windows(4)
    arrays = train.Arrays(tokens, labels, tokens[:1], labels[:1])
    seen, original = [], train._update

    def stop(state, event, config, checkpoints):
        keep = original(state, event, config, checkpoints)
        if event["event"] == "checkpoint":
            seen.append(event["checkpoint"])
            if len(seen) == stop_after:
                raise KeyboardInterrupt
        return keep

    monkeypatch.setattr(train, "_update", stop)
    with pytest.raises(KeyboardInterrupt):
        train.train_model(base, arrays, config, run_dir, {}, quiet=True, say=lambda line: None)
    monkeypatch.undo()
    return config, arrays, [Path(p) for p in seen]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete-tensors"])
def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_resumes(base, tmp_path, monkeypatch, damage):
    from dndllama import train

    config, arrays, saved = _interrupted_run(base, tmp_path / "run", monkeypatch, stop_after=2)
    newest = saved[-1]
    data = newest.read_bytes()
    newest.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\0" * 64,
                        "delete-tensors": data[:24] + (0).to_bytes(8, "little") + data[32:]}[damage])
    said: list[str] = []
    outcome = train.train_model(base, arrays, config, tmp_path / "run", {}, quiet=True, say=said.append)
    text = "\n".join(said)
    assert f"checkpoint {newest.name} is damaged" in text and "resuming from the one before" in text
    assert f"resuming from {saved[0].name}" in text
    assert (newest.parent / f"{newest.name}.damaged").exists() and outcome.summary["steps"] == 4
    assert outcome.model.exists()


def test_with_every_checkpoint_damaged_training_starts_over(base, tmp_path, monkeypatch):
    from dndllama import train

    config, arrays, saved = _interrupted_run(base, tmp_path / "run", monkeypatch, stop_after=1)
    saved[0].write_bytes(saved[0].read_bytes()[:100])
    said: list[str] = []
    outcome = train.train_model(base, arrays, config, tmp_path / "run", {}, quiet=True, say=said.append)
    assert any("training starts over" in line for line in said) and not any("resuming" in line for line in said)
    assert outcome.summary["steps"] == 4


# ---------------------------------------------------------------- refused before training


def test_a_quant_type_the_runtime_lacks_is_refused_before_training(tmp_path, base, monkeypatch):
    from dndllama import pipeline
    from dndllama.config import load_config
    from dndllama.runtime_profiles import load_runtime

    runtime = load_runtime("cactus-0.2")
    lacking = replace(runtime, file_types=tuple(t for t in runtime.file_types if t != "Q4_K_M"),
                      tensor_types=tuple(t for t in runtime.tensor_types if t != "Q4_K"))
    monkeypatch.setattr(pipeline, "_runtime", lambda name: lacking)
    config = load_config(INDEPENDENT, {"base": str(base), "quant": "Q4_K_M", "cache_dir": str(tmp_path / "cache"),
                                       "models_dir": str(tmp_path / "models")})
    with pytest.raises(ConfigError, match="cannot load Q4_K_M"):
        pipeline.run(config, say=lambda line: None)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "models").exists()


def test_a_long_loss_evaluation_reports_progress(base):
    from dndllama.dataset import Conversation, Message
    from dndllama.validate import LOSS_CHUNK, reference_loss

    turns = [m for i in range(LOSS_CHUNK + 8) for m in (Message("user", f"the goblin {i}"),
                                                         Message("assistant", "roll perception " * 20))]
    conversation = Conversation("long.md", "combat", [Message("system", "You are the DM."), *turns])
    said: list[str] = []
    result = reference_loss(base, [conversation], ctx=256, n_threads=THREADS, say=said.append)
    assert result.windows > LOSS_CHUNK and result.loss is not None and math.isfinite(result.loss)
    assert said[0].startswith(f"loss: {LOSS_CHUNK}/{result.windows} windows") and said[-1].startswith(
        f"loss: {result.windows}/{result.windows} windows")


def test_a_long_evaluation_in_training_shows_progress_even_when_quiet(base, tmp_path, capsys):
    from dndllama import train

    config = replace(Config(), ctx=256, max_steps=1, save_every=0, threads=THREADS, lr=1e-3, patience=0)
    tokens, labels = _windows(2)
    val_tokens, val_labels = _windows(20)
    arrays = train.Arrays(tokens, labels, val_tokens, val_labels)
    train.train_model(base, arrays, config, tmp_path / "run", {}, quiet=True, say=lambda line: None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("evaluating:")]
    assert lines[0] == "evaluating: 2/20 validation windows" and lines[-1].startswith("evaluating: 18/20")
    assert "left" in lines[-1] and len(lines) == 9
    log = (tmp_path / "run" / "train-log.jsonl").read_text()
    assert "eval_progress" not in log                   # shown, not part of the resume record
