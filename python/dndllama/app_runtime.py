"""The app's runtime, for real: install its llama.cpp stand-in in a venv, load our GGUF there, chat,
compare with training. (runtime_profiles.py answers from tables without running anything.)

cactus-react-native 0.2.x ships prebuilt llama.cpp binaries of May 2025 whose llama.cpp equals the
one vendored in `llama-cpp-python==0.3.9` (see runtimes.toml). That package cannot live next to
`dndllama._native` (different llama.cpp, same symbol names), so it gets its own venv:

  ensure_runtime_env("cactus-0.2")   python -m venv + pip install llama-cpp-python==0.3.9 (compiles
                                     llama.cpp: about 2 minutes on 2 cores, once; reused afterwards)
  check_runtime(model.gguf)          runs app_runtime_probe.py in that venv (JSON in, JSON out) and compares

The probe renders the chat with `llama_cpp.llama_chat_apply_template`, the C function the app uses
by default (cactus 0.2.x calls it unless `jinja: true` is passed), not llama-cpp-python's Jinja
formatter, and tokenizes the prompt the way the app does (special tokens parsed, BOS added when
the vocabulary asks for it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from .runtime_profiles import DEFAULT_RUNTIME, RuntimeCompatError, load_runtime
from .tools import ToolCall, ToolCallError, Vocabulary, default_vocabulary, find_tool_calls

CACHE_ROOT = Path("~/.cache/dndllama/runtimes")
CACHE_ENV = "DNDLLAMA_RUNTIMES_DIR"  # overrides CACHE_ROOT (tests, CI caches)
STATE_FILE = "dndllama-runtime.json"  # written last: its presence means "installed and verified"
# Build only what the probe needs: CPU ggml + libllama. No multimodal (llava/mtmd), tools, tests,
# GPU backends or BLAS; ggml's own CMake options, passed through llama-cpp-python's CMAKE_ARGS.
CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF "
    "-DGGML_BLAS=OFF -DGGML_RPC=OFF"
)
DEFAULT_MESSAGES = (
    {"role": "system", "content": "Role: Dungeon Master\nWorld: Greyhawk\nLocation: The Green Dragon Inn"},
    {"role": "user", "content": "I look around the tavern for anyone suspicious."},
)
CONTEXT_CHARS = 30  # characters shown either side of the first difference


class RuntimeNotInstalled(RuntimeError):
    """The runtime's venv is missing; the message names the command that installs it."""


class RuntimeInstallError(RuntimeError):
    """Building the runtime's venv failed; the message has the tail of the build log."""


@dataclass
class RuntimeEnv:
    name: str
    stand_in: str  # the pip requirement installed, e.g. llama-cpp-python==0.3.9
    path: Path  # the venv
    python: Path
    build_seconds: float
    size_bytes: int
    version: str  # llama_cpp.__version__ inside the venv


def runtimes_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, CACHE_ROOT)).expanduser()


def _stand_in(name: str) -> str:
    runtime = load_runtime(name)
    if not runtime.stand_in:
        raise ValueError(f"runtime '{name}' is dndllama's own llama.cpp ({runtime.llama_cpp}): nothing to install")
    return runtime.stand_in


