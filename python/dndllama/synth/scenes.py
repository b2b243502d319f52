"""Scenes: the beats a scenario is made of (combat, exploration, roleplay, downtime, puzzles) and the
talk around them. Each beat mixes turns with calls and turns without (questions, description,
plans, dialogue), so that well over 40 % of the DM turns make no call, as at a real table."""

from __future__ import annotations

from dataclasses import dataclass

from . import actions as act
from .mechanics import PC, Foe, make_foes
from .script import Script
from .tables import MONSTERS, SHOP, TRINKETS, VALUABLES

# (what the player tries, the skill, the DC range, the damage a failure does or "")
TASKS = (
    ("climb the crumbling wall", "athletics", (10, 15), "2d6"), ("balance along the narrow ledge", "acrobatics",
                                                                  (10, 15), "1d6"),
    ("follow the tracks", "survival", (10, 16), ""), ("force the stuck door open", "strength", (12, 17), ""),
    ("recall what these symbols mean", "arcana", (12, 18), ""), ("remember the history of this place", "history",
                                                                 (10, 16), ""),
    ("identify the strange mushrooms", "nature", (10, 15), ""), ("calm the frightened mule", "animal handling",
                                                                 (8, 14), ""),
    ("sneak past without being seen", "stealth", (12, 16), ""), ("swim across the cold current", "athletics",
                                                                 (10, 15), "1d6"),
    ("treat the injured stranger", "medicine", (10, 14), ""), ("read the faded prayer", "religion", (10, 15), ""),
    ("lift the fallen beam", "strength", (12, 18), ""), ("slip the key from the guard's belt", "sleight of hand",
                                                         (12, 16), ""),
    ("search the desk for a hidden drawer", "investigation", (10, 16), ""),
)
SOCIAL = {"convince {npc} to help us": "persuasion", "tell if {npc} is lying": "insight",
          "talk {npc} down from their anger": "persuasion", "bluff our way past {npc}": "deception",
          "get a better price out of {npc}": "persuasion", "frighten {npc} into talking": "intimidation"}
TRAPS = (("a volley of darts", "dexterity", "2d4"), ("a gout of flame", "dexterity", "2d6"),
         ("a cloud of green gas", "constitution", "2d6"), ("a swinging blade", "dexterity", "1d10"),
         ("a falling block", "dexterity", "2d8"), ("a psychic shriek", "wisdom", "2d6"))
GIFTS = ("sealed letter", "map of the old mine", "brass key", "guild token", "vial of holy water",
         "letter of introduction", "lucky coin", "wax-sealed writ", "hand-drawn map", "silver whistle")
WRONG_GUESSES = ("a shadow", "time", "a river", "silence", "fire", "a candle", "the wind", "a name")
RIDDLES = (("I have keys but open no locks", "a piano"), ("The more you take, the more you leave behind",
                                                          "footsteps"),
           ("I speak without a mouth and hear without ears", "an echo"), ("What has roots nobody sees", "a mountain"),
           ("What walks on four legs at dawn, two at noon, three at dusk", "a human"),
           ("The one who makes it sells it; the one who buys it never uses it", "a coffin"))


@dataclass
class Cast:
    """Who is in the scenario and where."""
    party: list[PC]
    place: str
    npc: str
    fought: bool = False    # whether there are bodies to search
    npc_met: bool = False   # whether the NPC has been introduced (players only ask people they have met)

    def up(self) -> list[PC]:
        return [pc for pc in self.party if pc.hp > 0]


# ---------------------------------------------------------------- talk (no calls)


