"""LoRA in the native core on real llama.cpp: memorising a text through an adapter on a frozen base,
the adapter's gradients against finite differences, the exported GGUF LoRA against the merged model,
resume, and clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader

from dndllama import _native as native
from test_native import SGD, TEXT, options, read_tensors, windows_for
from tiny_models import make_tiny_model

LORA = dict(method="lora", lora_rank=8, lora_alpha=16.0)
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-lora")
    # a frozen llama head at the default scale keeps every logit within a few nats (tiny_models)
    return {"gemma3": make_tiny_model(d / "gemma3.gguf", "gemma3", n_embd=128, n_ff=256),
            "llama": make_tiny_model(d / "llama.gguf", "llama", n_embd=128, n_ff=256, head_scale=0.1)}


def adapter_delta(adapter: dict, name: str, alpha: float) -> np.ndarray:
    a, b = adapter[name + ".lora_a"].astype(np.float64), adapter[name + ".lora_b"].astype(np.float64)
    rank = a.shape[0]   # numpy shapes are reversed ggml shapes: A is (rank, n_in), B (n_out, rank)
    return alpha / rank * b @ a


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_lora_memorises_a_text_with_the_base_frozen(tiny, tmp_path, arch):
    base = tiny[arch]
    x, y = windows_for(native.Model(str(base)), TEXT)
    losses = []
    out = tmp_path / "merged.gguf"
    r = native.train(str(base), str(out), x, y, x, y, options(100, 1e-2, **LORA),
                     lambda p: losses.append(p["loss"]) if p["event"] == "step" else None)
    assert losses[-1] < 0.05, losses[::10]
    assert native.evaluate(str(out), x, y, 2)[1] == 1.0

    adapter_file = tmp_path / "merged.lora.gguf"
    meta = GGUFReader(str(adapter_file)).fields
    assert bytes(meta["general.type"].parts[-1]).decode() == "adapter"
    assert float(meta["adapter.lora.alpha"].parts[-1][0]) == 16.0
    adapter, before, merged = read_tensors(adapter_file), read_tensors(base), read_tensors(out)
    assert r["n_trainable"] == sum(t.size for t in adapter.values())
    assert {n.rsplit(".", 2)[0] for n in adapter} == {f"blk.{i}.{t}" for i in range(2) for t in TARGETS}
    for name, w in before.items():
        if name + ".lora_a" in adapter:
            # merged = the untouched base + alpha/rank * B A: the base itself never moved
            np.testing.assert_allclose(merged[name], w + adapter_delta(adapter, name, 16.0), rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        else:
            assert np.array_equal(merged[name], w), name   # norms and embeddings: bit-identical


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_exported_adapter_gives_the_merged_models_logits(tiny, tmp_path, arch):
    base = tiny[arch]
    x, y = windows_for(native.Model(str(base)), TEXT)
    native.train(str(base), str(tmp_path / "trained.gguf"), x, y, x[:0], y[:0], options(20, 1e-2, **LORA))
    adapter = str(tmp_path / "trained.lora.gguf")
    native.merge_adapter(str(base), adapter, str(tmp_path / "merged.gguf"))
    tokens = x[0, :48].tolist()
    with_adapter = native.logits(str(base), tokens, adapter)
    merged = native.logits(str(tmp_path / "merged.gguf"), tokens)
    plain = native.logits(str(base), tokens)
    scale = np.abs(merged).max()
    # the KV cache holds F16, so the two paths agree to its rounding (5e-4), not to F32's
    assert np.abs(with_adapter - merged).max() < 5e-4 * scale + 1e-4
    assert np.abs(plain - merged).max() > 0.1 * scale   # the adapter really changes the model
    # merging after training writes the same file training wrote
    assert read_tensors(tmp_path / "merged.gguf").keys() == read_tensors(tmp_path / "trained.gguf").keys()
    for name, w in read_tensors(tmp_path / "trained.gguf").items():
        assert np.array_equal(read_tensors(tmp_path / "merged.gguf")[name], w), name


def test_adapter_gradients_match_finite_differences(tmp_path):
    path = make_tiny_model(tmp_path / "base.gguf", "gemma3", n_embd=32, n_ff=64)
    x, y = windows_for(native.Model(str(path)), TEXT)
    y[:, :64] = -1
    # one step from the fresh adapter (B = 0) makes B non-zero, so A gets a gradient too
    native.train(str(path), str(tmp_path / "s1.gguf"), x, y, x[:0], y[:0], options(1, 0.5, **SGD, **LORA))
    start = tmp_path / "s1.lora.gguf"
    r = native.train(str(path), str(tmp_path / "s2.gguf"), x, y, x[:0], y[:0],
                     options(1, 1.0, **SGD, **LORA, lora_init=str(start)))
    assert native.evaluate(str(path), x, y, 2, 0, str(start))[0] == pytest.approx(r["train_loss"], rel=1e-5)
    before, after = read_tensors(start), read_tensors(tmp_path / "s2.lora.gguf")

    work = tmp_path / "work.lora.gguf"
    shutil.copy(start, work)
    reader = GGUFReader(str(work), "r+")
    errors = {}
    for t in reader.tensors:
        if not t.name.startswith("blk.0."):
            continue
        g = (before[t.name].astype(np.float64) - after[t.name]).ravel()
        w = t.data.reshape(-1)   # a view into the file: the next load sees every write
        picked = np.argsort(-np.abs(g))[:2]
        numeric = []
        for i in picked:
            v, eps = w[i], 1e-2
            w[i] = v + eps
            reader.data.flush()
            plus = native.evaluate(str(path), x, y, 2, 0, str(work))[0]
            w[i] = v - eps
            reader.data.flush()
            minus = native.evaluate(str(path), x, y, 2, 0, str(work))[0]
            w[i] = v
            reader.data.flush()
            numeric.append((plus - minus) / (2 * eps))
        errors[t.name] = float(np.linalg.norm(g[picked] - numeric) / np.linalg.norm(numeric))
    assert len(errors) == 2 * len(TARGETS)
    assert max(errors.values()) < 0.05, errors


def test_checkpoints_carry_their_adapter_and_resume_from_it(tiny, tmp_path):
    base = str(tiny["gemma3"])
    x, y = windows_for(native.Model(base), TEXT)
    x2, y2 = np.repeat(x, 4, axis=0), np.repeat(y, 4, axis=0)
    ckpt = tmp_path / "ckpt"
    full = native.train(base, str(tmp_path / "full.gguf"), x2, y2, x, y,
                        options(1, 1e-2, **LORA, checkpoint_dir=str(ckpt), save_every=2))
    assert (ckpt / "step-2.gguf").exists() and (ckpt / "step-2.lora.gguf").exists()
    # resuming at step 2 from its adapter (and the original base) ends where the whole run ended
    resumed = native.train(base, str(tmp_path / "resumed.gguf"), x2, y2, x, y,
                           options(1, 1e-2, **LORA, start_step=2, lora_init=str(ckpt / "step-2.lora.gguf")))
    assert resumed["steps"] == full["steps"] == 4
    # AdamW's moments restart on resume, so close, not equal
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=0.25)
    assert resumed["val_loss"] < native.evaluate(base, x, y, 2)[0] / 2


def test_lora_errors_name_the_cause(tiny, tmp_path):
    base = str(tiny["gemma3"])
    x, y = windows_for(native.Model(base), TEXT)
    out = str(tmp_path / "out.gguf")
    with pytest.raises(native.NativeError, match="matches no block weight"):
        native.train(base, out, x, y, x[:0], y[:0], options(1, 1e-2, **LORA, lora_targets="no_such_tensor"))
    with pytest.raises(native.NativeError, match="unknown training method 'qlora'"):
        native.train(base, out, x, y, x[:0], y[:0], options(1, 1e-2, method="qlora"))
    with pytest.raises(native.NativeError, match="rank must be positive"):
        native.train(base, out, x, y, x[:0], y[:0], options(1, 1e-2, **{**LORA, "lora_rank": 0}))
    # an adapter made for another model does not load onto this one
    native.train(base, out, x, y, x[:0], y[:0], options(1, 1e-2, **LORA))
    other = str(tiny["llama"])
    with pytest.raises(native.NativeError, match="could not load the LoRA adapter"):
        native.logits(other, x[0, :8].tolist(), native.adapter_path(out))


LORA_STEP_IN_A_LOOP_PROCESS = """
import sys, numpy as np
from dndllama import _native as native
base, start, out, ctx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
z = np.load(sys.argv[5])
o = native.TrainOptions()
o.n_ctx, o.epochs, o.lr, o.n_threads = ctx, 1, 1.0, 2
o.optimizer, o.weight_decay, o.warmup_steps, o.lr_min_ratio = "sgd", 0.0, 0, 1.0
o.method, o.lora_rank, o.lora_alpha, o.lora_init = "lora", 8, 16.0, start
native.train(base, out, z["x"], z["y"], z["x"][:0], z["y"][:0], o)
"""


def quantized_base_and_adapter(tiny, tmp_path, qtype):
    """The tiny gemma3 quantized to `qtype`, its windows, and an adapter one SGD step in (B no
    longer zero, so every adapter tensor has a gradient)."""
    base = tmp_path / f"base-{qtype}.gguf"
    native.quantize(str(tiny["gemma3"]), str(base), qtype)
    x, y = windows_for(native.Model(str(base)), TEXT)
    native.train(str(base), str(tmp_path / "s1.gguf"), x, y, x[:0], y[:0], options(1, 0.5, **SGD, **LORA))
    return base, x, y, str(tmp_path / "s1.lora.gguf")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M", "F16"])
def test_lora_on_a_quantized_base_gets_the_loops_gradients(tiny, tmp_path, qtype):
    # the frozen base stays in its stored type (QLoRA): patch 0004 dequantizes its rows into the
    # GEMM's operand; the stock quantized OUT_PROD loop must give the same adapter gradients
    base, x, y, start = quantized_base_and_adapter(tiny, tmp_path, qtype)
    native.train(str(base), str(tmp_path / "gemm.gguf"), x, y, x[:0], y[:0],
                 options(1, 1.0, **SGD, **LORA, lora_init=start))
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    subprocess.run([sys.executable, "-c", LORA_STEP_IN_A_LOOP_PROCESS, str(base), start, str(tmp_path / "loop.gguf"),
                    str(x.shape[1]), str(tmp_path / "xy.npz")], check=True, env={**os.environ, "GGML_OUT_PROD_LOOP": "1"})
    before = read_tensors(start)
    gemm, loop = read_tensors(tmp_path / "gemm.lora.gguf"), read_tensors(tmp_path / "loop.lora.gguf")
    differs = False
    for name, w in before.items():
        g_gemm, g_loop = w.astype(np.float64) - gemm[name], w.astype(np.float64) - loop[name]
        assert np.linalg.norm(g_gemm - g_loop) <= 1e-4 * np.linalg.norm(g_loop) + 1e-9, name
        differs |= not np.array_equal(gemm[name], loop[name])
    assert differs   # the same bits everywhere would mean the GEMM path never ran


@pytest.mark.skipif(not native.bf16_matmul_supported(), reason="no AMX-BF16 on this CPU or build")
@pytest.mark.parametrize("qtype", ["Q8_0", "F16"])
def test_bf16_matmul_on_a_quantized_base_gives_the_f32_adapter_gradients(tiny, tmp_path, qtype):
    # the AMX path rounds a Q8_0 (directly) or F16 base's rows to BF16, in the forward products and
    # in the input gradients that reach the adapters of earlier layers
    base, x, y, start = quantized_base_and_adapter(tiny, tmp_path, qtype)
    for precision in ("f32", "bf16"):
        native.train(str(base), str(tmp_path / f"{precision}.gguf"), x, y, x[:0], y[:0],
                     options(1, 1.0, **SGD, **LORA, lora_init=start, matmul_precision=precision))
    before = read_tensors(start)
    f32, bf16 = read_tensors(tmp_path / "f32.lora.gguf"), read_tensors(tmp_path / "bf16.lora.gguf")
    for name, w in before.items():
        g32, g16 = w.astype(np.float64) - f32[name], w.astype(np.float64) - bf16[name]
        assert 0 < np.linalg.norm(g16 - g32) <= 3e-2 * np.linalg.norm(g32), name
