"""Pick the quantization: the best type whose real file fits the size cap, or, given a judge of
quality, the smallest type that fits and keeps the quality of the best.

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


def choose_quant(f32_path: Path, out_dir: Path, cap: int, types: Iterable[str], threads: int = 0,
                 progress=print, judge: Callable[[str, Path], tuple[bool, str]] | None = None) -> QuantChoice:
    """Quantize down the ladder until the real output fits `cap`. Without a judge that type wins.
    With one, the smaller types that fit are tried too, while `judge(type, path)` says they keep the
    quality (it returns (acceptable, a line for the report)); the smallest acceptable one wins.
    Files not chosen are deleted."""
    from . import _native

    types = list(types)
    out_dir.mkdir(parents=True, exist_ok=True)
    tried: list[tuple[str, int]] = []
    fitting: list[tuple[str, Path, int]] = []
    notes: list[str] = []
    for qtype in types:
        out = out_dir / f"model-{qtype.lower()}.gguf"
        if not out.exists():
            progress(f"quantizing to {qtype} ...")
            _native.quantize(str(f32_path), str(out), qtype, threads)
        size = out.stat().st_size
        tried.append((qtype, size))
        if size > cap:
            out.unlink()
            continue
        if judge is None:
            fitting.append((qtype, out, size))
            break
        acceptable, note = judge(qtype, out)
        notes.append(note)
        if not acceptable:
            out.unlink()
            break        # smaller types lose more
        fitting.append((qtype, out, size))
    if not fitting:
        sizes = ", ".join(f"{t} {human_size(s)}" for t, s in tried)
        raise CapError(f"no quantization fits the {human_size(cap)} cap (tried {sizes}); raise --size-cap "
                       "or pick a smaller base model")
    qtype, out, size = fitting[-1]
    for _, other, _ in fitting[:-1]:
        other.unlink()
    return QuantChoice(qtype, out, size, _reason(qtype, size, cap, tried, notes, len(types)), tried)


def _reason(qtype: str, size: int, cap: int, tried: list[tuple[str, int]], notes: list[str], n_types: int) -> str:
    larger = [(t, s) for t, s in tried if s > cap]
    text = (f"{qtype} ({human_size(size)}) fits the {human_size(cap)} cap"
            + (f"; too large: {', '.join(f'{t} {human_size(s)}' for t, s in larger)}" if larger else ""))
    if notes:
        return text + "; the smallest type that keeps the tool-call quality of the best:\n" + "\n".join(notes)
    return text + (" and is the best type that does" if n_types > 1 else "")
