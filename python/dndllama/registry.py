"""Every trained model is kept as a version under the models folder:

  models/
    v0001/  <name>-v0001-<quant>.gguf  metadata.json  cactus.config.json  cactus.ts  loss.png  train-log.jsonl
    v0002/  ...
    current -> v0002          the version the app uses (a symlink, switched atomically)
    cactus.config.json        the current version's Cactus config (rewritten atomically on every switch)

A version folder is built under a temporary name and renamed into place, so a crash never leaves a
half-written version; versions are never deleted except by `dndllama models rm`. A crash during a
switch leaves `current` on the old or the new version; `repair` (run by every models command and
by train) then brings cactus.config.json in line.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .files import read_json, write_json

CURRENT = "current"
METADATA = "metadata.json"
CACTUS_CONFIG = "cactus.config.json"
CURRENT_TMP = f".{CURRENT}.tmp"
VERSION_NAME = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A version that does not exist, or an operation that would lose the current model."""


@dataclass
class Version:
    name: str
    path: Path
    metadata: dict

    @property
    def model(self) -> Path:
        return self.path / self.metadata["model_file"]


def versions(models_dir: Path) -> list[Version]:
    if not models_dir.is_dir():
        return []
    found = [p for p in models_dir.iterdir() if p.is_dir() and VERSION_NAME.match(p.name)]
    out = [Version(p.name, p, read_json(p / METADATA, {})) for p in sorted(found, key=_number)]
    return [v for v in out if v.metadata.get("model_file")]


def get(models_dir: Path, name: str) -> Version:
    name = name if name.startswith("v") else f"v{int(name):04d}"
    for version in versions(models_dir):
        if version.name == name:
            return version
    known = ", ".join(v.name for v in versions(models_dir)) or "none yet"
    raise RegistryError(f"no version '{name}' in {models_dir} (versions: {known})")


def current(models_dir: Path) -> Version | None:
    link = models_dir / CURRENT
    if not link.is_symlink():
        return None
    try:
        return get(models_dir, os.readlink(link))
    except RegistryError:
        return None


def resolve(models_dir: Path, spec: str | None) -> Path:
    """The model file a command-line argument means: a .gguf path, a version (v0002, 2), or the
    current version (`current`, or nothing)."""
    if spec is None or spec == CURRENT:
        version = current(models_dir)
        if version is None:
            raise RegistryError(f"no current version in '{models_dir}': run `dndllama train` first, or pass a .gguf file")
        return version.model
    if Path(spec).is_file():
        return Path(spec)
    if VERSION_NAME.match(spec) or spec.isdigit():
        return get(models_dir, spec).model
    raise RegistryError(f"model '{spec}' not found: pass a .gguf file, a version name (dndllama models list), "
                        "or nothing for the current version")


def next_name(models_dir: Path) -> str:
    """One past the highest version folder ever made here (removed ones' names are not reused)."""
    taken = [_number(p) for p in models_dir.glob("v*")] if models_dir.is_dir() else []
    return f"v{max(taken + [0]) + 1:04d}"


def staging_dir(models_dir: Path, name: str) -> Path:
    path = models_dir / f".{name}.tmp"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(models_dir: Path, staged: Path, name: str) -> Version:
    """Move a fully written staging folder into place as version `name`."""
    final = models_dir / name
    os.replace(staged, final)
    return get(models_dir, name)


def set_current(models_dir: Path, name: str) -> Version:
    """Point `current` at a version. The symlink swap is the commit point (readers see the old or the
    new version, never neither); the top-level Cactus config follows it, and `repair` finishes that
    step if a crash came in between."""
    version = get(models_dir, name)
    tmp = models_dir / CURRENT_TMP
    tmp.unlink(missing_ok=True)
    os.symlink(version.name, tmp)
    os.replace(tmp, models_dir / CURRENT)
    _sync_config(models_dir, version)
    return version


def repair(models_dir: Path) -> list[str]:
    """Finish what an interrupted `use`, `rollback` or `train` left half done; returns what was fixed."""
    fixed = []
    tmp = models_dir / CURRENT_TMP
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
        fixed.append(f"removed {tmp.name}, left by an interrupted switch")
    for stale in models_dir.glob(f".{CACTUS_CONFIG}.*.tmp"):
        if not _alive(stale.name.split(".")[-2]):
            stale.unlink(missing_ok=True)
            fixed.append(f"removed {stale.name}, left by an interrupted write")
    version = current(models_dir)
    if version is not None and _sync_config(models_dir, version):
        fixed.append(f"{CACTUS_CONFIG} did not follow {CURRENT} ({version.name}); rewritten")
    return fixed


def _alive(pid: str) -> bool:
    """Whether the process that owns a temporary file (files.atomic_path names it) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _sync_config(models_dir: Path, version: Version) -> bool:
    """Make models/cactus.config.json the version's own; True when it had to be written."""
    config = read_json(version.path / CACTUS_CONFIG)
    if config is None or read_json(models_dir / CACTUS_CONFIG) == config:
        return False
    write_json(models_dir / CACTUS_CONFIG, config)
    return True


def remove(models_dir: Path, name: str) -> None:
    version = get(models_dir, name)
    active = current(models_dir)
    if active and active.name == version.name:
        raise RegistryError(f"{version.name} is the current version; switch first "
                            "(dndllama models use VERSION or dndllama models rollback)")
    shutil.rmtree(version.path)


def rollback(models_dir: Path) -> Version:
    """Switch `current` to the newest version older than it."""
    active = current(models_dir)
    older = [v for v in versions(models_dir) if active and _number(v.path) < _number(active.path)]
    if not older:
        raise RegistryError("there is no older version to roll back to")
    return set_current(models_dir, older[-1].name)


def _number(path: Path) -> int:
    match = VERSION_NAME.match(path.name)
    return int(match.group(1)) if match else -1
