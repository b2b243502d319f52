"""Game actions written into a Script: each rolls the dice, writes the DM's calls and the app's
results in the hand-written formats, updates the state (HP, slots, gold, items) and logs an event.

The rules every action keeps (and tests/test_synth.py checks): a hit is a natural 20 or a total at
or above the target's AC, never a natural 1; damage is rolled only after a hit (a critical hit doubles
the dice) and reaches `[health: target, -N]` with exactly the rolled N (half, rounded down, on a
successful save); healing reaches `[health: target, +N]`; a spell uses a slot of at least its level
that the caster still has; an item or gold is removed only from someone who has it.
"""

from __future__ import annotations

from .mechanics import (PC, Foe, check_line, crit_expr, d20_line, health_line, ordinal, roll, signed, spell_dice,
                        spellcast_line)
from .phrases import FLAVOR, STRIKES, WEAPON_STYLE
from .script import Script
from .tables import TOOLS, Spell


def initiative(s: Script, party: list[PC], foes: list[Foe], lead: str) -> list[str]:
    """Everyone rolls; returns the names in turn order (the foes act as one group)."""
    calls, order = [], []
    for pc in party:
        d20 = s.rng.randint(1, 20)
        mod = pc.mods["dexterity"]
        calls.append((f"[roll: {pc.name}, initiative]", d20_line("initiative", d20, mod)))
        order.append((d20 + mod, pc.name))
    d20, mod = s.rng.randint(1, 20), foes[0].monster.dex
    calls.append(("[roll: initiative]", d20_line("initiative", d20, mod)))
    order.append((d20 + mod, "foes"))
    s.call(lead, calls)
    ranked = [name for _, name in sorted(order, key=lambda o: -o[0])]
    s.log("initiative", order=ranked)
    return ranked


def health(s: Script, target: PC | Foe, change: int, text: str) -> None:
    health_many(s, [(target, change)], text)


def health_many(s: Script, changes: list[tuple[PC | Foe, int]], text: str) -> None:
    """One DM turn with a `[health: target, ±N]` call per change, then their results."""
    calls = []
    for target, change in changes:
        calls.append((f"[health: {target.name}, {change:+d}]", health_line(target.name, target.hp, change, target.max_hp)))
        s.log("health", target=target.name, before=target.hp, change=change)
        target.hp = max(0, min(target.max_hp, target.hp + change))
    s.call(text, calls)


def pc_attack(s: Script, pc: PC, foe: Foe, announce: bool = True) -> bool:
    """The player's weapon attack; returns whether it hit."""
    weapon = pc.weapon.name
    looks = {"flavor": s.rng.choice(FLAVOR[foe.monster.name]),
             "strike": s.rng.choice(STRIKES[WEAPON_STYLE.get(weapon, "blade")])}
    if announce:
        s.user(s.pick("user_attack_ranged" if pc.weapon.ranged else "user_attack", weapon=weapon, foe=foe.name.lower(),
                      pc=pc.name), actor=pc.name)
    d20, mod = s.rng.randint(1, 20), pc.attack_bonus()
    hit, crit = _hits(d20, d20 + mod, foe.ac)
    s.call(s.pick("dm_attack_windup", weapon=weapon, foe=foe.name.lower(), pc=pc.name),
           [(f"[roll: {pc.name}, {weapon} attack]", d20_line(f"{weapon} attack", d20, mod))])
    s.log("attack", attacker=pc.name, target=foe.name, d20=d20, total=d20 + mod, ac=foe.ac, hit=hit, crit=crit)
    if not hit:
        s.dm(s.pick("dm_miss_nat1" if d20 == 1 else "dm_miss", weapon=weapon, foe=foe.name.lower(), pc=pc.name,
                    **looks))
        return False
    expr = crit_expr(pc.damage_expr()) if crit else pc.damage_expr()
    _damage(s, expr, foe, "dm_crit" if crit else "dm_hit", weapon=weapon, pc=pc.name, **looks)
    return True


