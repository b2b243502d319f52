"""The generator's world as data: classes, races, names, weapons, spells, monsters, items, places.

Everything the generator may put into a scenario comes from these tables (never from a scenario
folder, and in particular never from the evaluation folder). Numbers follow the D&D 5e SRD: weapon
dice, monster AC/HP/attack bonuses, spell levels and slot tables.
"""

from __future__ import annotations

from dataclasses import dataclass

ABILITIES = ("strength", "dexterity", "constitution", "intelligence", "wisdom", "charisma")

# skill -> the ability it uses
SKILLS = {
    "acrobatics": "dexterity", "animal handling": "wisdom", "arcana": "intelligence", "athletics": "strength",
    "deception": "charisma", "history": "intelligence", "insight": "wisdom", "intimidation": "charisma",
    "investigation": "intelligence", "medicine": "wisdom", "nature": "intelligence", "perception": "wisdom",
    "performance": "charisma", "persuasion": "charisma", "religion": "intelligence",
    "sleight of hand": "dexterity", "stealth": "dexterity", "survival": "wisdom",
}

# tool -> the ability its checks use (5e tool proficiencies; the default vocabulary's `tools` list)
TOOLS = {
    "thieves' tools": "dexterity", "herbalism kit": "wisdom", "navigator's tools": "wisdom",
    "disguise kit": "charisma", "forgery kit": "dexterity", "smith's tools": "strength", "tinker's tools": "intelligence",
    "cartographer's tools": "intelligence", "cook's utensils": "wisdom", "lute": "charisma", "flute": "charisma",
    "dice set": "wisdom", "playing card set": "wisdom", "dragonchess set": "intelligence",
}


@dataclass(frozen=True)
class Weapon:
    name: str
    dice: str          # damage die without the modifier, e.g. "1d8"
    ability: str       # "strength" or "dexterity"
    ranged: bool = False


WEAPONS = {w.name: w for w in (
    Weapon("longsword", "1d8", "strength"), Weapon("greatsword", "2d6", "strength"),
    Weapon("greataxe", "1d12", "strength"), Weapon("battleaxe", "1d8", "strength"),
    Weapon("warhammer", "1d8", "strength"), Weapon("mace", "1d6", "strength"),
    Weapon("spear", "1d6", "strength"), Weapon("handaxe", "1d6", "strength"),
    Weapon("rapier", "1d8", "dexterity"), Weapon("shortsword", "1d6", "dexterity"),
    Weapon("dagger", "1d4", "dexterity"), Weapon("scimitar", "1d6", "dexterity"),
    Weapon("quarterstaff", "1d6", "strength"), Weapon("longbow", "1d8", "dexterity", True),
    Weapon("shortbow", "1d6", "dexterity", True), Weapon("light crossbow", "1d8", "dexterity", True),
    Weapon("hand crossbow", "1d6", "dexterity", True), Weapon("glaive", "1d10", "strength"),
    Weapon("maul", "2d6", "strength"), Weapon("flail", "1d8", "strength"),
)}


@dataclass(frozen=True)
class Spell:
    name: str
    level: int                 # 0 = cantrip
    kind: str                  # "attack", "save", "auto", "heal", "utility"
    dice: str = ""             # damage or healing dice at the spell's own level
    upcast: str = ""           # dice added per slot level above the spell's level
    save: str = ""             # the target's saving-throw ability ("save" spells)
    damage_type: str = ""
    effect: str = ""           # the result text of a utility spell
    half_on_save: bool = True