def talk(s: Script, cast: Cast, count: int) -> None:
    """Questions, plans and descriptions the DM answers without a roll."""
    for _ in range(count):
        pc = s.rng.choice(cast.up() or cast.party)
        kind = s.rng.random()
        if kind < 0.3:
            s.user(s.pick("user_yesno", pc=pc.name, npc=cast.npc), actor=pc.name)
            s.dm(s.pick("dm_answer", pc=pc.name))
        elif kind < 0.45:
            s.user(s.pick("user_open_q", pc=pc.name, npc=cast.npc), actor=pc.name)
            s.dm(s.pick("dm_describe_answer", pc=pc.name))
        elif kind < 0.8:
            s.user(s.pick("user_plan", pc=pc.name), actor=pc.name)
            s.dm(s.pick("dm_ack", pc=pc.name))
        elif cast.npc_met:
            s.user(s.pick("user_ask_npc", npc=cast.npc, pc=pc.name), actor=pc.name)
            s.dm(s.pick("npc_reply", npc=cast.npc))
        else:
            s.user(s.pick("user_yesno", pc=pc.name), actor=pc.name)
            s.dm(s.pick("dm_answer", pc=pc.name))


def opening(s: Script, cast: Cast) -> None:
    slots = {"place": cast.place, "place_lc": cast.place[0].lower() + cast.place[1:], "pc": cast.party[0].name}
    if s.rng.random() < 0.5:
        s.user(s.pick("user_open", **slots))
        s.dm(s.pick("dm_describe", **slots))
    else:
        s.dm(s.pick("dm_open", **slots))


# ---------------------------------------------------------------- beats with calls


def search_beat(s: Script, cast: Cast) -> None:
    pc = s.rng.choice(cast.up())
    s.user(s.pick("user_search", pc=pc.name), actor=pc.name)
    skill = s.rng.choice(("perception", "investigation", "perception", "survival"))
    if s.rng.random() < 0.5:   # the DM keeps the DC secret: a plain roll, sometimes with (dis)advantage
        mode = s.rng.choice(("", "", "", "advantage", "disadvantage"))
        lead = s.pick("dm_search_lead") + (" " + s.pick(f"dm_{mode}", pc=pc.name) if mode else "")
        found = act.skill_roll(s, pc, skill, lead, mode) >= 13
    else:
        found = act.check(s, pc, skill, s.rng.randint(10, 16), s.pick("dm_search_lead"))
    s.dm(s.pick("dm_found" if found else "dm_not_found"))


def task_beat(s: Script, cast: Cast) -> None:
    pc = s.rng.choice(cast.up())
    task, skill, (low, high), damage = s.rng.choice(TASKS)
    s.user(s.pick("user_try", task=task, pc=pc.name), actor=pc.name)
    dc = s.rng.randint(low, high)
    if act.check(s, pc, skill, dc, s.pick("dm_check_lead")):
        s.dm(s.pick("dm_success"))
    elif damage:
        act.hazard_damage(s, pc, damage, False, s.pick("dm_failure") + " You fall hard.")
    else:
        s.dm(s.pick("dm_failure"))


# tool -> what a player does with it
TOOL_TASKS = {
    "thieves' tools": ("pick the lock", "disarm the trap on the chest", "open the strongbox"),
    "herbalism kit": ("brew a healing draught", "identify the herbs", "make a poultice"),
    "navigator's tools": ("chart a course by the stars", "work out where we are"),
    "disguise kit": ("disguise myself as a guard", "make myself look like a merchant"),
    "forgery kit": ("forge a travel permit", "copy the seal on this letter"),
    "smith's tools": ("repair the broken buckle", "straighten the bent hinge"),
    "tinker's tools": ("fix the music box", "get the clockwork lock working"),
    "cartographer's tools": ("draw a map of these tunnels", "copy the old map"),
    "cook's utensils": ("cook something decent for everyone", "make the rations taste of something"),
    "lute": ("play for the crowd", "play a song to calm everyone"),
    "flute": ("play a tune to pass the time", "play for coins"),
    "dice set": ("win a round of dice", "cheat at dice without getting caught"),
    "playing card set": ("win a hand of cards", "read the other players at cards"),
    "dragonchess set": ("win the game of dragonchess", "beat the old man at dragonchess"),
}
GROUP_TASKS = (("sneak past the sentries together", "stealth"), ("climb the cliff as a group", "athletics"),
               ("keep watch through the night", "perception"), ("cross the bog without losing the path", "survival"),
               ("hold the door shut together", "strength"), ("slip through the crowd unnoticed", "stealth"))


