"""Tiny, random, real GGUF models for tests: the same architectures llama.cpp loads in production
(gemma3 with split GEGLU, llama with split SwiGLU), a small SentencePiece-style vocabulary with byte
fallback and Gemma's turn tokens, written with gguf-py. Big enough to learn a sentence, small
enough to train in seconds on two cores."""

from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
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
