"""What every setting accepts, as one table: type, range, choices, pattern. `config.check_setting`
walks it for the config file, the command-line flags and a Config built in code alike, so a value
the native core cannot take (a float32 that is 0 or inf, a thread count ggml cannot start, a seed
outside uint32) is refused at the boundary with the setting, the value and the accepted range.

The native core checks its own inputs too (cpp/train.cpp, generate.cpp, bindings.cpp); this table
is what the user sees first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

F32_MAX = 3.4028234663852886e38          # the largest finite float32
F32_MIN_NORMAL = 1.1754943508222875e-38  # below this a float32 is subnormal or 0
UINT32_MAX = 2**32 - 1
MAX_THREADS = 512                         # GGML_MAX_N_THREADS: ggml cannot start more
MAX_CTX = 131072
BIG = 10**9                               # a step or turn count no run reaches
SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"   # one file-name component: no '/', no '..', no leading dot
QUANT_NAME = r"auto|[A-Za-z0-9_]{1,16}"   # a type name; whether this build and the runtime know it is checked
                                          # before training (pipeline.prepare)
SELECT_BY = ("tool_f1", "loss")
SYNTH_LOSS = ("calls", "all")
METHODS = ("auto", "full", "lora")
MATMUL_PRECISIONS = ("auto", "bf16", "f32")
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Rule:
    kind: type | tuple[type, ...]
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False          # lo itself is refused
    hi_open: bool = False
    float32: bool = False          # the native side holds it as a float32
    choices: tuple[str, ...] = ()
    multiple_of: int = 0
    pattern: str = ""              # a string must match it in full
    check: Callable[[object], str | None] | None = None   # a further check: the problem, or None
    note: str = ""                 # what the accepted values mean, for the error

    def problem(self, value) -> str | None:
        """Why `value` is refused, or None."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if not _is_kind(value, kinds):
            return f"is not {' or '.join(KIND_NAMES[k] for k in kinds)}"
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        if self.float32 and value != 0 and not F32_MIN_NORMAL <= abs(value) <= F32_MAX:
            return "is 0 or infinite as a float32 (what the native core computes in)"
        if not isinstance(value, str) and not self._in_range(value):
            return "is out of range"
        if self.choices and value not in self.choices:
            return "is not one of the choices"
        if self.multiple_of and value % self.multiple_of:
            return f"is not a multiple of {self.multiple_of}"
        if self.pattern and not (isinstance(value, str) and re.fullmatch(self.pattern, value)):
            return "is not allowed here"
        return self.check(value) if self.check else None

    def _in_range(self, value) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def accepted(self) -> str:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        parts = [" or ".join(KIND_NAMES[k] for k in kinds)]
        if self.lo is not None or self.hi is not None:
            lo = "-inf" if self.lo is None else _number(self.lo)
            hi = "inf" if self.hi is None else _number(self.hi)
            parts.append(f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}")
        if self.float32:
            parts.append("held as a float32 (0 or at least 1.2e-38 in size)")
        if self.choices:
            parts.append("one of " + ", ".join(self.choices))
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def convert(self, value):
        return float(value) if self.kind is float else value


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _is_kind(value, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds                     # True is an int to Python, not to a user
    return any(isinstance(value, k) or (k is float and isinstance(value, int)) for k in kinds)


def _size_problem(value) -> str | None:
    from .config import ConfigError, parse_size

    try:
        size = parse_size(value)
    except ConfigError:
        return "is not a size"
    return None if size > 0 else "is not a positive size"


def _path_problem(value) -> str | None:
    return "is empty or holds a NUL byte" if not value.strip() or "\0" in value else None


def _int(lo, hi, note: str = "", **kw) -> Rule:
    return Rule(int, lo, hi, note=note, **kw)


def _fraction(lo_open=False, hi_open=True, note: str = "") -> Rule:
    return Rule(float, 0.0, 1.0, lo_open=lo_open, hi_open=hi_open, float32=True, note=note)


PATH = Rule(str, check=_path_problem, note="a path")
SETTINGS: dict[str, Rule] = {
    "data": PATH,
    "base": PATH,
    "runtime": Rule(str, pattern=SAFE_NAME, note="a runtime name (dndllama runtime list)"),
    "name": Rule(str, pattern=SAFE_NAME, note="a file name: letters, digits, '.', '_', '-', starting with a "
                                               "letter or digit, at most 64 characters"),
    "models_dir": PATH,
    "cache_dir": PATH,
    "eval_data": Rule(str, check=lambda v: "holds a NUL byte" if "\0" in v else None,
                      note='a folder of held-out scenarios, "" = none'),
    "ctx": _int(256, MAX_CTX, multiple_of=256),
    "val_fraction": _fraction(),
    "augment": _int(0, 100),
    "seed": _int(0, UINT32_MAX, "a uint32 (the native samplers and shuffles take one)"),
    "synth": Rule(float, 0.0, 1000.0, note="a ratio of synthetic to hand-written DM turns, 0 = off"),
    "synth_seed": _int(0, UINT32_MAX),
    "synth_loss": Rule(str, choices=SYNTH_LOSS),
    "decision_weight": Rule(float, 1.0, 1000.0, float32=True,
                            note="the loss weight of the tokens that decide whether a DM turn calls a tool; 1 = off"),
    "epochs": _int(1, 10_000),
    "max_steps": _int(0, BIG, "0 = the epochs decide"),
    "lr": Rule(float, 0.0, 1.0, lo_open=True, hi_open=True, float32=True),
    "lr_min_ratio": _fraction(hi_open=False, note="the final learning rate as a fraction of lr"),
    "warmup": _fraction(note="a fraction of the steps"),
    "weight_decay": _fraction(),
    "grad_accum": _int(1, 10_000),
    "trainable": Rule(str, note="a regex over tensor names, empty = all"),
    "method": Rule(str, choices=METHODS),
    "lora_rank": _int(1, 4096),
    "lora_alpha": Rule(float, 0.0, 1e6, lo_open=True, float32=True),
    "lora_targets": Rule(str, check=lambda v: None if v.strip() else "is empty", note="a regex over block weights"),
    "lora_lr": Rule(float, 0.0, 1.0, lo_open=True, hi_open=True, float32=True),
    "patience": _int(0, 10_000, "0 = off"),
    "save_every": _int(0, BIG, "0 = at epoch ends only"),
    "eval_every": _int(0, BIG, "0 = at epoch ends only"),
    "checkpoint_candidates": _int(1, 100),
    "threads": _int(0, MAX_THREADS, "0 = the free cores; ggml starts at most 512"),
    "gpu_layers": _int(-1, 100_000, "-1 = all"),
    "matmul_precision": Rule(str, choices=MATMUL_PRECISIONS),
    "validate_turns": _int(0, BIG, "0 = all"),
    "validate_max_tokens": _int(1, MAX_CTX),
    "gate": Rule(bool),
    "min_f1_gain": Rule(float, -1.0, 1.0),
    "select_by": Rule(str, choices=SELECT_BY),
    "quant_f1_tolerance": Rule(float, 0.0, 1.0),
    "quant_loss_tolerance": Rule(float, 0.0, 100.0),
    "size_cap": Rule((str, int), check=_size_problem, note="a size such as 2GB, 1.5GiB or 800MB, above 0"),
    "quant": Rule(str, pattern=QUANT_NAME, note="auto or a quant type such as Q4_K_M"),
    "app_ctx": _int(256, MAX_CTX),
    "grammar": Rule(bool),
    "sampling.temperature": Rule(float, 0.0, 100.0, float32=True, note="0 = greedy"),
    "sampling.top_k": _int(0, 1_000_000, "0 = off"),
    "sampling.top_p": Rule(float, 0.0, 1.0, float32=True),
    "sampling.max_tokens": _int(1, MAX_CTX),
}