def tool_beat(s: Script, cast: Cast) -> None:
    """A tool check by someone who carries the tool: `[check: thieves' tools, 15]` or a plain roll."""
    holders = [(pc, item) for pc in cast.up() for item in pc.items if item in TOOL_TASKS]
    if not holders:
        return task_beat(s, cast)
    pc, tool = s.rng.choice(holders)
    s.user(s.pick("user_try", task=s.rng.choice(TOOL_TASKS[tool]), pc=pc.name), actor=pc.name)
    if s.rng.random() < 0.7:
        ok = act.check(s, pc, tool, s.rng.randint(10, 17), s.pick("dm_check_lead") + f" Use your {tool}.")
    else:
        ok = act.skill_roll(s, pc, tool, s.pick("dm_search_lead")) >= 14
    s.dm(s.pick("dm_success" if ok else "dm_failure"))


def group_beat(s: Script, cast: Cast) -> None:
    """The whole party rolls at once; at least half must make the DC."""
    party = cast.up()
    if len(party) < 2:
        return
    task, skill = s.rng.choice(GROUP_TASKS)
    s.user(s.rng.choice((f"We {task}.", f"Let's {task}.", f"All of us try to {task}.")), actor=party[0].name)
    dc = s.rng.randint(10, 15)
    ok = act.group_check(s, party, skill, dc, s.rng.choice(("Everyone rolls.", "That's a group check.",
                                                             f"Group {skill} check, everyone.")))
    s.dm(s.pick("dm_group_success" if ok else "dm_group_failure"))


def trap_beat(s: Script, cast: Cast) -> None:
    pc = s.rng.choice(cast.up())
    what, ability, damage = s.rng.choice(TRAPS)
    dc = s.rng.randint(11, 15)
    lead = f"A click underfoot, and {what} bursts out at {pc.name}. {ability.capitalize()} save, DC {dc}."
    act.trap(s, pc, ability, dc, damage, lead)


def loot_beat(s: Script, cast: Cast) -> None:
    pc = s.rng.choice(cast.up())
    s.user(s.pick("user_loot" if cast.fought else "user_loot_place", pc=pc.name), actor=pc.name)
    item = s.rng.choice(TRINKETS)
    changes = [(pc, f"+{item}")]
    coins = ""
    if s.rng.random() < 0.6:
        gold = s.rng.choice((5, 8, 10, 12, 15, 20, 25, 30, 40, 50))
        changes.append((pc, f"+{gold} gp"))
        coins = s.rng.choice((f" and {gold} gold pieces", f" and a purse with {gold} gp", f", plus {gold} gp in coins"))
    act.inventory(s, changes, s.pick("dm_loot", item=item, coins=coins))
    s.dm(s.pick("prompt"))


def trade_beat(s: Script, cast: Cast) -> None:
    """Buy something the buyer can pay for, or sell a valuable they hold."""
    pc = s.rng.choice(cast.up())
    held = [(item, price) for item, price in VALUABLES if item in pc.items]
    if held and s.rng.random() < 0.6:
        item, price = s.rng.choice(held)
        s.user(s.pick("user_sell", item=item, npc=cast.npc, pc=pc.name), actor=pc.name)
        s.dm(s.pick("dm_offer", item=item, price=price, npc=cast.npc))
        s.user(s.rng.choice(("Deal.", "Fine, I'll take it.", "Sold.", "Agreed.")))
        act.inventory(s, [(pc, f"-{item}"), (pc, f"+{price} gp")], "")
        s.dm(s.pick("dm_give", item=item, other=cast.npc))
        return
    affordable = [(item, price) for item, price in SHOP if price <= pc.gold]
    if not affordable:
        s.user(s.pick("user_buy", item=SHOP[0][0], pc=pc.name), actor=pc.name)
        s.dm(f"{cast.npc} shakes their head. \"{SHOP[0][1]} gp, and you don't have it.\"")
        return
    item, price = s.rng.choice(affordable)
    s.user(s.pick("user_buy", item=item, pc=pc.name), actor=pc.name)
    act.inventory(s, [(pc, f"-{price} gp"), (pc, f"+{item}")], s.pick("dm_price", item=item, price=price,
                                                                        npc=cast.npc))
    s.dm(s.pick("prompt"))


