"""The data and dataset stages of `dndllama train` (docs/training.md's stage table): the scenario
folder parsed, checked and split, the evaluation folder and the generated scenarios added
(`load_data`), then the token windows with DM-only labels, cached by the dataset key (`build_arrays`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .base import BaseModel
from .config import Config
from .dataset import (Conversation, build_dataset, ctx_for, label_weights, labelled_per_window, padding_id,
                      token_windows, window_arrays, windows_and_cuts)
from .evalset import EvalSet, EvalSetError, find_eval_dir, load_eval_set
from .files import atomic_path, read_json, write_json
from .scenarios import ERROR, load_folder, scenario_files
from .tools import Vocabulary, load_vocabulary
from .train import Arrays

MAX_ERRORS_SHOWN = 20


class DataError(ValueError):
    """The scenarios cannot be trained on; the message lists file:line problems."""


@dataclass
class Data:
    root: Path
    vocab: Vocabulary
    files: dict[str, str]          # relative path -> sha256 of its bytes
    train: list[Conversation]
    validation: list[Conversation]
    evaluation: EvalSet | None = None      # held-out scenarios (eval_data); None: use `validation`
    eval_note: str = ""                    # why there is no evaluation set, when one was asked for
    synthetic: int = 0             # how many of `train` are generated (dndllama.synth), not from files

    @property
    def in_corpus(self) -> list[Conversation]:
        """The hand-written conversations the checks and the loss use: the validation split, or the
        training split when the corpus is too small to hold one back."""
        return self.validation or self.train


def load_data(config: Config) -> Data:
    root = Path(config.data)
    if not root.is_dir():
        raise DataError(f"data folder '{root}' not found; pass --data with your scenario folder")
    files = scenario_files(root)
    if not files:
        raise DataError(f"no scenario files (*.md) under '{root}'; add scenarios (see docs/scenario-format.md)")
    vocab = load_vocabulary(root)
    check = load_folder(root, vocab)
    errors = [d for d in check.diagnostics if d.severity == ERROR]
    if errors:
        shown = "\n".join(f"  {d}" for d in sorted(errors, key=lambda d: (d.path, d.line))[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise DataError(f"{len(errors)} error(s) in the scenarios; nothing was trained:\n{shown}{more}")
    split = build_dataset(check, config.val_fraction, augment_copies=config.augment, seed=config.seed)
    hashes = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    evaluation, note = load_evaluation(config, vocab, {s.digest for s in check.scenarios})
    synthetic = synthetic_train(config, split.train, vocab)
    return Data(root, vocab, hashes, split.train + synthetic, split.validation, evaluation=evaluation,
                eval_note=note, synthetic=len(synthetic))


def load_evaluation(config: Config, vocab: Vocabulary, training_digests: set[str]) -> tuple[EvalSet | None, str]:
    """The evaluation folder's scenarios, or None and a notice when it is missing (or "" asks for none)."""
    try:
        eval_dir, note = find_eval_dir(config.eval_data, config.data)
        return (load_eval_set(eval_dir, vocab, training_digests) if eval_dir else None), note
    except EvalSetError as exc:
        raise DataError(str(exc)) from None


def judged_conversations(data: Data) -> list[Conversation]:
    """What checkpoint choice, quant choice and the gate replay: the evaluation set when there is one."""
    return data.evaluation.conversations if data.evaluation else data.in_corpus


def loss_conversations(data: Data) -> list[Conversation] | None:
    """The loss stays on the in-corpus split: over the whole evaluation set it costs ~9x the windows
    (253 against 28 of 768 tokens), and the replayed tool calls are what choose and gate."""
    return data.in_corpus if data.evaluation else None


def eval_key(data: Data) -> str:
    return data.evaluation.key if data.evaluation else "in-corpus"


def synthetic_train(config: Config, train: list[Conversation], vocab: Vocabulary) -> list[Conversation]:
    """Generated conversations for the training split only (validation stays hand-written): config.synth
    synthetic DM messages per hand-written one. The generator reads no files, the evaluation folder least."""
    if not config.synth:
        return []
    from .synth import SynthError, training_conversations

    hand = sum(m.role == "assistant" for c in train if "#aug" not in c.scenario for m in c.messages)
    try:
        return training_conversations(config.synth, config.synth_seed, config.synth_loss, hand, vocab)
    except SynthError as exc:
        raise DataError(str(exc)) from None


