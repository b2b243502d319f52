"""The registry under interruption: a switch killed at any moment leaves `current` on a whole
version, and the next command brings models/cactus.config.json in line with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dndllama import registry
from dndllama.cli import main

SWITCHER = """
import sys
from pathlib import Path
from dndllama import registry
root = Path(sys.argv[1])
print("ready", flush=True)
while True:
    for name in ("v0001", "v0002"):
        registry.set_current(root, name)
"""


def make_versions(root: Path, names=("v0001", "v0002")) -> Path:
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "m.gguf").write_bytes(b"GGUF")
        (folder / registry.METADATA).write_text(json.dumps({"model_file": "m.gguf", "version": name}))
        (folder / registry.CACTUS_CONFIG).write_text(json.dumps({"modelPath": str(folder / "m.gguf"), "version": name}))
    registry.set_current(root, names[0])
    return root


def assert_consistent(root: Path) -> None:
    active = registry.current(root)
    assert active is not None and active.model.read_bytes() == b"GGUF"
    config = json.loads((root / registry.CACTUS_CONFIG).read_text())
    assert config["version"] == active.name and Path(config["modelPath"]) == active.model
    assert not (root / registry.CURRENT_TMP).exists()
    assert not list(root.glob(".*.tmp"))                     # no temporary file of a killed write left


def test_a_crash_after_the_switch_is_repaired_by_the_next_command(tmp_path, monkeypatch, capsys):
    root = make_versions(tmp_path / "models")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt   # killed between the symlink swap and the config write

    monkeypatch.setattr(registry, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        registry.set_current(root, "v0002")
    monkeypatch.undo()
    assert registry.current(root).name == "v0002"                        # the switch itself happened
    assert json.loads((root / registry.CACTUS_CONFIG).read_text())["version"] == "v0001"   # the config lags
    assert main(["models", "list", "--models-dir", str(root)]) == 0
    assert "repaired: cactus.config.json did not follow current (v0002)" in capsys.readouterr().err
    assert_consistent(root)
    assert registry.repair(root) == []                                    # nothing left to fix


def test_a_crash_before_the_switch_changes_nothing(tmp_path, monkeypatch):
    root = make_versions(tmp_path / "models")

    def crash(src, dst):
        raise KeyboardInterrupt   # killed after the temporary link was made, before the swap

    monkeypatch.setattr(registry.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        registry.set_current(root, "v0002")
    monkeypatch.undo()
    assert registry.current(root).name == "v0001" and (root / registry.CURRENT_TMP).is_symlink()
    assert registry.repair(root) == ["removed .current.tmp, left by an interrupted switch"]
    assert_consistent(root)
    assert registry.set_current(root, "v0002").name == "v0002"
    assert_consistent(root)


def test_kill_minus_nine_during_switches_never_leaves_a_broken_registry(tmp_path):
    root = make_versions(tmp_path / "models")
    for attempt in range(5):
        switcher = subprocess.Popen([sys.executable, "-c", SWITCHER, str(root)], stdout=subprocess.PIPE, text=True)
        assert switcher.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.037 * attempt)            # somewhere inside the switching loop
        os.kill(switcher.pid, signal.SIGKILL)
        switcher.wait()
        switcher.stdout.close()
        assert registry.current(root) is not None     # even before any repair: a whole version
        registry.repair(root)
        assert_consistent(root)
    assert sorted(v.name for v in registry.versions(root)) == ["v0001", "v0002"]   # nothing lost