SPELLS = {s.name: s for s in (
    # cantrips (damage dice grow at levels 5 and 11)
    Spell("fire bolt", 0, "attack", "1d10", damage_type="fire"),
    Spell("eldritch blast", 0, "attack", "1d10", damage_type="force"),
    Spell("ray of frost", 0, "attack", "1d8", damage_type="cold"),
    Spell("produce flame", 0, "attack", "1d8", damage_type="fire"),
    Spell("sacred flame", 0, "save", "1d8", save="dexterity", damage_type="radiant", half_on_save=False),
    Spell("vicious mockery", 0, "save", "1d4", save="wisdom", damage_type="psychic", half_on_save=False),
    Spell("light", 0, "utility", effect="bright light in a 20 ft radius"),
    Spell("mage hand", 0, "utility", effect="a spectral hand within 30 ft"),
    Spell("guidance", 0, "utility", effect="+1d4 to one ability check"),
    Spell("prestidigitation", 0, "utility", effect="a minor magical trick"),
    Spell("druidcraft", 0, "utility", effect="a small harmless nature effect"),
    Spell("minor illusion", 0, "utility", effect="a sound or image within 30 ft"),
    # 1st level
    Spell("magic missile", 1, "auto", "3d4+3", "1d4+1", damage_type="force"),
    Spell("burning hands", 1, "save", "3d6", "1d6", save="dexterity", damage_type="fire"),
    Spell("thunderwave", 1, "save", "2d8", "1d8", save="constitution", damage_type="thunder"),
    Spell("guiding bolt", 1, "attack", "4d6", "1d6", damage_type="radiant"),
    Spell("chromatic orb", 1, "attack", "3d8", "1d8", damage_type="acid"),
    Spell("inflict wounds", 1, "attack", "3d10", "1d10", damage_type="necrotic"),
    Spell("hellish rebuke", 1, "save", "2d10", "1d10", save="dexterity", damage_type="fire"),
    Spell("cure wounds", 1, "heal", "1d8", "1d8"),
    Spell("healing word", 1, "heal", "1d4", "1d4"),
    Spell("bless", 1, "utility", effect="+1d4 to attacks and saves, 3 targets"),
    Spell("shield", 1, "utility", effect="+5 AC until the start of the next turn"),
    Spell("detect magic", 1, "utility", effect="senses magic within 30 ft for 10 minutes"),
    Spell("identify", 1, "utility", effect="learns the item's properties and attunement"),
    Spell("shield of faith", 1, "utility", effect="+2 AC for 10 minutes"),
    Spell("sleep", 1, "utility", effect="5d8 hit points of creatures fall asleep"),
    Spell("faerie fire", 1, "utility", effect="Dexterity save or outlined, attacks against it have advantage"),
    Spell("comprehend languages", 1, "utility", effect="understands any spoken or written language for 1 hour"),
    Spell("speak with animals", 1, "utility", effect="speaks with beasts for 10 minutes"),
    Spell("hunter's mark", 1, "utility", effect="+1d6 damage against the marked target"),
    Spell("charm person", 1, "utility", effect="Wisdom save or charmed for 1 hour"),
    Spell("disguise self", 1, "utility", effect="a new appearance for 1 hour"),
    Spell("entangle", 1, "utility", effect="20 ft square, Strength save or restrained"),
    # 2nd level
    Spell("shatter", 2, "save", "3d8", "1d8", save="constitution", damage_type="thunder"),
    Spell("moonbeam", 2, "save", "2d10", "1d10", save="constitution", damage_type="radiant"),
    Spell("scorching ray", 2, "attack", "2d6", "1d6", damage_type="fire"),
    Spell("prayer of healing", 2, "heal", "2d8", "1d8"),
    Spell("misty step", 2, "utility", effect="teleports up to 30 ft"),
    Spell("hold person", 2, "utility", effect="Wisdom save or paralyzed"),
    Spell("invisibility", 2, "utility", effect="invisible for up to 1 hour"),
    Spell("silence", 2, "utility", effect="a 20 ft sphere of silence"),
    Spell("lesser restoration", 2, "utility", effect="ends one disease or condition"),
    Spell("zone of truth", 2, "utility", effect="Charisma save or cannot lie, 15 ft radius"),
    Spell("detect thoughts", 2, "utility", effect="reads surface thoughts for 1 minute"),
    Spell("darkvision", 2, "utility", effect="sees in darkness to 60 ft for 8 hours"),
    Spell("pass without trace", 2, "utility", effect="+10 to stealth for the group"),
    # 3rd level and up
    Spell("fireball", 3, "save", "8d6", "1d6", save="dexterity", damage_type="fire"),
    Spell("lightning bolt", 3, "save", "8d6", "1d6", save="dexterity", damage_type="lightning"),
    Spell("call lightning", 3, "save", "3d10", "1d10", save="dexterity", damage_type="lightning"),
    Spell("spirit guardians", 3, "save", "3d8", "1d8", save="wisdom", damage_type="radiant"),
    Spell("mass healing word", 3, "heal", "1d4", "1d4"),
    Spell("counterspell", 3, "utility", effect="interrupts a spell of 3rd level or lower"),
    Spell("dispel magic", 3, "utility", effect="ends one spell of 3rd level or lower"),
    Spell("water breathing", 3, "utility", effect="up to 10 creatures breathe water for 24 hours"),
    Spell("fly", 3, "utility", effect="a flying speed of 60 ft for 10 minutes"),
    Spell("ice storm", 4, "save", "4d6", "1d6", save="dexterity", damage_type="cold"),
    Spell("banishment", 4, "utility", effect="Charisma save or banished for 1 minute"),
    Spell("cone of cold", 5, "save", "8d8", "1d8", save="constitution", damage_type="cold"),
)}