def fitting_synthetic(conversations: list[Conversation], tokenizer, ctx: int) -> tuple[list, int]:
    """The windows of the generated conversations whose every exchange fits `ctx`, and how many were
    left out. Unlike a hand-written file's, a generated exchange that is too long is no error: no file
    names it for the user to fix, and the generator cannot count tokens."""
    kept: list = []
    dropped = 0
    for conversation in conversations:
        windows, cut = windows_and_cuts([conversation], tokenizer, ctx)
        dropped += bool(cut)
        kept += [] if cut else windows
    return kept, dropped


def synth_settings(config: Config) -> tuple:
    """What the synthetic part of the dataset depends on; empty when off, so other keys do not move."""
    if not config.synth:
        return ()
    from .synth import SYNTH_VERSION

    return ("synth", config.synth, config.synth_seed, config.synth_loss, SYNTH_VERSION)


def describe(data: Data, config: Config) -> list[str]:
    """What `dndllama train` says about the data it loaded."""
    counts = (f"data: {len(data.files)} scenarios in {data.root} ({len(data.train) - data.synthetic} train, "
              f"{len(data.validation)} validation)"
              + (f", plus {data.synthetic} synthetic (synth {config.synth:g}, seed {config.synth_seed}, "
                 f"loss on {config.synth_loss})" if data.synthetic else ""))
    evaluation = (f"evaluation: {data.evaluation.describe()}" if data.evaluation else data.eval_note
                  or "evaluation: eval_data is off; choosing and gating on the in-corpus validation split")
    return [counts, evaluation]


def build_arrays(data: Data, base: BaseModel, config: Config, cache: Path, key: str, say) -> tuple[Arrays, dict]:
    """Token windows with DM-only labels, cached as .npz by the dataset key."""
    import numpy as np

    from . import _native

    path = cache / "datasets" / f"{key}.npz"
    if path.exists():
        with np.load(path) as z:
            arrays = Arrays(z["tokens"], z["labels"], z["val_tokens"], z["val_labels"],
                            z["weights"] if "weights" in z.files else None)
        return arrays, read_json(path.with_suffix(".json"), {})
    tokenizer = _native.Model(str(base.gguf), vocab_only=True)
    hand = len(data.train) - data.synthetic
    windows, cut = windows_and_cuts(data.train[:hand], tokenizer, config.ctx)
    kept, dropped = fitting_synthetic(data.train[hand:], tokenizer, config.ctx)
    tokens, labels = window_arrays(windows + kept, config.ctx, padding_id(tokenizer))
    weights = label_weights(windows + kept, config.ctx, config.decision_weight) if config.decision_weight != 1 else None
    if dropped:
        say(f"left out {dropped} of {data.synthetic} synthetic scenarios: an exchange of theirs is longer than "
            f"the training window of {config.ctx} tokens")
    val_tokens, val_labels, cut_validation = token_windows(data.validation, tokenizer, config.ctx)
    cut += cut_validation
    if cut:
        shown = "\n".join(f"  {line}" for line in cut[:MAX_ERRORS_SHOWN])
        raise DataError(f"{len(cut)} exchange(s) do not fit the training window of {config.ctx} tokens; nothing was "
                        f"trained:\n{shown}\nraise ctx to {ctx_for(cut)} (--ctx or ctx in dndllama.toml) or split "
                        "the long DM turns")
    if not len(tokens):
        raise DataError("no training window has a DM token; add scenarios with DM turns")
    stats = {"train_windows": len(tokens), "val_windows": len(val_tokens), "truncated": 0, "synthetic_dropped": dropped,
             "train_targets": int((labels >= 0).sum()), "val_targets": int((val_labels >= 0).sum()),
             # the most logit rows a training step holds (patch 0013): the memory plan's logits
             "max_window_targets": int(max(labelled_per_window(labels).max(), labelled_per_window(val_labels).max(initial=0)))}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:   # a file object: savez adds no suffix
        np.savez(f, tokens=tokens, labels=labels, val_tokens=val_tokens, val_labels=val_labels,
                 **({} if weights is None else {"weights": weights}))
    write_json(path.with_suffix(".json"), stats)
    return Arrays(tokens, labels, val_tokens, val_labels, weights), stats
