"""Tiny, random, real GGUF models for tests: the same architectures llama.cpp loads in production
(gemma3 with split GEGLU, llama with split SwiGLU), a small SentencePiece-style vocabulary with byte
fallback and Gemma's turn tokens, written with gguf-py. Big enough to learn a sentence, small
enough to train in seconds on two cores. Gemma 3n is built as a Hugging Face checkpoint and
converted by the pinned converter instead (it needs torch and transformers: the `hf` extra)."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

# Gemma's special tokens at Gemma's ids (pad 0, eos 1, bos 2, unk 3), then the turn markers
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = ["the dragon sleeps under the mountain", "roll perception to see the goblin",
          "you enter the tavern and a goblin attacks you", "the DM asks the user what they do next"]
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'"
    " + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
WORDS = ["the", "dragon", "sleeps", "under", "mountain", "roll", "perception", "health", "you", "see",
         "tavern", "goblin", "attack", "and", "a", "of", "to", "DM", "user", "model"]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Special tokens, 256 byte-fallback tokens, single characters and a few whole words."""
    tokens, scores, types = [], [], []

    def add(tok: str, score: float, kind: gguf.TokenType) -> None:
        tokens.append(tok)
        scores.append(score)
        types.append(int(kind))

    for tok in SPECIAL:
        add(tok, 0.0, gguf.TokenType.UNKNOWN if tok == "<unk>" else gguf.TokenType.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)
    chars = string.ascii_letters + string.digits + string.punctuation
    for i, c in enumerate(chars):
        add(c, -10.0 - i * 0.01, gguf.TokenType.NORMAL)
    add("\u2581", -5.0, gguf.TokenType.NORMAL)   # SentencePiece's space
    add("\n", -5.0, gguf.TokenType.NORMAL)
    for i, w in enumerate(WORDS):
        add("\u2581" + w, -1.0 - i * 0.01, gguf.TokenType.NORMAL)
        if w not in tokens:
            add(w, -2.0 - i * 0.01, gguf.TokenType.NORMAL)
    return tokens, scores, types


