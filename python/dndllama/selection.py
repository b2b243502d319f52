"""Choose by the task, not only by loss: the checkpoint and the quantization type that call the DM's
tools best on the validation scenarios.

  Judge                 replays the validation turns through a file, once (results cached on disk)
  select_checkpoint     the training candidate with the best tool calls (exact F1, then name F1),
                        the validation loss breaking ties; replayed through Q8_0 copies
  quality_within        whether a quant type stays within the tolerances of the best one tried

Tool-call F1 over a couple of dozen turns is coarse: a model that calls no tool scores 0 whatever
its size. The quant choice therefore also bounds the validation loss, so a 2-bit file never wins
only because every candidate ties at 0.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .dataset import Conversation
from .files import atomic_path
from .tools import Vocabulary
from .validate import ModelResult, validate_one


# F32 checkpoints are replayed through a Q8_0 copy: generation reads every weight per token, so
# F32 is ~4x slower on a CPU, and 8-bit weights leave greedy tool calls as they are
CHECKPOINT_STAND_IN = "Q8_0"


@dataclass
class Judge:
    """Validates GGUF files on the same turns and settings; each result is kept in `cache_dir`
    keyed by the file's name, folder and size and the settings (quantizing is deterministic)."""

    conversations: list[Conversation]
    vocab: Vocabulary
    settings: dict          # validate_one's max_tokens, n_ctx, loss_ctx, seed, max_turns, n_threads, n_gpu_layers
    cache_dir: Path
    scope: str = ""         # what else the results depend on, for a cache shared across runs
    loss_conversations: list[Conversation] | None = None   # the loss's, when not `conversations`

    def __call__(self, path: Path, label: str = "model", with_loss: bool = True,
                 stand_in: Callable[[Path], Path] | None = None) -> ModelResult:
        """`stand_in(path)`, when given, writes a file replayed in place of `path` (removed after)."""
        cached = self._cache_file(path, with_loss, stand_in is not None)
        result = _load(cached)
        if result is not None:
            return result
        replayed = stand_in(path) if stand_in else path
        try:
            result = validate_one(label, replayed, conversations=self.conversations, vocab=self.vocab,
                                  with_loss=with_loss, loss_conversations=self.loss_conversations,
                                  **self.settings)
        finally:
            if stand_in:
                replayed.unlink(missing_ok=True)
        with atomic_path(cached) as tmp:
            tmp.write_bytes(pickle.dumps(result))
        return result

    def cached(self, path: Path, with_loss: bool = True) -> bool:
        return _load(self._cache_file(path, with_loss, False)) is not None

    def _cache_file(self, path: Path, with_loss: bool, stand_in: bool) -> Path:
        key = json.dumps([self.scope, path.parent.name, path.name, path.stat().st_size, self.settings, with_loss,
                          stand_in], sort_keys=True)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pickle"


def _load(cached: Path) -> ModelResult | None:
    try:
        return pickle.loads(cached.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
        return None


def tool_scores(result: ModelResult) -> dict:
    t = result.tools
    return {"tool_name_f1": t.name_f1, "exact_call_f1": t.exact_f1, "format_validity": t.format_validity,
            "no_call_accuracy": t.no_call_accuracy, "gen_tokens_per_s": result.gen_tokens_per_s}


def select_checkpoint(run_dir: Path, candidates: list[dict], judge: Judge, say) -> tuple[Path, list[dict]]:
    """The candidate with the best tool calls; returns its file and every candidate's scores."""
    if len(candidates) < 2:
        return run_dir / candidates[0]["file"], []
    from . import _native

    def in_q8_0(path: Path) -> Path:
        out = judge.cache_dir / f"{path.stem}-{CHECKPOINT_STAND_IN.lower()}.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
        _native.quantize(str(path), str(out), CHECKPOINT_STAND_IN, judge.settings.get("n_threads", 0))
        return out

    rows = []
    for candidate in candidates:
        say(f"checkpoint {candidate['checkpoint']} (step {candidate['step']}): replaying the validation turns "
            f"(as {CHECKPOINT_STAND_IN}) ...")
        result = judge(run_dir / candidate["file"], label=candidate["checkpoint"], with_loss=False, stand_in=in_q8_0)
        rows.append({**candidate, **tool_scores(result)})
    best = max(rows, key=lambda r: (r["exact_call_f1"] or 0.0, r["tool_name_f1"] or 0.0,
                                    -(r["val_loss"] if r["val_loss"] is not None else float("inf"))))
    for row in rows:
        row["chosen"] = row is best
        say(f"  {row['checkpoint']}: exact-call F1 {_f(row['exact_call_f1'])}, tool-call F1 "
            f"{_f(row['tool_name_f1'])}, validation loss {_f(row['val_loss'])}" + ("  <- chosen" if row is best else ""))
    return run_dir / best["file"], rows


@dataclass
class Quality:
    f1: float               # tool-name F1 (the gate's measure)
    loss: float | None      # validation loss on the reference DM tokens


def quality_within(q: Quality, tried: list[Quality], f1_tolerance: float, loss_tolerance: float) -> bool:
    """Within `f1_tolerance` of the best F1 and `loss_tolerance` of the best loss among `tried`."""
    best_f1 = max(t.f1 for t in tried)
    losses = [t.loss for t in tried if t.loss is not None]
    loss_ok = q.loss is None or not losses or q.loss <= min(losses) + loss_tolerance
    return q.f1 >= best_f1 - f1_tolerance and loss_ok


def quality(result: ModelResult) -> Quality:
    return Quality(result.tools.name_f1 or 0.0, result.loss.loss)


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"
