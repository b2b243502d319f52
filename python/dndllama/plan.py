"""The memory plan: what a training run will need at its peak, known before it starts.

`dndllama train --plan` prints it; `method = "auto"` uses it to choose full fine-tuning when that
fits this machine and LoRA when it does not. The estimate adds up, from the base's GGUF header:

  weights        the model as training loads it (full: an F32 copy, token_embd as stored; LoRA: that
                 copy if it fits, else the base as stored, frozen)
  trained state  per trained parameter: AdamW's two moments (8 bytes), plus a gradient accumulator
                 with gradient accumulation (otherwise the gradients live in the compute buffer, in
                 memory the backward pass has freed: patch 0009); LoRA's adapter also holds its weights
  activations    what the backward pass keeps per layer, with the attention scores (n_ctx^2 per head)
  logits         n_vocab floats per labelled position of the fullest window (training computes
                 logits only where a label is: patch 0013), times the logits-sized buffers at the
                 peak (logits, dense labels, their gradient and one more); every position when the
                 data is not known yet
  process        Python, the libraries and allocator slack

The per-layer and logits factors are fitted to peak RSS measured on Gemma 3 270M (scripts/
bench_train.py, full fine-tuning): 2.93 GB at ctx 256 and 5.91 GB at ctx 768 with every position
labelled, 3.08 GB at ctx 768 on ai-training's windows (at most 88 labelled positions); the estimate is
within about 3 % of each.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from .config import Config
from .gguf_header import Header
from .quantize import human_size

F32 = 4
FROZEN = {"token_embd.weight", "rope_freqs.weight"}   # llama.cpp never trains these
ACT_PER_EMBD, ACT_PER_FF, ACT_PER_SCORE = 14, 2, 2      # floats kept per token per layer (fitted)
LOGIT_COPIES = 4                                       # logits-sized buffers at the peak (fitted)
PROCESS_BYTES = 300_000_000
HEADROOM = 0.75                                        # auto picks full only within this share of RAM


@dataclass
class Plan:
    method: str
    weights_from: str            # "F32 copy" or "as stored"
    n_trainable: int
    rows: list[tuple[str, int]]
    ram: int                     # this machine's memory

    @property
    def total(self) -> int:
        return sum(b for _, b in self.rows)

    @property
    def fits(self) -> bool:
        return self.total <= self.ram * HEADROOM


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _dim(h: Header, key: str, default: int = 0) -> int:
    value = h.kv.get(f"{h.arch}.{key}", default)
    return int(max(value) if isinstance(value, (list, tuple)) else value)


def lora_parameters(h: Header, targets: str, rank: int) -> int:
    pattern = re.compile(targets)
    return sum(rank * (t.dims[0] + t.dims[1]) for name, t in h.tensors.items()
               if name.startswith("blk.") and name.endswith(".weight") and len(t.dims) == 2 and pattern.search(name))


def estimate(h: Header, config: Config, method: str, ram: int | None = None, logit_rows: int | None = None) -> Plan:
    """The peak memory of training `h` with `method` ("full" or "lora") under `config`, for windows
    with at most `logit_rows` labelled positions (None: every position)."""
    ram = machine_memory() if ram is None else ram
    # the training copy: F32, but token_embd as stored (base._as_f32)
    f32_bytes = sum(t.nbytes if name == "token_embd.weight" else t.n * F32 for name, t in h.tensors.items())
    stored_bytes = sum(t.nbytes for t in h.tensors.values())
    n_ctx, n_layer, n_vocab = config.ctx, _dim(h, "block_count"), max(h.array_lengths.get("tokenizer.ggml.tokens", 0), 1)
    per_layer = n_ctx * (ACT_PER_EMBD * _dim(h, "embedding_length") + ACT_PER_FF * _dim(h, "feed_forward_length")
                         + ACT_PER_SCORE * _dim(h, "attention.head_count") * n_ctx) * F32
    rows = n_ctx if logit_rows is None else min(n_ctx, max(1, logit_rows))
    shared = [("activations", n_layer * per_layer), (f"logits ({rows} rows)", LOGIT_COPIES * rows * n_vocab * F32),
              ("process", PROCESS_BYTES)]
    accum = F32 if config.grad_accum > 1 else 0
    state = "AdamW moments" + (" + accumulators" if accum else "")
    if method == "full":
        n_train = sum(t.n for name, t in h.tensors.items() if name not in FROZEN)
        return Plan("full", "F32 copy", n_train,
                    [("weights (F32 copy)", f32_bytes), (state, n_train * (2 * F32 + accum))] + shared, ram)
    n_train = lora_parameters(h, config.lora_targets, config.lora_rank)
    adapter = [(f"adapter + {state}", n_train * (3 * F32 + accum))]
    f32 = Plan("lora", "F32 copy", n_train, [("weights (F32 copy, frozen)", f32_bytes)] + adapter + shared, ram)
    if f32.fits or stored_bytes >= f32_bytes:
        return f32
    return replace(f32, weights_from="as stored", rows=[("weights (as stored, frozen)", stored_bytes)] + adapter + shared)


def choose_method(h: Header, config: Config, ram: int | None = None, logit_rows: int | None = None) -> tuple[str, str]:
    """The method `config.method` resolves to, and why (for the run's output)."""
    full = estimate(h, config, "full", ram, logit_rows)
    if config.method != "auto":
        return config.method, f"method {config.method} (set); full fine-tuning would need ≈{human_size(full.total)}"
    if full.fits:
        return "full", (f"method full (auto): it needs ≈{human_size(full.total)} of this machine's "
                        f"{human_size(full.ram)}")
    lora = estimate(h, config, "lora", ram, logit_rows)
    return "lora", (f"method lora (auto): full fine-tuning would need ≈{human_size(full.total)}, more than "
                    f"{HEADROOM:.0%} of this machine's {human_size(full.ram)}; LoRA needs ≈{human_size(lora.total)}")


def resolve(config: Config, h: Header, logit_rows: int | None = None) -> tuple[Config, str]:
    """`config` with its method resolved (auto -> full or lora), and the sentence saying why."""
    method, why = choose_method(h, config, logit_rows=logit_rows)
    return replace(config, method=method), why


def describe(h: Header, config: Config, ram: int | None = None, logit_rows: int | None = None) -> str:
    """The plan of both methods as a small table, for `dndllama train --plan`."""
    plans = [estimate(h, config, m, ram, logit_rows) for m in ("full", "lora")]
    lines = [f"memory plan: {h.kv.get('general.name', h.arch)} ({h.arch}), ctx {config.ctx}, "
             f"LoRA rank {config.lora_rank} on /{config.lora_targets}/"]
    for p in plans:
        lines.append(f"  {p.method}: {p.n_trainable / 1e6:.1f} M trained parameters, weights {p.weights_from}")
        lines += [f"    {what:<30} {human_size(n):>10}" for what, n in p.rows]
        verdict = "fits" if p.fits else f"does not fit in {HEADROOM:.0%} of"
        lines.append(f"    {'peak (estimate)':<30} {human_size(p.total):>10}  {verdict} this machine's {human_size(p.ram)}")
    lines.append("  " + choose_method(h, config, ram, logit_rows)[1])
    if logit_rows is None:
        lines.append("  (logits counted for every position of a window: an upper bound, as only DM tokens carry loss)")
    return "\n".join(lines)