def make_tiny_model(path: Path, arch: str = "gemma3", n_embd: int = 64, n_layer: int = 2,
                    n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_ctx: int = 512,
                    seed: int = 0, emb_scale: float = 0.1, chat_template: str | None = GEMMA_TEMPLATE,
                    head_scale: float = 0.02) -> Path:
    """Write a random `arch` model ("gemma3" or "llama") as an F32 GGUF at `path`. llama's output head
    is its own tensor (gemma3's is token_embd); at `head_scale` 0.02 its logits stay within a few
    nats of each other, which a frozen head (LoRA) cannot get past."""
    if arch not in ("gemma3", "llama"):
        raise ValueError(f"unsupported tiny arch {arch}")
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        w.add_sliding_window(n_ctx)
    else:
        w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    if chat_template:
        w.add_chat_template(chat_template)

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    # numpy shapes are reversed ggml shapes: a [n_embd -> n_out] matrix is (n_out, n_embd)
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd, scale=emb_scale))
    w.add_tensor("output_norm.weight", ones(n_embd))
    if arch == "llama":
        w.add_tensor("output.weight", rand(n_vocab, n_embd, scale=head_scale))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(n_embd))
        w.add_tensor(p + "attn_q.weight", rand(n_head * head_dim, n_embd))
        w.add_tensor(p + "attn_k.weight", rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(p + "attn_v.weight", rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(p + "attn_output.weight", rand(n_embd, n_head * head_dim))
        w.add_tensor(p + "ffn_norm.weight", ones(n_embd))
        w.add_tensor(p + "ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))
        if arch == "gemma3":
            w.add_tensor(p + "attn_q_norm.weight", ones(head_dim))
            w.add_tensor(p + "attn_k_norm.weight", ones(head_dim))
            w.add_tensor(p + "post_attention_norm.weight", ones(n_embd))
            w.add_tensor(p + "post_ffw_norm.weight", ones(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- Hugging Face checkpoints, converted by llama.cpp's convert_hf_to_gguf.py -----------------

def write_hf_tokenizer(folder: Path) -> int:
    """A SentencePiece tokenizer.model with byte fallback and tokenizer_config.json with Gemma's
    special tokens and chat template, as on the Hub (what the converter's Gemma classes read).
    Returns the vocabulary size."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5), model_prefix=str(folder / "tokenizer"), model_type="bpe",
        vocab_size=320, hard_vocab_limit=False, byte_fallback=True, minloglevel=2,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=SPECIAL[4:],
        # Gemma's tokenizer keeps text as is: no dummy space prefix, no whitespace folding
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity")
    (folder / "tokenizer.vocab").unlink()
    special = {str(i): {"content": t, "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                        "single_word": False} for i, t in enumerate(SPECIAL)}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": special,
        "chat_template": GEMMA_TEMPLATE}, indent=2))
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).vocab_size()


# llama.cpp's gemma3n graph fixes what E2B/E4B share instead of reading it from the GGUF: 20 layers
# with their own K/V, activation sparsity in the first 10, 256-wide per-layer inputs, LAuReL rank 64
# and 4 AltUp streams (src/models/gemma3n.cpp, models.h, llama-hparams.h). A tiny model keeps them.
GEMMA3N_KV_LAYERS = 20
GEMMA3N_SPARSE_LAYERS = 10


def make_tiny_gemma3n(folder: Path, n_layer: int = 22, n_embd: int = 32, n_ff: int = 64, seed: int = 0,
                      emb_std: float = 1.0) -> tuple[Path, object]:
    """A tiny random Gemma 3n text model (Gemma3nForCausalLM) in `folder`/hf, converted to the F32
    GGUF `folder`/gemma3n.gguf. Layers past the 20th share K/V: the last of them a full-attention
    layer, the one before a sliding one, so both of llama.cpp's KV-reuse cases occur.
    Returns (gguf path, the PyTorch model)."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    from dndllama.base import CONVERTER

    hf = folder / "hf"
    n_vocab = write_hf_tokenizer(hf)
    head_dim = 16
    types = ["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(n_layer)]
    types[-1] = "full_attention"
    config = transformers.Gemma3nTextConfig(
        vocab_size=n_vocab, vocab_size_per_layer_input=n_vocab, hidden_size=n_embd, intermediate_size=n_ff,
        num_hidden_layers=n_layer, num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
        max_position_embeddings=512, sliding_window=512, layer_types=types, hidden_size_per_layer_input=256,
        laurel_rank=64, altup_num_inputs=4, num_kv_shared_layers=n_layer - GEMMA3N_KV_LAYERS,
        activation_sparsity_pattern=[0.95] * GEMMA3N_SPARSE_LAYERS + [0.0] * (n_layer - GEMMA3N_SPARSE_LAYERS))
    torch.manual_seed(seed)
    model = transformers.Gemma3nForCausalLM(config)
    with torch.no_grad():
        # the output is the (frozen) token embedding: at the init's std of 0.02 the logits stay
        # flat whatever the layers learn
        model.model.embed_tokens.weight.normal_(0.0, emb_std)
        # initialised to 0, this scale switches off the per-layer-input path and its gradients
        for layer in model.model.layers:
            layer.altup.correct_output_scale.fill_(1.0)
    model.save_pretrained(hf, safe_serialization=True)

    # The KV-sharing layers of Google's checkpoints still hold (unused) K/V projections and llama.cpp
    # requires them; transformers no longer creates them
    weights = load_file(hf / "model.safetensors")
    for i in range(GEMMA3N_KV_LAYERS, n_layer):
        p = f"model.layers.{i}.self_attn."
        weights[p + "k_proj.weight"] = torch.randn(head_dim, n_embd) * 0.02
        weights[p + "v_proj.weight"] = torch.randn(head_dim, n_embd) * 0.02
        weights[p + "k_norm.weight"] = torch.ones(head_dim)
    save_file(weights, hf / "model.safetensors", metadata={"format": "pt"})

    out = folder / "gemma3n.gguf"
    run = subprocess.run([sys.executable, str(CONVERTER), str(hf), "--outfile", str(out), "--outtype", "f32"],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on the tiny Gemma 3n:\n{run.stderr[-3000:]}")
    return out, model