def _env_dir(name: str, stand_in: str, cache_dir: Path | None) -> Path:
    """<root>/<runtime>/<requirement>, so a new stand-in version gets a fresh venv."""
    base = Path(cache_dir).expanduser() if cache_dir else runtimes_root() / name
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "-", stand_in)


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_runtime_env(name: str = DEFAULT_RUNTIME, cache_dir: str | Path | None = None) -> RuntimeEnv | None:
    """The installed, verified venv of runtime `name`, or None."""
    stand_in = _stand_in(name)
    venv = _env_dir(name, stand_in, cache_dir)
    try:
        state = json.loads((venv / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("stand_in") != stand_in or not _python(venv).exists():
        return None
    return RuntimeEnv(name, stand_in, venv, _python(venv), state["build_seconds"], state["size_bytes"], state["version"])


def require_runtime_env(name: str = DEFAULT_RUNTIME, cache_dir: str | Path | None = None) -> RuntimeEnv:
    env = find_runtime_env(name, cache_dir)
    if env is None:
        stand_in = _stand_in(name)
        raise RuntimeNotInstalled(
            f"runtime '{name}' is not installed (no verified venv at {_env_dir(name, stand_in, cache_dir)}); "
            f"install it with `dndllama runtime install {name}` (builds {stand_in} in its own venv, "
            "about 2 minutes on 2 cores, once)"
        )
    return env


def ensure_runtime_env(name: str = DEFAULT_RUNTIME, cache_dir: str | Path | None = None,
                       progress: Callable[[str], None] = print) -> RuntimeEnv:
    """Create (once) an isolated venv with the runtime's stand-in package; reuse it afterwards."""
    found = find_runtime_env(name, cache_dir)
    if found:
        progress(f"{name}: using {found.path} ({found.stand_in}, llama_cpp {found.version})")
        return found
    stand_in = _stand_in(name)
    venv = _env_dir(name, stand_in, cache_dir)
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    progress(f"{name}: creating a venv at {venv}")
    _run([sys.executable, "-m", "venv", str(partial)], progress)
    python = _python(partial)
    progress(f"{name}: pip install {stand_in} (compiles llama.cpp, CPU only: about 2 minutes on 2 cores)")
    env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([str(python), "-m", "pip", "install", "-v", "--progress-bar", "off", stand_in], progress, env=env)
    version = _run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"], progress).strip()
    build_seconds = round(time.monotonic() - start, 1)
    size = _tree_size(partial)
    (partial / STATE_FILE).write_text(json.dumps(
        {"stand_in": stand_in, "version": version, "build_seconds": build_seconds, "size_bytes": size,
         "cmake_args": CMAKE_ARGS, "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    shutil.rmtree(venv, ignore_errors=True)
    partial.rename(venv)  # a venv's interpreter finds its site-packages relative to itself
    progress(f"{name}: ready in {build_seconds:.0f} s, {size / 2**20:.0f} MiB at {venv}")
    return RuntimeEnv(name, stand_in, venv, _python(venv), build_seconds, size, version)


# ninja's "[12/150] Building ..." lines become a progress line every 10 %
_NINJA_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]")
_PIP_HEADLINES = ("Collecting", "Downloading", "Building wheel", "Successfully", "ERROR", "error:")


def _run(cmd: list[str], progress: Callable[[str], None], env: dict | None = None) -> str:
    lines: list[str] = []
    shown = -1
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip())
            step = _NINJA_STEP.match(line)
            if step:
                done, total = int(step.group(1)), int(step.group(2))
                tenth = done * 10 // total
                if tenth > shown:
                    shown = tenth
                    progress(f"  compiling llama.cpp: {done}/{total}")
            elif line.lstrip().startswith(_PIP_HEADLINES):
                progress("  " + line.strip()[:160])
    if proc.returncode:
        tail = "\n".join(lines[-30:])
        raise RuntimeInstallError(f"`{' '.join(cmd[:4])} ...` failed (exit {proc.returncode}):\n{tail}\n"
                                  "it needs a C/C++ compiler, CMake >= 3.21 and network access to PyPI")
    return "\n".join(lines)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------- the probe (runs inside the venv)

PROBE_FILE = "app_runtime_probe.py"   # shipped next to this module; its text runs in the runtime's venv


def probe_source() -> str:
    return resources.files(__package__).joinpath(PROBE_FILE).read_text(encoding="utf-8")


# ---------------------------------------------------------------- the report


@dataclass
class Difference:
    offset: int  # first differing character
    expected: str  # text around it in the expected prompt
    actual: str  # text around it in what the runtime produced

    def __str__(self) -> str:
        return f"first difference at character {self.offset}: expected …{self.expected!r}… got …{self.actual!r}…"


@dataclass
class CompatReport:
    model: str
    runtime: str
    runtime_version: str = ""
    loaded: bool = False
    error: str | None = None
    stage: str = ""  # how far the probe got ("done" when it finished)
    static_problems: list[str] = field(default_factory=list)  # from the GGUF's metadata vs runtimes.toml
    template_engine: str = "llama_chat_apply_template"
    template_source: str = ""
    prompt: str = ""  # the chat as the runtime's template renders it (no BOS)
    effective_prompt: str = ""  # BOS text (when the tokenizer adds it) + prompt: what the model reads
    prompt_tokens: list[int] = field(default_factory=list)
    expected_prompt: str | None = None
    template_identical: bool | None = None  # None: nothing to compare with
    difference: Difference | None = None
    tokens_identical: bool | None = None
    first_token_difference: int | None = None
    text: str = ""
    generated_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_errors: list[ToolCallError] = field(default_factory=list)
    load_s: float = 0.0
    generated_tokens: int = 0
    generate_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.generate_s if self.generate_s else 0.0

    @property
    def ok(self) -> bool:
        return self.loaded and not self.error and self.template_identical is not False \
            and self.tokens_identical is not False


def first_difference(expected: str, actual: str, context: int = CONTEXT_CHARS) -> Difference | None:
    if expected == actual:
        return None
    offset = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    window = slice(max(0, offset - context), offset + context)
    return Difference(offset, expected[window], actual[window])


def _first_token_difference(expected: list[int], actual: list[int]) -> int | None:
    if expected == actual:
        return None
    return next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))


def _as_dicts(messages: Iterable) -> list[dict]:
    """dndllama.dataset.Message objects or {"role", "content"} dicts."""
    return [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]


def static_problems(model_path: str | Path, runtime: str = DEFAULT_RUNTIME) -> list[str]:
    """What runtimes.toml already says about this GGUF, without loading it (architecture, tensor
    types, BPE pre-tokenizer); an unreadable file is a problem too."""
    from .gguf_header import GGUFError, read_header

    profile = load_runtime(runtime)
    try:
        header = read_header(model_path)
    except GGUFError as exc:
        return [f"not a readable GGUF file: {exc}"]
    value = header.kv.get
    arch = header.arch
    problems = []
    checks = [
        lambda: profile.check_architecture(arch),
        lambda: profile.check_block_count(arch, value(f"{arch}.block_count") or 0),
        lambda: profile.check_pre_tokenizer(value("tokenizer.ggml.model") or "", value("tokenizer.ggml.pre")),
        *[lambda t=t: profile.check_quant(t) for t in sorted(header.tensor_types)],
    ]
    for check in checks:
        try:
            check()
        except RuntimeCompatError as exc:
            problems.append(str(exc))
    return problems


def check_runtime(model_path: str | Path, runtime: str = DEFAULT_RUNTIME, messages: Iterable | None = None,
                  expected_prompt: str | None = None, max_tokens: int = 48, seed: int = 0,
                  expected_tokens: list[int] | None = None, n_ctx: int = 4096,
                  vocab: Vocabulary | None = None, cache_dir: str | Path | None = None,
                  timeout: float = 600, lora: str | Path | None = None) -> CompatReport:
    """Load `model_path` in the runtime's own llama.cpp, render `messages` with the GGUF's template
    there, generate greedily, and compare with what training used.

    expected_prompt: dndllama's training rendering *with the BOS token's text first* when the
    tokenizer adds one, e.g. "<bos>" + render_gemma(messages, add_generation_prompt=True); it is
    compared with the runtime's effective prompt (BOS text + rendered template). expected_tokens:
    the training token ids for the same prompt, compared with the runtime's tokenization. lora: a
    GGUF LoRA adapter loaded over the model, as the app's `lora` option does.
    """
    env = require_runtime_env(runtime, cache_dir)
    model_path = Path(model_path)
    messages = _as_dicts(messages if messages is not None else DEFAULT_MESSAGES)
    report = CompatReport(model=str(model_path), runtime=runtime, expected_prompt=expected_prompt,
                          static_problems=static_problems(model_path, runtime))
    request = {"model": str(model_path.resolve()), "messages": messages, "max_tokens": max_tokens,
               "seed": seed, "n_ctx": n_ctx, "n_threads": max(1, os.cpu_count() or 1),
               "lora": str(Path(lora).resolve()) if lora else None}
    with tempfile.TemporaryDirectory(prefix="dndllama-compat-") as tmp:
        req_path, out_path = Path(tmp, "request.json"), Path(tmp, "report.json")
        req_path.write_text(json.dumps(request))
        try:
            proc = subprocess.run([str(env.python), "-c", probe_source(), str(req_path), str(out_path)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            report.error = f"the {runtime} runtime did not finish within {timeout:.0f} s"
            return report
        result = json.loads(out_path.read_text()) if out_path.exists() else {}
        if result.get("stage") != "done":  # llama.cpp aborted (GGML_ASSERT) or crashed
            result["error"] = _crash_message(runtime, proc, Path(f"{out_path}.log"), result.get("stage", "loading"))
    for key, value in result.items():
        if hasattr(report, key):
            setattr(report, key, value)
    if report.loaded and expected_prompt is not None and report.effective_prompt:
        report.difference = first_difference(expected_prompt, report.effective_prompt)
        report.template_identical = report.difference is None
    if report.loaded and expected_tokens is not None and report.prompt_tokens:
        report.first_token_difference = _first_token_difference(list(expected_tokens), report.prompt_tokens)
        report.tokens_identical = report.first_token_difference is None
    if report.text:
        report.tool_calls, report.tool_call_errors = find_tool_calls(report.text, vocab or default_vocabulary())
    return report


def _crash_message(runtime: str, proc: subprocess.CompletedProcess, log_path: Path, stage: str) -> str:
    code = proc.returncode
    how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exit code {code}"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    tail = [line for line in (proc.stderr + proc.stdout + log).strip().splitlines() if line.strip()][-6:]
    return f"the {runtime} runtime crashed ({how}) at stage '{stage}'" + (": " + "\n".join(tail) if tail else "")


def report_json(report: CompatReport) -> dict:
    """A JSON-ready dict (tool calls as their raw text)."""
    data = dict(vars(report))
    data["tool_calls"] = [c.raw for c in report.tool_calls]
    data["tool_call_errors"] = [str(e) for e in report.tool_call_errors]
    data["difference"] = asdict(report.difference) if report.difference else None
    return data