def foe_attack(s: Script, foe: Foe, pc: PC) -> bool:
    attack = s.rng.choice(foe.monster.attacks)
    d20 = s.rng.randint(1, 20)
    hit, crit = _hits(d20, d20 + attack.bonus, pc.ac)
    s.call(s.pick("dm_foe_windup", foe=foe.name.lower(), attack=attack.name, pc=pc.name,
                  flavor=s.rng.choice(FLAVOR[foe.monster.name])),
           [(f"[roll: {attack.name} attack]", d20_line(f"{attack.name} attack", d20, attack.bonus))])
    s.log("attack", attacker=foe.name, target=pc.name, d20=d20, total=d20 + attack.bonus, ac=pc.ac, hit=hit,
          crit=crit)
    if not hit:
        s.dm(s.pick("dm_foe_miss", foe=foe.name.lower(), attack=attack.name, pc=pc.name))
        return False
    expr = crit_expr(attack.dice) if crit else attack.dice
    _damage(s, expr, pc, "dm_foe_crit" if crit else "dm_foe_hit", foe=foe.name.lower(), attack=attack.name)
    return True


def _hits(d20: int, total: int, ac: int) -> tuple[bool, bool]:
    return d20 == 20 or (d20 != 1 and total >= ac), d20 == 20


def _damage(s: Script, expr: str, target: PC | Foe, rule: str, **slots) -> int:
    """Roll the damage of a hit, then apply exactly that amount."""
    damage = roll(s.rng, expr)
    shown = _display(target)
    s.call(s.pick(rule, target=shown, **slots), [(f"[roll: {expr}]", damage.line())])
    s.log("damage", target=target.name, amount=damage.total, expr=expr)
    health(s, target, -damage.total, s.pick("dm_apply_damage", n=damage.total, target=shown))
    _aftermath(s, target)
    return damage.total


def _display(target: PC | Foe) -> str:
    """How prose names a target: 'the goblin archer', but 'Ysra'."""
    return f"the {target.name.lower()}" if isinstance(target, Foe) else target.name


def _aftermath(s: Script, target: PC | Foe) -> None:
    if isinstance(target, Foe):
        rule = "dm_foe_down" if target.hp == 0 else "dm_foe_hurt"
        s.dm(s.pick(rule, foe=target.name.lower(), hp=target.hp))
    else:
        rule = "dm_pc_down" if target.hp == 0 else "dm_pc_hurt"
        s.dm(s.pick(rule, pc=target.name, hp=target.hp, max_hp=target.max_hp))


# ---------------------------------------------------------------- spells


def choose_slot(s: Script, pc: PC, spell: Spell) -> int | None:
    """The lowest slot of at least the spell's level the caster has left (sometimes one higher)."""
    if spell.level == 0:
        return 0
    usable = sorted(level for level, left in pc.slots.items() if level >= spell.level and left > 0)
    if not usable:
        return None
    if len(usable) > 1 and spell.upcast and s.rng.random() < 0.2:
        return usable[1]
    return usable[0]


