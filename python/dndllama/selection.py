"""Choose by the task, not only by loss: the checkpoint and the quantization type that call the DM's
tools best on the validation scenarios.

  Judge                 replays the validation turns through a file, once (results cached on disk)
  select_checkpoint     the training candidate with the best tool calls (exact F1, then name F1),
                        the validation loss breaking ties; replayed through Q8_0 copies
  quality_within        whether a quant type stays within the tolerances of the best one tried
  screen_quants         one teacher-forced pass per quant type against the F32 checkpoint: KL
                        divergence, top-1 agreement (in tool calls too), both models' loss
  choose_quant_screened the types under the cap screened from the largest down to the first beyond
                        the screen; only the smallest within it and the next larger are replayed

Tool-call F1 over a couple of dozen turns is coarse: a model that calls no tool scores 0 whatever
its size. The quant choice therefore also bounds the validation loss, so a 2-bit file never wins
only because every candidate ties at 0.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .dataset import Conversation
from .files import atomic_path
from .quantize import QuantChoice, Quantizer, human_size
from .report import fmt_value
from .tools import Vocabulary
from .validate import ModelResult, reference_loss, validate_one


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
        """`stand_in(path)`, when given, writes a file replayed in place of `path` (removed after). The
        loss is a step of its own: a file replayed without it (a quant type the choice compared by the
        screen's loss) gets only its loss added when it ships."""
        cached = self._cache_file(path, with_loss, stand_in is not None)
        result = _load(cached)
        if result is not None:
            return result
        bare = _load(self._cache_file(path, False, False)) if with_loss and stand_in is None else None
        if bare is not None:
            s = self.settings
            loss = reference_loss(path, self.loss_conversations or self.conversations, s["loss_ctx"], s["n_threads"],
                                  s["n_gpu_layers"])
            result = replace(bare, loss=loss)
            with atomic_path(cached) as tmp:
                tmp.write_bytes(pickle.dumps(result))
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
        say(f"  {row['checkpoint']}: exact-call F1 {fmt_value(row['exact_call_f1'])}, tool-call F1 "
            f"{fmt_value(row['tool_name_f1'])}, validation loss {fmt_value(row['val_loss'])}"
            + ("  <- chosen" if row is best else ""))
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



# ---------------------------------------------------------------- quant screening by divergence

# How far a quant type may drift from the F32 checkpoint, teacher-forced over the evaluation set's DM
# tokens (the figures of llama.cpp's perplexity --kl-divergence). Q8_0 of a 270M model stays near
# 0.001 nats and 99 % agreement; 2- and 3-bit types pass 0.1 nats and fall under 90 %.
SCREEN_MAX_KL = 0.05             # mean KL divergence per DM token, nats
SCREEN_MIN_TOOL_AGREEMENT = 0.95  # top-1 agreement on the tokens inside tool calls (what the app parses)
# windows the screen reads, spread over the evaluation set: every position costs a softmax over the
# 262,144-token vocabulary per model, and the whole set (~250 windows of 768 tokens) took many minutes
# per type on 2 cores; the screen only ranks the types, the replay of the two it keeps decides
SCREEN_MAX_WINDOWS = 12


def divergence_inputs(tokenizer, conversations: list[Conversation], vocab: Vocabulary,
                      ctx: int) -> tuple[list[list[int]], list[list[int]]]:
    """Training's windows of the conversations and, per position, what the divergence pass scores:
    0 = not a DM token next, 1 = a DM token next, 2 = a DM token inside a tool call next."""
    from .dataset import token_windows
    from .tools import find_tool_calls

    tokens, labels, _ = token_windows(conversations, tokenizer, ctx)   # a cut exchange scores what fits
    rows = spread(list(zip(tokens.tolist(), labels.tolist())), SCREEN_MAX_WINDOWS)
    sequences, masks = [], []
    for row, label in rows:
        # causal attention: positions after the last label (the window's padding) change no score;
        # the token that label predicts stays, as the pass reads each position's next token
        end = max((i + 2 for i, t in enumerate(label) if t >= 0), default=0)
        row, mask = row[:end], [1 if t >= 0 else 0 for t in label[:end]]
        starts, text = [], ""
        for token in row:
            starts.append(len(text))
            text += tokenizer.detokenize([token], False)
        calls, _ = find_tool_calls(text, vocab)
        for call in calls:
            for i in range(1, len(row)):   # position i - 1 predicts token i
                if call.span[0] <= starts[i] < call.span[1] and mask[i - 1]:
                    mask[i - 1] = 2
        sequences.append(row)
        masks.append(mask)
    return sequences, masks


def spread(items: list, count: int) -> list:
    """`count` items taken evenly from all of them (all when there are no more)."""
    if len(items) <= count:
        return items
    return [items[k * len(items) // count] for k in range(count)]


def screen_quants(reference: Path, typed: list[tuple[str, Path]], conversations: list[Conversation],
                  vocab: Vocabulary, ctx: int, n_threads: int = 0) -> list[dict]:
    """One teacher-forced pass of every (type, file) against `reference` (the F32 checkpoint): mean
    KL, top-1 agreement (all DM tokens and those in tool calls), and both models' loss on the same
    tokens with the same numerics; `screened` says whether the type is within the tolerances."""
    from . import _native

    ref = _native.Model(str(reference))
    sequences, masks = divergence_inputs(ref, conversations, vocab, ctx)
    models = [_native.Model(str(path)) for _, path in typed]
    figures = _native.divergence(ref, models, sequences, masks, n_threads)
    return [{"type": qtype, "size": path.stat().st_size, **f, "screened": within_screen(f)}
            for (qtype, path), f in zip(typed, figures)]


def within_screen(figures: dict) -> bool:
    tool = figures.get("tool_top1_agreement")
    return figures["mean_kl"] <= SCREEN_MAX_KL and (tool is None or tool >= SCREEN_MIN_TOOL_AGREEMENT)


def to_replay(rows: list[dict]) -> list[str]:
    """The types worth replaying, rows ordered best first: the smallest that passes the screen and
    the next larger one (only the best type when none passes)."""
    passing = [i for i, r in enumerate(rows) if r["screened"]]
    if not passing:
        return [rows[0]["type"]]
    smallest = passing[-1]
    return [r["type"] for r in rows[max(0, smallest - 1): smallest + 1]]


def choose_quant_screened(checkpoint: Path, out_dir: Path, cap: int, types: list[str], threads: int, judge: Judge,
                          ctx: int, f1_tolerance: float, loss_tolerance: float, say) -> tuple:
    """The types under the cap screened by teacher-forced divergence against `checkpoint`, from the
    largest quantized type down, until one drifts beyond the screen (screen_down); the half-precision
    types only when no smaller type passes. Only the smallest type within the screen and the next
    larger screened one are replayed by `judge`, and the smaller wins when it keeps the larger's tool
    calls (quality_within). Returns (QuantChoice, rows)."""
    files = Quantizer(checkpoint, out_dir, cap, threads, say)

    def screen(batch: list[tuple[str, Path]]) -> list[dict]:
        return _screen_and_say(checkpoint, batch, judge, ctx, threads, say)

    rows = screen_down([t for t in types if t not in HALF_TYPES], files, screen)
    if not any(r["screened"] for r in rows):
        rows = screen_down([t for t in types if t in HALF_TYPES], files, screen) + rows
    if not rows:
        raise files.cap_error()
    replayed = to_replay(rows)
    judged, screened = {}, {row["type"]: row for row in rows}
    for qtype in replayed:
        say(f"{qtype}: replaying the validation turns ...")
        judged[qtype] = judge(files.fitting[qtype], with_loss=False)   # the loss: the screen's, same tokens
    qualities = {t: Quality(r.tools.name_f1 or 0.0, screened[t]["candidate_nll"]) for t, r in judged.items()}
    chosen = replayed[-1]
    kept = quality_within(qualities[chosen], list(qualities.values()), f1_tolerance, loss_tolerance)
    if not kept:
        chosen = replayed[0]
    for row in rows:
        result = judged.get(row["type"])
        row["replayed"], row["chosen"] = result is not None, row["type"] == chosen
        if result:
            row.update(**tool_scores(result))
    for qtype, path in files.fitting.items():
        if qtype != chosen:
            path.unlink(missing_ok=True)
    path = files.fitting[chosen]
    scores = ", ".join(f"{t}: tool-call F1 {fmt_value(qualities[t].f1)}" for t in replayed)
    why = ("the smallest type within the divergence screen" + (" keeps the tool calls of the next larger"
                                                              if len(replayed) > 1 else "")
           if kept else f"{replayed[-1]} passed the divergence screen but lost tool calls in replay")
    untried = [t for t in types if t not in screened and t not in dict(files.tried)]
    size = path.stat().st_size
    choice = QuantChoice(chosen, path, size, f"{chosen} ({human_size(size)}) fits the {human_size(cap)} cap; "
                                             f"{why} ({scores})"
                                             + (f"; not tried: {', '.join(untried)}" if untried else ""), files.tried)
    return choice, rows


# Half precision of a model trained in F32 drifts by rounding only (F16: mean KL 0.0003, 99 % top-1
# agreement on the 270M), so it is quantized and screened only when no smaller type passes.
HALF_TYPES = ("F16", "BF16")
# Types per divergence pass: each pass decodes the reference again, and the screen stops at the first
# pass with a type beyond it. Trained 270Ms first fail at Q5_K_M or Q4_K_M (the README's short run and
# the 2-epoch default at Q4_K_M): one pass of 5 models (Q8_0 down to Q4_K_M) where 3 a pass took two
# passes of 4 and screening the whole ladder took 8.
SCREEN_PASS = 4


def screen_down(types: list[str], files: Quantizer, screen: Callable[[list], list[dict]]) -> list[dict]:
    """Rows of `types` (best first) quantized and screened SCREEN_PASS fitting types at a time, down to the
    first pass with a type beyond the screen: drift grows as the bits fall, so the smaller types would
    not pass either, and they are neither quantized nor screened."""
    rows, pending = [], list(types)
    while pending:
        batch = []
        while pending and len(batch) < SCREEN_PASS:
            qtype = pending.pop(0)
            if (path := files(qtype)) is not None:
                batch.append((qtype, path))
        if not batch:
            break
        rows += screen(batch)
        if not all(row["screened"] for row in rows[-len(batch):]):
            break
    return rows


def _screen_and_say(checkpoint: Path, batch: list[tuple[str, Path]], judge: Judge, ctx: int, threads: int,
                    say) -> list[dict]:
    say(f"screening {', '.join(t for t, _ in batch)} against {checkpoint.name}: KL divergence and agreement on the "
        "validation DM tokens (teacher-forced) ...")
    rows = screen_quants(checkpoint, batch, judge.conversations, judge.vocab, ctx, threads)
    for row in rows:
        tool = row["tool_top1_agreement"]
        say(f"  {row['type']} {human_size(row['size'])}: mean KL {row['mean_kl']:.4f}, top-1 agreement "
            f"{row['top1_agreement']:.3f}, in tool calls {'-' if tool is None else f'{tool:.3f}'}, loss "
            f"{row['candidate_nll']:.3f} (F32 {row['reference_nll']:.3f}), entropy {row['candidate_entropy']:.3f} "
            f"(F32 {row['reference_entropy']:.3f})"
            + ("" if row["screened"] else f"  beyond the screen (KL {SCREEN_MAX_KL}, tool-call agreement "
                                           f"{SCREEN_MIN_TOOL_AGREEMENT})"))
    return rows
