"""Every trained model is kept as a version under the models folder:

  models/
    v0001/  <name>-v0001-<quant>.gguf  metadata.json  cactus.config.json  cactus.ts  loss.png  train-log.jsonl
    v0002/  ...
    current -> v0002          the version the app uses (a symlink, switched atomically)
    cactus.config.json        the current version's Cactus config (rewritten atomically on every switch)
    .lock                     held (fcntl) by every command that changes this folder

A version folder is built under a temporary name and renamed into place, so a crash never leaves a
half-written version. Every change to the folder (publishing, `use`, `rollback`, `rm`, `repair`)
runs under one lock, so two commands never interleave: when a command exits, `current` and
cactus.config.json name the same version. A crash between the two steps of a switch leaves
`current` on the old or the new version; `repair` (run by every models command and by train) then
brings cactus.config.json in line. A version whose files are missing or damaged is listed as
damaged and refused by `use`; `rm` renames a version to a trash name before deleting it, so it
deletes nothing unless it can delete everything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .files import read_json, write_json

CURRENT = "current"
METADATA = "metadata.json"
CACTUS_CONFIG = "cactus.config.json"
CURRENT_TMP = f".{CURRENT}.tmp"
LOCK_FILE = ".lock"
LOCK_WAIT_S = 60.0
TRASH = re.compile(r"^\.(v\d+)\.trash(\.\d+)?$")
VERSION_NAME = re.compile(r"^v(\d{4,9})$")
GGUF_MAGIC = b"GGUF"


class RegistryError(ValueError):
    """A version that does not exist, or an operation that would lose the current model."""


@dataclass
class Version:
    name: str
    path: Path
    metadata: dict

    @property
    def model(self) -> Path:
        return self.path / str(self.metadata.get("model_file") or "?")

    @property
    def problem(self) -> str | None:
        """Why this version cannot be used (its files are missing or damaged), or None."""
        if not self.metadata:
            return f"{METADATA} is missing or unreadable"
        file = self.metadata.get("model_file")
        if not isinstance(file, str) or not file or Path(file).name != file:
            return f"{METADATA} names no model file"
        try:
            with open(self.model, "rb") as f:
                magic = f.read(4)
        except OSError:
            return f"its model file {file} is missing"
        return None if magic == GGUF_MAGIC else f"its model file {file} is not a GGUF"


# ---------------------------------------------------------------- the lock

_held: dict[Path, tuple[int, int]] = {}   # models folder -> (lock file descriptor, nesting depth)


@contextlib.contextmanager
def lock(models_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the models folder's lock (re-entrant within a process): a second command waits up to
    `wait_s`, then fails with a message naming the process that holds it."""
    key = Path(models_dir).resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[key] = (fd, _held[key][1] - 1)
        return
    fd = _acquire(Path(models_dir), wait_s)
    _held[key] = (fd, 1)
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)   # closing releases the flock


