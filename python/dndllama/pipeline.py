"""`dndllama train` from end to end, one function per row of docs/training.md's stage table:

  data, base        prepare: corpus.load_data (scenarios parsed, checked, split; the evaluation
                    folder), base.resolve_base (the base model, as F32 for training), every key
  dataset           dataset_stage: corpus.build_arrays, token windows with DM-only labels
  train             train_stage: train_weights, native fine-tuning (a warm start when data was only added)
  choose checkpoint choose_and_quantize: selection.select_checkpoint, the candidate that calls the tools best
  quantize          ... then quantize_stage, the smallest type under the cap that keeps the tool calls
  check + ship      check_stage (ship_checks.check_model, the validation report, the gate), then
                    publish.publish (a new registry version, current when the gate passed)

Every stage is keyed by a content hash of what it depends on (training_run.Keys), and its output is
cached under that key, so a rerun does only what changed. An unchanged rerun finds its export key on
the newest version and stops in seconds. When data was only added (no file changed or removed) and
nothing else changed, training warm-starts from the current version's weights and runs one epoch
over all data (see docs/training.md).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import __version__, plan, registry
from .base import BaseModel, resolve_base
from .config import Config, ConfigError, validate
from .corpus import (Data, DataError, build_arrays, describe, eval_key,  # noqa: F401
                     judged_conversations, load_data, loss_conversations, synth_settings)
from .dataset import GEMMA_CHAT_TEMPLATE
from .files import disk_free, read_json
from .publish import Built, Checked, Outcome, publish
from .quantize import LADDER_TYPES, QUANT_LADDER, CapError, QuantChoice, candidates, choose_quant, human_size
from .report import fmt_value
from .scenarios import skipped_links
from .selection import Judge, choose_quant_screened, select_checkpoint
from .ship_checks import check_model
from .train import Arrays, TrainingError, TrainOutcome, adapter_of, matmul_precision, train_model
from .training_run import (LLAMA_CPP, Keys, Run, Stopwatch, code_version, data_cache_key,  # noqa: F401
                           dataset_cache_key, digest, vocabulary_fingerprint)
from .validate import gate, make_report

# Also imported from here, by the CLI, scripts/sweep.py and tests: DataError, load_data, build_arrays,
# judged_conversations, eval_key, synth_settings, digest, code_version, data_cache_key,
# dataset_cache_key, vocabulary_fingerprint, validation_settings, train_weights.

WARM_START_EPOCHS = 1


class DiskFullError(OSError):
    """Not enough free space for the stage about to run."""


def run(config: Config, force: bool = False, quiet: bool = False, require_resume: bool = False,
        say: Callable[[str], None] = print) -> Outcome:
    """The stages in order; each reuses its cached output when its key is unchanged."""
    started = time.monotonic()
    job = prepare(config, force, say)                       # data, base; every stage's key
    done = unchanged(job, started)                          # the newest version has this export key
    if done:
        return done
    job.stages.lap("data and base")
    arrays, stats = dataset_stage(job)                      # token windows with DM-only labels
    trained = train_stage(job, arrays, require_resume, quiet)
    judge = make_judge(job)
    built = choose_and_quantize(job, stats, trained, judge)  # choose checkpoint, quantize
    return publish(job, built, check_stage(job, built, judge))


def prepare(config: Config, force: bool, say: Callable[[str], None]) -> Run:
    """The data and base stages, the resolved config and every stage's key; refuses settings the
    runtime or the size cap cannot meet before anything is trained."""
    validate(config)   # a Config built in code meets the same checks as the CLI's
    stages = Stopwatch()
    cache, models_dir = Path(config.cache_dir).expanduser(), Path(config.models_dir)
    runtime = _runtime(config.runtime)
    try:   # an unknown type, or one the runtime lacks: refused before anything runs
        candidates(config.quant, runtime.supports_quant)
    except CapError as e:
        raise ConfigError(f"quant = {config.quant!r}: {e}") from None
    data = load_data(config)
    for line in describe(data, config):
        say(line)
    for rel, what in skipped_links(data.root):
        say(f"warning: {data.root / rel}: {what}")
    base = resolve_base(config.base, cache, say, runtime.check_architecture)
    check_cap_reachable(base.header, config, runtime)
    # the token windows (cached by a key the method does not enter) say how many logit rows a step holds
    arrays, stats = build_arrays(data, base, config, cache, dataset_cache_key(config, data_cache_key(data), base.sha256),
                                 say)
    config, why = plan.resolve(config, base.header, stats.get("max_window_targets"))
    say(why)
    for line in registry.repair(models_dir):
        say(f"repaired: {line}")
    previous = registry.current(models_dir)
    parent = None if force else warm_start_parent(previous, data, base, config)
    return Run(config=config, base=base, data=data, runtime=runtime, keys=Keys.of(config, data, base, parent),
               cache=cache, models_dir=models_dir, previous=previous, parent=parent, force=force, say=say,
               stages=stages, windows=(arrays, stats))


def unchanged(job: Run, started: float) -> Outcome | None:
    """The newest version already has this export key (its file still there): nothing to do."""
    latest = (registry.versions(job.models_dir) or [None])[-1]
    if job.force or not latest or latest.metadata.get("export_key") != job.keys.export or not latest.model.exists():
        return None
    promoted = job.previous is not None and job.previous.name == latest.name
    job.say(f"nothing changed since {latest.name} (data, base and settings are the same): "
            f"checked in {time.monotonic() - started:.1f} s; use --force to retrain")
    return Outcome(latest, read_json(latest.path / registry.CACTUS_CONFIG, {}), unchanged=True, promoted=promoted)


def dataset_stage(job: Run) -> tuple[Arrays, dict]:
    arrays, stats = job.windows   # built by prepare (the memory plan counts their labelled rows)
    job.stages.lap("dataset")
    job.say(f"dataset: {stats['train_windows']} training and {stats['val_windows']} validation windows of "
            f"{job.config.ctx} tokens, {stats['train_targets']} DM target tokens")
    return arrays, stats


def train_stage(job: Run, arrays: Arrays, require_resume: bool, quiet: bool) -> TrainOutcome:
    if require_resume and not (job.run_dir / "checkpoints").is_dir():
        raise TrainingError("--resume: no interrupted run for this data and these settings; "
                            "leave out --resume to start one")
    trained = train_weights(job.config, job.base, job.data, job.keys.data, arrays, job.run_dir, parent=job.parent,
                            force=job.force, quiet=quiet, say=job.say)
    job.stages.lap("training")
    return trained


def choose_and_quantize(job: Run, stats: dict, trained: TrainOutcome, judge: Judge) -> Built:
    """The choose-checkpoint and quantize stages: with select_by = "tool_f1" both replay the judged
    turns (the judge caches each file's result); with "loss" the final model and the cap decide."""
    by_task = job.config.select_by == "tool_f1"
    checkpoint, checkpoint_rows = trained.model, []
    if by_task:
        checkpoint, checkpoint_rows = select_checkpoint(job.run_dir, _candidates(trained), judge, job.say)
        job.stages.lap("checkpoint choice")
    choice, quant_rows = quantize_stage(job.config, job.runtime, checkpoint, job.run_dir,
                                        judge if by_task else None, job.say)
    job.stages.lap("quantization" + (" and its choice" if by_task else ""))
    adapter = adapter_of(checkpoint) if job.config.method == "lora" else None
    return Built(stats, trained, choice, adapter, {"checkpoints": checkpoint_rows, "quant": quant_rows})


def check_stage(job: Run, built: Built, judge: Judge) -> Checked:
    """The shipped file's checks (ship_checks), its validation report against the base, the gate."""
    checks = check_model(built.choice.path, job.base.gguf, built.adapter, job.data.in_corpus, job.config, job.say)
    job.stages.lap("checks")
    report = validate_stage(job, built.choice.path, built.trained.log, judge, built.selection)
    job.stages.lap("validation")
    passed, verdict = gate(report, job.config.min_f1_gain)
    return Checked(checks, report, passed, verdict)


# ---------------------------------------------------------------- the stages


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


def train_weights(config: Config, base: BaseModel, data: Data, data_key: str, arrays: Arrays, run_dir: Path, *,
                  parent: dict | None = None, force: bool = False, quiet: bool = False,
                  say: Callable[[str], None] = print) -> TrainOutcome:
    """Train (or reuse the weights of an earlier run with the same train key) into run_dir. Takes its
    inputs one by one, not a Run, so scripts/sweep.py can train into folders of its own."""
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
    say(f"training done: {s['steps']} steps, loss {fmt_value(s['first_loss'])} -> {fmt_value(s['final_loss'])}, "
        f"best validation loss {fmt_value(s['best_val_loss'])} ({s['chosen_checkpoint']})"
        + (", stopped early" if s["stopped_early"] else "")
        + (f", {s['tokens_per_s']:.0f} tokens/s with evaluations" if s.get("tokens_per_s") else ""))
    return outcome


def _candidates(trained: TrainOutcome) -> list[dict]:
    from .train import MODEL_FILE

    return trained.summary.get("candidates") or [{"file": MODEL_FILE, "checkpoint": MODEL_FILE, "step": None,
                                                  "val_loss": trained.summary.get("best_val_loss")}]


def quantize_stage(config: Config, runtime, checkpoint: Path, run_dir: Path, judge: Judge | None,
                   say) -> tuple[QuantChoice, list[dict]]:
    """The quant type under the cap. With a judge: the types under the cap are screened by teacher-forced
    divergence against the checkpoint, from the largest down to the first beyond the screen
    (selection.choose_quant_screened); only the smallest type within the screen's tolerance and the next
    larger one are replayed, and the smaller ships when it keeps the tool calls of the larger
    (selection.quality_within). Returns the choice and every screened type's figures."""
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


def validation_settings(config: Config) -> dict:
    return dict(max_tokens=config.validate_max_tokens, n_ctx=config.app_ctx, loss_ctx=config.ctx, seed=config.seed,
                max_turns=config.validate_turns or None, n_threads=config.threads, n_gpu_layers=config.gpu_layers,
                grammar=config.grammar)   # judged as the app decodes: with the grammar it ships


def make_judge(job: Run) -> Judge:
    """Replays (and caches under the run) the judged turns through any file of this run."""
    return Judge(judged_conversations(job.data), job.data.vocab, validation_settings(job.config),
                 job.run_dir / "judged", scope=eval_key(job.data), loss_conversations=loss_conversations(job.data))


def validate_stage(job: Run, model: Path, train_log: Path, judge: Judge, choices: dict):
    """The shipped file's validation (already done if it was judged) next to the base model's (cached
    across runs: it only changes with the base, the scenario files, their split and these settings)."""
    config, data = job.config, job.data
    conversations = judged_conversations(data)
    settings = validation_settings(config)
    which = "evaluation" if data.evaluation else "validation"
    job.say(f"validating on {config.validate_turns or 'all'} DM turns of {len(conversations)} {which} scenarios ...")
    result = judge(model)
    # keyed by what the base's replay and loss read: not the training windows (synth, augment), so a
    # run with other training settings does not replay the base again; a corpus too small for a
    # validation split is judged on its training split, which holds those windows
    read = job.keys.data if data.validation else job.keys.dataset
    baselines = Judge(conversations, data.vocab, settings, job.cache / "baselines",
                      scope=digest(job.base.sha256, read, config.val_fraction, code_version(), eval_key(data)),
                      loss_conversations=loss_conversations(data))
    if not baselines.cached(job.base.gguf):
        job.say(f"validating the base model {job.base.gguf.name} as the baseline (once) ...")
    baseline = baselines(job.base.gguf, label="baseline")
    report = make_report(result, baseline, conversations, settings, train_log, choices)
    if data.evaluation:
        report.settings["loss_on"] = f"{len(loss_conversations(data))} in-corpus validation scenarios"
    return report


def _runtime(name: str):
    from .runtime_profiles import load_runtime

    return load_runtime(name)