@dataclass(frozen=True)
class CharClass:
    name: str
    hit_die: int
    primary: str               # the ability its attacks and spells use
    saves: tuple[str, str]
    weapons: tuple[str, ...]
    skills: tuple[str, ...]
    caster: str = ""           # "", "full", "half", "pact"
    spells: tuple[str, ...] = ()
    gear: tuple[str, ...] = ()


CLASSES = {c.name: c for c in (
    CharClass("Fighter", 10, "strength", ("strength", "constitution"), ("longsword", "greatsword", "battleaxe", "glaive"),
              ("athletics", "intimidation", "perception"), gear=("shield", "chain mail", "grappling hook")),
    CharClass("Barbarian", 12, "strength", ("strength", "constitution"), ("greataxe", "maul", "handaxe"),
              ("athletics", "survival", "intimidation"), gear=("bearskin cloak", "waterskin", "javelins")),
    CharClass("Paladin", 10, "strength", ("wisdom", "charisma"), ("longsword", "warhammer", "flail"),
              ("athletics", "persuasion", "religion"), "half", ("bless", "cure wounds", "shield of faith"),
              gear=("shield", "holy symbol", "plate armor")),
    CharClass("Ranger", 10, "dexterity", ("strength", "dexterity"), ("longbow", "shortsword", "scimitar"),
              ("survival", "perception", "stealth", "nature"), "half",
              ("hunter's mark", "cure wounds", "pass without trace", "speak with animals"),
              gear=("hunting trap", "quiver of arrows", "bedroll")),
    CharClass("Rogue", 8, "dexterity", ("dexterity", "intelligence"), ("rapier", "shortsword", "dagger", "hand crossbow"),
              ("stealth", "sleight of hand", "deception", "investigation", "acrobatics"),
              gear=("thieves' tools", "caltrops", "dark cloak")),
    CharClass("Monk", 8, "dexterity", ("strength", "dexterity"), ("quarterstaff", "shortsword"),
              ("acrobatics", "insight", "athletics"), gear=("10 darts", "prayer beads", "traveler's clothes")),
    CharClass("Wizard", 6, "intelligence", ("intelligence", "wisdom"), ("quarterstaff", "dagger"),
              ("arcana", "history", "investigation"), "full",
              ("fire bolt", "ray of frost", "light", "mage hand", "magic missile", "burning hands", "shield",
               "detect magic", "identify", "sleep", "comprehend languages", "misty step", "hold person",
               "invisibility", "scorching ray", "shatter", "fireball", "lightning bolt", "counterspell",
               "dispel magic", "fly", "ice storm", "cone of cold"),
              gear=("spellbook", "component pouch", "ink and quill")),
    CharClass("Sorcerer", 6, "charisma", ("constitution", "charisma"), ("dagger", "light crossbow"),
              ("arcana", "persuasion", "deception"), "full",
              ("fire bolt", "ray of frost", "prestidigitation", "chromatic orb", "magic missile", "burning hands",
               "shield", "disguise self", "misty step", "scorching ray", "shatter", "fireball", "lightning bolt",
               "fly", "cone of cold"),
              gear=("arcane focus", "silk scarf")),
    CharClass("Warlock", 8, "charisma", ("wisdom", "charisma"), ("dagger", "light crossbow"),
              ("deception", "intimidation", "arcana"), "pact",
              ("eldritch blast", "minor illusion", "hellish rebuke", "charm person", "misty step", "invisibility",
               "hold person", "counterspell", "fly", "banishment"),
              gear=("arcane focus", "tome of shadows")),
    CharClass("Cleric", 8, "wisdom", ("wisdom", "charisma"), ("mace", "warhammer"),
              ("religion", "medicine", "insight", "persuasion"), "full",
              ("sacred flame", "guidance", "light", "cure wounds", "healing word", "bless", "guiding bolt",
               "inflict wounds", "detect magic", "prayer of healing", "lesser restoration", "zone of truth",
               "spirit guardians", "mass healing word", "dispel magic", "banishment"),
              gear=("holy symbol", "shield", "healer's kit")),
    CharClass("Druid", 8, "wisdom", ("intelligence", "wisdom"), ("scimitar", "quarterstaff"),
              ("nature", "animal handling", "survival", "medicine"), "full",
              ("produce flame", "druidcraft", "guidance", "cure wounds", "healing word", "entangle", "thunderwave",
               "faerie fire", "speak with animals", "moonbeam", "darkvision", "pass without trace",
               "call lightning", "water breathing", "ice storm"),
              gear=("herbalism kit", "wooden shield", "sprig of mistletoe")),
    CharClass("Bard", 8, "charisma", ("dexterity", "charisma"), ("rapier", "dagger"),
              ("performance", "persuasion", "deception", "history", "insight"), "full",
              ("vicious mockery", "minor illusion", "prestidigitation", "healing word", "cure wounds", "charm person",
               "faerie fire", "thunderwave", "comprehend languages", "invisibility", "shatter", "silence",
               "detect thoughts", "zone of truth", "dispel magic", "mass healing word"),
              gear=("lute", "fine clothes", "book of ballads")),
)}

