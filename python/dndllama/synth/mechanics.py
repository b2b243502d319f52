"""D&D 5e mechanics for the generator: dice, characters, monsters, spell slots, and the exact
result lines the app feeds back (the formats of ai-training/: `longsword attack: 14 + 5 = *19*`,
`2d6+3: 4 + 2 + 3 = *9*`, `stealth: 12 + 5(skill) = *17* vs DC 15, success`)."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from .tables import (CLASSES, FULL_CASTER_SLOTS, PACT_SLOTS, SKILLS, SPELLS, TOOLS, WEAPONS, CharClass, Monster,
                     Spell, Weapon)

DICE = re.compile(r"^(\d*)d(\d+)(?:\+(\d+))?$")
XP_BY_LEVEL = {1: 0, 2: 300, 3: 900, 4: 2700, 5: 6500, 6: 14000, 7: 23000, 8: 34000, 9: 48000, 10: 64000,
               11: 85000, 12: 100000}
ARMOR_CLASS = {"Fighter": (16, 18), "Paladin": (16, 18), "Cleric": (15, 18), "Barbarian": (13, 15),
               "Ranger": (14, 16), "Rogue": (13, 15), "Monk": (14, 16), "Druid": (13, 16), "Bard": (12, 14),
               "Wizard": (12, 13), "Sorcerer": (12, 13), "Warlock": (12, 14)}


@dataclass
class Roll:
    expr: str
    dice: list[int]
    bonus: int

    @property
    def total(self) -> int:
        return sum(self.dice) + self.bonus

    def line(self, label: str = "") -> str:
        """`2d6+3: 4 + 2 + 3 = *9*`; a single die without a bonus is just `1d10: *8*`."""
        label = label or self.expr
        if len(self.dice) == 1 and not self.bonus:
            return f"{label}: *{self.total}*"
        parts = " + ".join(str(d) for d in self.dice) + (f" + {self.bonus}" if self.bonus else "")
        return f"{label}: {parts} = *{self.total}*"


def roll(rng: random.Random, expr: str) -> Roll:
    match = DICE.match(expr)
    if not match:
        raise ValueError(f"dice expression '{expr}' is not NdM or NdM+K")
    count, sides, bonus = int(match.group(1) or 1), int(match.group(2)), int(match.group(3) or 0)
    return Roll(expr, [rng.randint(1, sides) for _ in range(count)], bonus)


def dice_expr(count: int, sides: int, bonus: int = 0) -> str:
    return f"{count}d{sides}" + (f"+{bonus}" if bonus > 0 else "")


def crit_expr(expr: str) -> str:
    """A critical hit doubles the dice, not the modifier: 1d8+3 -> 2d8+3."""
    count, sides, bonus = _parts(expr)
    return dice_expr(count * 2, sides, bonus)


def add_dice(expr: str, extra: str, times: int) -> str:
    """Upcasting: 3d6 plus 1d6 per level above -> 5d6 at two levels up."""
    if times <= 0 or not extra:
        return expr
    count, sides, bonus = _parts(expr)
    extra_count, _, extra_bonus = _parts(extra)
    return dice_expr(count + extra_count * times, sides, bonus + extra_bonus * times)


def _parts(expr: str) -> tuple[int, int, int]:
    match = DICE.match(expr)
    return int(match.group(1) or 1), int(match.group(2)), int(match.group(3) or 0)


def signed(value: int) -> str:
    return f"+ {value}" if value >= 0 else f"- {-value}"


def d20_line(label: str, d20: int, modifier: int, tag: str = "") -> str:
    """`perception: 15 + 4(skill) = *19*`: the die, the modifier (with its source), the total."""
    return f"{label}: {d20} {signed(modifier)}{tag} = *{d20 + modifier}*"


def ordinal(level: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(level, f"{level}th")


# ---------------------------------------------------------------- characters


@dataclass
class PC:
    name: str
    race: str
    cls: CharClass
    level: int
    max_hp: int
    hp: int
    ac: int
    mods: dict[str, int]
    weapon: Weapon
    items: list[str]
    gold: int
    xp: int | None
    slots: dict[int, int] = field(default_factory=dict)   # slot level -> slots left

    @property
    def prof(self) -> int:
        return 2 + (self.level - 1) // 4

    def skill_bonus(self, skill: str) -> tuple[int, bool]:
        """(modifier, proficient) for a skill, a tool the character carries, or a plain ability check."""
        ability = SKILLS.get(skill) or TOOLS.get(skill) or skill
        proficient = skill in self.cls.skills or (skill in TOOLS and skill in self.items)
        return self.mods[ability] + (self.prof if proficient else 0), proficient

    def save_bonus(self, ability: str) -> int:
        return self.mods[ability] + (self.prof if ability in self.cls.saves else 0)

    def attack_bonus(self) -> int:
        return self.mods[self.weapon.ability] + self.prof

    def damage_expr(self) -> str:
        count, sides, _ = _parts(self.weapon.dice)
        return dice_expr(count, sides, self.mods[self.weapon.ability])

    @property
    def spell_mod(self) -> int:
        return self.mods[self.cls.primary]

    @property
    def spell_dc(self) -> int:
        return 8 + self.prof + self.spell_mod

    def known_spells(self) -> list[Spell]:
        top = max(self.slots, default=0)
        return [SPELLS[s] for s in self.cls.spells if SPELLS[s].level <= top]

    def inventory(self) -> list[str]:
        return self.items + ([f"{self.gold} gp"] if self.gold else [])

    def party_line(self) -> str:
        parts = [f"{self.race} {self.cls.name}", f"Level {self.level}", f"HP: {self.hp}/{self.max_hp}"]
        if self.xp is not None:
            parts.append(f"XP: {self.xp}")
        if self.inventory():
            parts.append("Inventory: " + ", ".join(self.inventory()))
        return f"- {self.name} ({', '.join(parts)})"


def slot_table(cls: CharClass, level: int) -> dict[int, int]:
    """Spell slots per slot level at a class level (5e tables; pact magic has one slot level)."""
    if cls.caster == "full":
        return {i + 1: n for i, n in enumerate(FULL_CASTER_SLOTS[level])}
    if cls.caster == "half" and level >= 2:
        return {i + 1: n for i, n in enumerate(FULL_CASTER_SLOTS[math.ceil(level / 2)])}
    if cls.caster == "pact":
        count, slot_level = PACT_SLOTS[level]
        return {slot_level: count}
    return {}


def make_pc(rng: random.Random, name: str, race: str, class_name: str, level: int, gear: list[str],
            gold: int) -> PC:
    cls = CLASSES[class_name]
    primary = 3 if level < 4 else 4 if level < 8 else 5
    mods = {a: rng.choice((-1, 0, 0, 1, 1, 2)) for a in ("strength", "dexterity", "constitution", "intelligence",
                                                         "wisdom", "charisma")}
    mods["constitution"] = rng.choice((0, 1, 1, 2, 2, 3))
    mods[cls.primary] = primary
    weapon = WEAPONS[rng.choice(cls.weapons)]
    mods[weapon.ability] = max(mods[weapon.ability], primary if weapon.ability == cls.primary else 2)
    per_level = cls.hit_die // 2 + 1 + mods["constitution"]
    max_hp = cls.hit_die + mods["constitution"] + (level - 1) * per_level
    hp = max_hp if rng.random() < 0.6 else rng.randint(max(1, max_hp // 2), max_hp)
    low, high = ARMOR_CLASS[class_name]
    xp = XP_BY_LEVEL[level] + rng.randint(0, 250) if rng.random() < 0.7 else None
    return PC(name, race, cls, level, max_hp, hp, rng.randint(low, high), mods, weapon,
              [weapon.name, *gear], gold, xp, slot_table(cls, level))


@dataclass
class Foe:
    name: str
    monster: Monster
    hp: int
    max_hp: int

    @property
    def ac(self) -> int:
        return self.monster.ac


def make_foes(rng: random.Random, monster: Monster, count: int) -> list[Foe]:
    """One or more of a monster; several get told apart by their names ("Goblin Archer")."""
    if count == 1:
        return [Foe(monster.name, monster, monster.hp, monster.hp)]
    return [Foe(kind, monster, monster.hp, monster.hp) for kind in rng.sample(monster.kinds, count)]


# ---------------------------------------------------------------- result lines


def check_line(skill: str, d20: int, modifier: int, proficient: bool, dc: int) -> str:
    tag = ("(tools)" if skill in TOOLS else "(skill)" if skill in SKILLS else "") if proficient else ""
    outcome = "success" if d20 + modifier >= dc else "failure"
    return f"{d20_line(skill, d20, modifier, tag)} vs DC {dc}, {outcome}"


def health_line(name: str, before: int, change: int, max_hp: int) -> str:
    """`Goblin: 7 - 9 = *0/7*`: hit points never go below 0 or above the maximum."""
    after = max(0, min(max_hp, before + change))
    return f"{name}: {before} {signed(change)} = *{after}/{max_hp}*"


def spell_effect(spell: Spell, caster: PC, slot: int) -> str:
    """What the spellcast result says the spell does at this slot level."""
    if spell.kind == "utility":
        return spell.effect
    dice = spell_dice(spell, caster, slot)
    if spell.kind == "heal":
        return f"{dice} healing"
    text = f"{dice} {spell.damage_type}"
    if spell.kind == "save":
        text += f", {spell.save.capitalize()} save DC {caster.spell_dc}"
    elif spell.kind == "attack":
        text += f", spell attack +{caster.prof + caster.spell_mod}"
    return text


def spell_dice(spell: Spell, caster: PC, slot: int) -> str:
    if spell.level == 0:  # cantrips grow with the caster's level, not a slot
        count, sides, bonus = _parts(spell.dice)
        return dice_expr(count * (1 + (caster.level >= 5) + (caster.level >= 11)), sides, bonus)
    dice = add_dice(spell.dice, spell.upcast, slot - spell.level)
    if spell.kind == "heal":
        count, sides, bonus = _parts(dice)
        dice = dice_expr(count, sides, bonus + caster.spell_mod)
    return dice


def spellcast_line(caster: PC, spell: Spell, slot: int) -> str:
    level = "cantrip" if slot == 0 else f"{ordinal(slot)}-level slot"
    return f"{caster.name}: {spell.name} ({level}) = *{spell_effect(spell, caster, slot)}*"
