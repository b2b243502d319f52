"""Runtime profiles: which llama.cpp generation runs our GGUF, and what it can load.

The profiles are data (`runtimes.toml` next to this module): architectures, tensor and file types,
BPE pre-tokenizers and metadata quirks, each list copied from that llama.cpp tree's own sources.
This module only walks them. `app_runtime.py` runs the real old runtime; this one answers from the
tables without running anything.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

RUNTIMES_FILE = "runtimes.toml"
DEFAULT_RUNTIME = "cactus-0.2"


class RuntimeCompatError(ValueError):
    """A model needs something the runtime lacks; the message says what, and what to do."""


class UnknownRuntime(KeyError):
    """A runtime name that is not in runtimes.toml."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(name)
        self.name, self.known = name, known

    def __str__(self) -> str:
        return f"unknown runtime '{self.name}' (known runtimes: {', '.join(self.known)})"


@dataclass(frozen=True)
class Quirk:
    id: str
    text: str
    fields: dict = field(default_factory=dict)  # machine-usable values, e.g. {"arch": "gemma3", "swa_pattern": 6}


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    llama_cpp: str
    stand_in: str  # pip requirement that compiles the same llama.cpp on a desktop ("" = not needed)
    apps: tuple[str, ...]
    upgrade: str
    chat_template: str
    architectures: tuple[str, ...]
    tensor_types: tuple[str, ...]
    file_types: tuple[str, ...]
    bpe_pre_tokenizers: tuple[str, ...]
    quirks: tuple[Quirk, ...] = ()

    def loads_architecture(self, arch: str) -> bool:
        return arch in self.architectures

    def check_architecture(self, arch: str) -> None:
        """Raise RuntimeCompatError naming the runtimes that do load `arch`, and the way out."""
        if self.loads_architecture(arch):
            return
        others = [r.name for r in all_runtimes() if r.name != self.name and r.loads_architecture(arch)]
        where = f"it loads in: {', '.join(others)}" if others else "no known runtime loads it"
        raise RuntimeCompatError(
            f"architecture '{arch}' does not load in {self.name} ({self.llama_cpp}): "
            f"{where}. To ship it: {self.upgrade}"
        )

    def supports_quant(self, name: str) -> bool:
        """True when this runtime loads the tensor type (Q4_K) or file type (Q4_K_M) `name`."""
        key = _quant_key(name)
        return key in self.tensor_types or key in self.file_types

    def check_quant(self, name: str) -> None:
        if not self.supports_quant(name):
            others = [r.name for r in all_runtimes() if r.name != self.name and r.supports_quant(name)]
            where = f"it loads in: {', '.join(others)}" if others else "no known runtime loads it"
            raise RuntimeCompatError(f"quantization '{name}' does not load in {self.name}: {where}. "
                                     f"Pick one of: {', '.join(self.file_types)}")

    def check_pre_tokenizer(self, tokenizer_model: str, pre: str | None) -> None:
        """Only BPE vocabularies (tokenizer.ggml.model == "gpt2") are checked by llama.cpp."""
        if tokenizer_model == "gpt2" and pre and pre not in self.bpe_pre_tokenizers:
            raise RuntimeCompatError(f"tokenizer.ggml.pre '{pre}' is unknown to {self.name}: the load fails with "
                                     f"\"unknown pre-tokenizer type\". {self.upgrade}")

    def check_block_count(self, arch: str, block_count: int) -> None:
        """Quirks with `min_block_count`: smaller models of that architecture crash the runtime."""
        for quirk in self.quirks:
            least = quirk.fields.get("min_block_count")
            if least and quirk.fields.get("arch") == arch and block_count < least:
                raise RuntimeCompatError(f"{arch} with {block_count} blocks crashes {self.name} (needs at least "
                                         f"{least}; quirk '{quirk.id}'): {quirk.text}")

    def quirk(self, quirk_id: str) -> Quirk | None:
        return next((q for q in self.quirks if q.id == quirk_id), None)


def _quant_key(name: str) -> str:
    key = name.strip().upper()
    for prefix in ("LLAMA_FTYPE_", "MOSTLY_", "ALL_", "GGML_TYPE_"):
        key = key.removeprefix(prefix)
    return key


@lru_cache(maxsize=1)
def _data() -> dict:
    text = resources.files(__package__).joinpath(RUNTIMES_FILE).read_text(encoding="utf-8")
    return tomllib.loads(text)["runtimes"]


LIST_FIELDS = ("apps", "architectures", "tensor_types", "file_types", "bpe_pre_tokenizers")


def _build(name: str, spec: dict) -> Runtime:
    spec = dict(spec)
    quirks = tuple(
        Quirk(q["id"], q["text"], {k: v for k, v in q.items() if k not in ("id", "text")})
        for q in spec.pop("quirks", [])
    )
    for key in LIST_FIELDS:
        spec[key] = tuple(spec.get(key, ()))
    return Runtime(name=name, quirks=quirks, **spec)


RUNTIMES: tuple[str, ...] = tuple(_data())


def load_runtime(name: str = DEFAULT_RUNTIME) -> Runtime:
    data = _data()
    if name not in data:
        raise UnknownRuntime(name, list(data))
    return _build(name, data[name])


def all_runtimes() -> list[Runtime]:
    return [load_runtime(name) for name in RUNTIMES]