# slot level -> slots, for a full caster of each level (1-12); half casters use half their level.
FULL_CASTER_SLOTS = {
    1: (2,), 2: (3,), 3: (4, 2), 4: (4, 3), 5: (4, 3, 2), 6: (4, 3, 3), 7: (4, 3, 3, 1), 8: (4, 3, 3, 2),
    9: (4, 3, 3, 3, 1), 10: (4, 3, 3, 3, 2), 11: (4, 3, 3, 3, 2), 12: (4, 3, 3, 3, 2),
}
# level -> (slots, slot level) of a warlock's pact magic
PACT_SLOTS = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (2, 2), 5: (2, 3), 6: (2, 3), 7: (2, 4), 8: (2, 4),
              9: (2, 5), 10: (2, 5), 11: (3, 5), 12: (3, 5)}

RACES = ("Human", "Hill Dwarf", "Mountain Dwarf", "High Elf", "Wood Elf", "Half-Elf", "Half-Orc",
         "Lightfoot Halfling", "Stout Halfling", "Rock Gnome", "Tiefling", "Dragonborn", "Goliath", "Tabaxi",
         "Firbolg", "Aasimar", "Kenku")

FIRST_NAMES = (
    "Aela", "Barric", "Corwin", "Dessa", "Edris", "Faye", "Gundren", "Hollis", "Iriel", "Jarek", "Kora", "Lannis",
    "Maren", "Nim", "Odalys", "Pip", "Quenna", "Rurik", "Saoirse", "Talon", "Ulla", "Varis", "Wynn", "Yara",
    "Zephyr", "Ansel", "Brisa", "Cato", "Delphine", "Emeric", "Fiora", "Gideon", "Hestia", "Ivo", "Jessamy",
    "Korin", "Liora", "Mabel", "Nestor", "Orla", "Paskal", "Rhea", "Sten", "Thessaly", "Urien", "Vela", "Wulf",
    "Ysra", "Zora", "Amara", "Bodhi", "Cinder", "Dax", "Elowen", "Finch", "Greer", "Harlan", "Isra", "Juniper",
    "Kael", "Lark", "Merek", "Nyx", "Osric", "Petra", "Quill", "Ronan", "Sable", "Tamsyn", "Umber", "Vance",
    "Willa", "Xander", "Yorin", "Zinnia", "Alder", "Bryn", "Caspian", "Dorrin", "Esme", "Fenwick", "Gwyn",
)
TITLED = ("Sister", "Brother", "Sir", "Dame", "Old")

NPC_NAMES = (
    "Maester Holt", "Widow Breen", "Captain Ashgrove", "Old Tamsin", "Brother Caddock", "Lady Verrin",
    "Gorm the Fence", "Innkeeper Doss", "Sergeant Pike", "Mother Ysolde", "Factor Lenn", "Nella Quickstep",
    "Harbormaster Voss", "Abbot Merriweather", "Zek the Peddler", "Councillor Fane", "Grandmother Oakes",
    "Scout Ferris", "Madame Orsolya", "Quartermaster Brann",
)