def cast(s: Script, pc: PC, spell: Spell, slot: int, targets: list, lead: str) -> None:
    """Cast a spell at a slot level: spellcast call, its dice, saves or attacks, then the consequences."""
    if slot:
        pc.slots[slot] -= 1
    s.log("spell", caster=pc.name, spell=spell.name, level=spell.level, slot=slot, left=pc.slots.get(slot, 0))
    calls = [(f"[spellcast: {pc.name}, {spell.name}, {slot}]", spellcast_line(pc, spell, slot))]
    if spell.kind == "utility" or not targets:
        s.call(lead, calls)
        s.dm(s.pick("dm_spell_utility", spell=spell.name, pc=pc.name, effect=spell.effect) + _slots_left(s, pc, slot))
        return
    dice = roll(s.rng, spell_dice(spell, pc, slot))
    if spell.kind == "heal":
        s.call(lead, calls + [(f"[roll: {dice.expr}]", dice.line())])
        health_many(s, [(t, dice.total) for t in targets],
                    s.pick("dm_apply_healing", target=targets[0].name, n=dice.total))
        for target in targets:
            s.dm(s.pick("dm_healed", target=target.name, hp=target.hp, max_hp=target.max_hp))
        return
    if spell.kind == "attack":
        _spell_attack(s, pc, spell, slot, targets[0], calls, lead)
        return
    saves = [] if spell.kind == "auto" else [_foe_save(s, target, spell.save, pc.spell_dc) for target in targets]
    s.call(lead, calls + [(f"[roll: {dice.expr}]", dice.line())] + [c for c, _ in saves])
    changes = []
    for index, target in enumerate(targets):
        saved = bool(saves) and saves[index][1]
        amount = (dice.total // 2 if spell.half_on_save else 0) if saved else dice.total
        s.log("spell_damage", target=target.name, rolled=dice.total, saved=saved, amount=amount)
        if amount:
            changes.append((target, -amount))
    if len(changes) > 1:
        health_many(s, changes, s.pick("dm_apply_area", spell=spell.name))
    elif changes:
        target, change = changes[0]
        rule = "dm_apply_damage" if -change == dice.total else "dm_apply_half"
        health_many(s, changes, s.pick(rule, n=-change, full=dice.total, target=_display(target)))
    for target in targets:
        if any(t is target for t, _ in changes):
            _aftermath(s, target)
        else:
            s.dm(s.pick("dm_save_no_damage", foe=target.name.lower()))
    s.dm(_slots_left(s, pc, slot))


def _foe_save(s: Script, foe: Foe, ability: str, dc: int) -> tuple[tuple[str, str], bool]:
    d20 = s.rng.randint(1, 20)
    return (f"[roll: {ability} save]", d20_line(f"{ability} save", d20, foe.monster.saves)), \
        d20 + foe.monster.saves >= dc


def _spell_attack(s: Script, pc: PC, spell: Spell, slot: int, foe: Foe, calls: list, lead: str) -> None:
    d20, mod = s.rng.randint(1, 20), pc.prof + pc.spell_mod
    hit, crit = _hits(d20, d20 + mod, foe.ac)
    label = f"{spell.name} attack"
    s.call(lead, calls + [(f"[roll: {pc.name}, {label}]", d20_line(label, d20, mod))])
    s.log("attack", attacker=pc.name, target=foe.name, d20=d20, total=d20 + mod, ac=foe.ac, hit=hit, crit=crit)
    if not hit:
        s.dm(s.pick("dm_spell_miss", spell=spell.name, foe=foe.name.lower()) + _slots_left(s, pc, slot))
        return
    dice = spell_dice(spell, pc, slot)
    _damage(s, crit_expr(dice) if crit else dice, foe, "dm_spell_hit", spell=spell.name, pc=pc.name)
    s.dm(_slots_left(s, pc, slot))


def _slots_left(s: Script, pc: PC, slot: int) -> str:
    """Now and then the DM says what is left, so slots visibly add up."""
    if not slot or s.rng.random() < 0.6:
        return ""
    left = pc.slots[slot]
    if left == 0:
        return " " + s.pick("dm_no_slots_left", pc=pc.name, level=ordinal(slot))
    return " " + s.pick("dm_slots_left", pc=pc.name, level=ordinal(slot), left=left,
                        slots="slot" if left == 1 else "slots")


# ---------------------------------------------------------------- checks and saves


def check(s: Script, pc: PC, skill: str, dc: int, lead: str) -> bool:
    """`[check: skill, DC]` for a known DC; returns success."""
    d20 = s.rng.randint(1, 20)
    mod, proficient = pc.skill_bonus(skill)
    s.call(lead, [(f"[check: {skill}, {dc}]", check_line(skill, d20, mod, proficient or skill in TOOLS, dc))])
    s.log("check", pc=pc.name, skill=skill, dc=dc, total=d20 + mod, success=d20 + mod >= dc)
    return d20 + mod >= dc


def skill_roll(s: Script, pc: PC, skill: str, lead: str, mode: str = "") -> int:
    """`[roll: Name, skill]` (or `..., advantage`) when the DM keeps the DC to themself; returns the total.
    With advantage both d20s are shown and the higher is kept, with disadvantage the lower."""
    mod, proficient = pc.skill_bonus(skill)
    tag = "(tools)" if skill in TOOLS else "(skill)" if proficient else ""
    if not mode:
        d20 = s.rng.randint(1, 20)
        s.call(lead, [(f"[roll: {pc.name}, {skill}]", d20_line(skill, d20, mod, tag))])
    else:
        dice = [s.rng.randint(1, 20), s.rng.randint(1, 20)]
        d20 = max(dice) if mode == "advantage" else min(dice)
        line = f"{skill} ({mode}): {dice[0]}, {dice[1]} {signed(mod)}{tag} = *{d20 + mod}*"
        s.call(lead, [(f"[roll: {pc.name}, {skill}, {mode}]", line)])
    s.log("roll", pc=pc.name, skill=skill, total=d20 + mod, mode=mode)
    return d20 + mod


def group_check(s: Script, party: list[PC], skill: str, dc: int, lead: str) -> bool:
    """`[roll: group stealth]`: everyone rolls; the group succeeds when at least half of them make the DC."""
    totals = []
    for pc in party:
        mod, _ = pc.skill_bonus(skill)
        totals.append((pc.name, s.rng.randint(1, 20) + mod))
    line = f"group {skill}: " + ", ".join(f"{name} {total}" for name, total in totals)
    s.call(lead, [(f"[roll: group {skill}]", line)])
    passed = sum(total >= dc for _, total in totals)
    success = passed * 2 >= len(totals)
    s.log("group", skill=skill, dc=dc, totals=dict(totals), success=success)
    return success


def saving_throw(s: Script, pc: PC, ability: str, dc: int, lead: str) -> bool:
    d20 = s.rng.randint(1, 20)
    mod = pc.save_bonus(ability)
    s.call(lead, [(f"[roll: {pc.name}, {ability} save]", d20_line(f"{ability} save", d20, mod))])
    s.log("save", pc=pc.name, ability=ability, dc=dc, total=d20 + mod, success=d20 + mod >= dc)
    return d20 + mod >= dc


def trap(s: Script, pc: PC, ability: str, dc: int, expr: str, lead: str) -> None:
    """A trap: the save and the damage roll together, then the damage (half on a success)."""
    d20, mod = s.rng.randint(1, 20), pc.save_bonus(ability)
    saved = d20 + mod >= dc
    dice = roll(s.rng, expr)
    s.call(lead, [(f"[roll: {pc.name}, {ability} save]", d20_line(f"{ability} save", d20, mod)),
                  (f"[roll: {expr}]", dice.line())])
    s.log("save", pc=pc.name, ability=ability, dc=dc, total=d20 + mod, success=saved)
    _apply_hazard(s, pc, dice.total, saved)


def hazard_damage(s: Script, pc: PC, expr: str, halved: bool, lead: str) -> None:
    """A fall's damage: roll it, apply it (half when `halved`)."""
    dice = roll(s.rng, expr)
    s.call(lead, [(f"[roll: {expr}]", dice.line())])
    _apply_hazard(s, pc, dice.total, halved)


def _apply_hazard(s: Script, pc: PC, rolled: int, halved: bool) -> None:
    amount = rolled // 2 if halved else rolled
    s.log("spell_damage", target=pc.name, rolled=rolled, saved=halved, amount=amount)
    if amount:
        health(s, pc, -amount, s.pick("dm_apply_half" if halved else "dm_apply_damage", n=amount, target=pc.name,
                                      full=rolled))
        _aftermath(s, pc)
    else:
        s.dm(f"Half of {rolled} rounds down to nothing: {pc.name} is unhurt.")


# ---------------------------------------------------------------- inventory


def inventory(s: Script, changes: list[tuple[PC, str]], lead: str) -> None:
    """`[inventory: Name, +item]` / `-item` / `+25 gp`; removals must be held (the tests replay them)."""
    calls = []
    for pc, change in changes:
        sign, item = change[0], change[1:]
        if item.endswith(" gp"):
            amount = int(item.split()[0])
            if sign == "-" and amount > pc.gold:
                raise ValueError(f"{pc.name} pays {amount} gp with {pc.gold} gp")
            pc.gold += amount if sign == "+" else -amount
        elif sign == "+":
            pc.items.append(item)
        else:
            pc.items.remove(item)   # raises if the item is not held: a generator bug
        calls.append((f"[inventory: {pc.name}, {change}]", f"{pc.name}: {change}"))
        s.log("inventory", owner=pc.name, change=change)
    s.call(lead, calls)


def drink_potion(s: Script, pc: PC, target: PC, lead: str) -> None:
    dice = roll(s.rng, "2d4+2")
    pc.items.remove("potion of healing")
    s.log("inventory", owner=pc.name, change="-potion of healing")
    s.call(lead, [(f"[inventory: {pc.name}, -potion of healing]", f"{pc.name}: -potion of healing"),
                  (f"[roll: {dice.expr}]", dice.line())])
    health(s, target, dice.total, s.pick("dm_apply_healing", target=target.name, n=dice.total))
    s.dm(s.pick("dm_healed", target=target.name, hp=target.hp, max_hp=target.max_hp))
