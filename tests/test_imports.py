"""Every module of dndllama imports alone in a fresh interpreter: no import cycle hides behind the
order in which the CLI happens to import things (a module importing a partially initialised one fails
with "cannot import name ... from partially initialized module")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dndllama.cli.train import TRAIN_FLAGS, TRAIN_OVERRIDES
from dndllama.config import Config

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "dndllama"
# Modules that are not imported: what runs them, instead.
NOT_IMPORTED = {
    "dndllama.__main__": "python -m dndllama (test_cli_data runs it)",
}


def module_names() -> list[str]:
    """dndllama's Python modules, from the source tree (so a module nobody imports is still found)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_walk_finds_the_cli_package():
    names = module_names()
    assert {"dndllama", "dndllama.cli", "dndllama.cli.common", "dndllama.cli.chat", "dndllama.pipeline"} <= set(names)
    assert set(NOT_IMPORTED) <= set(names)


@pytest.mark.parametrize("name", [n for n in module_names() if n not in NOT_IMPORTED])
def test_module_imports_alone(name):
    done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_train_flags_override_config_fields_of_the_same_name():
    fields = set(Config.__dataclass_fields__)
    assert set(TRAIN_OVERRIDES) <= fields, set(TRAIN_OVERRIDES) - fields
    assert len(TRAIN_OVERRIDES) == len(TRAIN_FLAGS) + 1       # the flags and --no-gate
    assert {"data", "models_dir", "matmul_precision", "gate"} <= set(TRAIN_OVERRIDES)


def test_train_flags_state_the_config_defaults():
    """A default written into a flag's help is the Config's (--synth's once said 0 while the recipe was 2)."""
    stated = {flag: re.search(r"\(default:? (-?\d[\d.e-]*)", text) for flag, _, _, text in TRAIN_FLAGS}
    stated = {flag.removeprefix("--").replace("-", "_"): float(m.group(1)) for flag, m in stated.items() if m}
    assert {"synth", "lora_rank", "lora_lr", "quant_f1_tolerance"} <= set(stated)
    assert stated == {field: float(getattr(Config(), field)) for field in stated}
