"""`dndllama train`: run the pipeline (pipeline.py) on a scenario folder and print the app's config.

Each flag of TRAIN_FLAGS and TRAIN_SWITCHES overrides the Config field of the same name (TRAIN_OVERRIDES
is derived from them); RUN_SWITCHES say how to run, not what to train.
"""

from __future__ import annotations

import argparse
import json

from ..config import load_config
from ..pipeline import DiskFullError
from ..quantize import human_size
from .common import DEFAULT_DATA_DIR, DEFAULT_MODELS_DIR, RECOVERY_HINTS, CliError, command

# flag, type, metavar, help: each sets the Config field named like the flag
TRAIN_FLAGS = [
    ("--data", str, "DIR", f"scenario folder (default: {DEFAULT_DATA_DIR}); its dndllama.toml sets defaults"),
    ("--base", str, "MODEL", "base model: 'embedded' (Gemma 3 270M), a .gguf, a Hugging Face folder or id"),
    ("--epochs", int, "N", "passes over the training data"),
    ("--max-steps", int, "N", "stop after N optimizer steps"),
    ("--lr", float, "LR", "peak learning rate of full fine-tuning"),
    ("--method", str, "HOW", "full, lora (frozen base + adapter, merged for the app) or auto (default: full "
                             "when it fits this machine's memory, see --plan)"),
    ("--lora-rank", int, "R", "LoRA rank (default 16)"),
    ("--lora-lr", float, "LR", "peak learning rate of LoRA (default 5e-4)"),
    ("--ctx", int, "TOKENS", "training window (multiple of 256)"),
    ("--size-cap", str, "SIZE", "largest model file the app accepts, e.g. 2GB"),
    ("--quant", str, "TYPE", "quantization type, or auto (best type under the cap)"),
    ("--runtime", str, "NAME", "runtime the GGUF must load in (default cactus-0.2)"),
    ("--models-dir", str, "DIR", f"where versions are kept (default: {DEFAULT_MODELS_DIR})"),
    ("--cache-dir", str, "DIR", "stage cache (default: ~/.cache/dndllama)"),
    ("--name", str, "NAME", "model name in the GGUF and file names"),
    ("--threads", int, "N", "CPU threads (default: the cores other processes leave free)"),
    ("--matmul-precision", str, "P", "training's weight products on the CPU: auto (default: bf16 where the "
                                     "CPU has AVX512-BF16 or AMX-BF16, else f32), bf16 or f32"),
    ("--gpu-layers", int, "N", "layers to offload to the GPU"),
    ("--patience", int, "N", "evaluations without a better validation loss before stopping (0 = off)"),
    ("--save-every", int, "N", "steps between resume checkpoints"),
    ("--eval-every", int, "N", "steps between evaluations, each a checkpoint candidate (default: epoch ends)"),
    ("--select-by", str, "WHAT", "tool_f1 (default): checkpoint and quant type by replayed tool calls; "
                                 "loss: best validation loss and best type under the cap (faster)"),
    ("--quant-f1-tolerance", float, "F1", "the smallest quant type within this tool-call F1 of the best wins "
                                          "(default 0.02)"),
    ("--validate-turns", int, "N", "evaluation DM turns replayed for the choices and the gate (default 0 = all; "
                                   "N: whole conversations, a category at a time)"),
    ("--min-f1-gain", float, "F", "the gate: tool-call F1 must beat the base model's by more than F (default 0)"),
    ("--synth", float, "RATIO", "add generated scenarios to training: RATIO synthetic DM turns per hand-written "
                                "one (default 2, the measured recipe; 0 = off)"),
    ("--synth-seed", int, "S", "seed of the generated scenarios (default 0)"),
    ("--synth-loss", str, "WHAT", "loss on generated DM turns: calls (default: their call lines and the sentence "
                                  "before) or all"),
    ("--decision-weight", float, "W", "loss weight of the tokens that decide whether a DM turn calls a tool: its "
                                      "first token, each call's opening token, its end of turn (default 1 = off)"),
]
# flag, Config field, value when given, help: switches that set a Config field
TRAIN_SWITCHES = [
    ("--no-gate", "gate", False, "promote the new version even when it does not beat the base model"),
]
# flag, help: how to run this time (not part of the Config)
RUN_SWITCHES = [
    ("--resume", "require an interrupted run to resume (resuming is automatic; this fails if there is none)"),
    ("--force", "ignore cached stages and retrain from the base"),
    ("--quiet", "no per-step progress"),
    ("--plan", "print the memory each method would need for this base and context, and the method auto "
               "picks; train nothing"),
]


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


