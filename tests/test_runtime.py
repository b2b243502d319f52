"""Runtime profiles (runtime_profiles.py), app snippets (snippets.py) and the real old-runtime check
(app_runtime.py, app_runtime_probe.py, cli/runtime.py). Tests marked `compat` run llama-cpp-python 0.3.9 (the app's
cactus-0.2 llama.cpp) in its own venv; conftest skips them when it is not installed."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from dndllama import cli
from dndllama.cli.runtime import add_runtime_commands
from dndllama.app_runtime import (RuntimeNotInstalled, check_runtime, ensure_runtime_env, first_difference,
                                  require_runtime_env, static_problems)
from dndllama.dataset import Message, render_gemma
from dndllama.runtime_profiles import RUNTIMES, RuntimeCompatError, UnknownRuntime, load_runtime
from dndllama.snippets import cactus_ts, llama_rn_ts
from tiny_models import make_tiny_model

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data" / "independent"

# Option names from the packages' own declarations (npm pack, lib/typescript/*.d.ts).
# cactus-react-native@0.2.11: NativeCactus.d.ts NativeContextParams; vlm.d.ts adds `mmproj`.
CACTUS_CONTEXT_OPTIONS = {
    "model", "chat_template", "reasoning_format", "is_model_asset", "use_progress_callback", "n_ctx",
    "n_batch", "n_ubatch", "n_threads", "n_gpu_layers", "no_gpu_devices", "flash_attn", "cache_type_k",
    "cache_type_v", "use_mlock", "use_mmap", "vocab_only", "lora", "lora_scaled", "lora_list",
    "rope_freq_base", "rope_freq_scale", "pooling_type", "embedding", "embd_normalize", "mmproj",
}
# NativeCompletionParams (sampling part) + CompletionBaseParams, identical names in both packages
COMPLETION_OPTIONS = {"n_predict", "temperature", "top_k", "top_p", "min_p", "stop", "seed", "jinja",
                      "messages", "chat_template", "tools", "grammar", "json_schema"}
# llama.rn@0.12.9: types.d.ts NativeContextParams (the options used here and their neighbours)
LLAMA_RN_CONTEXT_OPTIONS = {
    "model", "chat_template", "is_model_asset", "use_progress_callback", "n_ctx", "n_batch", "n_ubatch",
    "n_parallel", "n_threads", "n_gpu_layers", "devices", "no_gpu_devices", "flash_attn_type", "flash_attn",
    "cache_type_k", "cache_type_v", "use_mlock", "use_mmap", "vocab_only", "lora", "lora_scaled", "lora_list",
    "rope_freq_base", "rope_freq_scale", "pooling_type", "ctx_shift", "swa_full", "embedding",
}

# ---------------------------------------------------------------- profiles


def test_both_runtimes_are_listed():
    assert {"cactus-0.2", "llama.cpp-current"} <= set(RUNTIMES)


def test_gemma3n_is_refused_by_cactus_with_the_way_out():
    with pytest.raises(RuntimeCompatError) as excinfo:
        load_runtime("cactus-0.2").check_architecture("gemma3n")
    message = str(excinfo.value)
    assert "'gemma3n'" in message and "cactus-0.2" in message
    assert "it loads in: llama.cpp-current" in message  # which runtime can load it
    assert "llama-cpp-python==0.3.9" in message  # which llama.cpp the app has
    assert "React Native runtime built from a llama.cpp that has this architecture" in message  # what to upgrade
    assert "gemma-3-270m" in message  # or which base to pick instead


@pytest.mark.parametrize("arch", ["gemma3", "gemma2", "qwen3", "llama", "llama4"])
def test_cactus_loads_the_architectures_the_app_uses(arch):
    load_runtime("cactus-0.2").check_architecture(arch)


def test_current_runtime_loads_gemma3n_and_unknown_arch_has_no_home():
    load_runtime("llama.cpp-current").check_architecture("gemma3n")
    with pytest.raises(RuntimeCompatError, match="no known runtime loads it"):
        load_runtime("cactus-0.2").check_architecture("not-a-model")


def test_cactus_list_is_the_may_2025_tree():
    archs = load_runtime("cactus-0.2").architectures
    assert len(archs) == 67 and archs[0] == "llama" and archs[-1] == "bailingmoe"  # LLM_ARCH_NAMES of 0.3.9
    assert "gemma3n" not in archs and "(unknown)" not in archs


def _arch_names(source: Path) -> list[str]:
    text = source.read_text()
    block = text[text.index("LLM_ARCH_NAMES"):]
    block = block[:block.index("};")]
    return [n for n in re.findall(r'\{\s*LLM_ARCH_\w+,\s*"([^"]+)"\s*\}', block) if n != "(unknown)"]


def test_current_list_matches_the_pinned_tree():
    source = ROOT / "llama.cpp" / "src" / "llama-arch.cpp"
    if not source.exists():
        pytest.skip("llama.cpp/ is fetched by the build (pip install -e .); not present here")
    assert list(load_runtime("llama.cpp-current").architectures) == _arch_names(source)


def test_every_old_architecture_is_still_known_today():
    current = set(load_runtime("llama.cpp-current").architectures)
    assert set(load_runtime("cactus-0.2").architectures) <= current


def test_unknown_runtime_lists_the_valid_names():
    with pytest.raises(UnknownRuntime) as excinfo:
        load_runtime("cactus-9")
    assert "cactus-9" in str(excinfo.value)
    for name in RUNTIMES:
        assert name in str(excinfo.value)
    assert isinstance(excinfo.value, KeyError)


@pytest.mark.parametrize("quant, old, new", [
    ("Q4_K_M", True, True), ("q8_0", True, True), ("Q4_K", True, True), ("F16", True, True),
    ("BF16", True, True), ("LLAMA_FTYPE_MOSTLY_Q5_K_M", True, True), ("MXFP4", False, True),
    ("MXFP4_MOE", False, True), ("NVFP4", False, True), ("Q9_Z", False, False),
])
def test_quant_support(quant, old, new):
    assert load_runtime("cactus-0.2").supports_quant(quant) is old
    assert load_runtime("llama.cpp-current").supports_quant(quant) is new


def test_unsupported_quant_names_the_alternatives():
    with pytest.raises(RuntimeCompatError, match="Q4_K_M"):
        load_runtime("cactus-0.2").check_quant("MXFP4")


def test_quirks_are_machine_usable():
    cactus = load_runtime("cactus-0.2")
    swa = cactus.quirk("gemma3-fixed-swa")
    assert swa.fields == {"arch": "gemma3", "swa_pattern": 6, "rope_freq_base_swa": 10000.0}
    assert cactus.quirk("chat-template").fields["engine"] == "llama_chat_apply_template"
    cactus.check_block_count("gemma3", 18)  # Gemma 3 270M
    with pytest.raises(RuntimeCompatError, match="at least 6"):
        cactus.check_block_count("gemma3", 2)
    load_runtime("llama.cpp-current").check_block_count("gemma3", 2)


def test_bpe_pre_tokenizer_check():
    cactus = load_runtime("cactus-0.2")
    cactus.check_pre_tokenizer("gpt2", "qwen2")  # qwen3's pre-tokenizer is known in May 2025
    cactus.check_pre_tokenizer("llama", "anything")  # SentencePiece vocabularies are not checked
    with pytest.raises(RuntimeCompatError, match="unknown pre-tokenizer type"):
        cactus.check_pre_tokenizer("gpt2", "gemma4")


# ---------------------------------------------------------------- static checks (no runtime needed)


def _gemma3n_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "gemma3n")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _garbage_gguf(path: Path) -> Path:
    path.write_bytes(b"this is not a GGUF file" * 20)
    return path


def test_static_problems(tmp_path):
    assert static_problems(make_tiny_model(tmp_path / "ok.gguf", n_layer=6)) == []
    assert "gemma3n" in static_problems(_gemma3n_gguf(tmp_path / "3n.gguf"))[0]
    assert "not a readable GGUF" in static_problems(_garbage_gguf(tmp_path / "bad.gguf"))[0]
    assert "at least 6" in static_problems(make_tiny_model(tmp_path / "two.gguf", n_layer=2))[0]


def test_first_difference_points_at_the_character():
    diff = first_difference("<bos><start_of_turn>user\nhi", "<bos><|im_start|>user\nhi")
    assert diff.offset == 6 and diff.expected.startswith("<bos><s") and diff.actual.startswith("<bos><|")
    assert first_difference("same", "same") is None
    assert first_difference("abc", "abcd").offset == 3


def test_missing_runtime_names_the_install_command(tmp_path):
    with pytest.raises(RuntimeNotInstalled, match="dndllama runtime install cactus-0.2"):
        require_runtime_env("cactus-0.2", cache_dir=tmp_path)
    with pytest.raises(RuntimeNotInstalled):
        check_runtime(make_tiny_model(tmp_path / "m.gguf", n_layer=6), cache_dir=tmp_path)


# ---------------------------------------------------------------- snippets

CONFIG = {
    "modelPath": "/data/models/dm-v3.Q4_K_M.gguf",
    "mmprojPath": None,
    "n_ctx": 4096,
    "sampling": {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "stop": ["<end_of_turn>"], "n_predict": 256},
    "toolPrompt": 'Tools: "quoted" {braces} `ticks` [roll: perception]',
    "tools": ["roll", "health", "inventory", "spellcast", "check"],
}
VISION = {**CONFIG, "mmprojPath": "/data/models/mmproj-gemma3.gguf"}
ADAPTER = {**CONFIG, "adapterPath": "/data/models/dm-lora.gguf"}


def _code_only(ts: str) -> str:
    """The snippet without string literals and // comments (they may hold any character)."""
    ts = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', ts)
    ts = re.sub(r"'(?:[^'\\\n]|\\.)*'", "''", ts)
    ts = re.sub(r"`(?:[^`\\]|\\.)*`", "``", ts)
    return re.sub(r"//[^\n]*", "", ts)


