"""The fault suite's cases: inputs a hostile or clumsy user can type, each run as the real CLI in a
subprocess on a tiny real model and a models folder with two real versions. Shared by
tests/test_faults.py (one test per case) and scripts/fault_suite.py (the tally).

A run is judged by what a user would see:
  crash          exit status 134/139 (or killed by SIGABRT/SIGSEGV), a GGML_ASSERT, or a Python
                 traceback without --debug
  clear_error    a non-zero exit with an `error: ...` line (or data check's `file:line: error:`) naming
                 what was wrong
  works          exit 0 and the case's own check of the result passes
  silent_wrong   exit 0 where an error was due, or a result the case's check finds wrong
  unclear        a non-zero exit without the expected words
and, whatever the outcome, a version that existed before and is changed or gone after (other than
one the case removes on purpose) is a lost version.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dndllama import registry
from tiny_models import make_tiny_model

HERE = Path(__file__).parent
INDEPENDENT = HERE / "data" / "independent"
CRASH_STATUSES = {134, 139, -6, -11}
TIMEOUT_S = 120


@dataclass
class Env:
    root: Path
    base: Path          # the tiny model (also the two versions' model files)
    data: Path
    models: Path
    cache: Path

    def format(self, arg: str) -> str:
        return arg.format(data=self.data, models=self.models, base=self.base, cache=self.cache, root=self.root)


@dataclass
class Case:
    name: str
    argv: list[str]                  # dndllama's arguments; {data}, {models}, {base}, {cache} are filled in
    expect: str = ""                 # words the error must contain; "" = the command must work
    stdin: bytes = b""
    config: str | None = None        # written to the data folder's dndllama.toml first
    setup: Callable[[Env], None] | None = None
    check: Callable[[Env, str], str | None] | None = None   # after a run: what is wrong, or None
    removes: tuple[str, ...] = ()    # versions the case deletes on purpose


@dataclass
class Result:
    case: str
    outcome: str
    detail: str
    lost: list[str] = field(default_factory=list)
    returncode: int = 0


# ---------------------------------------------------------------- the environment


def make_base(folder: Path) -> Path:
    # as in test_pipeline: 6 layers and a 4096-token context hold the scenarios' system prompts
    return make_tiny_model(folder / "tiny.gguf", n_ctx=4096, n_layer=6)


def make_env(root: Path, base: Path) -> Env:
    """A data folder, and a models folder with v0001 (current) and v0002, whose model files are the
    tiny model, as `train` lays them out."""
    env = Env(root, base, root / "data", root / "models", root / "cache")
    shutil.copytree(INDEPENDENT, env.data)
    for name in ("v0001", "v0002"):
        folder = env.models / name
        folder.mkdir(parents=True)
        model = folder / f"dndllama-dm-{name}-f32.gguf"
        shutil.copy(base, model)
        config = {"version": name, "modelPath": str(model), "mmprojPath": None, "n_ctx": 4096,
                  "sampling": {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "n_predict": 4}}
        (folder / "cactus.config.json").write_text(json.dumps(config))
        (folder / "metadata.json").write_text(json.dumps({"version": name, "model_file": model.name,
                                                          "config": {"data": str(env.data)}}))
    registry.set_current(env.models, "v0001")
    return env


def snapshot(models: Path) -> dict[str, str]:
    """sha256 of every file of every version folder."""
    return {str(p.relative_to(models)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(models.glob("v*/**/*")) if p.is_file()}


# ---------------------------------------------------------------- running and judging


def run_case(case: Case, env: Env) -> Result:
    if case.config is not None:
        (env.data / "dndllama.toml").write_text(case.config)
    if case.setup:
        case.setup(env)
    before = snapshot(env.models)
    argv = [env.format(a) for a in case.argv]
    done = subprocess.run([sys.executable, "-m", "dndllama", *argv], input=case.stdin, capture_output=True,
                          timeout=TIMEOUT_S, cwd=env.root, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    after = snapshot(env.models)
    lost = sorted(k for k, sha in before.items() if after.get(k) != sha and k.split("/")[0] not in case.removes)
    outcome, detail = judge(case, env, done.returncode, out, err)
    return Result(case.name, outcome, detail, lost, done.returncode)


def judge(case: Case, env: Env, code: int, out: str, err: str) -> tuple[str, str]:
    said = (out + err).strip()
    if code in CRASH_STATUSES or "GGML_ASSERT" in said or "Traceback (most recent call last)" in err:
        return "crash", f"exit {code}: {said[-600:]}"
    if case.expect:
        if code == 0:
            return "silent_wrong", f"exit 0, but an error naming {case.expect!r} was due: {said[-400:]}"
        lines = [line for line in said.splitlines() if case.expect.lower() in line.lower()]
        if lines and ("error:" in lines[0] or err.lstrip().startswith("error:")):   # `error: ...` or file:line: error:
            return "clear_error", lines[0]
        return "unclear", f"exit {code}: {said[-400:]}"
    if code != 0:
        return "unclear", f"exit {code} where the command should work: {said[-400:]}"
    problem = case.check(env, out + err) if case.check else None
    return ("silent_wrong", problem) if problem else ("works", out.strip().splitlines()[-1] if out.strip() else "")


# ---------------------------------------------------------------- setups and checks


def _scenario_with(env: Env, rel: str, dm_text: str) -> None:
    """A copy of one scenario whose first DM turn is `dm_text`."""
    text = (INDEPENDENT / "combat" / "wolves_at_the_ford.md").read_text()
    head, rest = text.split("## DM\n", 1)
    (env.data / rel).parent.mkdir(parents=True, exist_ok=True)
    (env.data / rel).write_text(head + "## DM\n" + dm_text + "\n\n" + rest.split("\n\n", 1)[1])


def long_dm_turn(env: Env) -> None:
    _scenario_with(env, "combat/long_turn.md", "The wolf circles you. " * 150 + "What do you do?")


EVIL_TOOLS = """
[arg_types]
runes = '(a+)+'
[tools.chant]
description = "chant runes"
args = [{ name = "runes", type = "runes" }]
example = "[chant: aaa]"
result = "chant: aaa = *done*"
"""


def evil_regex(env: Env) -> None:
    (env.data / "tools.toml").write_text(EVIL_TOOLS)
    _scenario_with(env, "combat/chant.md", "You chant. [chant: " + "a" * 40 + "b]\n\nWhat now?")


def symlinked_folder(env: Env) -> None:
    outside = env.root / "more-scenarios"
    shutil.copytree(INDEPENDENT / "roleplay", outside)
    (env.data / "linked").symlink_to(outside, target_is_directory=True)


def _v2_file(env: Env, pattern: str) -> Path:
    return next((env.models / "v0002").glob(pattern))


def agree(env: Env, said: str) -> str | None:
    active = registry.current(env.models)
    config = json.loads((env.models / "cactus.config.json").read_text())
    if active is None or config.get("version") != active.name:
        return f"current is {active and active.name}, cactus.config.json names {config.get('version')}"
    return None


def says(*words: str) -> Callable[[Env, str], str | None]:
    return lambda env, said: None if all(w in said for w in words) else f"the output lacks {words}: {said[-300:]}"


def all_of(*checks) -> Callable[[Env, str], str | None]:
    return lambda env, said: next((p for p in (c(env, said) for c in checks) if p), None)


# ---------------------------------------------------------------- the cases

TRAIN = ["train", "--data", "{data}", "--base", "{base}", "--models-dir", "{models}", "--cache-dir", "{cache}",
         "--max-steps", "2", "--select-by", "loss", "--no-gate", "--ctx", "2048", "--quiet"]   # no case trains
VALIDATE = ["validate", "current", "--data", "{data}", "--models-dir", "{models}", "--max-turns", "1",
            "--max-tokens", "4", "--baseline", "none", "--out", "{root}/validation", "--threads", "2"]
CHAT = ["chat", "current", "--models-dir", "{models}", "--data", "{data}", "--max-tokens", "4", "--ctx", "4096"]
HELLO = b"Hello there.\n"
MODELS = ["--models-dir", "{models}"]

CASES: list[Case] = [
    # settings on the command line: refused before anything runs, naming the flag and the range
    *[Case(f"train {flag} {value}", TRAIN + [flag, value], flag) for flag, value in [
        ("--lr", "inf"), ("--lr", "1e39"), ("--lr", "1e-300"), ("--lr", "nan"), ("--lora-lr", "1e39"),
        ("--threads", "100000"), ("--threads", "-4"), ("--size-cap", "0"), ("--ctx", "300"), ("--epochs", "0"),
        ("--max-steps", "-1"), ("--name", "../../etc/evil"), ("--validate-turns", "-1")]],
    Case("train --quant Q9_Z", TRAIN + ["--quant", "Q9_Z"], "unknown quantization type"),
    Case("train --size-cap 10kB", TRAIN + ["--size-cap", "10kB"], "nothing was trained"),
    Case("train --runtime nope", TRAIN + ["--runtime", "nope"], "unknown runtime"),
    # settings in dndllama.toml: refused naming the file, the setting and the range
    *[Case(f"dndllama.toml {body!r}", TRAIN, setting, config=body) for setting, body in [
        ("weight_decay", "weight_decay = 2.0"), ("weight_decay", "weight_decay = -0.5"),
        ("lr_min_ratio", "lr_min_ratio = -5.0"), ("sampling.temperature", '[sampling]\ntemperature = "hot"'),
        ("threads", "threads = -4"), ("seed", "seed = -1"), ("name", 'name = "../../etc/evil"'),
        ("size_cap", 'size_cap = "0"'), ("lr", "lr = 1e39"), ("sampling.max_tokens", "[sampling]\nmax_tokens = 0"),
        ("sampling", "sampling = 3"), ("unknown setting", "learning_rate = 0.1"), ("dndllama.toml", "lr = = 1")]],
    # data that cannot be trained on: refused before training
    Case("a DM turn longer than ctx", TRAIN, "do not fit the training window", setup=long_dm_turn),
    Case("a catastrophic regex in tools.toml", ["data", "check", "{data}"], "backtracks catastrophically",
         setup=evil_regex),
    Case("a symlinked folder in the data", ["data", "check", "{data}"], setup=symlinked_folder,
         check=says("linked:1: warning", "symlinked folder")),
    # validate and chat flags
    Case("validate --threads 100000", VALIDATE + ["--threads", "100000"], "--threads"),
    Case("validate --max-tokens 0", VALIDATE + ["--max-tokens", "0"], "--max-tokens"),
    Case("validate --seed -1", VALIDATE + ["--seed", "-1"], "--seed"),
    Case("chat --temperature nan", CHAT + ["--temperature", "nan"], "--temperature", stdin=HELLO),
    Case("chat --seed -1", CHAT + ["--seed", "-1"], "--seed", stdin=HELLO),
    Case("chat non-UTF-8 stdin", CHAT, "not UTF-8", stdin=b"Hello \xff\xfe there.\n"),
    Case("chat current", CHAT, stdin=HELLO, check=says("DM:")),
    # the registry
    Case("models use current", ["models", "use", "current", *MODELS], check=agree),
    Case("models show current", ["models", "show", "current", *MODELS], check=says('"version": "v0001"')),
    Case("models use v0002", ["models", "use", "v0002", *MODELS], check=agree),
    Case("models rm current", ["models", "rm", "current", *MODELS], "is the current version"),
    Case("models use ../../etc", ["models", "use", "../../etc", *MODELS], "is not a version"),
    Case("models use a huge number", ["models", "use", "9" * 40, *MODELS], "is not a version"),
    Case("models use v0009", ["models", "use", "v0009", *MODELS], "no version 'v0009'"),
    Case("models use: GGUF deleted", ["models", "use", "v0002", *MODELS], "damaged",
         setup=lambda env: _v2_file(env, "*.gguf").unlink()),
    Case("models list: GGUF deleted", ["models", "list", *MODELS], setup=lambda env: _v2_file(env, "*.gguf").unlink(),
         check=says("v0002 is DAMAGED", "model file")),
    Case("models list: metadata deleted", ["models", "list", *MODELS],
         setup=lambda env: _v2_file(env, "metadata.json").unlink(), check=says("v0002 is DAMAGED", "metadata.json")),
    Case("models use: metadata garbage", ["models", "use", "2", *MODELS], "damaged",
         setup=lambda env: _v2_file(env, "metadata.json").write_text("{")),
    Case("models rm v0002", ["models", "rm", "v0002", *MODELS], removes=("v0002",),
         check=all_of(agree, lambda env, said: "v0002 still there" if (env.models / "v0002").exists() else None)),
    Case("models rollback with none older", ["models", "rollback", *MODELS], "no older whole version"),
]


# ---------------------------------------------------------------- racing `models use`


def use_and_check(args) -> str | None:
    """One `models use` in a worker process, then whether current and the config agree."""
    root, name = args
    registry.set_current(Path(root), name)
    with registry.lock(Path(root)):   # the state as the command left it, with no switch under way
        active = registry.current(Path(root))
        config = json.loads((Path(root) / registry.CACTUS_CONFIG).read_text())
    return None if active and config["version"] == active.name else f"{active and active.name} vs {config['version']}"


# ---------------------------------------------------------------- fuzz: GGUF headers and settings


HOSTILE = ["-1", "0", "nan", "inf", "-inf", "1e39", "1e-300", "100000", "abc", "", "../x", "9" * 30, "0.5", "2"]
FUZZ_FLAGS = {
    "train": ["--lr", "--lora-lr", "--threads", "--ctx", "--epochs", "--max-steps", "--size-cap", "--quant", "--name",
              "--lora-rank", "--patience", "--save-every", "--eval-every", "--min-f1-gain", "--quant-f1-tolerance",
              "--validate-turns", "--gpu-layers", "--method", "--matmul-precision"],
    "validate": ["--threads", "--max-tokens", "--seed", "--ctx", "--max-turns"],
    "chat": ["--temperature", "--seed", "--max-tokens", "--ctx"],
}


def mutate_header(data: bytes, rng: random.Random) -> bytes:
    """A GGUF with a few bytes of its header (magic, counts, key lengths, types) changed, or cut."""
    cut = rng.random() < 0.3
    if cut:
        return data[: rng.randrange(0, 4096)]
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(0, 2048)
        out[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(out)


def fuzz_runs(env, n: int, seed: int) -> list[tuple[list[str], int, str]]:
    """n random CLI runs: mutated GGUFs given as the base, the model and the tokenizer, and hostile
    flag values; returns (argv, exit status, stderr) of each."""
    rng = random.Random(seed)
    runs = []
    for i in range(n):
        if i % 2 == 0:
            bad = env.root / f"mutated-{i}.gguf"
            bad.write_bytes(mutate_header(env.base.read_bytes(), rng))
            argv = rng.choice([["data", "check", "{data}", "--base", str(bad)], [*CHAT[:1], str(bad), *CHAT[2:]],
                               [*VALIDATE[:1], str(bad), *VALIDATE[2:]], ["check-runtime", str(bad)]])
        else:
            command = rng.choice(list(FUZZ_FLAGS))
            argv = {"train": TRAIN, "validate": VALIDATE, "chat": CHAT}[command] + ["--plan"] * (command == "train")
            argv = argv + [rng.choice(FUZZ_FLAGS[command]), rng.choice(HOSTILE)]
        argv = [env.format(a) for a in argv]
        done = subprocess.run([sys.executable, "-m", "dndllama", *argv], input=b"Hello.\n", capture_output=True,
                              timeout=120, cwd=env.root)
        runs.append((argv, done.returncode, done.stderr.decode(errors="replace")))
    return runs
