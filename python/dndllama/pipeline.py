"""`dndllama train` from end to end: scenarios -> dataset -> training -> quantization -> checks ->
a new registry version and the app's Cactus config.

Every stage is keyed by a content hash of what it depends on, and its output is cached under that
key, so a rerun does only what changed:
  data key     scenario files (by content), tool vocabulary
  dataset key  data key, base model (its tokenizer), ctx, split, augmentation
  train key    dataset key, base model, training settings, warm-start parent, stage version
  export key   train key, quant type, size cap, runtime, app settings
  eval key     the evaluation folder's files (eval_data): part of the export key and of every
               judged result, since checkpoint choice, quant choice and the gate replay it
An unchanged rerun finds its export key on the newest version and stops in seconds. When data
was only added (no file changed or removed) and nothing else changed, training warm-starts from the
current version's weights and runs one epoch over all data (see docs/training.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import __version__, plan, registry
from .base import BaseModel, resolve_base
from .config import Config, ConfigError, validate
from .dataset import GEMMA_CHAT_TEMPLATE, Conversation, build_dataset, ctx_for, window_arrays, windows_and_cuts
from .evalset import EvalSet, EvalSetError, find_eval_dir, load_eval_set
from .ship_checks import check_chat_template, smoke_test
from .files import atomic_path, disk_free, read_json, write_json, write_text
from .quantize import LADDER_TYPES, QUANT_LADDER, CapError, QuantChoice, candidates, choose_quant, human_size
from .runtime_profiles import RuntimeCompatError
from .selection import Judge, choose_quant_screened, select_checkpoint, tool_scores
from .scenarios import ERROR, load_folder, scenario_files, skipped_links
from .tools import Vocabulary, load_vocabulary, render_tool_prompt
from .train import Arrays, TrainingError, TrainOutcome, adapter_of, matmul_precision, train_model
from .validate import make_report

STAGE_VERSION = 1            # bump when a stage's output changes meaning, to invalidate caches
EXPORT_VERSION = 3           # ... or only the export stages' (choosing, quantizing, checking, publishing)
LLAMA_CPP = "llama-cpp-python==0.3.36 vendor/llama.cpp"
WARM_START_EPOCHS = 1
KEPT_RUNS = 3
MAX_ERRORS_SHOWN = 20


class DataError(ValueError):
    """The scenarios cannot be trained on; the message lists file:line problems."""


class DiskFullError(OSError):
    """Not enough free space for the stage about to run."""


@dataclass
class Data:
    root: Path
    vocab: Vocabulary
    files: dict[str, str]          # relative path -> sha256 of its bytes
    train: list[Conversation]
    validation: list[Conversation]
    evaluation: EvalSet | None = None      # held-out scenarios (eval_data); None: use `validation`
    eval_note: str = ""                    # why there is no evaluation set, when one was asked for
    synthetic: int = 0             # how many of `train` are generated (dndllama.synth), not from files


@dataclass
class Outcome:
    version: registry.Version
    cactus: dict
    unchanged: bool = False
    promoted: bool = True


def code_version() -> str:
    """Stage outputs depend on the native code (patched llama.cpp + our C++) and the stage logic."""
    from . import _native

    return f"{STAGE_VERSION}:{_native.build_stamp[:16]}"


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stopwatch:
    """How long each stage of a run took; `dndllama train` prints it at the end (judging must stay
    cheaper than training, and a user deciding what to cut needs to see where the time went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def summary(self) -> str:
        parts = [f"{stage} {_duration(s)}" for stage, s in self.seconds.items()]
        return f"time by stage: {', '.join(parts)}; total {_duration(sum(self.seconds.values()))}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


# ---------------------------------------------------------------- the stages


def load_data(config: Config) -> Data:
    root = Path(config.data)
    if not root.is_dir():
        raise DataError(f"data folder '{root}' not found; pass --data with your scenario folder")
    files = scenario_files(root)
    if not files:
        raise DataError(f"no scenario files (*.md) under '{root}'; add scenarios (see docs/scenario-format.md)")
    vocab = load_vocabulary(root)
    check = load_folder(root, vocab)
    errors = [d for d in check.diagnostics if d.severity == ERROR]
    if errors:
        shown = "\n".join(f"  {d}" for d in sorted(errors, key=lambda d: (d.path, d.line))[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} error(s) in the scenarios; nothing was trained:\n{shown}{more}")
    split = build_dataset(check, config.val_fraction, augment_copies=config.augment, seed=config.seed)
    hashes = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    evaluation, note = load_evaluation(config, vocab, {s.digest for s in check.scenarios})
    synthetic = synthetic_train(config, split.train, vocab)
    return Data(root, vocab, hashes, split.train + synthetic, split.validation, evaluation=evaluation,
                eval_note=note, synthetic=len(synthetic))


def load_evaluation(config: Config, vocab: Vocabulary, training_digests: set[str]) -> tuple[EvalSet | None, str]:
    """The evaluation folder's scenarios, or None and a notice when it is missing (or "" asks for none)."""
    try:
        eval_dir, note = find_eval_dir(config.eval_data, config.data)
        return (load_eval_set(eval_dir, vocab, training_digests) if eval_dir else None), note
    except EvalSetError as exc:
        raise DataError(str(exc)) from None


def judged_conversations(data: Data) -> list[Conversation]:
    """What checkpoint choice, quant choice and the gate replay: the evaluation set when there is one."""
    return data.evaluation.conversations if data.evaluation else (data.validation or data.train)


def loss_conversations(data: Data) -> list[Conversation] | None:
    """The loss stays on the in-corpus split: over the whole evaluation set it costs ~9x the windows
    (253 against 28 of 768 tokens), and the replayed tool calls are what choose and gate."""
    return (data.validation or data.train) if data.evaluation else None


def eval_key(data: Data) -> str:
    return data.evaluation.key if data.evaluation else "in-corpus"


def synthetic_train(config: Config, train: list[Conversation], vocab: Vocabulary) -> list[Conversation]:
    """Generated conversations for the training split only (validation stays hand-written): config.synth
    synthetic DM messages per hand-written one. The generator reads no files, the evaluation folder least."""
    if not config.synth:
        return []
    from .synth import SynthError, training_conversations

    hand = sum(m.role == "assistant" for c in train if "#aug" not in c.scenario for m in c.messages)
    try:
        return training_conversations(config.synth, config.synth_seed, config.synth_loss, hand, vocab)
    except SynthError as exc:
        raise DataError(str(exc)) from None


def synth_settings(config: Config) -> tuple:
    """What the synthetic part of the dataset depends on; empty when off, so other keys do not move."""
    if not config.synth:
        return ()
    from .synth import SYNTH_VERSION

    return ("synth", config.synth, config.synth_seed, config.synth_loss, SYNTH_VERSION)


def dataset_cache_key(config: Config, data_key: str, base_sha256: str) -> str:
    return digest("dataset", data_key, base_sha256, config.ctx, config.val_fraction, config.augment,
                  config.seed, *synth_settings(config), code_version())


def vocabulary_fingerprint(vocab: Vocabulary) -> str:
    return digest(render_tool_prompt(vocab), repr(sorted(vocab.tools.items())))


def build_arrays(data: Data, base: BaseModel, config: Config, cache: Path, key: str, say) -> tuple[Arrays, dict]:
    """Token windows with DM-only labels, cached as .npz by the dataset key."""
    import numpy as np

    from . import _native

    path = cache / "datasets" / f"{key}.npz"
    if path.exists():
        with np.load(path) as z:
            arrays = Arrays(z["tokens"], z["labels"], z["val_tokens"], z["val_labels"])
        return arrays, read_json(path.with_suffix(".json"), {})
    tokenizer = _native.Model(str(base.gguf), vocab_only=True)
    pad = int(tokenizer.info().metadata.get("tokenizer.ggml.padding_token_id", 0))
    train, cut = windows_and_cuts(data.train, tokenizer, config.ctx)
    validation, cut_validation = windows_and_cuts(data.validation, tokenizer, config.ctx)
    cut += cut_validation
    if cut:
        shown = "\n".join(f"  {line}" for line in cut[:MAX_ERRORS_SHOWN])
        raise DataError(f"{len(cut)} exchange(s) do not fit the training window of {config.ctx} tokens; nothing was "
                        f"trained:\n{shown}\nraise ctx to {ctx_for(cut)} (--ctx or ctx in dndllama.toml) or split "
                        "the long DM turns")
    if not train:
        raise DataError("no training window has a DM token; add scenarios with DM turns")
    tokens, labels = window_arrays(train, config.ctx, pad)
    val_tokens, val_labels = window_arrays(validation, config.ctx, pad)
    stats = {"train_windows": len(train), "val_windows": len(validation), "truncated": 0,
             "train_targets": int((labels >= 0).sum()), "val_targets": int((val_labels >= 0).sum())}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:   # a file object: savez adds no suffix
        np.savez(f, tokens=tokens, labels=labels, val_tokens=val_tokens, val_labels=val_labels)
    write_json(path.with_suffix(".json"), stats)
    return Arrays(tokens, labels, val_tokens, val_labels), stats


def lineage(config: Config, base: BaseModel, data: Data, data_key: str) -> dict[str, str]:
    """GGUF metadata every output carries: template, name, and where it came from."""
    return {
        "general.name": config.name,
        "tokenizer.chat_template": GEMMA_CHAT_TEMPLATE,
        "dndllama.version": __version__,
        "dndllama.base": base.source,
        "dndllama.base_sha256": base.sha256,
        "dndllama.dataset_hash": data_key,
        "dndllama.config": json.dumps(config.training_settings(), sort_keys=True),
        "dndllama.tools": json.dumps(sorted(data.vocab.tools)),
        "dndllama.llama_cpp": LLAMA_CPP,
    }


def warm_start_parent(previous: registry.Version | None, data: Data, base: BaseModel, config: Config) -> dict | None:
    """The previous version's metadata when data was only added and nothing else changed."""
    if previous is None:
        return None
    meta = previous.metadata
    old_files = meta.get("data_files", {})
    only_added = old_files and len(data.files) > len(old_files) and all(
        data.files.get(path) == sha for path, sha in old_files.items())
    same = (meta.get("base", {}).get("sha256") == base.sha256
            and meta.get("training_settings") == config.training_settings())
    f32 = Path(meta.get("run_dir", "")) / "model-f32.gguf"
    return meta if only_added and same and f32.exists() else None


def ensure_disk(path: Path, need: int, what: str) -> None:
    free = disk_free(path)
    if free < need:
        raise DiskFullError(f"{what} needs about {human_size(need)} free under {path}, only {human_size(free)} "
                            "is free; free some space (dndllama cache clear removes old runs) and rerun")


# ---------------------------------------------------------------- the whole command


def run(config: Config, force: bool = False, quiet: bool = False, require_resume: bool = False,
        say: Callable[[str], None] = print) -> Outcome:
    t0 = time.monotonic()
    validate(config)   # a Config built in code meets the same checks as the CLI's
    stages = Stopwatch()
    cache, models_dir = Path(config.cache_dir).expanduser(), Path(config.models_dir)
    runtime = _runtime(config.runtime)
    try:   # an unknown type, or one the runtime lacks: refused before anything runs
        candidates(config.quant, runtime.supports_quant)
    except CapError as e:
        raise ConfigError(f"quant = {config.quant!r}: {e}") from None

    data = load_data(config)
    say(f"data: {len(data.files)} scenarios in {data.root} ({len(data.train) - data.synthetic} train, "
        f"{len(data.validation)} validation)"
        + (f", plus {data.synthetic} synthetic (synth {config.synth:g}, seed {config.synth_seed}, "
           f"loss on {config.synth_loss})" if data.synthetic else ""))
    say(f"evaluation: {data.evaluation.describe()}" if data.evaluation else data.eval_note
        or "evaluation: eval_data is off; choosing and gating on the in-corpus validation split")
    for rel, what in skipped_links(data.root):
        say(f"warning: {data.root / rel}: {what}")
    base = resolve_base(config.base, cache, say, runtime.check_architecture)
    check_cap_reachable(base.header, config, runtime)
    config, why = plan.resolve(config, base.header)
    say(why)
    data_key = digest("data", sorted(data.files.items()), vocabulary_fingerprint(data.vocab))
    dataset_key = dataset_cache_key(config, data_key, base.sha256)
    for line in registry.repair(models_dir):
        say(f"repaired: {line}")
    previous = registry.current(models_dir)
    parent = None if force else warm_start_parent(previous, data, base, config)
    train_key = digest("train", dataset_key, base.sha256, config.training_settings(), config.name,
                       parent and parent["train_key"], code_version())
    export_key = digest("export", train_key, config.quant, config.size_cap_bytes, config.runtime, config.app_ctx,
                        config.sampling, config.validate_turns, config.validate_max_tokens, config.gate,
                        config.min_f1_gain, config.select_by, config.quant_f1_tolerance,
                        config.quant_loss_tolerance, EXPORT_VERSION, code_version(), eval_key(data))

    latest = (registry.versions(models_dir) or [None])[-1]
    if not force and latest and latest.metadata.get("export_key") == export_key and latest.model.exists():
        promoted = previous is not None and previous.name == latest.name
        say(f"nothing changed since {latest.name} (data, base and settings are the same): "
            f"checked in {time.monotonic() - t0:.1f} s; use --force to retrain")
        return Outcome(latest, read_json(latest.path / registry.CACTUS_CONFIG, {}), unchanged=True,
                       promoted=promoted)

    stages.lap("data and base")
    arrays, stats = build_arrays(data, base, config, cache, dataset_key, say)
    stages.lap("dataset")
    say(f"dataset: {stats['train_windows']} training and {stats['val_windows']} validation windows of "
        f"{config.ctx} tokens, {stats['train_targets']} DM target tokens")

    run_dir = cache / "runs" / train_key
    if require_resume and not (run_dir / "checkpoints").is_dir():
        raise TrainingError("--resume: no interrupted run for this data and these settings; "
                            "leave out --resume to start one")
    trained = _train_stage(config, base, data, data_key, arrays, run_dir, parent, force, quiet, say)
    stages.lap("training")

    judge = Judge(judged_conversations(data), data.vocab, validation_settings(config), run_dir / "judged",
                  scope=eval_key(data), loss_conversations=loss_conversations(data))
    by_task = config.select_by == "tool_f1"
    checkpoint, checkpoint_rows = trained.model, []
    if by_task:
        checkpoint, checkpoint_rows = select_checkpoint(run_dir, _candidates(trained), judge, say)
        stages.lap("checkpoint choice")
    choice, quant_rows = quantize_stage(config, runtime, checkpoint, run_dir, judge if by_task else None, say)
    stages.lap("quantization" + (" and its choice" if by_task else ""))

    adapter = adapter_of(checkpoint) if config.method == "lora" else None
    return _ship(config, base, data, data_key, stats, trained, choice, adapter, run_dir, models_dir, cache,
                 {"data": data_key, "dataset": dataset_key, "train": train_key, "export": export_key},
                 previous, parent, judge, {"checkpoints": checkpoint_rows, "quant": quant_rows}, stages, say)


def check_cap_reachable(header, config: Config, runtime) -> None:
    """Refuse, before training, a size cap that even the smallest allowed quant type cannot meet.
    The estimate (parameters x bits per weight) is a lower bound: llama.cpp keeps some tensors
    wider, so a cap it passes may still be missed after training, with CapError then."""
    allowed = candidates(config.quant, runtime.supports_quant)
    bits = min(b for t, b in QUANT_LADDER if t in allowed) if set(allowed) <= set(LADDER_TYPES) else None
    n_params = sum(t.n for t in header.tensors.values())
    if bits is None or not n_params:
        return
    smallest = int(n_params * bits / 8)
    if smallest > config.size_cap_bytes:
        raise CapError(f"the size cap {human_size(config.size_cap_bytes)} is below what {allowed[-1]} makes of this "
                       f"base ({n_params / 1e6:.1f}M parameters: about {human_size(smallest)}); nothing was trained. "
                       "Raise --size-cap, choose another --quant, or use a smaller base model")


def memory_plan(config: Config, say: Callable[[str], None] = print) -> str:
    """`dndllama train --plan`: the memory plan of both methods for the configured base."""
    base = resolve_base(config.base, Path(config.cache_dir).expanduser(), say)
    return plan.describe(base.header, config)


def _candidates(trained: TrainOutcome) -> list[dict]:
    from .train import MODEL_FILE

    return trained.summary.get("candidates") or [{"file": MODEL_FILE, "checkpoint": MODEL_FILE, "step": None,
                                                  "val_loss": trained.summary.get("best_val_loss")}]


def quantize_stage(config: Config, runtime, checkpoint: Path, run_dir: Path, judge: Judge | None,
                   say) -> tuple[QuantChoice, list[dict]]:
    """The quant type under the cap. With a judge: every type under the cap is screened by one
    teacher-forced divergence pass against the checkpoint (selection.screen_quants); only the smallest
    type within the screen's tolerance and the next larger one are replayed, and the smaller ships when
    it keeps the tool calls of the larger (selection.quality_within). Returns the choice and every
    type's figures."""
    ensure_disk(run_dir, checkpoint.stat().st_size // 2, "quantization")
    types = candidates(config.quant, runtime.supports_quant)
    out_dir = run_dir / "quant" / checkpoint.stem
    if judge is None or len(types) < 2:
        choice = choose_quant(checkpoint, out_dir, config.size_cap_bytes, types, config.threads, say)
        say(f"quantization: {choice.reason}")
        return choice, []
    choice, rows = choose_quant_screened(checkpoint, out_dir, config.size_cap_bytes, types, config.threads, judge,
                                         config.ctx, config.quant_f1_tolerance, config.quant_loss_tolerance, say)
    say(f"quantization: {choice.reason}")
    return choice, rows


def _train_stage(config, base, data, data_key, arrays, run_dir, parent, force, quiet, say) -> TrainOutcome:
    from .train import MODEL_FILE, PLOT_FILE, LOG_FILE, SUMMARY_FILE

    model = run_dir / MODEL_FILE
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if model.exists():
        say("training: unchanged since the last run, reusing its weights")
        plot = run_dir / PLOT_FILE
        return TrainOutcome(model, read_json(run_dir / SUMMARY_FILE, {}), run_dir / LOG_FILE,
                            plot if plot.exists() else None)
    start, adapter = base.train_path, None
    if config.method == "lora" and plan.estimate(base.header, config, "lora").weights_from == "as stored":
        start = base.gguf   # the F32 copy does not fit: LoRA on the base as stored (QLoRA)
    if parent:
        if config.method == "lora":   # the adapter stays relative to the base, so it can be swapped in
            adapter = adapter_of(Path(parent["run_dir"]) / MODEL_FILE)
        else:
            start = Path(parent["run_dir"]) / MODEL_FILE
        config = replace(config, epochs=WARM_START_EPOCHS)
        say(f"training: data was only added since {parent['version']}: warm start from its weights, "
            f"{WARM_START_EPOCHS} epoch over all data")
    ensure_disk(run_dir, 3 * start.stat().st_size, "training (two checkpoints and the final model)")
    how = f"LoRA rank {config.lora_rank}" if config.method == "lora" else "full fine-tuning"
    say(f"training {base.arch} from {start.name} ({how}): ctx {config.ctx}, lr {config.learning_rate}, "
        f"{config.epochs} epoch(s){f', at most {config.max_steps} steps' if config.max_steps else ''}, "
        f"matrix products in {matmul_precision(config).upper()}")
    outcome = train_model(start, arrays, config, run_dir, lineage(config, base, data, data_key), quiet, say, adapter)
    s = outcome.summary
    say(f"training done: {s['steps']} steps, loss {_fmt(s['first_loss'])} -> {_fmt(s['final_loss'])}, "
        f"best validation loss {_fmt(s['best_val_loss'])} ({s['chosen_checkpoint']})"
        + (", stopped early" if s["stopped_early"] else "")
        + (f", {s['tokens_per_s']:.0f} tokens/s with evaluations" if s.get("tokens_per_s") else ""))
    return outcome


def _ship(config, base, data, data_key, stats, trained, choice: QuantChoice, adapter: Path | None, run_dir,
          models_dir, cache, keys, previous, parent, judge: Judge, choices: dict, stages: Stopwatch,
          say) -> Outcome:
    """Check the quantized model, then publish it as a new version and make it current."""
    from . import _native
    from .cactus import cactus_config
    from .snippets import cactus_ts, llama_rn_ts
    from .validate import gate, write_report

    model = _native.Model(str(choice.path))
    checked = check_chat_template(model, data.validation or data.train, config.ctx)
    say(f"chat template: the GGUF's template gives the training tokens exactly ({checked} conversations)")
    smoke = smoke_test(model, (data.validation or data.train)[0], config.app_ctx)
    say(f"loads and answers: {smoke.reply[:100]!r} ({smoke.gen_tokens_per_s:.0f} tokens/s)")
    runtime_check = old_runtime_check(model, choice.path, (data.validation or data.train)[0], config, say)
    if adapter:
        runtime_check["adapter"] = adapter_runtime_check(base, adapter, (data.validation or data.train)[0], config, say)
    del model
    stages.lap("checks")
    report = validate_stage(config, base, data, choice.path, trained.log, cache, keys["dataset"], judge, choices, say)
    stages.lap("validation")
    passed, verdict = gate(report, config.min_f1_gain)

    name, staged = registry.stage(models_dir)
    model_file = f"{config.name}-{name}-{choice.type.lower()}.gguf"
    _link_or_copy(choice.path, staged / model_file)
    adapter_file = None
    if adapter:   # small and hot-swappable: the app may load it over the base instead
        adapter_file = f"{config.name}-{name}-lora.gguf"
        _link_or_copy(adapter, staged / adapter_file)
    for extra in (trained.log, trained.plot):
        if extra and extra.exists():
            shutil.copy2(extra, staged / extra.name)
    final_model = models_dir / name / model_file
    mmproj = None
    if base.mmproj:   # the version folder holds everything the app loads, whatever happens to the cache
        _link_or_copy(base.mmproj, staged / base.mmproj.name)
        mmproj = models_dir / name / base.mmproj.name
    cactus = cactus_config(final_model, mmproj, config, data.vocab, choice.type, name)
    write_json(staged / registry.CACTUS_CONFIG, cactus)
    if cactus["grammar"]:   # the app's completion grammar, also as a file of its own
        write_text(staged / cactus["grammarFile"], cactus["grammar"])
    write_text(staged / "cactus.ts", cactus_ts(cactus))
    write_text(staged / "llama.rn.ts", llama_rn_ts(cactus))
    # the report names the file as published, not its place in the cache
    write_report(replace(report, model=replace(report.model, path=str(final_model))), staged, train_log=trained.log)
    write_json(staged / registry.METADATA, {
        "name": config.name, "version": name, "model_file": model_file, "adapter_file": adapter_file,
        "parent": previous.name if previous else None,
        "warm_start_from": parent["version"] if parent else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": {"source": base.source, "arch": base.arch, "sha256": base.sha256,
                 "mmproj": str(base.mmproj) if base.mmproj else None},
        "dataset_hash": keys["data"], "data_files": data.files, "dataset": stats,
        "train_key": keys["train"], "export_key": keys["export"], "run_dir": str(run_dir),
        "training": trained.summary, "training_settings": config.training_settings(),
        "quant": {"type": choice.type, "size": choice.size, "reason": choice.reason, "tried": choice.tried,
                  "size_cap": config.size_cap_bytes},
        "runtime": config.runtime, "runtime_check": runtime_check,
        "template_check": {"conversations": checked, "identical": True},
        "smoke_test": {"reply": smoke.reply, "gen_tokens_per_s": smoke.gen_tokens_per_s},
        "validation": validation_summary(report), "gate": {"passed": passed, "reason": verdict},
        "selection": {"by": config.select_by, "quant_f1_tolerance": config.quant_f1_tolerance,
                      "quant_loss_tolerance": config.quant_loss_tolerance, **choices},
        "tools": sorted(data.vocab.tools), "config": config.to_dict(),
        "dndllama": __version__, "llama_cpp": LLAMA_CPP,
    })
    version = registry.commit(models_dir, staged, name)
    prune_runs(run_dir.parent, keep=run_dir)
    stages.lap("publishing")
    say(stages.summary())
    if not passed and config.gate:
        say(f"quality gate failed: {verdict}. {name} is kept but not promoted; "
            f"promote it anyway with: dndllama models use {name}")
        return Outcome(version, cactus, promoted=False)
    say(f"quality gate {'passed' if passed else 'off (would have failed)'}: {verdict}")
    return Outcome(registry.set_current(models_dir, name), cactus)


def validation_settings(config: Config) -> dict:
    return dict(max_tokens=config.validate_max_tokens, n_ctx=config.app_ctx, loss_ctx=config.ctx, seed=config.seed,
                max_turns=config.validate_turns or None, n_threads=config.threads, n_gpu_layers=config.gpu_layers,
                grammar=config.grammar)   # judged as the app decodes: with the grammar it ships


def validate_stage(config: Config, base: BaseModel, data: Data, model: Path, train_log: Path, cache: Path,
                   dataset_key: str, judge: Judge, choices: dict, say):
    """The shipped file's validation (already done if it was judged) next to the base model's (cached
    across runs: it only changes with the base, the data and these settings)."""
    conversations = judged_conversations(data)
    settings = validation_settings(config)
    which = "evaluation" if data.evaluation else "validation"
    say(f"validating on {config.validate_turns or 'all'} DM turns of {len(conversations)} {which} scenarios ...")
    result = judge(model)
    baselines = Judge(conversations, data.vocab, settings, cache / "baselines",
                      scope=digest(base.sha256, dataset_key, code_version(), eval_key(data)),
                      loss_conversations=loss_conversations(data))
    if not baselines.cached(base.gguf):
        say(f"validating the base model {base.gguf.name} as the baseline (once) ...")
    baseline = baselines(base.gguf, label="baseline")
    report = make_report(result, baseline, conversations, settings, train_log, choices)
    if data.evaluation:
        report.settings["loss_on"] = f"{len(loss_conversations(data))} in-corpus validation scenarios"
    return report


def validation_summary(report) -> dict:
    pick = lambda r: {**tool_scores(r), "loss": r.loss.loss, "turns": len(r.turns)}  # noqa: E731
    return {"model": pick(report.model), "baseline": pick(report.baseline) if report.baseline else None}


def prune_runs(runs: Path, keep: Path, count: int = KEPT_RUNS) -> None:
    """Cached runs hold ~4 bytes per parameter: keep the newest few (warm starts and requantizing
    use them); shipped models live on in models/, so nothing is lost."""
    old = sorted((p for p in runs.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime)
    for run in old[: max(0, len(old) - (count - 1))]:
        shutil.rmtree(run, ignore_errors=True)


def old_runtime_check(model, path: Path, conversation: Conversation, config: Config, say) -> dict:
    """Load the GGUF in the app's own (older) llama.cpp, when that runtime is installed, and check it
    renders the first prompt exactly as training did and answers. Refuses to ship on failure."""
    from .app_runtime import check_runtime, find_runtime_env, report_json
    from .ship_checks import first_prompt

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


def adapter_runtime_check(base: BaseModel, adapter: Path, conversation: Conversation, config: Config, say) -> dict:
    """Load the LoRA adapter over the base in the app's llama.cpp, as its `lora` option would. The
    merged model is what ships, so a failure here is reported, not fatal."""
    from .app_runtime import check_runtime, find_runtime_env
    from .ship_checks import first_exchange

    if not config.runtime.startswith("cactus") or find_runtime_env(config.runtime) is None:
        return {"skipped": "the app's runtime is not installed"}
    messages = first_exchange(conversation.messages)[:-1]
    report = check_runtime(base.gguf, config.runtime, messages, n_ctx=config.app_ctx, max_tokens=8, lora=adapter)
    if report.loaded and not report.error:
        say(f"{config.runtime} ({report.runtime_version}) loads the LoRA adapter over {base.gguf.name} and answers")
        return {"loaded": True, "generated_tokens": report.generated_tokens}
    say(f"warning: {config.runtime} could not use the LoRA adapter over {base.gguf.name}: {report.error}; "
        "the merged model is unaffected")
    return {"loaded": False, "error": report.error}


def _runtime(name: str):
    from .runtime_profiles import load_runtime

    return load_runtime(name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)   # same file system: no second copy of a large model
    except OSError:
        shutil.copy2(src, dst)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"

