"""The publish stage of `dndllama train`: a checked model becomes a new registry version (its GGUF,
the LoRA adapter, the app's configs and snippets, the report, the training log and `metadata.json`),
made current when the quality gate passes. `version_metadata` is the one place that says what a
version records.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, registry
from .files import write_json, write_text
from .quantize import QuantChoice
from .selection import tool_scores
from .ship_checks import ShipChecks
from .train import TrainOutcome
from .training_run import LLAMA_CPP, Run
from .validate import Report, write_report

KEPT_RUNS = 3


@dataclass
class Outcome:
    version: registry.Version
    cactus: dict
    unchanged: bool = False
    promoted: bool = True


@dataclass
class Built:
    """What the dataset, training, choice and quantization stages made of a run."""
    stats: dict                  # the dataset's window and target counts
    trained: TrainOutcome
    choice: QuantChoice          # the quantized file that ships
    adapter: Path | None         # the LoRA adapter of the chosen checkpoint (method "lora")
    selection: dict              # {"checkpoints": rows, "quant": rows}: how they were chosen


@dataclass
class Checked:
    checks: ShipChecks
    report: Report               # the shipped file's validation next to the base model's
    passed: bool                 # the quality gate's verdict
    verdict: str


@dataclass
class Files:
    """The names the version folder gives what it holds."""
    version: str
    model: str
    adapter: str | None


def publish(run: Run, built: Built, checked: Checked) -> Outcome:
    """Write the new version, then make it current unless the quality gate failed."""
    name, staged = registry.stage(run.models_dir)
    files = Files(name, f"{run.config.name}-{name}-{built.choice.type.lower()}.gguf",
                  f"{run.config.name}-{name}-lora.gguf" if built.adapter else None)
    final_model = run.models_dir / name / files.model
    cactus = stage_files(run, built, files, staged, final_model)
    # the report names the file as published, not its place in the cache
    report = checked.report
    write_report(replace(report, model=replace(report.model, path=str(final_model))), staged,
                 train_log=built.trained.log)
    write_json(staged / registry.METADATA, version_metadata(run, built, checked, files))
    version = registry.commit(run.models_dir, staged, name)
    prune_runs(run.run_dir.parent, keep=run.run_dir)
    run.stages.lap("publishing")
    run.say(run.stages.summary())
    if not checked.passed and run.config.gate:
        run.say(f"quality gate failed: {checked.verdict}. {name} is kept but not promoted; "
                f"promote it anyway with: dndllama models use {name}")
        return Outcome(version, cactus, promoted=False)
    run.say(f"quality gate {'passed' if checked.passed else 'off (would have failed)'}: {checked.verdict}")
    return Outcome(registry.set_current(run.models_dir, name), cactus)


def stage_files(run: Run, built: Built, files: Files, staged: Path, final_model: Path) -> dict:
    """Everything the app loads, into the staged version folder; returns the Cactus config."""
    from .cactus import cactus_config
    from .snippets import cactus_ts, llama_rn_ts

    _link_or_copy(built.choice.path, staged / files.model)
    if built.adapter:   # small and hot-swappable: the app may load it over the base instead
        _link_or_copy(built.adapter, staged / files.adapter)
    for extra in (built.trained.log, built.trained.plot):
        if extra and extra.exists():
            shutil.copy2(extra, staged / extra.name)
    mmproj = None
    if run.base.mmproj:   # the version folder holds everything the app loads, whatever happens to the cache
        _link_or_copy(run.base.mmproj, staged / run.base.mmproj.name)
        mmproj = run.models_dir / files.version / run.base.mmproj.name
    cactus = cactus_config(final_model, mmproj, run.config, run.data.vocab, built.choice.type, files.version)
    write_json(staged / registry.CACTUS_CONFIG, cactus)
    if cactus["grammar"]:   # the app's completion grammar, also as a file of its own
        write_text(staged / cactus["grammarFile"], cactus["grammar"])
    write_text(staged / "cactus.ts", cactus_ts(cactus))
    write_text(staged / "llama.rn.ts", llama_rn_ts(cactus))
    return cactus


def version_metadata(run: Run, built: Built, checked: Checked, files: Files) -> dict:
    """metadata.json: where the version came from (data, base, keys, parent), how it was trained,
    chosen and checked. The export key finds an unchanged rerun; data_files and training_settings
    decide a warm start; run_dir finds its weights."""
    config, base, choice, checks = run.config, run.base, built.choice, checked.checks
    return {
        "name": config.name, "version": files.version, "model_file": files.model, "adapter_file": files.adapter,
        "parent": run.previous.name if run.previous else None,
        "warm_start_from": run.parent["version"] if run.parent else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": {"source": base.source, "arch": base.arch, "sha256": base.sha256,
                 "mmproj": str(base.mmproj) if base.mmproj else None},
        "dataset_hash": run.keys.data, "data_files": run.data.files, "dataset": built.stats,
        "train_key": run.keys.train, "export_key": run.keys.export, "run_dir": str(run.run_dir),
        "training": built.trained.summary, "training_settings": config.training_settings(),
        "quant": {"type": choice.type, "size": choice.size, "reason": choice.reason, "tried": choice.tried,
                  "size_cap": config.size_cap_bytes},
        "runtime": config.runtime, "runtime_check": checks.runtime,
        "template_check": {"conversations": checks.template_conversations, "identical": True},
        "smoke_test": {"reply": checks.smoke.reply, "gen_tokens_per_s": checks.smoke.gen_tokens_per_s},
        "validation": validation_summary(checked.report), "gate": {"passed": checked.passed, "reason": checked.verdict},
        "selection": {"by": config.select_by, "quant_f1_tolerance": config.quant_f1_tolerance,
                      "quant_loss_tolerance": config.quant_loss_tolerance, **built.selection},
        "tools": sorted(run.data.vocab.tools), "config": config.to_dict(),
        "dndllama": __version__, "llama_cpp": LLAMA_CPP,
    }


def validation_summary(report: Report) -> dict:
    pick = lambda r: {**tool_scores(r), "loss": r.loss.loss, "turns": len(r.turns)}  # noqa: E731
    return {"model": pick(report.model), "baseline": pick(report.baseline) if report.baseline else None}


def prune_runs(runs: Path, keep: Path, count: int = KEPT_RUNS) -> None:
    """Cached runs hold ~4 bytes per parameter: keep the newest few (warm starts and requantizing
    use them); shipped models live on in models/, so nothing is lost."""
    old = sorted((p for p in runs.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime)
    for run in old[: max(0, len(old) - (count - 1))]:
        shutil.rmtree(run, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)   # same file system: no second copy of a large model
    except OSError:
        shutil.copy2(src, dst)