@dataclass(frozen=True)
class Attack:
    name: str       # the roll label: "scimitar" -> "[roll: scimitar attack]"
    bonus: int
    dice: str       # damage with its modifier, e.g. "1d6+2"


@dataclass(frozen=True)
class Monster:
    name: str
    ac: int
    hp: int
    attacks: tuple[Attack, ...]
    tier: int                  # 1: levels 1-4, 2: levels 5-8, 3: levels 9-12
    kinds: tuple[str, ...]     # names that tell several apart: "Goblin Archer"
    dex: int = 1               # initiative modifier
    saves: int = 1             # a flat saving-throw modifier


MONSTERS = (
    Monster("Goblin", 15, 7, (Attack("scimitar", 4, "1d6+2"), Attack("shortbow", 4, "1d6+2")), 1,
            ("Goblin Archer", "Goblin Cutter", "Goblin Sneak", "Goblin Boss"), 2, 0),
    Monster("Bandit", 12, 11, (Attack("scimitar", 3, "1d6+1"), Attack("light crossbow", 3, "1d8+1")), 1,
            ("Bandit Thug", "Bandit Lookout", "Bandit Cutthroat"), 1, 0),
    Monster("Kobold", 12, 5, (Attack("dagger", 4, "1d4+2"), Attack("sling", 4, "1d4+2")), 1,
            ("Kobold Trapper", "Kobold Slinger", "Kobold Runt"), 2, -1),
    Monster("Skeleton", 13, 13, (Attack("shortsword", 4, "1d6+2"), Attack("shortbow", 4, "1d6+2")), 1,
            ("Skeleton Archer", "Skeleton Guard", "Skeleton Sentry"), 2, 0),
    Monster("Zombie", 8, 22, (Attack("slam", 3, "1d6+1"),), 1, ("Shambling Zombie", "Bloated Zombie", "Zombie Miner"), -2, 3),
    Monster("Wolf", 13, 11, (Attack("bite", 4, "2d4+2"),), 1, ("Alpha Wolf", "Grey Wolf", "Scarred Wolf"), 2, 1),
    Monster("Orc", 13, 15, (Attack("greataxe", 5, "1d12+3"), Attack("javelin", 5, "1d6+3")), 1,
            ("Orc Raider", "Orc Berserker", "Orc Brute"), 1, 3),
    Monster("Cultist", 12, 9, (Attack("scimitar", 3, "1d6+1"),), 1, ("Cult Acolyte", "Cult Zealot", "Cult Initiate"), 1, 0),
    Monster("Giant Rat", 12, 7, (Attack("bite", 4, "1d4+2"),), 1, ("Plague Rat", "Sewer Rat", "Mangy Rat"), 2, 0),
    Monster("Hobgoblin", 18, 11, (Attack("longsword", 3, "1d8+1"), Attack("longbow", 3, "1d8+1")), 1,
            ("Hobgoblin Soldier", "Hobgoblin Captain", "Hobgoblin Archer"), 1, 1),
    Monster("Gnoll", 15, 22, (Attack("spear", 4, "1d6+2"), Attack("bite", 4, "1d4+2")), 2,
            ("Gnoll Hunter", "Gnoll Fang", "Gnoll Pack Lord"), 1, 1),
    Monster("Bugbear", 16, 27, (Attack("morningstar", 4, "2d8+2"),), 2, ("Bugbear Brute", "Bugbear Stalker", "Bugbear Chief"), 2, 1),
    Monster("Ghoul", 12, 22, (Attack("claws", 4, "2d4+2"), Attack("bite", 2, "2d6+2")), 2,
            ("Gaunt Ghoul", "Ravenous Ghoul", "Pale Ghoul"), 2, 0),
    Monster("Ogre", 11, 59, (Attack("greatclub", 6, "2d8+4"),), 2, ("Ogre Brute", "Ogre Chieftain", "Ogre Hulk"), -1, 3),
    Monster("Werewolf", 12, 58, (Attack("bite", 4, "1d8+2"), Attack("claws", 4, "2d4+2")), 2,
            ("Werewolf Alpha", "Werewolf Stalker", "Werewolf Howler"), 1, 2),
    Monster("Owlbear", 13, 59, (Attack("beak", 7, "1d10+5"), Attack("claws", 7, "2d8+5")), 2,
            ("Owlbear Matriarch", "Young Owlbear", "Scarred Owlbear"), 1, 3),
    Monster("Wight", 14, 45, (Attack("longsword", 4, "1d8+2"), Attack("life drain", 4, "1d6+2")), 2,
            ("Wight Lord", "Wight Sentinel", "Barrow Wight"), 2, 2),
    Monster("Troll", 15, 84, (Attack("claws", 7, "2d6+4"), Attack("bite", 7, "1d6+4")), 3,
            ("Bog Troll", "Cave Troll", "River Troll"), 1, 4),
    Monster("Hill Giant", 13, 105, (Attack("greatclub", 8, "3d8+5"), Attack("rock", 8, "3d10+5")), 3,
            ("Hill Giant Chief", "Hill Giant Brute", "Hill Giant Elder"), -1, 5),
    Monster("Young Green Dragon", 18, 136, (Attack("bite", 7, "2d10+4"), Attack("claws", 7, "2d6+4")), 3,
            ("Young Green Dragon", "Green Wyrmling", "Green Hatchling"), 1, 5),
    Monster("Wyvern", 13, 110, (Attack("stinger", 7, "2d6+4"), Attack("claws", 7, "2d8+4")), 3,
            ("Wyvern Matriarch", "Scarred Wyvern", "Young Wyvern"), 0, 4),
    Monster("Basilisk", 15, 52, (Attack("bite", 5, "2d6+3"),), 2, ("Elder Basilisk", "Cave Basilisk", "Young Basilisk"), -1, 2),
)

