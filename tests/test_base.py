"""Resolving `--base`: a Hugging Face folder converted by the pinned llama.cpp converter (a tiny random
Gemma 3 checkpoint built here, then tokenized, evaluated and trained natively), Hugging Face ids
offline, refusals before any work, and GGUF files (F32 as is, quantized ones dequantized once,
a vision projector found next to them)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time

import numpy as np
import pytest
from gguf import GGUFReader

from dndllama import _native as native
from dndllama import base
from dndllama.base import BaseModelError, resolve_base
from dndllama.runtime_profiles import RuntimeCompatError, load_runtime
from tiny_models import CORPUS, GEMMA_TEMPLATE, make_tiny_gemma3n, make_tiny_model, write_hf_tokenizer

CTX = 256
NEEDS_HF = "needs the `hf` extra (pip install -e '.[hf]'): "


def hf_modules():
    torch = pytest.importorskip("torch", reason=NEEDS_HF + "torch is not installed")
    transformers = pytest.importorskip("transformers", reason=NEEDS_HF + "transformers is not installed")
    return torch, transformers


def make_hf_gemma3(folder, seed=0):
    """A tiny random Gemma 3 text checkpoint laid out as on the Hub: config.json, model.safetensors,
    a SentencePiece tokenizer.model with byte fallback, and tokenizer_config.json with the special
    tokens and the chat template (what convert_hf_to_gguf.py's Gemma3Model reads)."""
    torch, transformers = hf_modules()
    n_vocab = write_hf_tokenizer(folder)

    torch.manual_seed(seed)
    config = transformers.Gemma3TextConfig(
        vocab_size=n_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=512,
        sliding_window=128)
    model = transformers.Gemma3ForCausalLM(config)
    # Far from Gemma's near-zero init, so the logits are peaked and a conversion mistake shows in the loss
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def make_hf_gemma3_vision(folder):
    """The same text model inside a tiny Gemma3ForConditionalGeneration with a SigLIP vision tower,
    saved with the Hub's tensor names (google/gemma-3-4b-it keeps SigLIP under vision_model.) and
    the preprocessor config the projector's conversion reads."""
    torch, transformers = hf_modules()
    from safetensors.torch import load_file, save_file

    folder, text = make_hf_gemma3(folder)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=64, patch_size=16)
    config = transformers.Gemma3Config(text_config=text.config.to_dict(), vision_config=vision.to_dict(),
                                       mm_tokens_per_image=4, boi_token_index=4, eoi_token_index=5, image_token_index=3)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    transformers.Gemma3ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    weights = folder / "model.safetensors"
    tensors = {("vision_tower.vision_model." + k.removeprefix("vision_tower.") if k.startswith("vision_tower.") else k): v
               for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_seq_length": 4, "size": {"height": 64, "width": 64}}))
    return folder


@pytest.fixture(scope="module")
def hf_gemma3(tmp_path_factory):
    return make_hf_gemma3(tmp_path_factory.mktemp("hf") / "tiny-gemma3")


def windows(model, text):
    toks = model.tokenize(text, True, True)
    toks = (toks * (CTX // len(toks) + 2))[: CTX + 1]
    return np.array([toks[:CTX]], np.int32), np.array([toks[1:CTX + 1]], np.int32)


def no_subprocess(*args, **kwargs):
    raise AssertionError(f"unexpected subprocess: {args[0] if args else kwargs}")


# ---- Hugging Face folders ---------------------------------------------------------------------

def test_hf_folder_converts_to_an_f32_gemma3_that_tokenizes_evaluates_and_trains(hf_gemma3, tmp_path, monkeypatch):
    torch, _ = hf_modules()
    folder, hf_model = hf_gemma3
    cache = tmp_path / "cache"
    messages = []
    start = time.perf_counter()
    b = resolve_base(str(folder), cache_dir=cache, progress=messages.append)
    print(f"conversion: {time.perf_counter() - start:.1f} s")      # shown with pytest -s

    assert b.arch == "gemma3" and b.source == str(folder) and b.mmproj is None
    assert b.train_path == b.gguf and b.gguf.parent == cache / "converted"
    assert {t.tensor_type.name for t in GGUFReader(str(b.gguf)).tensors} == {"F32"}
    assert any("convert" in m for m in messages), messages

    model = native.Model(str(b.train_path))
    info = model.info()
    assert info.arch == "gemma3" and info.n_layer == 2 and info.n_embd == 64 and info.n_ctx_train == 512
    assert info.chat_template == GEMMA_TEMPLATE
    # the turn markers are single special tokens at the tokenizer's ids; BOS is added
    toks = model.tokenize("<start_of_turn>user\nhi<end_of_turn>", True, True)
    assert toks[:2] == [2, 4] and toks[-1] == 5 and toks.count(4) == toks.count(5) == 1
    # plain text tokenizes as the SentencePiece model does
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for line in CORPUS:
        assert model.tokenize(line, False, False) == sp.encode(line), line

    # llama.cpp's loss on the converted file equals PyTorch's on the checkpoint
    x, y = windows(model, " ".join(CORPUS))
    loss, _ = native.evaluate(str(b.train_path), x, y, 2)
    with torch.no_grad():
        logits = hf_model(torch.tensor(x, dtype=torch.long)).logits[0]
        torch_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y[0], dtype=torch.long)).item()
    assert abs(torch_loss - math.log(info.n_vocab)) > 0.5     # the check below can tell a broken conversion
    assert loss == pytest.approx(torch_loss, rel=1e-4)

    o = native.TrainOptions()
    o.n_ctx, o.epochs, o.lr, o.warmup_steps, o.n_threads = CTX, 2, 1e-3, 1, 2
    r = native.train(str(b.train_path), str(tmp_path / "trained.gguf"), x, y, x, y, o)
    assert r["steps"] == 2 and not r["cancelled"] and math.isfinite(r["train_loss"])

    # a second resolve reuses the conversion: no converter, same file, untouched
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    mtime = b.gguf.stat().st_mtime_ns
    start = time.perf_counter()
    again = resolve_base(str(folder), cache_dir=cache, progress=messages.append)
    assert time.perf_counter() - start < 1.0
    assert again.gguf == b.gguf and again.sha256 == b.sha256 and b.gguf.stat().st_mtime_ns == mtime

    # a new pinned llama.cpp, or a changed checkpoint file, converts again
    stamp = tmp_path / "stamp"
    stamp.write_text("another llama.cpp\n")
    monkeypatch.setattr(base, "LLAMA_CPP_STAMP", stamp)
    with pytest.raises(AssertionError, match="unexpected subprocess"):
        resolve_base(str(folder), cache_dir=cache, progress=messages.append)
    monkeypatch.undo()
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    (folder / "generation_config.json").touch()
    with pytest.raises(AssertionError, match="unexpected subprocess"):
        resolve_base(str(folder), cache_dir=cache, progress=messages.append)


def test_a_cut_off_checkpoint_fails_with_the_converters_error_and_leaves_no_gguf(hf_gemma3, tmp_path):
    folder = tmp_path / "cut-off"
    shutil.copytree(hf_gemma3[0], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])    # a download cut in half
    cache = tmp_path / "cache"
    with pytest.raises(BaseModelError, match="failed") as e:
        resolve_base(str(folder), cache_dir=cache)
    message = str(e.value)
    assert str(folder) in message and "Full log" in message
    logs = list((cache / "converted").glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in message and "Traceback" in logs[0].read_text()
    assert not list((cache / "converted").glob("*.gguf*")) and not list((cache / "converted").glob(".*"))


def test_a_vision_checkpoint_converts_its_projector_too(tmp_path, monkeypatch):
    folder = make_hf_gemma3_vision(tmp_path / "tiny-gemma3-vision")
    cache = tmp_path / "cache"
    b = resolve_base(str(folder), cache_dir=cache)
    assert b.arch == "gemma3" and b.mmproj.parent == cache / "converted" and b.mmproj.name.startswith("mmproj-")
    projector = GGUFReader(str(b.mmproj))
    field = lambda key: bytes(projector.fields[key].parts[-1]).decode()  # noqa: E731
    assert field("general.architecture") == "clip" and field("clip.projector_type") == "gemma3"
    names = {t.name for t in projector.tensors}
    assert "v.patch_embd.weight" in names and "mm.input_projection.weight" in names
    assert not any(n.startswith("blk.") for n in names)   # the text model is in the other file
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert resolve_base(str(folder), cache_dir=cache).mmproj == b.mmproj   # converted once


def test_gemma3n_folder_is_refused_by_the_apps_runtime_before_converting(tmp_path, monkeypatch):
    folder = tmp_path / "gemma-3n-E2B-it"
    folder.mkdir()
    config = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"]}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(RuntimeCompatError, match="'gemma3n' does not load in cactus-0.2") as e:
        resolve_base(str(folder), cache_dir=tmp_path / "cache", runtime_check=load_runtime("cactus-0.2").check_architecture)
    assert "llama.cpp-current" in str(e.value)     # and where it does load
    assert not (tmp_path / "cache" / "converted").exists()


def test_gemma3n_checkpoint_converts_for_a_runtime_that_loads_it(tmp_path):
    hf_modules()
    gguf_path, _ = make_tiny_gemma3n(tmp_path / "tiny")   # converts hf/ once, to build the fixture
    b = resolve_base(str(tmp_path / "tiny" / "hf"), cache_dir=tmp_path / "cache",
                     runtime_check=load_runtime("llama.cpp-current").check_architecture)
    assert b.arch == "gemma3n" and b.train_path == b.gguf and b.gguf.parent == tmp_path / "cache" / "converted"
    assert native.Model(str(b.gguf)).info().n_layer == native.Model(str(gguf_path)).info().n_layer


def test_folder_without_config_json_is_not_a_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(BaseModelError, match="no config.json") as e:
        resolve_base(str(folder), cache_dir=tmp_path / "cache")
    assert str(folder) in str(e.value)


# ---- Hugging Face ids -------------------------------------------------------------------------

def expect_offline_error(tmp_path):
    with pytest.raises(BaseModelError) as e:
        resolve_base("google/gemma-3-1b-it", cache_dir=tmp_path / "cache")
    message = str(e.value)
    assert "google/gemma-3-1b-it" in message and "--base" in message and "folder" in message.lower()
    return message


def test_hf_id_offline_says_how_to_proceed(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason=NEEDS_HF + "huggingface_hub is not installed")
    # the flag is read when huggingface_hub is imported, so set the module's copy too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    message = expect_offline_error(tmp_path)
    assert "download" in message


def test_hf_id_without_huggingface_hub_says_how_to_proceed(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)     # makes `import huggingface_hub` fail
    message = expect_offline_error(tmp_path)
    assert "huggingface_hub" in message


def test_gemma3n_id_is_refused_by_the_apps_runtime_before_downloading(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(RuntimeCompatError, match="gemma3n"):
        resolve_base("google/gemma-3n-E2B-it", cache_dir=tmp_path / "cache",
                     runtime_check=load_runtime("cactus-0.2").check_architecture)


# ---- GGUF files -------------------------------------------------------------------------------

def test_quantized_gguf_is_dequantized_to_f32_once(tmp_path, monkeypatch):
    q8 = tmp_path / "models" / "tiny-q8_0.gguf"
    q8.parent.mkdir()
    native.quantize(str(make_tiny_model(tmp_path / "tiny.gguf")), str(q8), "Q8_0")
    cache = tmp_path / "cache"
    messages = []
    b = resolve_base(str(q8), cache_dir=cache, progress=messages.append)
    assert b.gguf == q8 and b.arch == "gemma3" and b.mmproj is None
    assert b.train_path.parent == cache / "bases" and b.train_path != q8
    # every tensor F32 but token_embd, which llama.cpp never trains: it keeps its type (and values)
    trained, stored = GGUFReader(str(b.train_path)).tensors, {t.name: t for t in GGUFReader(str(q8)).tensors}
    assert {t.name: t.tensor_type.name for t in trained if t.tensor_type.name != "F32"} == {"token_embd.weight": "Q8_0"}
    assert stored["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    embd = next(t for t in trained if t.name == "token_embd.weight")
    assert np.array_equal(np.asarray(embd.data), np.asarray(stored["token_embd.weight"].data))
    assert any("dequantizing" in m for m in messages)
    assert native.Model(str(b.train_path)).info().n_vocab == native.Model(str(q8)).info().n_vocab

    def no_quantize(*args, **kwargs):
        raise AssertionError("dequantized again")

    monkeypatch.setattr(native, "quantize", no_quantize)
    mtime = b.train_path.stat().st_mtime_ns
    again = resolve_base(str(q8), cache_dir=cache, progress=messages.append)
    assert again.train_path == b.train_path and again.sha256 == b.sha256
    assert b.train_path.stat().st_mtime_ns == mtime


def test_f32_gguf_is_used_as_is_and_an_mmproj_sibling_is_reported(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.gguf", arch="llama")
    cache = tmp_path / "cache"
    b = resolve_base(str(model), cache_dir=cache)
    assert b.gguf == b.train_path == model and b.arch == "llama" and b.mmproj is None
    assert not (cache / "bases").exists()

    mmproj = tmp_path / "mmproj-tiny-f16.gguf"
    mmproj.write_bytes(b"GGUF")
    assert resolve_base(str(model), cache_dir=cache).mmproj == mmproj


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(BaseModelError, match="GGUF") as e:
        resolve_base(str(bad), cache_dir=tmp_path / "cache")
    assert str(bad) in str(e.value)
