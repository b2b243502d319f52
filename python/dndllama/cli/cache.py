"""`dndllama cache clear`: delete the cached stages (datasets, training runs, converted bases)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..config import Config
from ..quantize import human_size
from .common import command, group

CACHED_STAGES = ("datasets", "runs", "bases", "converted")   # the cache's subfolders; models/ is never touched


def add_cache_commands(groups) -> None:
    commands = group(groups, "cache", "the stage cache (datasets, training runs, converted bases)")
    clear = command(commands, "clear", cmd_cache_clear, "delete cached stages; models/ is never touched")
    clear.add_argument("--cache-dir", default=None, help="default: ~/.cache/dndllama")


def cmd_cache_clear(args: argparse.Namespace) -> int:
    cache = Path(args.cache_dir or Config().cache_dir).expanduser()
    removed = 0
    for part in CACHED_STAGES:
        target = cache / part
        if target.exists():
            removed += sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
            shutil.rmtree(target)
    print(f"cleared {human_size(removed)} from {cache}")
    return 0