TRAIN_OVERRIDES = tuple(_field(flag) for flag, *_ in TRAIN_FLAGS) + tuple(dest for _, dest, *_ in TRAIN_SWITCHES)
GATE_FAILED = 3   # exit status: trained and kept, but not promoted


def add_train_command(groups) -> None:
    train = command(groups, "train", cmd_train, "train a GGUF from the scenario folder and print the app's config")
    for flag, kind, metavar, text in TRAIN_FLAGS:
        train.add_argument(flag, type=kind, metavar=metavar, help=text)
    for flag, dest, value, text in TRAIN_SWITCHES:
        train.add_argument(flag, dest=dest, action="store_const", const=value, default=None, help=text)
    for flag, text in RUN_SWITCHES:
        train.add_argument(flag, action="store_true", help=text)


def cmd_train(args: argparse.Namespace) -> int:
    from .. import pipeline

    config = load_config(args.data or DEFAULT_DATA_DIR, {k: getattr(args, k) for k in TRAIN_OVERRIDES})
    if args.plan:
        print(pipeline.memory_plan(config))
        return 0
    try:
        outcome = pipeline.run(config, force=args.force, quiet=args.quiet, require_resume=args.resume)
    except KeyboardInterrupt:
        raise CliError("training interrupted; checkpoints are kept",
                       "run the same command again to resume from the last checkpoint") from None
    except OSError as e:
        if e.errno == 28:   # ENOSPC
            raise CliError(f"disk full: {e}", RECOVERY_HINTS[DiskFullError]) from None
        raise
    print_outcome(outcome)
    return 0 if outcome.promoted else GATE_FAILED


def _state(outcome) -> str:
    """Whether the version is current and, if not, why: an unchanged rerun finds the newest version,
    which may have failed the gate or have been switched away from (models use/rollback)."""
    if outcome.promoted:
        return "is current"
    if (outcome.version.metadata.get("gate") or {}).get("passed") is False:
        return "is NOT current (it failed the quality gate)"
    return (f"is NOT current (nothing changed since it was trained, and another version was made current; "
            f"`dndllama models use {outcome.version.name}` switches to it)")


def print_outcome(outcome) -> None:
    """The new version and what the app needs from it (cactus.ts's paths, the snippet, the config)."""
    version, cactus = outcome.version, outcome.cactus
    meta = version.metadata
    print()
    print(f"{version.name} {_state(outcome)} ({meta['quant']['type']}, {human_size(meta['quant']['size'])}). "
          "For the app's cactus.ts:")
    print(f"  modelPath:  {json.dumps(cactus['modelPath'])}")
    print(f"  mmprojPath: {json.dumps(cactus['mmprojPath'])}"
          + ("  (text-only model: no projector)" if cactus["mmprojPath"] is None else ""))
    if meta.get("adapter_file"):
        print(f"  adapter:    {version.path / meta['adapter_file']}  (LoRA over the base {meta['base']['source']}; "
              "already merged into modelPath)")
    print(f"  snippet:    {version.path / 'cactus.ts'}")
    print(f"  config:     {version.path / 'cactus.config.json'}"
          + (f" (also {version.path.parent / 'cactus.config.json'})" if outcome.promoted else ""))
    if (version.path / "report.md").exists():
        print(f"  report:     {version.path / 'report.md'}")