def give_beat(s: Script, cast: Cast) -> None:
    givers = [pc for pc in cast.up() if len(pc.items) > 1]
    if len(cast.party) < 2 or not givers:
        return
    pc = s.rng.choice(givers)
    other = s.rng.choice([p for p in cast.party if p is not pc])
    item = s.rng.choice(pc.items[1:])
    s.user(s.pick("user_give", item=item, other=other.name, pc=pc.name), actor=pc.name)
    act.inventory(s, [(pc, f"-{item}"), (other, f"+{item}")], s.pick("dm_give", item=item, other=other.name))
    s.dm(s.pick("prompt"))


def social_beat(s: Script, cast: Cast) -> None:
    pc = s.rng.choice(cast.up())
    goal = s.rng.choice(sorted(SOCIAL))
    s.user(s.say(s.rng.choice(s.grammar["user_social"]), social_goal=goal.format(npc=cast.npc), pc=pc.name),
           actor=pc.name)
    dc = s.rng.randint(10, 18)
    ok = act.check(s, pc, SOCIAL[goal], dc, s.pick("dm_check_lead"))
    s.dm(s.pick("npc_yes" if ok else "npc_no", npc=cast.npc))
    if ok and s.rng.random() < 0.4:   # a won-over NPC hands something over: a consequence call
        gift = s.rng.choice(GIFTS)
        act.inventory(s, [(pc, f"+{gift}")], f"{cast.npc} presses a {gift} into {pc.name}'s hand.")
        s.dm(s.pick("prompt"))


RESISTS = (("The cold here bites to the bone", "constitution", "You shiver, but keep going.",
             "Your fingers go numb; everything takes longer for a while."),
            ("A sweet, cloying smell rises from the flowers", "constitution", "You hold your breath in time.",
             "Your head swims and you sit down hard until it passes."),
            ("A whisper slides into your thoughts, urging you to turn back", "wisdom", "You shake it off.",
             "For a long moment you stand frozen, certain you should leave."),
            ("The floor tilts suddenly under your feet", "dexterity", "You keep your footing.",
             "You stumble and drop to one knee, unhurt but shaken."))


def resist_beat(s: Script, cast: Cast) -> None:
    """A saving throw against a DC that does no damage: the consequence is told, not rolled."""
    pc = s.rng.choice(cast.up())
    what, ability, success, failure = s.rng.choice(RESISTS)
    dc = s.rng.randint(10, 15)
    saved = act.saving_throw(s, pc, ability, dc, f"{what}. {pc.name}, make a {ability} saving throw (DC {dc}).")
    s.dm(success if saved else failure)


def rest_beat(s: Script, cast: Cast) -> None:
    """A short rest: a hurt character spends a hit die and heals exactly the roll."""
    hurt = [pc for pc in cast.party if 0 < pc.hp < pc.max_hp]
    if not hurt:
        return
    pc = s.rng.choice(hurt)
    s.user(s.pick("user_rest", pc=pc.name), actor=pc.name)
    expr = f"1d{pc.cls.hit_die}" + (f"+{pc.mods['constitution']}" if pc.mods["constitution"] > 0 else "")
    dice = act.roll(s.rng, expr)
    s.call(s.pick("dm_rest") + f" {pc.name}, spend a hit die.", [(f"[roll: {expr}]", dice.line())])
    act.health(s, pc, dice.total, s.pick("dm_apply_healing", target=pc.name, n=dice.total))
    s.dm(s.pick("dm_rested", target=pc.name, hp=pc.hp, max_hp=pc.max_hp))