def _acquire(models_dir: Path, wait_s: float) -> int:
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(models_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RegistryError(f"cannot lock {models_dir} to change it: {e.strerror}; check that the folder is "
                            "writable") from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RegistryError(f"{models_dir} is being changed by another dndllama command (pid {holder}) "
                                    f"for over {wait_s:.0f} s; wait for it to finish, then run this again") from None
            time.sleep(0.01)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


# ---------------------------------------------------------------- reading


def versions(models_dir: Path) -> list[Version]:
    """Every version folder, damaged ones included (see Version.problem), oldest first."""
    if not models_dir.is_dir():
        return []
    found = [p for p in models_dir.iterdir() if p.is_dir() and not p.is_symlink() and VERSION_NAME.match(p.name)]
    return [Version(p.name, p, _metadata(p)) for p in sorted(found, key=_number)]


def _metadata(path: Path) -> dict:
    data = read_json(path / METADATA, {})
    return data if isinstance(data, dict) else {}


def version_name(models_dir: Path, spec: str) -> str:
    """A version argument (v0002, 2 or `current`) as a folder name; anything else is refused, so a
    name can never point outside the models folder."""
    spec = str(spec).strip()
    if spec == CURRENT:
        target = _current_name(models_dir)
        if target is None:
            raise RegistryError(f"no current version in '{models_dir}'")
        return target
    if spec.isdigit() and len(spec) <= 9:
        return f"v{int(spec):04d}"
    if VERSION_NAME.match(spec):
        return spec
    raise RegistryError(f"'{spec[:80]}' is not a version: versions look like v0002 or 2, or `current`")


def get(models_dir: Path, name: str) -> Version:
    name = version_name(models_dir, name)
    for version in versions(models_dir):
        if version.name == name:
            return version
    known = ", ".join(v.name for v in versions(models_dir)) or "none yet"
    raise RegistryError(f"no version '{name}' in {models_dir} (versions: {known})")


def usable(models_dir: Path, name: str) -> Version:
    """A version that exists and is whole; RegistryError saying what is damaged otherwise."""
    version = get(models_dir, name)
    if version.problem:
        raise RegistryError(f"{version.name} is damaged: {version.problem}; pick another version "
                            f"(dndllama models list), or remove it with dndllama models rm {version.name}")
    return version


def _current_name(models_dir: Path) -> str | None:
    link = models_dir / CURRENT
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    return target if VERSION_NAME.match(target) else None


def current(models_dir: Path) -> Version | None:
    name = _current_name(models_dir)
    if name is None:
        return None
    try:
        return get(models_dir, name)
    except RegistryError:
        return None


def resolve(models_dir: Path, spec: str | None) -> Path:
    """The model file a command-line argument means: a .gguf path, a version (v0002, 2), or the
    current version (`current`, or nothing)."""
    if spec is None or spec == CURRENT:
        version = current(models_dir)
        if version is None:
            raise RegistryError(f"no current version in '{models_dir}': run `dndllama train` first, or pass a .gguf file")
        return usable(models_dir, version.name).model
    if Path(spec).is_file():
        return Path(spec)
    if VERSION_NAME.match(spec) or (spec.isdigit() and len(spec) <= 9):
        return usable(models_dir, spec).model
    raise RegistryError(f"model '{spec[:200]}' not found: pass a .gguf file, a version name (dndllama models list), "
                        "or nothing for the current version")


# ---------------------------------------------------------------- changing


def next_name(models_dir: Path) -> str:
    """One past the highest version here, staged and half-removed ones included. Call it under
    `lock`, with the staging folder made before the lock is released (see `stage`)."""
    if not models_dir.is_dir():
        return "v0001"
    names = [p.name for p in models_dir.glob("v*")]
    names += [p.name[1:].split(".")[0] for p in models_dir.glob(".v*") if p.name.endswith((".tmp", ".trash"))]
    numbers = [int(m.group(1)) for m in map(VERSION_NAME.match, names) if m]
    return f"v{max(numbers + [0]) + 1:04d}"


def stage(models_dir: Path) -> tuple[str, Path]:
    """Reserve the next version name and its empty staging folder, under the lock, so two trainings
    publishing at once never pick the same name."""
    with lock(models_dir):
        name = next_name(models_dir)
        return name, staging_dir(models_dir, name)


def staging_dir(models_dir: Path, name: str) -> Path:
    path = models_dir / f".{name}.tmp"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(models_dir: Path, staged: Path, name: str) -> Version:
    """Move a fully written staging folder into place as version `name`."""
    with lock(models_dir):
        final = models_dir / name
        os.replace(staged, final)
        return get(models_dir, name)


def set_current(models_dir: Path, name: str) -> Version:
    """Point `current` at a whole version. The symlink swap is the commit point (readers see the old
    or the new version, never neither); the top-level Cactus config follows it under the same lock,
    and `repair` finishes that step if a crash came in between."""
    usable(models_dir, name)   # refused before taking the lock: a bad name never creates the folder
    with lock(models_dir):
        version = usable(models_dir, name)
        tmp = models_dir / CURRENT_TMP
        tmp.unlink(missing_ok=True)
        os.symlink(version.name, tmp)
        os.replace(tmp, models_dir / CURRENT)
        _sync_config(models_dir, version)
        return version


def repair(models_dir: Path) -> list[str]:
    """Finish what an interrupted `use`, `rollback`, `rm` or `train` left half done; returns what was
    fixed. Takes the lock only when there is something to fix, so reading a read-only folder works."""
    if not models_dir.is_dir() or not _needs_repair(models_dir):
        return []
    with lock(models_dir):
        return _repair(models_dir)


def _needs_repair(models_dir: Path) -> bool:
    tmp = models_dir / CURRENT_TMP
    leftovers = any(True for p in models_dir.iterdir() if TRASH.match(p.name) or _stale_tmp(p))
    version = current(models_dir)
    stale_config = version is not None and not version.problem and _config_lags(models_dir, version)
    return tmp.is_symlink() or tmp.exists() or leftovers or stale_config


def _repair(models_dir: Path) -> list[str]:
    fixed = []
    tmp = models_dir / CURRENT_TMP
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
        fixed.append(f"removed {tmp.name}, left by an interrupted switch")
    for leftover in sorted(models_dir.iterdir()):
        if TRASH.match(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)
            fixed.append(f"finished removing {TRASH.match(leftover.name).group(1)} ({leftover.name})")
        elif _stale_tmp(leftover):
            leftover.unlink(missing_ok=True)
            fixed.append(f"removed {leftover.name}, left by an interrupted write")
    version = current(models_dir)
    if version is not None and not version.problem and _sync_config(models_dir, version):
        fixed.append(f"{CACTUS_CONFIG} did not follow {CURRENT} ({version.name}); rewritten")
    return fixed


def _stale_tmp(path: Path) -> bool:
    """A temporary file of a killed write (files.atomic_path names it .<file>.<pid>.tmp)."""
    parts = path.name.split(".")
    return (path.name.startswith(f".{CACTUS_CONFIG}.") and path.name.endswith(".tmp") and len(parts) > 2
            and not _alive(parts[-2]))


def _alive(pid: str) -> bool:
    """Whether the process that owns a temporary file (files.atomic_path names it) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _config_lags(models_dir: Path, version: Version) -> bool:
    config = read_json(version.path / CACTUS_CONFIG)
    return config is not None and read_json(models_dir / CACTUS_CONFIG) != config


def _sync_config(models_dir: Path, version: Version) -> bool:
    """Make models/cactus.config.json the version's own; True when it had to be written."""
    if not _config_lags(models_dir, version):
        return False
    write_json(models_dir / CACTUS_CONFIG, read_json(version.path / CACTUS_CONFIG))
    return True


def remove(models_dir: Path, name: str) -> None:
    """Delete a version that is not current: renamed to a trash name first (one step that either
    happens or not), then deleted; a deletion cut short is finished by the next `repair`."""
    get(models_dir, name)
    with lock(models_dir):
        version = get(models_dir, name)
        active = _current_name(models_dir)
        if active == version.name:
            raise RegistryError(f"{version.name} is the current version; switch first "
                                "(dndllama models use VERSION or dndllama models rollback)")
        blocked = _undeletable(version.path)
        if blocked:
            raise RegistryError(f"cannot remove {version.name}: {blocked} is not writable; nothing was deleted")
        trash = models_dir / f".{version.name}.trash"
        try:
            os.replace(version.path, trash)
        except OSError as e:
            raise RegistryError(f"cannot remove {version.name}: {e.strerror}; nothing was deleted") from None
        shutil.rmtree(trash, ignore_errors=True)


def _undeletable(path: Path) -> Path | None:
    """A folder whose entries this process may not delete (checked before anything is)."""
    for folder in [path.parent, path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
        if not os.access(folder, os.W_OK | os.X_OK):
            return folder
    return None


def rollback(models_dir: Path) -> Version:
    """Switch `current` to the newest whole version older than it."""
    if current(models_dir) is None:
        raise RegistryError(f"no current version in '{models_dir}' to roll back from")
    with lock(models_dir):
        active = current(models_dir)
        older = [v for v in versions(models_dir)
                 if active and _number(v.path) < _number(active.path) and not v.problem]
        if not older:
            raise RegistryError("there is no older whole version to roll back to")
        return set_current(models_dir, older[-1].name)


def _number(path: Path) -> int:
    match = VERSION_NAME.match(path.name)
    return int(match.group(1)) if match else -1
