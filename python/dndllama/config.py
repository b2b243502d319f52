"""One Config for a training run: defaults here, then `dndllama.toml` in the data folder, then CLI flags.

    # ai-training/dndllama.toml
    base = "embedded"        # or a .gguf path, a Hugging Face folder or id
    epochs = 3
    size_cap = "2GB"
    [sampling]
    temperature = 0.7
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .settings import SETTINGS

CONFIG_FILE = "dndllama.toml"
EMBEDDED_BASE = "embedded"


class ConfigError(ValueError):
    """A bad setting; the message names the file or flag and the accepted values."""


@dataclass
class Sampling:
    """What the app should sample with; written into the Cactus config."""

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    max_tokens: int = 256




@dataclass
class Config:
    data: str = "ai-training"
    eval_data: str = "ai-eval"           # held-out scenarios for validate, checkpoint/quant choice, the gate ("" = none)
    base: str = EMBEDDED_BASE
    runtime: str = "cactus-0.2"          # the runtime the exported GGUF must load in
    name: str = "dndllama-dm"            # general.name of the output and the registry's label
    models_dir: str = "models"
    cache_dir: str = field(default_factory=lambda: os.environ.get("DNDLLAMA_CACHE", "~/.cache/dndllama"))
    # dataset
    ctx: int = 768                       # training window in tokens, a multiple of 256 (fits the corpus uncut)
    val_fraction: float = 0.1
    augment: int = 0                     # extra renamed copies of each training scenario
    seed: int = 0
    # synthetic scenarios (dndllama.synth), training split only: synthetic DM turns per hand-written one
    synth: float = 2.0                   # 0 = off; 2: the measured recipe (docs/training.md, "Recipe")
    synth_seed: int = 0
    synth_loss: str = "calls"            # "calls": loss on their call lines + the sentence before; "all"
    # the loss weight of a DM turn's first token, each tool call's opening token and its end of turn:
    # where it decides whether to call (loss_mask.decision_tokens); 1 = every DM token weighs the same
    decision_weight: float = 1.0
    # training
    epochs: int = 2
    max_steps: int = 0                   # 0 = the epochs decide
    lr: float = 1e-4
    lr_min_ratio: float = 0.1
    warmup: float = 0.05                 # fraction of the steps spent warming up
    weight_decay: float = 0.01
    grad_accum: int = 1
    trainable: str = ""                  # regex over tensor names; "" = every trainable tensor
    method: str = "auto"                 # "full", "lora" (frozen base + adapter), "auto": full when it fits
    lora_rank: int = 16
    lora_alpha: float = 32.0             # adapter output scale alpha / rank
    lora_targets: str = "attn_(q|k|v|output)|ffn_(gate|up|down)"   # regex over block weights
    lora_lr: float = 5e-4                # LoRA's learning rate (lr is full fine-tuning's)
    patience: int = 2                    # evaluations without a better validation loss before stopping
    save_every: int = 50                 # steps between checkpoints (resume points)
    eval_every: int = 0                  # steps between evaluations (0 = at each epoch's end only)
    checkpoint_candidates: int = 3       # checkpoints kept after the best evaluations, to choose from
    threads: int = 0                     # 0 = the free cores
    gpu_layers: int = 0
    # training's weight products on the CPU: "bf16" (BF16 operands, F32 sums, on AMX tiles or with
    # AVX512-BF16; 2-3x faster), "f32", or "auto" = bf16 where the CPU has either (Intel Xeon 4th gen
    # or Cooper Lake and later, AMD Zen 4 and later), else f32
    matmul_precision: str = "auto"
    # validation and the quality gate
    validate_turns: int = 0              # evaluation DM turns replayed (0 = all; N: whole conversations by category)
    validate_max_tokens: int = 128       # the longest DM turn of ai-training is ~110 tokens
    gate: bool = True                    # promote a version only when it passes the gate
    min_f1_gain: float = 0.0             # ... its tool-call F1 beats the base model's by more than this
    select_by: str = "tool_f1"           # "tool_f1": checkpoint and quant type by replayed tool calls; "loss"
    quant_f1_tolerance: float = 0.02     # the smallest quant type within this tool-call F1 of the best ...
    quant_loss_tolerance: float = 0.05   # ... and within this validation loss (nats) of the best wins
    # export
    size_cap: str = "2GB"
    quant: str = "auto"                  # "auto" = best type under the cap, or a type such as Q4_K_M
    app_ctx: int = 2048                  # n_ctx the app should use
    grammar: bool = True                 # ship tool-calls.gbnf and make it the app's completion grammar
    sampling: Sampling = field(default_factory=Sampling)

    @property
    def size_cap_bytes(self) -> int:
        return parse_size(self.size_cap)

    def training_settings(self) -> dict:
        """The settings a trained model depends on (part of the training stage's cache key); the
        method as resolved, with the settings of that method only."""
        keys = ("ctx", "val_fraction", "augment", "seed", "epochs", "max_steps", "lr_min_ratio",
                "warmup", "weight_decay", "grad_accum", "patience", "eval_every", "checkpoint_candidates",
                "matmul_precision")
        keys += (("lora_rank", "lora_alpha", "lora_targets", "lora_lr") if self.method == "lora"
                 else ("lr", "trainable"))
        keys += ("synth", "synth_seed", "synth_loss") if self.synth else ()   # absent when off: old keys stay valid
        keys += ("decision_weight",) if self.decision_weight != 1 else ()
        return {k: getattr(self, k) for k in keys} | ({"method": "lora"} if self.method == "lora" else {})

    @property
    def learning_rate(self) -> float:
        return self.lora_lr if self.method == "lora" else self.lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str | int) -> int:
    """'2GB' -> 2_000_000_000 (decimal, like phone storage); 'GiB' units are binary."""
    if isinstance(text, int):
        return text
    match = SIZE.match(str(text))
    unit = (match.group(2) or "").lower() if match else None
    if not match or unit not in UNITS:
        raise ConfigError(f"size '{text}' is not understood; write it like 2GB, 1.5GiB or 800MB")
    return int(float(match.group(1)) * UNITS[unit])


def load_config(data_dir: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then `<data_dir>/dndllama.toml` if present, then `overrides` (None values skipped).
    Each value is checked where it came from, so an error names the file or the flag."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in overrides.items():
        if key in SETTINGS:
            check_setting(key, value, "command line", label="--" + key.replace("_", "-"))
    data_dir = Path(overrides.get("data") or data_dir or Config.data)
    values: dict = {}
    path = data_dir / CONFIG_FILE
    if path.is_file():
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
    values.update(overrides)
    values["data"] = str(data_dir)
    return _build(values, str(path))


def _build(values: dict, where: str) -> Config:
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    sampling = values.pop("sampling", {})
    if not isinstance(sampling, dict):
        raise ConfigError(f"{where}: sampling must be a [sampling] table, got {sampling!r}")
    sampling_fields = {f.name for f in fields(Sampling)}
    if set(sampling) - sampling_fields:
        raise ConfigError(f"{where}: unknown [sampling] setting(s) {', '.join(sorted(set(sampling) - sampling_fields))}; "
                          f"known: {', '.join(sorted(sampling_fields))}")
    sampling = Sampling(**{k: check_setting(f"sampling.{k}", v, where) for k, v in sampling.items()})
    config = Config(**{k: check_setting(k, v, where) for k, v in values.items()}, sampling=sampling)
    return validate(config, where)


def validate(config: Config, where: str = "settings") -> Config:
    """Every setting of a Config, however it was made, against settings.SETTINGS, plus the rules that
    relate two settings. Raises ConfigError naming the setting, the value and what is accepted."""
    for f in fields(Config):
        if f.name != "sampling":
            check_setting(f.name, getattr(config, f.name), where)
    for f in fields(Sampling):
        check_setting(f"sampling.{f.name}", getattr(config.sampling, f.name), where)
    if config.sampling.max_tokens >= config.app_ctx:
        raise ConfigError(f"{where}: sampling.max_tokens = {config.sampling.max_tokens} leaves no room for a "
                          f"prompt in app_ctx = {config.app_ctx}; accepted: below app_ctx")
    return config


def check_setting(key: str, value, where: str = "settings", label: str | None = None):
    """One setting's value, checked against its row of settings.SETTINGS and returned in its type."""
    rule = SETTINGS[key]
    problem = rule.problem(value)
    if problem:
        raise ConfigError(f"{where}: {label or key} = {value!r} {problem}; accepted: {rule.accepted()}")
    return rule.convert(value)
