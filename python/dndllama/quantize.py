"""Pick the best quantization whose real file fits the size cap.

The ladder runs from best to smallest; each candidate is actually quantized (llama.cpp falls back
to other types for shapes a type cannot hold, so estimates alone can be wrong) until one fits.
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
                 progress=print) -> QuantChoice:
    """Quantize down the ladder until the real output fits `cap`; the others are deleted."""
    from . import _native

    types = list(types)
    out_dir.mkdir(parents=True, exist_ok=True)
    tried: list[tuple[str, int]] = []
    for index, qtype in enumerate(types):
        out = out_dir / f"model-{qtype.lower()}.gguf"
        if not out.exists():
            progress(f"quantizing to {qtype} ...")
            _native.quantize(str(f32_path), str(out), qtype, threads)
        size = out.stat().st_size
        tried.append((qtype, size))
        if size <= cap:
            better = ", ".join(f"{t} {human_size(s)}" for t, s in tried[:-1])
            reason = (f"{qtype} is the best type that fits the {human_size(cap)} cap ({human_size(size)})"
                      + (f"; larger: {better}" if better else "")
                      + ("" if index or len(types) == 1 else "; it is the top of the ladder"))
            return QuantChoice(qtype, out, size, reason, tried)
        out.unlink()
    sizes = ", ".join(f"{t} {human_size(s)}" for t, s in tried)
    raise CapError(f"no quantization fits the {human_size(cap)} cap (tried {sizes}); raise --size-cap "
                   "or pick a smaller base model")
