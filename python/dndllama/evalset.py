"""The evaluation set: a folder of scenarios that training never sees (setting `eval_data`, default
`ai-eval/`), replayed to choose the checkpoint and the quant type, to gate a version and by
`dndllama validate`.

The in-corpus validation split (a tenth of `data`) is too small to tell settings apart (24 turns
put a +-20-point interval on every F1) and was written in the same hand as the training files. A
separate folder fixes both, as long as none of it reaches training: so the two folders may not
contain one another, and an evaluation file with the content of a training file is an error.
When the folder is missing, callers fall back to the in-corpus split with a one-line notice.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .dataset import Conversation, to_conversation
from .scenarios import ERROR, FolderCheck, load_folder, scenario_files
from .tools import Vocabulary

MAX_ERRORS_SHOWN = 20


class EvalSetError(ValueError):
    """The evaluation folder cannot be used; the message names the folder, the problem and the fix."""


@dataclass
class EvalSet:
    root: Path
    check: FolderCheck
    conversations: list[Conversation]    # one per scenario, sorted by path
    files: dict[str, str]                # relative path -> sha256 of its bytes

    @property
    def key(self) -> str:
        """Content hash of the folder: part of the cache keys of everything judged on it."""
        return hashlib.sha256(json.dumps(sorted(self.files.items())).encode()).hexdigest()[:16]

    def describe(self) -> str:
        turns = sum(1 for s in self.check.scenarios for t in s.turns if t.kind == "dm")
        return f"{len(self.conversations)} scenarios ({turns} DM turns) in {self.root}"


def ensure_separate(eval_dir: str | Path, data_dir: str | Path) -> None:
    """Refuse an evaluation folder inside the training folder (training reads every file under it)
    and a training folder inside the evaluation folder (evaluation would replay training files)."""
    evaluation, data = Path(eval_dir).expanduser().resolve(), Path(data_dir).expanduser().resolve()
    if evaluation == data or data in evaluation.parents:
        raise EvalSetError(f"eval_data '{eval_dir}' is inside the training data '{data_dir}', so training would "
                           "see the evaluation scenarios; move it next to the data folder (e.g. ai-eval/ beside "
                           "ai-training/) or set eval_data = \"\"")
    if evaluation in data.parents:
        raise EvalSetError(f"the training data '{data_dir}' is inside eval_data '{eval_dir}', so evaluation would "
                           "replay training scenarios; keep the two folders side by side")


def find_eval_dir(eval_data: str, data_dir: str | Path) -> tuple[Path | None, str]:
    """The evaluation folder to use, or None and the notice to print instead ("" = none asked for)."""
    if not eval_data:
        return None, ""
    ensure_separate(eval_data, data_dir)
    path = Path(eval_data).expanduser()
    if path.is_dir() and scenario_files(path):
        return path, ""
    what = "has no scenario files" if path.is_dir() else "not found"
    return None, (f"note: evaluation folder '{eval_data}' {what}; choosing and gating on the in-corpus "
                  "validation split instead (set eval_data to a folder of held-out scenarios)")


def load_eval_set(eval_dir: str | Path, vocab: Vocabulary, training_digests: set[str] = frozenset()) -> EvalSet:
    """Parse and check every scenario of the folder with the training vocabulary (the model is judged
    on the tools it was taught); errors and files identical to a training file raise EvalSetError."""
    root = Path(eval_dir)
    check = load_folder(root, vocab)
    errors = sorted((d for d in check.diagnostics if d.severity == ERROR), key=lambda d: (d.path, d.line))
    if errors:
        shown = "\n".join(f"  {root}/{d}" for d in errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise EvalSetError(f"{len(errors)} error(s) in the evaluation scenarios under '{root}' "
                           f"(dndllama data check {root} lists them):\n{shown}{more}")
    leaked = [s.path for s in check.scenarios if s.digest in training_digests]
    if leaked:
        raise EvalSetError(f"{root}/{leaked[0]} has the same content as a training scenario"
                           + (f" (and {len(leaked) - 1} more)" if len(leaked) > 1 else "")
                           + "; an evaluation file must be written fresh, not copied from the training data")
    conversations = sorted((to_conversation(s, vocab) for s in check.scenarios), key=lambda c: c.scenario)
    files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in scenario_files(root)}
    return EvalSet(root, check, conversations, files)


def set_stats(check: FolderCheck) -> dict:
    """The figures the evaluation targets are stated in: scenarios, DM turns, the share of DM turns
    without a call, reference calls per tool, party sizes and categories."""
    dm = [t for s in check.scenarios for t in s.turns if t.kind == "dm"]
    calls = Counter(c.name for t in dm for c in t.tool_calls)
    return {
        "scenarios": len(check.scenarios),
        "dm_turns": len(dm),
        "no_call_turns": sum(1 for t in dm if not t.attempted_calls),
        "multi_call_turns": sum(1 for t in dm if len(t.tool_calls) > 1),
        "calls": {name: calls.get(name, 0) for name in check.vocab.tools},
        "party_sizes": dict(sorted(Counter(len(s.system.party) for s in check.scenarios).items())),
        "categories": dict(sorted(Counter(s.category for s in check.scenarios).items())),
    }