def spell_beat(s: Script, cast: Cast, foes: list[Foe] | None = None) -> bool:
    """A caster casts something that fits: healing for the hurt, damage at foes, else a utility spell."""
    casters = [pc for pc in cast.up() if pc.known_spells()]
    if not casters:
        return False
    pc = s.rng.choice(casters)
    hurt = sorted((p for p in cast.party if p.hp < p.max_hp), key=lambda p: p.hp / p.max_hp)
    live = [f for f in foes or [] if f.hp > 0]
    kinds = ("heal",) if hurt else ()
    kinds += ("attack", "save", "auto") if live else ("utility",)
    options = [sp for sp in pc.known_spells() if sp.kind in kinds and act.choose_slot(s, pc, sp) is not None]
    if not options:
        return False
    spell = s.rng.choice(options)
    slot = act.choose_slot(s, pc, spell)
    slots = {"spell": spell.name, "pc": pc.name}
    if spell.kind == "heal":
        targets = hurt[:1] if spell.name in ("cure wounds", "healing word") else hurt[:3]
        s.user(s.pick("user_cast_heal", target=targets[0].name, **slots), actor=pc.name)
    elif spell.kind == "utility":
        targets = []
        s.user(s.pick("user_cast_utility", **slots), actor=pc.name)
    elif spell.kind == "save" and len(live) > 1 and spell.level > 0:
        targets = live[:3]
        s.user(s.pick("user_cast_area", foe=targets[0].name.lower(), **slots), actor=pc.name)
    else:
        targets = [s.rng.choice(live)]
        s.user(s.pick("user_cast", foe=targets[0].name.lower(), **slots), actor=pc.name)
    act.cast(s, pc, spell, slot, targets, s.pick("dm_cast_lead", **slots))
    return True


# ---------------------------------------------------------------- combat


def plural(noun: str) -> str:
    return noun[:-1] + "ves" if noun.endswith("f") else noun + "s"


def combat_beat(s: Script, cast: Cast, tier: int) -> None:
    monster = s.rng.choice([m for m in MONSTERS if m.tier == tier])
    foes = make_foes(s.rng, monster, s.rng.randint(1, min(3, len(monster.kinds))))
    names = ", ".join(f.name for f in foes)
    s.log("encounter", foes=names, ac=monster.ac, hp=monster.hp)
    lead = s.rng.choice((f"Roll initiative! {names} burst from cover.",
                         f"{names} attack! Everyone, roll initiative.",
                         f"Weapons out: {names}. Initiative.",
                         f"It's an ambush by {names}. Roll initiative."))
    cast.fought = True
    order = act.initiative(s, cast.up(), foes, lead)
    them = "the " + (plural(monster.name.lower()) if len(foes) > 1 else monster.name.lower())
    names = [them if name == "foes" else name for name in order]
    s.dm(s.rng.choice(("{first} goes first, then {rest}.", "Order: {all}.", "{first} is quickest; after that, {rest}."))
         .format(first=names[0][:1].upper() + names[0][1:], rest=", ".join(names[1:]), all=", ".join(names))
         + " " + s.pick("prompt"))
    for _ in range(s.rng.randint(2, 3)):
        if not _combat_round(s, cast, foes):
            break
    survivors = [f for f in foes if f.hp > 0]
    if len(survivors) == 1:
        s.dm(f"The {survivors[0].name.lower()} breaks and flees into the dark.")
    elif survivors:
        s.dm(f"The surviving {plural(monster.name.lower())} break and flee into the dark.")


def _combat_round(s: Script, cast: Cast, foes: list[Foe]) -> bool:
    for pc in s.rng.sample(cast.up(), min(2, len(cast.up()))):
        live = [f for f in foes if f.hp > 0]
        if not live:
            return False
        if s.rng.random() < 0.25:
            talk(s, cast, 1)
        if pc.known_spells() and s.rng.random() < 0.55 and spell_beat(s, cast, foes):
            continue
        if "potion of healing" in pc.items and pc.hp < pc.max_hp // 2:
            s.user(f"{pc.name} drinks a potion of healing.")
            act.drink_potion(s, pc, pc, "You pull the cork with your teeth and drink.")
            continue
        act.pc_attack(s, pc, s.rng.choice(live))
    live = [f for f in foes if f.hp > 0]
    if not live or not cast.up():
        return False
    act.foe_attack(s, s.rng.choice(live), s.rng.choice(cast.up()))
    return True


