"""`dndllama models list|show|use|rollback|rm`: the trained versions in the registry (registry.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import registry
from ..quantize import human_size
from .common import add_models_dir, command, group, print_table


def add_models_commands(groups) -> None:
    commands = group(groups, "models", "list, inspect and switch trained versions")
    for name, func, text, takes_version in [
        ("list", cmd_models_list, "every version, its lineage and which one is current", False),
        ("show", cmd_models_show, "one version's metadata", True),
        ("use", cmd_models_use, "make a version current (the app's config follows)", True),
        ("rollback", cmd_models_rollback, "make the previous version current", False),
        ("rm", cmd_models_rm, "delete a version that is not current", True),
    ]:
        leaf = command(commands, name, func, text)
        if takes_version:
            leaf.add_argument("version", help="version name, e.g. v0002 or 2, or current")
        add_models_dir(leaf)


def cmd_models_list(args: argparse.Namespace) -> int:
    root = _repaired(args.models_dir)
    found = registry.versions(root)
    if not found:
        print(f"no versions in {root} yet: run dndllama train")
        return 0
    active = registry.current(root)
    rows = [_version_row(v, bool(active and active.name == v.name)) for v in found]
    print_table(f"Versions in {root} (* = current)",
                ["", "version", "created", "quant", "size", "val loss", "tool F1", "parent", "base"], rows,
                rich_output=False)
    for v in found:
        if v.problem:
            print(f"{v.name} is DAMAGED: {v.problem}; `models use` refuses it (dndllama models rm {v.name} removes it)")
    return 0


def _version_row(version: registry.Version, is_current: bool) -> list:
    if version.problem:
        return ["*" if is_current else "", version.name, "DAMAGED", "-", "-", "-", "-", "-", "-"]
    m = version.metadata
    parent = m.get("warm_start_from") or m.get("parent") or "-"
    shipped = (m.get("validation") or {}).get("model", {})   # the published file's own validation
    loss = shipped.get("loss", m.get("training", {}).get("best_val_loss"))
    quant = m.get("quant", {})
    return ["*" if is_current else "", version.name, m.get("created", "?"), quant.get("type", "?"),
            human_size(quant.get("size", 0)), _number(loss), _number(shipped.get("tool_name_f1")), parent,
            m.get("base", {}).get("source", "?")]


def _repaired(models_dir: str) -> Path:
    """The registry folder, after finishing or undoing any interrupted change (said on stderr)."""
    root = Path(models_dir)
    for line in registry.repair(root):
        print(f"repaired: {line}", file=sys.stderr)
    return root


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def cmd_models_show(args: argparse.Namespace) -> int:
    version = registry.get(_repaired(args.models_dir), args.version)
    print(json.dumps({**version.metadata, "path": str(version.path), "damaged": version.problem}, indent=2,
                     default=str))
    return 0


def cmd_models_use(args: argparse.Namespace) -> int:
    version = registry.set_current(_repaired(args.models_dir), args.version)
    print(f"{version.name} is current: {version.model.resolve()}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    version = registry.rollback(_repaired(args.models_dir))
    print(f"rolled back: {version.name} is current: {version.model.resolve()}")
    return 0


def cmd_models_rm(args: argparse.Namespace) -> int:
    root = _repaired(args.models_dir)
    name = registry.version_name(root, args.version)
    registry.remove(root, name)
    print(f"removed {name}")
    return 0
