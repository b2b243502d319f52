"""Read a GGUF file's header (metadata and tensor table) without loading the model.

A plain parser over mmap: gguf-py's reader builds numpy views for every vocabulary entry and takes
seconds on Gemma's 262k tokens; this takes a fraction of a second and checks that the tensor data
the header promises is really in the file (a truncated download fails here, with its name).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"GGUF"
STRING, ARRAY = 8, 9
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class GGUFError(ValueError):
    """Not a GGUF file, or a damaged one."""


@dataclass
class Tensor:
    dims: tuple[int, ...]     # ggml order: dims[0] is the row length
    type: str
    nbytes: int

    @property
    def n(self) -> int:
        return math.prod(self.dims)


@dataclass
class Header:
    arch: str
    tensor_types: set[str]
    kv: dict = field(default_factory=dict)     # scalar and string values; arrays by length only
    array_lengths: dict = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)


def read_header(path: str | Path) -> Header:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Parser(buf).header()
    except (struct.error, IndexError, KeyError, ValueError) as e:
        raise GGUFError(str(e)) from None


class _Parser:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise GGUFError("a string runs past the end of the file")
        self.pos += n
        return bytes(self.buf[self.pos - n: self.pos]).decode("utf-8", "replace")

    def value(self, kind: int):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, n = self.take("I"), self.take("Q")
            if item in SCALARS:
                self.pos += n * struct.calcsize(SCALARS[item])
            else:
                for _ in range(n):
                    self.value(item)
            return n
        raise GGUFError(f"unknown metadata value type {kind}")

    def header(self) -> Header:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        if self.buf[:4] != MAGIC:
            raise GGUFError("wrong magic bytes: not a GGUF file")
        self.pos = 4
        version, n_tensors, n_kv = self.take("I"), self.take("Q"), self.take("Q")
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        kv, lengths = {}, {}
        for _ in range(n_kv):
            key, kind = self.string(), self.take("I")
            value = self.value(kind)
            (lengths if kind == ARRAY else kv)[key] = value
        if "general.architecture" not in kv:
            raise GGUFError("no general.architecture in the metadata")
        types, data_end, tensors = set(), 0, {}
        for _ in range(n_tensors):
            name = self.string()
            dims = tuple(self.take("Q") for _ in range(self.take("I")))
            qtype, offset = GGMLQuantizationType(self.take("I")), self.take("Q")
            block, size = GGML_QUANT_SIZES[qtype]
            types.add(qtype.name)
            tensors[name] = Tensor(dims, qtype.name, math.prod(dims) // block * size)
            data_end = max(data_end, offset + tensors[name].nbytes)
        alignment = int(kv.get("general.alignment", 32))
        data_start = -(-self.pos // alignment) * alignment
        if types and data_start + data_end > len(self.buf):
            raise GGUFError(f"tensor data ends at byte {data_start + data_end}, the file has {len(self.buf)}")
        return Header(kv["general.architecture"], types, kv, lengths, tensors)