# ---------------------------------------------------------------- scenario plans

# category -> the beats after the opening, as (beat, chance); talk is added between beats.
PLANS = {
    "combat": (("search", 0.4), ("task", 0.3), ("group", 0.2), ("combat", 1.0), ("loot", 0.7), ("spell", 0.5), ("rest", 0.3)),
    "exploration": (("search", 0.9), ("task", 0.9), ("group", 0.4), ("tool", 0.4), ("trap", 0.5), ("resist", 0.3), ("spell", 0.6), ("loot", 0.5),
                    ("task", 0.6), ("combat", 0.15)),
    "roleplay": (("social", 1.0), ("tool", 0.2), ("trade", 0.4), ("give", 0.3), ("social", 0.6), ("resist", 0.2), ("spell", 0.4)),
    "downtime": (("trade", 1.0), ("tool", 0.6), ("task", 0.3), ("trade", 0.5), ("rest", 0.6), ("task", 0.4), ("give", 0.3),
                 ("spell", 0.4)),
    "puzzles": (("puzzle", 1.0), ("tool", 0.4), ("search", 0.5), ("trap", 0.5), ("task", 0.4), ("loot", 0.6), ("spell", 0.3)),
}


def puzzle_beat(s: Script, cast: Cast) -> None:
    pc = s.rng.choice(cast.up())
    s.dm(s.pick("puzzle_intro"))
    riddle, answer = s.rng.choice(RIDDLES)
    s.user(s.pick("user_think", pc=pc.name), actor=pc.name)
    thing = s.rng.choice(s.grammar["thing"])
    skill = s.rng.choice(("investigation", "arcana", "history", "intelligence"))
    ok = act.check(s, pc, skill, s.rng.randint(10, 16), s.pick("dm_check_lead"))
    s.dm(s.pick("dm_clue" if ok else "dm_no_clue", thing=thing) + f" Words are carved above it: \"{riddle}.\"")
    if not ok and s.rng.random() < 0.5:   # a wrong first guess springs the trap
        s.user(s.rng.choice((f"Is it {s.rng.choice(WRONG_GUESSES)}?", f"I say \"{s.rng.choice(WRONG_GUESSES)}\".")),
               actor=pc.name)
        s.dm(s.pick("dm_wrong_answer", thing=thing))
        what, ability, damage = s.rng.choice(TRAPS)
        dc = s.rng.randint(11, 15)
        act.trap(s, pc, ability, dc, damage, f"Then {what} lashes out at {pc.name}. {ability.capitalize()} save, "
                                             f"DC {dc}.")
        s.user("Let me think again.", actor=pc.name)
    s.user(s.rng.choice((f"Is the answer {answer}?", f"I say \"{answer}\" out loud.", f"{pc.name} answers: {answer}.",
                         f"We think it's {answer}.")), actor=pc.name)
    s.dm(s.pick("dm_right_answer", thing=thing))


BEATS = {"search": search_beat, "task": task_beat, "trap": trap_beat, "loot": loot_beat, "trade": trade_beat,
         "give": give_beat, "social": social_beat, "rest": rest_beat, "resist": resist_beat, "tool": tool_beat,
         "group": group_beat, "puzzle": puzzle_beat,
         "spell": lambda s, cast: spell_beat(s, cast)}


def play(s: Script, cast: Cast, category: str, tier: int) -> None:
    opening(s, cast)
    if category in ("roleplay", "downtime"):
        s.dm(s.pick("npc_intro", npc=cast.npc))
        cast.npc_met = True
    talk(s, cast, s.rng.randint(0, 2))
    for beat, chance in PLANS[category]:
        if s.rng.random() >= chance or not cast.up():
            continue
        if beat == "combat":
            combat_beat(s, cast, tier)
        else:
            BEATS[beat](s, cast)
        if s.awaiting_narration:      # every beat narrates its results; this only guards new beats
            s.dm("")
        talk(s, cast, s.rng.choice((0, 1, 1, 2)))
    if s.turns[-1].kind != "dm" or s.turns[-1].calls:
        s.dm(s.pick("hook"))
