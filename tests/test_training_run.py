"""The stage keys follow the "cached by" column of docs/training.md's stage table: a setting moves
the key of the first stage that reads it and of every stage after, and no key before it."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from dndllama.config import load_config
from dndllama.corpus import load_data
from dndllama.training_run import Keys

DATA = Path(__file__).parent / "data" / "independent"
STAGES = ("data", "dataset", "train", "export")
BASE = SimpleNamespace(sha256="a" * 64)

# setting -> (a changed value, the first stage whose key it moves)
FIRST_STAGE_READING = {
    "ctx": (1024, "dataset"),
    "val_fraction": (0.3, "dataset"),
    "epochs": (3, "train"),
    "lr": (2e-4, "train"),
    "name": ("other", "train"),
    "quant": ("Q8_0", "export"),
    "size_cap": ("1GB", "export"),
    "app_ctx": (4096, "export"),
    "select_by": ("loss", "export"),
    "min_f1_gain": (0.1, "export"),
}


def keys(folder: Path, cache: Path, **settings) -> Keys:
    config = load_config(folder, {"cache_dir": str(cache), "eval_data": "", **settings})
    return Keys.of(config, load_data(config), BASE, None)


def moved(before: Keys, after: Keys) -> list[str]:
    return [stage for stage in STAGES if getattr(before, stage) != getattr(after, stage)]


@pytest.mark.parametrize("setting", sorted(FIRST_STAGE_READING))
def test_a_setting_moves_its_stage_and_the_later_ones(setting, tmp_path):
    value, first = FIRST_STAGE_READING[setting]
    before, after = keys(DATA, tmp_path), keys(DATA, tmp_path, **{setting: value})
    assert moved(before, after) == list(STAGES[STAGES.index(first):])


def test_an_added_scenario_moves_every_key_and_a_warm_start_parent_the_train_key(tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(DATA, folder)
    before = keys(folder, tmp_path)
    assert keys(folder, tmp_path) == before                    # same inputs, same keys
    scenario = next(p for p in sorted(folder.rglob("*.md")) if p.name.lower() != "readme.md")
    (folder / "added.md").write_text(scenario.read_text().replace("Dungeon Master", "Game Master", 1))
    assert moved(before, keys(folder, tmp_path)) == list(STAGES)
    config = load_config(folder, {"cache_dir": str(tmp_path), "eval_data": ""})
    data = load_data(config)
    assert moved(Keys.of(config, data, BASE, None), Keys.of(config, data, BASE, {"train_key": "parent"})) == \
        ["train", "export"]
