"""Fetch the pinned llama.cpp source, verify it, unpack it into llama.cpp/ and apply our patches.

Run by CMake at configure time (and usable by hand). The source is the `vendor/llama.cpp` tree of
the registry sdist llama-cpp-python==0.3.36, fetched by name with pip, never from a git host.
A stamp file records which sdist and which patches produced the tree, so a rebuild with unchanged
patches does nothing and a changed patch set re-extracts a pristine tree before applying.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDOR_PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
STAMP = ".dndllama-stamp"


class FetchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    root = os.environ.get("DNDLLAMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dndllama")
    return Path(root) / "sdist"


def find_or_download_sdist() -> Path:
    """A local copy (DNDLLAMA_LLAMA_CPP_SDIST or the cache) wins; otherwise pip downloads it by name."""
    explicit = os.environ.get("DNDLLAMA_LLAMA_CPP_SDIST")
    if explicit:
        return Path(explicit)
    cached = cache_dir() / SDIST
    if cached.exists() and sha256_of(cached) == SHA256:
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    print(f"-- dndllama: downloading {PACKAGE}=={VERSION} sdist (76 MB) for its vendored llama.cpp", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"{PACKAGE}=={VERSION}", "-d", str(cached.parent)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not cached.exists():
        raise FetchError(
            f"could not download {PACKAGE}=={VERSION} from the package registry:\n{proc.stderr.strip()[-2000:]}\n"
            f"fix: check that PyPI is reachable, or download the sdist yourself and set "
            f"DNDLLAMA_LLAMA_CPP_SDIST=/path/to/{SDIST}")
    return cached


def verify(sdist: Path) -> None:
    if not sdist.exists():
        raise FetchError(f"{sdist} does not exist; fix: point DNDLLAMA_LLAMA_CPP_SDIST at {SDIST}")
    actual = sha256_of(sdist)
    if actual != SHA256:
        raise FetchError(
            f"{sdist} has sha256 {actual}, expected {SHA256} (pinned {PACKAGE}=={VERSION}).\n"
            f"fix: delete the file and rebuild so it is downloaded again; never build from an unverified tree")


def patches_of(patch_dir: Path) -> list[Path]:
    return sorted(patch_dir.glob("*.patch"))


def stamp_of(patches: list[Path]) -> str:
    digest = hashlib.sha256(SHA256.encode())
    for patch in patches:
        digest.update(patch.name.encode())
        digest.update(patch.read_bytes())
    return digest.hexdigest()


def unpack(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(VENDOR_PREFIX)]
        if not members:
            raise FetchError(f"{sdist} has no {VENDOR_PREFIX} tree")
        for m in members:
            m.name = m.name[len(VENDOR_PREFIX):]
        # `.git` is a submodule pointer into the sdist author's checkout; it would confuse git apply
        keep = [m for m in members if m.name and m.name.split("/")[0] != ".git"]
        tar.extractall(dest, members=keep, filter="data")


def apply_patch(tree: Path, patch: Path) -> None:
    env = dict(os.environ)
    if shutil.which("git"):
        # inside another repository (like ours) git apply would silently skip every path outside
        # it; the ceiling keeps git from finding that repository, so it patches the plain tree
        env["GIT_CEILING_DIRECTORIES"] = str(tree.parent)
        cmd = ["git", "apply", "-p1", "--whitespace=nowarn", str(patch)]
    else:
        cmd = ["patch", "-p1", "--forward", "--batch", "-i", str(patch)]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise FetchError(
            f"patch {patch.name} does not apply to llama.cpp from {PACKAGE}=={VERSION}:\n"
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}\n"
            f"fix: regenerate the patch against a fresh tree (python cpp/fetch_llama_cpp.py --force, "
            f"edit llama.cpp/, then `git diff` into cpp/patches/{patch.name})")


def prepare(dest: Path, patch_dir: Path, force: bool = False) -> bool:
    """Make `dest` the patched pinned tree. Returns True when it had to be (re)built."""
    patches = patches_of(patch_dir)
    want = stamp_of(patches)
    stamp = dest / STAMP
    if not force and stamp.exists() and stamp.read_text().strip() == want:
        return False
    sdist = find_or_download_sdist()
    verify(sdist)
    tmp = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=dest.parent))
    try:
        unpack(sdist, tmp)
        for patch in patches:
            apply_patch(tmp, patch)
        (tmp / STAMP).write_text(want + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"-- dndllama: llama.cpp {PACKAGE}=={VERSION} unpacked into {dest} with {len(patches)} patch(es)")
    return True


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=root / "llama.cpp")
    ap.add_argument("--patches", type=Path, default=root / "cpp" / "patches")
    ap.add_argument("--force", action="store_true", help="re-extract even when the stamp matches")
    args = ap.parse_args()
    try:
        prepare(args.dest.resolve(), args.patches.resolve(), args.force)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