TRINKETS = (
    "silver locket", "carved bone die", "tarnished signet ring", "jade figurine", "moonstone", "bundle of letters",
    "ivory comb", "old map fragment", "ruby", "bag of pearls", "gilded goblet", "obsidian knife", "amber amulet",
    "silk banner", "brass spyglass", "crystal vial", "copper key", "painted fan", "dragonscale shard",
    "lodestone", "velvet pouch of garnets", "engraved hunting horn", "small golden idol", "sapphire earring",
)
GEAR = (
    "rope", "torch", "lantern", "rations", "bedroll", "waterskin", "crowbar", "grappling hook", "chalk",
    "tinderbox", "climbing kit", "healer's kit", "potion of healing", "antitoxin", "oil flask", "mirror",
    "ten-foot pole", "whetstone", "blanket", "compass", "map case", "lockpicks", "pitons", "flask of holy water",
    "disguise kit", "navigator's tools", "dice set", "forgery kit", "smith's tools", "cook's utensils",
    "playing card set", "tinker's tools", "cartographer's tools", "flute",
)
# things for sale: (item, price in gp)
SHOP = (
    ("potion of healing", 50), ("rope", 1), ("lantern", 5), ("rations", 1), ("healer's kit", 5),
    ("antitoxin", 50), ("climbing kit", 25), ("riding horse", 75), ("spell scroll", 60), ("chain shirt", 50),
    ("longbow", 50), ("quiver of arrows", 1), ("fine clothes", 15), ("flask of holy water", 25),
    ("silvered dagger", 102), ("mule", 8), ("tent", 2), ("spyglass", 100), ("ink and quill", 10),
    ("crossbow bolts", 1), ("signet ring", 5), ("hooded lantern", 5), ("bag of caltrops", 1), ("shield", 10),
)
# loot a fence or merchant buys: (item, price paid in gp)
VALUABLES = (
    ("silver candlesticks", 30), ("ruby", 90), ("jade figurine", 40), ("gilded goblet", 25), ("bag of pearls", 60),
    ("moonstone", 50), ("tarnished signet ring", 15), ("amber amulet", 35), ("silk banner", 10),
    ("engraved hunting horn", 20), ("small golden idol", 120), ("sapphire earring", 45), ("ivory comb", 12),
    ("brass spyglass", 55), ("velvet pouch of garnets", 80), ("dragonscale shard", 150),
)

WORLDS = (
    "Forgotten Realms", "Greyhawk", "Eberron", "Exandria", "Ravenloft", "Dragonlance",
    "Thornmarch (homebrew)", "The Saltwind Isles (homebrew)", "Emberdeep (homebrew)", "Hollowmere (homebrew)",
    "The Iron Coast (homebrew)", "Verdance (homebrew)",
)
