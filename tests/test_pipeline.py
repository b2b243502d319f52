"""`dndllama train` end to end on a tiny real Gemma-3-architecture GGUF: stages, caching, warm
start, resume after kill -9, quantization under a cap, the template check, the registry and the
Cactus config; and every failure class ending in a clear error with earlier models intact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest

from dndllama import _native as native
from dndllama import pipeline, registry
from dndllama.base import BaseModelError
from dndllama.cli import main
from dndllama.app_runtime import find_runtime_env
from dndllama.config import Config, ConfigError, load_config, parse_size
from dndllama.dataset import GEMMA_CHAT_TEMPLATE
from dndllama.ship_checks import TemplateMismatch, check_chat_template
from dndllama.quantize import CapError
from dndllama.runtime_profiles import RuntimeCompatError
from tiny_models import make_tiny_model

INDEPENDENT = Path(__file__).parent / "data" / "independent"
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    # the scenarios' system prompt is ~1,700 characters, and this tiny vocabulary is mostly characters
    # 6 layers: the app's May-2025 llama.cpp crashes on gemma3 models with fewer (see runtimes.toml)
    return make_tiny_model(tmp_path_factory.mktemp("base") / "tiny.gguf", n_ctx=4096, n_layer=6)


@pytest.fixture
def project(tmp_path, tiny_base):
    data = tmp_path / "data"
    shutil.copytree(INDEPENDENT, data)
    settings = {"base": str(tiny_base), "ctx": 2048, "max_steps": 4, "lr": 1e-3, "save_every": 2, "threads": 2,
                "cache_dir": str(tmp_path / "cache"), "models_dir": str(tmp_path / "models"),
                "validate_turns": 3, "validate_max_tokens": 16, "gate": False,   # the first 3 turns hold a call
                "eval_data": "",   # the in-corpus split, whatever folder the tests run from (test_evalset covers it)
                # the best type under the cap, without replaying every candidate: the tests on choosing
                # by tool calls ask for select_by="tool_f1" (the default)
                "select_by": "loss",
                "synth": 0}   # the pipeline's mechanics on the hand-written files (test_synth covers the mix)
    return SimpleNamespace(root=tmp_path, data=data, models=tmp_path / "models", settings=settings)


def train(project, force=False, **changes):
    said: list[str] = []
    config = load_config(project.data, {**project.settings, **changes})
    outcome = pipeline.run(config, force=force, quiet=True, say=said.append)
    return outcome, "\n".join(said)


def steps_logged(version) -> list[int]:
    log = version.path / "train-log.jsonl"
    return [r["step"] for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "step"]


# ---- the whole command ------------------------------------------------------------------------

def test_train_writes_a_checked_version_with_lineage_and_cactus_config(project, tiny_base):
    outcome, said = train(project)
    version = outcome.version
    assert version.name == "v0001" and outcome.cactus["version"] == "v0001"
    assert "chat template: the GGUF's template gives the training tokens exactly" in said

    model = native.Model(str(version.model))
    info = model.info()
    assert info.chat_template == GEMMA_CHAT_TEMPLATE and info.name == "dndllama-dm"
    assert info.metadata["dndllama.dataset_hash"] == version.metadata["dataset_hash"]
    assert info.metadata["dndllama.base_sha256"] == version.metadata["base"]["sha256"]
    assert info.n_ctx_train == 4096                     # the base's context, not the training window
    assert model.generate("<start_of_turn>user\nhi<end_of_turn>\n", max_tokens=4, temperature=0)["n_generated"] > 0

    cactus = json.loads((project.models / "cactus.config.json").read_text())
    assert cactus == outcome.cactus == json.loads((version.path / "cactus.config.json").read_text())
    assert Path(cactus["modelPath"]) == version.model.resolve() and cactus["mmprojPath"] is None
    assert cactus["quant"] == "F16"                     # best type under the default 2 GB cap (select_by loss)
    assert os.readlink(project.models / "current") == "v0001"
    assert "CactusLM.init" in (version.path / "cactus.ts").read_text()
    assert (version.path / "tool-calls.gbnf").read_text() == cactus["grammar"] and "GRAMMAR" in (version.path / "cactus.ts").read_text()

    check = version.metadata["runtime_check"]      # the app's own (May 2025) llama.cpp, when installed
    if find_runtime_env("cactus-0.2") is None:
        assert "not installed" in check["skipped"] and "app-runtime check skipped" in said
    else:
        assert check["loaded"] and check["tokens_identical"] and check["generated_tokens"] > 0
        assert "cactus-0.2 (0.3.9) loads it" in said

    validation = version.metadata["validation"]            # model and base model replayed side by side
    assert validation["model"]["turns"] == validation["baseline"]["turns"] == 3
    assert (version.path / "report.md").exists() and (version.path / "report.json").exists()

    summary = version.metadata["training"]
    assert summary["steps"] == 4 and summary["final_loss"] < summary["first_loss"]
    assert steps_logged(version) == [1, 2, 3, 4]
    assert (version.path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_evaluation_folder_is_what_gets_judged_and_part_of_the_export_key(project):
    held_out = project.root / "held-out"
    (held_out / "combat").mkdir(parents=True)
    shutil.move(project.data / "combat" / "wolves_at_the_ford.md", held_out / "combat" / "wolves_at_the_ford.md")
    outcome, said = train(project, eval_data=str(held_out))
    assert "evaluation: 1 scenarios" in said and "of 1 evaluation scenarios" in said
    report = json.loads((outcome.version.path / "report.json").read_text())
    assert report["scenarios"] == ["combat/wolves_at_the_ford.md"]        # model and base both replayed it
    assert report["settings"]["loss_on"] == "1 in-corpus validation scenarios"   # the loss: the cheap split
    assert "combat/wolves_at_the_ford.md" not in outcome.version.metadata["data_files"]

    path = held_out / "combat" / "wolves_at_the_ford.md"
    path.write_text(path.read_text(encoding="utf-8").replace("## User\n", "## User\nQuietly: ", 1), encoding="utf-8")
    again, said = train(project, eval_data=str(held_out))
    assert not again.unchanged and again.version.name == "v0002"          # judged again on the new content
    assert "training: unchanged since the last run" in said               # ... without retraining


def test_reruns_do_only_what_changed(project):
    first, _ = train(project)

    start = time.monotonic()
    again, said = train(project)
    assert again.unchanged and again.version.name == "v0001" and "nothing changed" in said
    assert time.monotonic() - start < 10

    requantized, said = train(project, quant="Q8_0")
    assert requantized.version.name == "v0002" and requantized.cactus["quant"] == "Q8_0"
    assert "training: unchanged" in said and "training gemma3" not in said
    assert "as the baseline" not in said               # the base model's validation is cached across runs

    _, said = train(project, quant="Q8_0", augment=1)              # other training windows, same judging
    assert "training gemma3" in said and "as the baseline" not in said

    scenario = project.data / "combat" / "wolves_at_the_ford.md"
    scenario.write_text(scenario.read_text().replace("## DM\n", "## DM\nThe river roars.\n", 1))
    retrained, said = train(project, quant="Q8_0")
    assert retrained.version.name == "v0004" and "training gemma3" in said
    assert retrained.version.metadata["parent"] == "v0003"
    assert retrained.version.metadata["dataset_hash"] != first.version.metadata["dataset_hash"]


def test_without_a_validation_split_the_base_is_judged_again_on_other_training_windows(project):
    # no split held back: the base is judged on the training split, which augment changes
    train(project, val_fraction=0.0)
    _, said = train(project, val_fraction=0.0, augment=1)
    assert "training gemma3" in said and "as the baseline" in said


def test_added_data_warm_starts_from_the_current_version(project):
    train(project)
    shutil.copy(INDEPENDENT.parent / "seed_tavern.md", project.data / "roleplay" / "seed_tavern.md")
    outcome, said = train(project)
    assert "warm start from its weights" in said
    assert outcome.version.metadata["warm_start_from"] == "v0001"


def test_kill_minus_nine_then_the_same_command_resumes(project):
    args = [sys.executable, "-m", "dndllama", "train", "--data", str(project.data), "--quiet",
            "--max-steps", "8", "--save-every", "1", "--patience", "0", "--validate-turns", "1", "--no-gate"]
    for key in ("base", "ctx", "lr", "threads", "cache_dir", "models_dir"):
        args += [f"--{key.replace('_', '-')}", str(project.settings[key])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = project.root / "cache" / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [p for p in logs.glob("*/train-log.jsonl") if '"checkpoint"' in p.read_text()]
        if found:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert found, proc.stdout.read()
    assert not (project.models / "current").exists()      # nothing half-shipped

    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from step-" in done.stdout
    version = registry.current(project.models)
    steps = steps_logged(version)
    assert steps[-1] == 8 and steps == sorted(steps) and len(steps) == len(set(steps))


def test_a_version_that_fails_the_quality_gate_is_kept_but_not_promoted(project, capsys):
    first, _ = train(project)                               # promoted (gate off)
    second, said = train(project, gate=True, quant="Q8_0")  # random weights call no tool: F1 0 vs 0 fails
    assert not second.promoted and "quality gate failed" in said and "kept but not promoted" in said
    assert second.version.metadata["gate"]["passed"] is False
    assert registry.current(project.models).name == first.version.name == "v0001"
    assert second.version.model.exists() and (second.version.path / "report.md").exists()
    again, said = train(project, gate=True, quant="Q8_0")   # unchanged: no new version, still not promoted
    assert again.unchanged and not again.promoted and again.version.name == "v0002"


# ---- quantization under a cap -------------------------------------------------------------------

def test_cap_too_small_fails_and_keeps_the_current_model(project):
    first, _ = train(project)
    before = first.version.model.read_bytes()
    with pytest.raises(CapError, match="nothing was trained"):   # below any quant type's estimate: refused first
        train(project, size_cap="10kB")
    assert registry.current(project.models).name == "v0001" and first.version.model.read_bytes() == before
    outcome, said = train(project, size_cap="180kB")    # the trained weights were kept: only requantizes
    assert "training: unchanged" in said and outcome.cactus["quant"] != "F16"


def test_size_parsing():
    assert parse_size("2GB") == 2_000_000_000 and parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("800 MB") == 800_000_000
    with pytest.raises(ConfigError, match="2GB"):
        parse_size("two gigs")


# ---- failures end in clear errors ----------------------------------------------------------------

def test_data_problems_name_the_file_and_line(project):
    bad = project.data / "combat" / "broken.md"
    bad.write_text("# SYSTEM\nRole: DM\n\n# CONVERSATION\n## DM\nYou see [fly: away].\n")
    with pytest.raises(pipeline.DataError, match=r"combat/broken\.md:\d+"):
        train(project)
    empty = project.root / "empty"
    empty.mkdir()
    with pytest.raises(pipeline.DataError, match="no scenario files"):
        train(project, data=str(empty))


def test_bad_bases_are_refused_before_training(project, tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(BaseModelError, match="not a GGUF"):
        train(project, base=str(not_gguf))
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(Path(project.settings["base"]).read_bytes()[:5000])
    with pytest.raises(BaseModelError, match="cut.gguf"):
        train(project, base=str(truncated))

    gemma3n = tmp_path / "gemma3n.gguf"
    writer = gguf.GGUFWriter(str(gemma3n), "gemma3n")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(RuntimeCompatError, match="'gemma3n' does not load in cactus-0.2"):
        train(project, base=str(gemma3n))   # trainable, but not by the app's runtime: refused first
    assert not (project.root / "cache" / "runs").exists()


def test_a_different_template_in_the_gguf_is_refused(tmp_path, project):
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    other = make_tiny_model(tmp_path / "chatml.gguf", n_ctx=4096, chat_template=chatml)
    data = pipeline.load_data(load_config(project.data, project.settings))
    with pytest.raises(TemplateMismatch, match="differently from training at token"):
        check_chat_template(native.Model(str(other)), data.validation, 2048)


def test_config_file_and_flags(project):
    (project.data / "dndllama.toml").write_text('epochs = 3\nsize_cap = "1GB"\n[sampling]\ntemperature = 0.5\n')
    config = load_config(project.data, {"epochs": 5})
    assert config.epochs == 5 and config.size_cap_bytes == 10**9 and config.sampling.temperature == 0.5
    (project.data / "dndllama.toml").write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match="dndllama.toml: unknown setting"):
        load_config(project.data)
    with pytest.raises(ConfigError, match="multiple of 256"):
        load_config(project.root, {"ctx": 300})
    with pytest.raises(ConfigError, match="--matmul-precision = 'fp16' is not one of the choices; accepted: "
                                          "a string, one of auto, bf16, f32"):
        load_config(project.root, {"matmul_precision": "fp16"})


# ---- the command line and the registry ----------------------------------------------------------

def test_cli_train_prints_model_path_and_models_commands_switch_versions(project, capsys):
    flags = ["--data", str(project.data), "--validate-turns", "1", "--no-gate"]
    for key in ("base", "ctx", "max_steps", "lr", "threads", "cache_dir", "models_dir"):
        flags += [f"--{key.replace('_', '-')}", str(project.settings[key])]
    assert main(["train", "--quiet", *flags]) == 0
    out = capsys.readouterr().out
    model = registry.get(project.models, "v0001").model.resolve()
    assert f'modelPath:  "{model}"' in out and "mmprojPath: null" in out
    assert main(["train", "--quiet", *flags, "--quant", "Q8_0"]) == 0

    models = ["--models-dir", str(project.models)]
    capsys.readouterr()
    assert main(["models", "list", *models]) == 0
    listing = capsys.readouterr().out
    assert "v0001" in listing and "* " in listing and "Q8_0" in listing
    assert main(["models", "rollback", *models]) == 0
    assert registry.current(project.models).name == "v0001"
    assert json.loads((project.models / "cactus.config.json").read_text())["version"] == "v0001"
    capsys.readouterr()
    assert main(["train", "--quiet", *flags, "--quant", "Q8_0"]) == 3     # unchanged: the newest is v0002
    assert "v0002 is NOT current (nothing changed since it was trained" in capsys.readouterr().out
    assert registry.current(project.models).name == "v0001"
    assert main(["models", "rm", "v0001", *models]) == 1         # the current version is protected
    assert "switch first" in capsys.readouterr().err
    assert main(["models", "use", "2", *models]) == 0 and main(["models", "rm", "v0001", *models]) == 0
    assert [v.name for v in registry.versions(project.models)] == ["v0002"]


def test_pnpm_script_is_wired(tmp_path):
    package = json.loads((REPO / "package.json").read_text())
    script = package["scripts"]["train"]
    assert "scripts/train.sh" in script
    assert os.access(REPO / "scripts" / "train.sh", os.X_OK)


def test_early_stopping_and_the_best_checkpoint_follow_the_validation_loss(tmp_path):
    from dndllama.config import Config
    from dndllama.train import _State, _update

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    state, config = _State(), Config(patience=1)

    def checkpoint(name, step):
        (ckpt / name).write_bytes(b"gguf")
        return _update(state, {"event": "checkpoint", "checkpoint": str(ckpt / name), "step": step}, config, ckpt)

    assert _update(state, {"event": "eval", "val_loss": 3.0}, config, ckpt)
    checkpoint("epoch-1.gguf", 10)
    checkpoint("step-15.gguf", 15)                     # a resume point; the best stays epoch-1
    assert state.best_checkpoint.name == "epoch-1.gguf" and state.resume_from.name == "step-15.gguf"
    assert not _update(state, {"event": "eval", "val_loss": 3.2}, config, ckpt)   # worse: patience 1 spent
    assert state.best_checkpoint.exists() and sorted(p.name for p in ckpt.iterdir()) == ["epoch-1.gguf", "step-15.gguf"]


# ---- choosing by the task: checkpoint and quant type by replayed tool calls ----------------------

def test_checkpoint_and_quant_type_are_chosen_by_tool_calls(project):
    outcome, said = train(project, select_by="tool_f1", eval_every=2, max_steps=6)
    meta = outcome.version.metadata
    stages = next(line for line in said.splitlines() if line.startswith("time by stage: "))
    assert all(s in stages for s in ("training", "checkpoint choice", "quantization and its choice", "validation"))
    checkpoints = meta["selection"]["checkpoints"]
    assert [c["step"] for c in sorted(checkpoints, key=lambda c: c["step"])] == [2, 4, 6]   # one per evaluation
    assert sum(c["chosen"] for c in checkpoints) == 1
    best = max(checkpoints, key=lambda c: (c["exact_call_f1"], c["tool_name_f1"], -c["val_loss"]))
    assert best["chosen"] and f"{best['checkpoint']}: exact-call F1" in said

    quant = meta["selection"]["quant"]   # screened from Q8_0 down, 4 a pass, to the first pass with a type beyond it
    types = [q["type"] for q in quant]
    lossy = [q for q in quant if q["type"] != "F16"]
    assert [q["type"] for q in lossy] == ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"][:len(lossy)]
    assert len(lossy) in (4, 6) and (len(lossy) == 6 or not all(q["screened"] for q in lossy))   # stopped at a failure
    assert ("F16" in types) == (not any(q["screened"] for q in quant if q["type"] != "F16"))   # F16 only as a fallback
    assert all(q["mean_kl"] >= 0 and 0 <= q["top1_agreement"] <= 1 for q in quant)
    assert quant[types.index("Q8_0")]["mean_kl"] < quant[-1]["mean_kl"]   # Q8_0 drifts less than the smallest screened
    chosen = [q for q in quant if q["chosen"]]
    assert len(chosen) == 1 and chosen[0]["type"] == meta["quant"]["type"] == outcome.cactus["quant"]
    replayed = [q for q in quant if q["replayed"]]   # only the smallest type within the screen and the next larger
    assert chosen[0] in replayed and 1 <= len(replayed) <= 2 and all("tool_name_f1" in q for q in replayed)
    screened = [q for q in quant if q["screened"]]
    assert not screened or replayed[-1] == screened[-1]
    assert sorted(p.name for p in outcome.version.path.glob("*.gguf")) == [outcome.version.model.name]

    report = (outcome.version.path / "report.md").read_text()
    assert "## Checkpoint choice" in report and "## Quantization choice" in report and "mean KL vs F32" in report
    assert json.loads((outcome.version.path / "report.json").read_text())["choices"]["quant"] == quant

    again, said = train(project, select_by="tool_f1", eval_every=2, max_steps=6)   # all cached
    assert again.unchanged and again.version.name == outcome.version.name


def test_the_screen_stops_after_the_first_pass_with_a_type_beyond_it():
    from dndllama.selection import screen_down

    sizes = {"Q8_0": 9, "Q6_K": 7, "Q5_K_M": 6, "Q4_K_M": 5, "Q3_K_M": 4, "Q2_K": 3}
    quantized = []

    def files(qtype):   # the cap (8) drops Q8_0
        quantized.append(qtype)
        return None if sizes[qtype] > 8 else Path(qtype)

    def screen(passing):
        return lambda batch: [{"type": t, "screened": t in passing} for t, _ in batch]

    rows = screen_down(list(sizes), files, screen({"Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"}))
    assert [r["type"] for r in rows] == ["Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]   # 4 fitting a pass
    quantized.clear()
    rows = screen_down(list(sizes), files, screen({"Q6_K", "Q5_K_M"}))
    assert [r["type"] for r in rows] == ["Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"] and "Q2_K" not in quantized
    assert screen_down(["Q8_0"], files, screen(set())) == []   # nothing under the cap: nothing screened


def test_a_tight_loss_tolerance_keeps_the_larger_type(project):
    outcome, said = train(project, select_by="tool_f1", quant_loss_tolerance=0.0, quant_f1_tolerance=0.0)
    quant = outcome.version.metadata["selection"]["quant"]
    replayed = [q for q in quant if q["replayed"]]
    chosen, = [q for q in quant if q["chosen"]]
    if len(replayed) == 2:   # the smaller ships only when it gives up no F1 and no loss at all
        larger, smaller = replayed
        keeps = (smaller["tool_name_f1"] >= larger["tool_name_f1"]
                 and smaller["candidate_nll"] <= larger["candidate_nll"])   # the screen's loss
        assert chosen is (smaller if keeps else larger)


def test_the_best_evaluated_checkpoints_are_kept_as_candidates(tmp_path):
    from dndllama.config import Config
    from dndllama.train import _State, _update

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    state, config = _State(), Config(patience=0, checkpoint_candidates=2)
    for step, val_loss in ((10, 3.0), (20, 2.5), (30, 2.8), (40, 2.9)):
        _update(state, {"event": "eval", "val_loss": val_loss}, config, ckpt)
        (ckpt / f"step-{step}.gguf").write_bytes(b"gguf")
        _update(state, {"event": "checkpoint", "checkpoint": str(ckpt / f"step-{step}.gguf"), "step": step}, config, ckpt)
    (ckpt / "step-45.gguf").write_bytes(b"gguf")       # a resume point after no evaluation: no candidate
    _update(state, {"event": "checkpoint", "checkpoint": str(ckpt / "step-45.gguf"), "step": 45}, config, ckpt)
    assert [(loss, step) for loss, step, _ in state.candidates] == [(2.5, 20), (2.8, 30)]
    assert state.best_checkpoint.name == "step-20.gguf"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-20.gguf", "step-30.gguf", "step-45.gguf"]


# ---- LoRA and the memory plan ------------------------------------------------------------------

def test_lora_ships_the_merged_model_and_its_adapter(project, tiny_base):
    outcome, said = train(project, method="lora", lora_lr=1e-2)
    assert "method lora (set)" in said and "(LoRA rank 16)" in said
    version = outcome.version
    meta = version.metadata
    assert meta["training_settings"]["method"] == "lora" and meta["training"]["n_trainable"] < 200_000
    adapter = version.path / meta["adapter_file"]
    assert adapter.name == "dndllama-dm-v0001-lora.gguf"
    # the shipped GGUF (the merged model, quantized) answers like the base with the adapter on top
    tokens = native.Model(str(tiny_base)).tokenize("<start_of_turn>user\nroll perception", True, True)
    shipped = native.logits(str(version.model), tokens)
    assert np.abs(shipped - native.logits(str(tiny_base), tokens, str(adapter))).max() < 1e-2 * np.abs(shipped).max()
    assert np.abs(shipped - native.logits(str(tiny_base), tokens)).max() > 1e-2 * np.abs(shipped).max()
    if find_runtime_env("cactus-0.2") is not None:   # the app's May-2025 llama.cpp loads the adapter too
        assert meta["runtime_check"]["adapter"]["loaded"], meta["runtime_check"]["adapter"]
    again, said = train(project, method="lora", lora_lr=1e-2)
    assert again.unchanged
    # full fine-tuning is another training run, not the LoRA one reused
    full, said = train(project, method="full")
    assert "training: unchanged" not in said and full.version.metadata["adapter_file"] is None


def test_auto_method_and_the_plan(project, capsys):
    _, said = train(project)
    assert "method full (auto): it needs" in said   # a tiny model fits any machine
    flags = ["--data", str(project.data), "--base", project.settings["base"], "--cache-dir", project.settings["cache_dir"],
             "--ctx", "2048", "--models-dir", str(project.root / "planned")]
    assert main(["train", "--plan", *flags]) == 0
    out = capsys.readouterr().out
    assert "memory plan" in out and "full:" in out and "lora:" in out and "peak (estimate)" in out
    assert not (project.root / "planned").exists()   # a plan trains nothing


def test_the_plan_counts_logits_only_at_labelled_positions(project, tiny_base, capsys):
    """Patch 0013: a step holds logits only where a label is. The run's plan counts the fullest
    window's labelled positions; `--plan`, before the data is tokenized, every position."""
    from dndllama import plan
    from dndllama.gguf_header import read_header

    h, config = read_header(tiny_base), Config(ctx=512)
    every, some = plan.estimate(h, config, "full"), plan.estimate(h, config, "full", logit_rows=64)
    n_vocab = h.array_lengths["tokenizer.ggml.tokens"]
    assert every.total - some.total == plan.LOGIT_COPIES * (512 - 64) * n_vocab * 4
    assert plan.estimate(h, config, "full", logit_rows=10_000).total == every.total
    assert "logits (512 rows)" in plan.describe(h, config) and "an upper bound" in plan.describe(h, config)
    assert "logits (64 rows)" in plan.describe(h, config, logit_rows=64)


def test_a_base_with_a_projector_ships_it_inside_the_version(project, tiny_base, tmp_path):
    folder = tmp_path / "vision-base"
    folder.mkdir()
    model = folder / "tiny.gguf"
    shutil.copy(tiny_base, model)
    writer = gguf.GGUFWriter(str(folder / "mmproj-tiny-f16.gguf"), "clip")
    writer.add_tensor("v.patch_embd.weight", np.ones((4, 4), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    outcome, _ = train(project, base=str(model))
    shipped = outcome.version.path / "mmproj-tiny-f16.gguf"
    assert outcome.cactus["mmprojPath"] == str(shipped.resolve())   # the version's own copy, not the source
    assert shipped.read_bytes() == (folder / "mmproj-tiny-f16.gguf").read_bytes()
    assert "CactusVLM" in (outcome.version.path / "cactus.ts").read_text()
