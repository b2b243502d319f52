"""`dndllama data synth`: a seeded, rule-driven generator of new scenarios in the markdown format.

Scenario `index` of seed `seed` depends on (seed, index) alone, so the first N scenarios of a seed
are the same whatever N, output is byte-stable, and a training mix of 5x is a prefix of 20x. The
generator reads nothing from disk: parties, monsters, spells, items and all prose come from the
tables in this package (never from a scenario folder, and never from the evaluation folder).

    from dndllama.synth import generate
    scenario = generate(seed=0, index=3)      # .path, .category, .text (markdown), .events
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_text
from .mechanics import make_pc
from .phrases import COMBAT
from .phrases_scenes import LOCATIONS, SCENES
from .scenes import Cast, play
from .script import Script
from .tables import CLASSES, FIRST_NAMES, GEAR, NPC_NAMES, RACES, TITLED, TRINKETS, VALUABLES, WORLDS

# Bump when the same (seed, index) would give different text: part of the dataset cache key.
SYNTH_VERSION = 2
GRAMMAR = {**COMBAT, **SCENES}
CATEGORY_WEIGHTS = {"combat": 0.26, "exploration": 0.22, "roleplay": 0.18, "downtime": 0.17, "puzzles": 0.17}
PARTY_SIZES = {1: 0.15, 2: 0.25, 3: 0.25, 4: 0.2, 5: 0.15}
TIER_LEVELS = {1: (1, 4), 2: (5, 8), 3: (9, 12)}


@dataclass
class Synthetic:
    path: str                  # "combat/synth_0_00003.md", relative to the output folder
    category: str
    text: str                  # the scenario's markdown
    events: list[dict] = field(default_factory=list, repr=False)   # what happened, in order


def generate(seed: int, index: int) -> Synthetic:
    rng = random.Random(f"dndllama-synth:{seed}:{index}")
    category = _weighted(rng, CATEGORY_WEIGHTS)
    tier = rng.choice((1, 1, 1, 2, 2, 3))
    party = _party(rng, _weighted(rng, PARTY_SIZES), tier, category)
    script = Script(rng, GRAMMAR)
    script.party_size = len(party)
    script.fixed["weather"] = script.pick("weather")     # one sky per scenario
    place = script.say(rng.choice(LOCATIONS[category]))
    cast = Cast(party, place, rng.choice(NPC_NAMES))
    party_lines = [pc.party_line() for pc in party]   # the state before play changes HP, slots and items
    play(script, cast, category, tier)
    system = ["Role: Dungeon Master", f"World: {rng.choice(WORLDS)}", f"Location: {place}"]
    if rng.random() < 0.35:
        system.append(f"Scene: {script.pick('atmosphere')}")
    system += ["Party:", *party_lines]
    return Synthetic(f"{category}/synth_{seed}_{index:05d}.md", category, script.render(system), script.events)


def _weighted(rng: random.Random, weights: dict):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _party(rng: random.Random, size: int, tier: int, category: str) -> list:
    names = rng.sample(FIRST_NAMES, size)
    low, high = TIER_LEVELS[tier]
    level = rng.randint(low, high)
    party = []
    for name in names:
        class_name = rng.choice(sorted(CLASSES))
        if class_name in ("Cleric", "Paladin") and rng.random() < 0.2:
            name = f"{rng.choice(TITLED)} {name}"
        gear, gold = _inventory(rng, CLASSES[class_name].gear, category)
        party.append(make_pc(rng, name, rng.choice(RACES), class_name, level, gear, gold))
    return party


def _inventory(rng: random.Random, class_gear: tuple[str, ...], category: str) -> tuple[list[str], int]:
    """1-5 entries in all: the weapon (added by make_pc), then gear, a valuable, potions, gold."""
    size = rng.randint(1, 5)
    pool = list(class_gear) + rng.sample(GEAR, 3) + [rng.choice(VALUABLES)[0], rng.choice(TRINKETS)]
    if category in ("downtime", "roleplay"):
        pool.insert(0, rng.choice(VALUABLES)[0])
    rng.shuffle(pool)
    gold = rng.choice((0, 3, 5, 12, 15, 24, 30, 45, 60, 85, 120, 160, 250)) if size > 1 and rng.random() < 0.75 else 0
    room = size - 1 - (1 if gold else 0)
    gear = list(dict.fromkeys(pool))[:room]
    return gear, gold


# ---------------------------------------------------------------- many at once


def generate_many(count: int, seed: int, start: int = 0) -> list[Synthetic]:
    return [generate(seed, index) for index in range(start, start + count)]


def write_folder(out: str | Path, count: int, seed: int) -> list[Path]:
    """Write `count` scenarios under out/<category>/, each to a temp name then renamed."""
    return [write_text(Path(out) / item.path, item.text) for item in generate_many(count, seed)]


def summarize(scenarios: list, seconds: float = 0.0) -> dict:
    """Statistics of parsed scenarios (dndllama.scenarios.Scenario): turns, no-call share, calls per tool."""
    dm_turns = [t for s in scenarios for t in s.turns if t.kind == "dm"]
    calls = Counter(c.name for t in dm_turns for c in t.tool_calls)
    categories = Counter(s.category for s in scenarios)
    return {
        "scenarios": len(scenarios),
        "turns": sum(len(s.turns) for s in scenarios),
        "dm_turns": len(dm_turns),
        "no_call_share": round(sum(not t.tool_calls for t in dm_turns) / max(1, len(dm_turns)), 3),
        "calls": dict(sorted(calls.items())),
        "categories": dict(sorted(categories.items())),
        "scenarios_per_second": round(len(scenarios) / seconds, 1) if seconds else None,
    }


def timed_generate(count: int, seed: int) -> tuple[list[Synthetic], float]:
    t0 = time.perf_counter()
    items = generate_many(count, seed)
    return items, time.perf_counter() - t0


# ---------------------------------------------------------------- for training


class SynthError(ValueError):
    """Synthetic scenarios cannot be used with this data folder (e.g. its tools.toml changed a tool)."""


def training_conversations(ratio: float, seed: int, loss: str, hand_dm_turns: int, vocab=None) -> list:
    """Synthetic conversations with at least ratio x hand_dm_turns DM messages, each parsed and
    validated like a scenario file, marked with `loss` ("calls" or "all") for the dataset's masks."""
    from ..dataset import to_conversation
    from ..scenarios import ScenarioError, parse_scenario

    wanted = math.ceil(ratio * hand_dm_turns)
    conversations, have, index = [], 0, 0
    while have < wanted:
        item = generate(seed, index)
        index += 1
        try:
            scenario = parse_scenario(item.text, f"synth/{item.path}", vocab, item.category)
        except ScenarioError as exc:
            raise SynthError(f"synthetic scenario {item.path} (synth_seed {seed}) does not fit this data folder's "
                             f"tool vocabulary: {exc.diagnostics[0] if exc.diagnostics else exc}; set synth = 0, "
                             "or keep the default forms of roll, health, inventory, spellcast and check") from None
        conversation = to_conversation(scenario, vocab)
        conversation.loss = loss
        have += sum(m.role == "assistant" for m in conversation.messages)
        conversations.append(conversation)
    return conversations