def _balanced(ts: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in _code_only(ts):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack


def _call_options(ts: str, call: str) -> set[str]:
    """Keys of the object literal passed to `call(`."""
    code = _code_only(ts)
    start = code.index(call + "(")
    body = code[code.index("{", start):]
    depth, end = 0, 0
    for end, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            break
    return set(re.findall(r"^\s*(\w+):", body[1:end], re.M))


def _completion_options(ts: str) -> set[str]:
    code = _code_only(ts)
    body = code[code.index("COMPLETION_PARAMS = {"):]
    return set(re.findall(r"^\s*(\w+):", body[:body.index("}")], re.M))


@pytest.mark.parametrize("make", [cactus_ts, llama_rn_ts])
@pytest.mark.parametrize("config", [CONFIG, VISION, ADAPTER])
def test_snippets_are_balanced_and_carry_the_config(make, config):
    ts = make(config)
    assert _balanced(ts), ts
    assert '"/data/models/dm-v3.Q4_K_M.gguf"' in ts
    assert '"Tools: \\"quoted\\" {braces} `ticks` [roll: perception]"' in ts  # escaped, verbatim
    assert "systemPrompt(systemBlock)" in ts
    assert '["roll", "health", "inventory", "spellcast", "check"]' in ts
    assert "jinja: false" in ts  # llama.cpp's built-in template, as training rendered it
    assert _completion_options(ts) <= COMPLETION_OPTIONS
    assert ("ADAPTER_PATH" in ts) is ("adapterPath" in config)
    assert ("lora_list: [{ path: ADAPTER_PATH, scaled: 1.0 }]" in ts) is ("adapterPath" in config)


def test_cactus_text_model_has_no_mmproj():
    ts = cactus_ts(CONFIG)
    assert "CactusLM.init(" in ts and "CactusVLM" not in ts
    assert "mmproj:" not in ts
    assert "export const MMPROJ_PATH: string | null = null;  // text-only model" in ts
    assert _call_options(ts, "CactusLM.init") == {"model", "n_ctx", "n_gpu_layers"}
    assert _call_options(ts, "CactusLM.init") <= CACTUS_CONTEXT_OPTIONS


def test_cactus_vision_model_uses_cactus_vlm_with_mmproj():
    ts = cactus_ts(VISION)
    assert "CactusVLM.init(" in ts and "CactusLM" not in ts
    assert '"/data/models/mmproj-gemma3.gguf"' in ts
    assert _call_options(ts, "CactusVLM.init") == {"model", "mmproj", "n_ctx", "n_gpu_layers"}
    assert _call_options(cactus_ts({**VISION, **ADAPTER, "mmprojPath": VISION["mmprojPath"]}),
                         "CactusVLM.init") <= CACTUS_CONTEXT_OPTIONS


def test_llama_rn_options_and_multimodal():
    text, vision, adapter = llama_rn_ts(CONFIG), llama_rn_ts(VISION), llama_rn_ts(ADAPTER)
    assert _call_options(text, "initLlama") == {"model", "n_ctx", "n_gpu_layers"}
    assert _call_options(adapter, "initLlama") == {"model", "n_ctx", "n_gpu_layers", "lora_list"}
    assert _call_options(adapter, "initLlama") <= LLAMA_RN_CONTEXT_OPTIONS
    assert "initMultimodal" not in text and "mmproj" not in _code_only(text).replace("MMPROJ_PATH", "")
    assert "await context.initMultimodal({ path: MMPROJ_PATH, use_gpu: true });" in vision


def test_snippet_config_errors():
    with pytest.raises(ValueError, match="mmprojPath"):
        cactus_ts({k: v for k, v in CONFIG.items() if k != "mmprojPath"})
    with pytest.raises(ValueError, match="temprature"):
        llama_rn_ts({**CONFIG, "sampling": {"temprature": 0.5}})


# ---------------------------------------------------------------- the real old runtime

CHAT = [Message("system", "Role: Dungeon Master\nWorld: Greyhawk"), Message("user", "I look for the dragon.")]


def _training_tokens(model: Path, messages) -> list[int] | None:
    try:
        from dndllama import _native
    except ImportError:
        return None
    return list(_native.Model(str(model), vocab_only=True).tokenize(
        render_gemma(messages, add_generation_prompt=True), True, True))


@pytest.mark.compat
def test_tiny_gemma3_loads_and_generates_in_the_app_runtime(tmp_path):
    # 6 blocks: the old gemma3 graph needs one global-attention layer (quirk gemma3-needs-a-global-layer)
    model = make_tiny_model(tmp_path / "tiny.gguf", n_layer=6)
    expected = "<bos>" + render_gemma(CHAT, add_generation_prompt=True)
    report = check_runtime(model, messages=CHAT, expected_prompt=expected,
                           expected_tokens=_training_tokens(model, CHAT), max_tokens=12, n_ctx=512)
    assert report.loaded and report.error is None and report.stage == "done", report.error
    assert report.runtime_version == "0.3.9"
    assert report.template_source == "gguf"
    assert report.prompt == render_gemma(CHAT, add_generation_prompt=True)  # no BOS in the text ...
    assert report.effective_prompt == expected and report.prompt_tokens[0] == 2  # ... the tokenizer adds it
    assert report.template_identical is True and report.difference is None
    assert report.tokens_identical in (True, None)  # None only without the native module
    # random weights: the 12 greedy tokens may all be control tokens, which detokenize to ""
    assert report.generated_tokens == len(report.generated_ids) == 12 and report.finish_reason == "length"
    assert report.ok


@pytest.mark.compat
def test_template_difference_is_located(tmp_path):
    """A GGUF without a chat template: the app falls back to chatml, which training never saw."""
    model = make_tiny_model(tmp_path / "bare.gguf", n_layer=6, chat_template=None)
    expected = "<bos>" + render_gemma(CHAT, add_generation_prompt=True)
    report = check_runtime(model, messages=CHAT, expected_prompt=expected, max_tokens=2, n_ctx=512)
    assert report.loaded and "chatml" in report.template_source
    assert report.template_identical is False and not report.ok
    assert report.difference.offset == len("<bos><")
    assert report.effective_prompt.startswith("<bos><|im_start|>system\n")


@pytest.mark.compat
def test_gemma3n_gguf_fails_cleanly(tmp_path):
    report = check_runtime(_gemma3n_gguf(tmp_path / "3n.gguf"), max_tokens=2)
    assert report.loaded is False and not report.ok
    assert "unknown model architecture: 'gemma3n'" in report.error
    assert "it loads in: llama.cpp-current" in report.static_problems[0]


@pytest.mark.compat
def test_garbage_gguf_fails_cleanly(tmp_path):
    report = check_runtime(_garbage_gguf(tmp_path / "bad.gguf"), max_tokens=2)
    assert report.loaded is False and report.error and "failed to load model" in report.error


@pytest.mark.compat
def test_crash_inside_the_runtime_is_a_report_not_a_crash(tmp_path):
    """Two gemma3 blocks, both sliding-window: llama.cpp of May 2025 segfaults in its first decode."""
    report = check_runtime(make_tiny_model(tmp_path / "two.gguf", n_layer=2), messages=CHAT, max_tokens=2, n_ctx=512)
    assert report.loaded is True and report.stage == "tokenized; generating"
    assert "crashed (signal SIGSEGV)" in report.error and not report.ok
    assert "at least 6" in report.static_problems[0]


@pytest.mark.compat
def test_installed_runtime_is_reused():
    lines = []
    env = ensure_runtime_env("cactus-0.2", progress=lines.append)
    assert lines and "using" in lines[0] and env.version == "0.3.9" and env.python.exists()


# ---------------------------------------------------------------- CLI


@pytest.fixture
def runtime_cli(monkeypatch):
    if add_runtime_commands not in cli.COMMAND_GROUPS:
        monkeypatch.setattr(cli, "COMMAND_GROUPS", [*cli.COMMAND_GROUPS, add_runtime_commands])

    def run(capsys, *argv):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.compat
def test_check_runtime_command(tmp_path, capsys, runtime_cli):
    good = make_tiny_model(tmp_path / "good.gguf", n_layer=6)
    code, out, err = runtime_cli(capsys, "check-runtime", str(good), "--data", str(DATA), "--max-tokens", "4")
    assert code == 0, out + err
    assert "identical to training" in out and "OK: the app's runtime loads this model" in out
    bare = make_tiny_model(tmp_path / "bare.gguf", n_layer=6, chat_template=None)
    code, out, err = runtime_cli(capsys, "check-runtime", str(bare), "--data", str(DATA), "--max-tokens", "2")
    assert code == 1 and "DIFFERENT from training: first difference at character" in out
    code, out, err = runtime_cli(capsys, "check-runtime", str(_gemma3n_gguf(tmp_path / "3n.gguf")), "--data", str(DATA))
    assert code == 1 and re.search(r"^load +FAILED: .*unknown model architecture", out, re.M) and "cannot load" in err


def test_check_runtime_command_without_the_runtime(tmp_path, capsys, runtime_cli, monkeypatch):
    monkeypatch.setenv("DNDLLAMA_RUNTIMES_DIR", str(tmp_path / "none"))
    model = make_tiny_model(tmp_path / "m.gguf", n_layer=6)
    code, out, err = runtime_cli(capsys, "check-runtime", str(model), "--data", str(DATA))
    assert code == 1
    assert "not installed" in err and "dndllama runtime install cactus-0.2" in err
    code, out, err = runtime_cli(capsys, "check-runtime", str(tmp_path / "missing.gguf"), "--data", str(DATA))
    assert code == 1 and "not found" in err
