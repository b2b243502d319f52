"""Quantize to the ladder's types: `choose_quant` takes the best type whose real file fits the size cap;
`Quantizer` makes one type's file on demand, for the choice by the task (selection.py).

The ladder runs from best to smallest; each candidate is actually quantized (llama.cpp falls back
to other types for shapes a type cannot hold, so estimates alone can be wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

# (llama.cpp type, approximate bits per weight): best quality first.
QUANT_LADDER: tuple[tuple[str, float], ...] = (
    ("F16", 16.0), ("Q8_0", 8.5), ("Q6_K", 6.56), ("Q5_K_M", 5.67),
    ("Q4_K_M", 4.89), ("Q3_K_M", 3.91), ("Q2_K", 3.35),
)
LADDER_TYPES = tuple(name for name, _ in QUANT_LADDER)


class CapError(ValueError):
    """No allowed quantization fits under the cap."""


@dataclass
class QuantChoice:
    type: str
    path: Path
    size: int
    reason: str
    tried: list[tuple[str, int]]   # (type, real size) of every candidate quantized


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def candidates(requested: str, allowed: Callable[[str], bool] = lambda t: True) -> list[str]:
    """The types to try, best first: the whole ladder for 'auto', else just the one asked for."""
    if requested.lower() == "auto":
        return [t for t in LADDER_TYPES if allowed(t)]
    from . import _native

    name = requested.upper()
    if name not in _native.quant_types():
        raise CapError(f"unknown quantization type '{requested}'; use auto or one of {', '.join(LADDER_TYPES)}")
    if not allowed(name):
        raise CapError(f"the target runtime cannot load {name}; use auto or another type")
    return [name]


class Quantizer:
    """Quantizes one checkpoint to a type on demand (kept on disk, so a rerun reuses it); a file over
    the cap is deleted and gives None. `fitting` and `tried` record what was made."""

    def __init__(self, f32_path: Path, out_dir: Path, cap: int, threads: int = 0, progress=print):
        self.f32_path, self.out_dir, self.cap, self.threads, self.progress = f32_path, out_dir, cap, threads, progress
        self.fitting: dict[str, Path] = {}
        self.tried: list[tuple[str, int]] = []   # (type, real size) of every type quantized

    def __call__(self, qtype: str) -> Path | None:
        from . import _native

        out = self.out_dir / f"model-{qtype.lower()}.gguf"
        if not out.exists():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.progress(f"quantizing to {qtype} ...")
            _native.quantize(str(self.f32_path), str(out), qtype, self.threads)
        self.tried.append((qtype, out.stat().st_size))
        if self.tried[-1][1] > self.cap:
            out.unlink()
            return None
        self.fitting[qtype] = out
        return out

    def cap_error(self) -> CapError:
        sizes = ", ".join(f"{t} {human_size(s)}" for t, s in self.tried)
        return CapError(f"no quantization fits the {human_size(self.cap)} cap (tried {sizes}); raise --size-cap "
                        "or pick a smaller base model")


def choose_quant(f32_path: Path, out_dir: Path, cap: int, types: Iterable[str], threads: int = 0,
                 progress=print) -> QuantChoice:
    """Quantize down the ladder until the real output fits `cap`; that type wins."""
    types = list(types)
    files = Quantizer(f32_path, out_dir, cap, threads, progress)
    out = next((path for qtype in types if (path := files(qtype)) is not None), None)
    if out is None:
        raise files.cap_error()
    qtype, size = files.tried[-1]
    return QuantChoice(qtype, out, size, _reason(qtype, size, cap, files.tried, len(types)), files.tried)


def _reason(qtype: str, size: int, cap: int, tried: list[tuple[str, int]], n_types: int) -> str:
    larger = [(t, s) for t, s in tried if s > cap]
    text = (f"{qtype} ({human_size(size)}) fits the {human_size(cap)} cap"
            + (f"; too large: {', '.join(f'{t} {human_size(s)}' for t, s in larger)}" if larger else ""))
    return text + (" and is the best type that does" if n_types > 1 else "")
