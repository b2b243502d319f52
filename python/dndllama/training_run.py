"""One `dndllama train` run as every stage sees it (`Run`: config, base, data, the app's runtime,
folders, what to say) and the content-hash keys that cache each stage's output (`Keys`, the "cached
by" column of docs/training.md's stage table):
  data key     scenario files (by content), tool vocabulary
  dataset key  data key, base model (its tokenizer), ctx, split, augmentation, synthetic settings
  train key    dataset key, base model, training settings, name, warm-start parent, stage version
  export key   train key, quant type, size cap, runtime, app settings, evaluation key
  eval key     the evaluation folder's files (eval_data): part of the export key and of every
               judged result, since checkpoint choice, quant choice and the gate replay it
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import registry
from .base import BaseModel
from .config import Config
from .corpus import Data, eval_key, synth_settings
from .runtime_profiles import Runtime
from .tools import Vocabulary, render_tool_prompt

STAGE_VERSION = 1            # bump when a stage's output changes meaning, to invalidate caches
EXPORT_VERSION = 3           # ... or only the export stages' (choosing, quantizing, checking, publishing)
LLAMA_CPP = "llama-cpp-python==0.3.36 vendor/llama.cpp"


def code_version() -> str:
    """Stage outputs depend on the native code (patched llama.cpp + our C++) and the stage logic."""
    from . import _native

    return f"{STAGE_VERSION}:{_native.build_stamp[:16]}"


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def vocabulary_fingerprint(vocab: Vocabulary) -> str:
    return digest(render_tool_prompt(vocab), repr(sorted(vocab.tools.items())))


def data_cache_key(data: Data) -> str:
    return digest("data", sorted(data.files.items()), vocabulary_fingerprint(data.vocab))


def dataset_cache_key(config: Config, data_key: str, base_sha256: str) -> str:
    return digest("dataset", data_key, base_sha256, config.ctx, config.val_fraction, config.augment,
                  config.seed, *synth_settings(config), *weight_settings(config), code_version())


def weight_settings(config: Config) -> tuple:
    """What the label weights depend on; empty when off, so other keys do not move."""
    return ("decision_weight", config.decision_weight) if config.decision_weight != 1 else ()


def train_cache_key(config: Config, dataset_key: str, base_sha256: str, parent: dict | None) -> str:
    return digest("train", dataset_key, base_sha256, config.training_settings(), config.name,
                  parent and parent["train_key"], code_version())


def export_cache_key(config: Config, train_key: str, evaluation: str) -> str:
    return digest("export", train_key, config.quant, config.size_cap_bytes, config.runtime, config.app_ctx,
                  config.sampling, config.validate_turns, config.validate_max_tokens, config.gate,
                  config.min_f1_gain, config.select_by, config.quant_f1_tolerance,
                  config.quant_loss_tolerance, EXPORT_VERSION, code_version(), evaluation)


@dataclass(frozen=True)
class Keys:
    data: str
    dataset: str
    train: str
    export: str

    @classmethod
    def of(cls, config: Config, data: Data, base: BaseModel, parent: dict | None) -> Keys:
        data_key = data_cache_key(data)
        dataset_key = dataset_cache_key(config, data_key, base.sha256)
        train_key = train_cache_key(config, dataset_key, base.sha256, parent)
        return cls(data_key, dataset_key, train_key, export_cache_key(config, train_key, eval_key(data)))


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
        parts = [f"{stage} {duration(s)}" for stage, s in self.seconds.items()]
        return f"time by stage: {', '.join(parts)}; total {duration(sum(self.seconds.values()))}"


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


@dataclass
class Run:
    """What the stages after the data and base stages read; built once by pipeline.prepare."""
    config: Config                       # resolved for the base (plan.resolve: method, threads ...)
    base: BaseModel
    data: Data
    runtime: Runtime                     # the app's runtime: which quant types it loads
    keys: Keys
    cache: Path                          # ~/.cache/dndllama: datasets/, runs/<train key>/, baselines/
    models_dir: Path                     # the registry the new version is published to
    previous: registry.Version | None    # the current version before this run
    parent: dict | None                  # the warm-start parent's metadata, when data was only added
    force: bool = False
    say: Callable[[str], None] = print
    stages: Stopwatch = field(default_factory=Stopwatch)
    windows: tuple = ()                  # (Arrays, stats): the token windows, built once by prepare

    @property
    def run_dir(self) -> Path:
        return self.cache / "runs" / self.keys.train
