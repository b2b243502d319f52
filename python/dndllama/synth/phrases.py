"""The narration grammar for combat and spells: rule -> alternatives; `{rule}` expands another
rule, `{slot}` takes a value the action passes (pc, foe, weapon, n, ...). Sentences are composed
from several rules (a lead-in, the action, a sensory detail, a prompt), so two turns about the same
event rarely read alike. Scene narration lives in phrases_scenes.py."""

from __future__ import annotations

COMBAT = {
    # ------------------------------------------------ small building blocks
    "swiftly": ("swiftly", "without hesitation", "in one smooth motion", "with a grunt", "low and fast",
                "before anyone can blink", "with grim focus", "almost lazily", "with a shout"),
    "sound": ("a shield splinters", "someone shouts a warning", "a lantern swings wildly", "gravel skitters away",
              "your breath fogs in the cold", "a wounded horse screams somewhere", "water drips from the ceiling",
              "steel rings on steel", "someone curses", "boots scrape on stone", "a crow takes flight",
              "dust kicks up", "a torch gutters", "the air smells of sweat and iron", "a shield creaks",
              "blood spatters the ground", "somewhere a dog starts barking"),
    "detail": ("{sound}.", "Around you, {sound}.", "", "", "For a heartbeat, {sound}.", "Behind you, {sound}.",
               "Somewhere close, {sound}.", "In the chaos, {sound}."),
    "dm_after_results": ("Done.", "Noted.", "So be it.", "There it is.", "Good.", "All settled.", "That's that.",
                         "It's done. What next?", "Right. What now?"),
    "prompt": ("What do you do?", "What's your move?", "Your turn.", "Who acts next?", "What now?",
               "How do you respond?", "", "", "", "The fight isn't over."),
    "body_part": ("shoulder", "ribs", "thigh", "forearm", "flank", "chest", "hip", "jaw", "side"),
    "foe_motion": ("lunges", "snarls and charges", "circles to your left", "darts in", "rushes forward",
                   "steps out of the shadows", "bellows and swings", "closes the distance", "wheels around"),
    # ------------------------------------------------ the player's attacks
    "user_attack": (
        "I attack the {foe} with my {weapon}.", "I swing my {weapon} at the {foe}.",
        "{pc} charges the {foe}, {weapon} raised.", "I go for the {foe}'s {body_part} with my {weapon}.",
        "{pc} attacks the {foe}.", "I step in and hit the {foe} with my {weapon}.",
        "I want to take a swing at the {foe}.", "{pc} brings the {weapon} down on the {foe}.",
        "I feint left and strike at the {foe} with my {weapon}.", "Attacking the {foe}, {weapon}.",
        "I close in on the {foe} and attack.", "{pc} goes after the {foe} with the {weapon}.",
    ),
    "user_attack_ranged": (
        "I shoot the {foe} with my {weapon}.", "{pc} fires at the {foe}.", "I take aim at the {foe} and loose.",
        "I put a shot into the {foe}.", "From cover, I fire my {weapon} at the {foe}.",
        "{pc} lines up a shot on the {foe}.", "I shoot at the {foe}, aiming for its {body_part}.",
    ),
    "dm_attack_windup": (
        "You move {swiftly}, {weapon} flashing toward the {foe}.", "{pc} strikes at the {foe}.",
        "The {foe} sees you coming and braces.", "Your {weapon} cuts toward the {foe}'s {body_part}.",
        "You press the attack. {detail}", "{pc} goes for the {foe}, {swiftly}.",
        "You find an opening in the {foe}'s guard and take it.", "The {foe} turns just as you attack.",
        "You let fly at the {foe}.", "Steel and intent: {pc} attacks.", "",
    ),
    "dm_miss": ("{miss_core} {miss_tail}", "{miss_core} {detail} {prompt}", "{miss_core} {prompt}"),
    "miss_core": (
        "The {foe} twists aside and your {weapon} finds only air.", "Your {weapon} glances off the {foe}'s guard.",
        "Close, but the {foe} is quicker.", "A miss. The {foe} grins at you, {flavor}.",
        "The blow goes wide as the {foe} steps back.", "The {foe} catches the attack and shoves you back.",
        "It isn't enough to get past the {foe}'s defenses.", "You {pc_move}, but the {foe} reads it.",
        "The {weapon} strikes sparks from the wall behind the {foe}.", "The {foe} ducks, {flavor}.",
    ),
    "miss_tail": ("{prompt}", "{detail}", "The {foe} is still up.", "No damage.", ""),
    "dm_miss_nat1": (
        "A one. Your footing slips and the {weapon} swings wide of the {foe}. {prompt}",
        "A natural 1: you overcommit, and the {foe} sidesteps easily. {detail}",
        "That's a 1 on the die. The {weapon} clatters against stone, nowhere near the {foe}. {prompt}",
    ),
    "dm_hit": ("{hit_core} {hit_tail}", "{hit_core} {hit_tail}", "{hit_core}", "{hit_short} {hit_tail}"),
    "hit_short": ("That hits.", "It connects!", "Hit.", "That beats its armor.", "A solid hit.", "You land it."),
    "hit_core": (
        "Your {weapon} {strike} into {target}'s {body_part}.", "The {weapon} {strike} home.",
        "You find the gap and your {weapon} {strike} deep.", "{target} is too slow; the {weapon} {strike} "
        "across its {body_part}.", "You catch {target} square on the {body_part}.", "Your aim is true.",
        "{target} raises a guard a moment too late.", "You {pc_move}, and the {weapon} {strike} past its guard.",
        "The {weapon} {strike} into {target}, {flavor}.",
    ),
    "hit_tail": ("Roll damage.", "Damage:", "Let's see how much it hurts.", "{detail}", "{foe_reacts}", "",
                 "Now the damage.", "How hard?"),
    "foe_reacts": ("{target} grunts in pain.", "{target} staggers.", "{target} snarls, {flavor}.",
                   "{target} lets out a shriek.", "{target} reels back a step."),
    "pc_move": ("pivot on your back foot", "drop your shoulder", "step inside its reach", "feint high",
                "duck under its guard", "sidestep the first swing", "let it overreach", "plant your feet",
                "roll across the floor", "vault a broken crate"),
    "dm_crit": (
        "A natural 20! Double the damage dice.", "Critical hit! The {weapon} strikes true.",
        "Twenty on the die: a critical hit. Roll double dice.", "A perfect strike, a critical hit on {target}.",
    ),
    "dm_apply_damage": (
        "That's {n} damage.", "{n} points of damage.", "{n} damage to {target}.", "{target} takes {n}.",
        "{n} damage.", "Marking {n} damage on {target}.", "It deals {n}.",
    ),
    "dm_apply_half": (
        "Half of {full} is {n}.", "The save halves it: {n} damage.", "{n} damage, half of the {full} rolled.",
        "Resisting some of it, {target} still takes {n}.",
    ),
    "dm_apply_area": (
        "Everyone caught in the {spell} takes damage.", "The {spell} hits all of them.",
        "Damage for each of them:", "Applying the {spell} to everyone it caught.",
    ),
    "dm_foe_down": (
        "The {foe} crumples and does not get up. {detail} {prompt}",
        "The {foe} drops, dead before it hits the ground. {prompt}",
        "With a last gasp, the {foe} collapses. {detail}",
        "The {foe} staggers, then falls still. {prompt}",
        "That's the end of the {foe}. {detail} {prompt}",
        "The {foe} goes down hard and stays down.",
    ),
    "dm_foe_hurt": (
        "The {foe} reels but stays on its feet. {prompt}", "The {foe} is bloodied and furious. {detail}",
        "The {foe} howls and keeps fighting. {prompt}", "It's hurt, but far from finished. {prompt}",
        "The {foe} stumbles back, wounded. {detail} {prompt}", "Blood runs, but the {foe} holds its ground.",
    ),
    # ------------------------------------------------ the enemies' attacks
    "dm_foe_windup": ("{foe_windup_core}", "{foe_windup_core} {detail}", "{flavor_sentence} {foe_windup_core}"),
    "flavor_sentence": ("The {foe} comes on, {flavor}.", "You hear it before you see it: the {foe}, {flavor}.",
                        "The {foe} shifts its weight, {flavor}."),
    "foe_windup_core": (
        "The {foe} {foe_motion} at {pc}.", "The {foe} turns on {pc} with its {attack}.",
        "{pc}, the {foe} comes for you.", "The {foe} {foe_motion}, aiming its {attack} at {pc}.",
        "Now the {foe} acts: it attacks {pc}.", "The {foe} snarls and attacks {pc}.",
        "The {foe}'s {attack} swings toward {pc}.", "It's the {foe}'s turn. It goes after {pc}.",
        "The {foe} picks {pc} as its target.", "{pc}, look out: the {foe}'s {attack}!",
    ),
    "dm_foe_miss": (
        "{pc} twists away and the {attack} misses. {prompt}", "It misses {pc} by a hair. {detail}",
        "{pc} catches the {attack} on a raised guard. {prompt}", "Not enough to hit {pc}. {prompt}",
        "{pc} sidesteps; the {foe} overextends. {prompt}", "A miss. {detail} {prompt}",
    ),
    "dm_foe_hit": (
        "The {attack} catches {target}. Damage:", "It hits {target}.", "That gets through {target}'s armor.",
        "The {foe}'s {attack} lands on {target}.", "A hit on {target}. {detail}",
    ),
    "dm_foe_crit": (
        "A natural 20 for the {foe}: a critical hit on {target}.", "The {foe} rolls a 20. Double dice on {target}.",
    ),
    "dm_pc_down": (
        "{pc} drops to the ground, unconscious. {prompt}", "{pc} falls and doesn't get up: 0 hit points.",
        "The blow knocks {pc} out cold. Someone needs to help. {prompt}",
    ),
    "dm_pc_hurt": (
        "{pc} is at {hp} of {max_hp} hit points. {prompt}", "{pc} grits their teeth and stays up. {prompt}",
        "It hurts, {pc}, but you're still standing. {detail}", "{pc} staggers, {hp} hit points left.",
        "{pc} takes the hit on the {body_part}. {prompt}", "{pc} winces. {detail} {prompt}",
    ),
    # ------------------------------------------------ spells
    "user_cast": (
        "I cast {spell} at the {foe}.", "{pc} casts {spell} on the {foe}.", "I'm using {spell} on the {foe}.",
        "I hit the {foe} with {spell}.", "{spell} on the {foe}, please.", "{pc} raises a hand: {spell}, at the {foe}.",
    ),
    "user_cast_area": (
        "I cast {spell} so it catches the {foe} and anything near it.", "{pc} casts {spell} on the group.",
        "{spell}, centered on them.", "I drop a {spell} on all of them.",
    ),
    "user_cast_heal": (
        "I cast {spell} on {target}.", "{pc} heals {target} with {spell}.", "{spell} on {target}, quickly.",
        "I rush to {target} and cast {spell}.",
    ),
    "user_cast_utility": (
        "I cast {spell}.", "{pc} casts {spell}.", "I'd like to cast {spell} here.", "Can I use {spell}? I cast it.",
    ),
    "dm_cast_lead": (
        "You speak the words of {spell}. {detail}", "Arcane energy gathers as {pc} casts {spell}.",
        "{pc} traces the sigils of {spell} in the air.", "The air hums as the {spell} takes shape.",
        "Power answers {pc}'s call: {spell}.", "You reach for the magic of {spell}.",
    ),
    "dm_spell_utility": (
        "The {spell} takes hold: {effect}.", "The magic settles. {effect}, as the spell promises.",
        "It works: {effect}.", "{pc}'s {spell} shimmers into place.",
    ),
    "dm_spell_miss": (
        "The {spell} streaks past the {foe} and splashes against the wall.", "The {foe} ducks the {spell}.",
        "The {spell} misses the {foe} by inches.",
    ),
    "dm_spell_hit": (
        "The {spell} strikes {target}.", "Direct hit with the {spell}.", "The {spell} slams into {target}.",
    ),
    "dm_save_no_damage": (
        "The {foe} shrugs off the magic completely.", "The {foe} resists and takes nothing.",
    ),
    "dm_slots_left": (
        "{pc} has {left} {level}-level {slots} left.", "That leaves you {left} {level}-level {slots}.",
        "({left} {level}-level {slots} remaining.)",
    ),
    "dm_no_slots_left": (
        "That was {pc}'s last {level}-level slot.", "You're out of {level}-level slots now.",
    ),
    "dm_apply_healing": (
        "{target} regains {n} hit points.", "That restores {n} to {target}.", "Healing {target} for {n}.",
        "{n} hit points back for {target}.",
    ),
    "dm_healed": (
        "Color returns to {target}'s face; {hp} of {max_hp} now.", "{target}'s wounds knit closed.",
        "{target} breathes easier, back to {hp} hit points.", "Warm light seals the worst of {target}'s cuts.",
        "{target} stands a little straighter.",
    ),
}

# weapon -> the verbs of its hits
STRIKES = {
    "blade": ("bites", "cuts", "slashes", "carves", "slices"),
    "point": ("punches", "sinks", "drives", "stabs"),
    "blunt": ("cracks", "smashes", "crunches", "slams", "thuds"),
    "missile": ("thunks", "buries itself", "punches", "whistles"),
}
WEAPON_STYLE = {"rapier": "point", "dagger": "point", "spear": "point", "shortsword": "point",
                "warhammer": "blunt", "mace": "blunt", "quarterstaff": "blunt", "maul": "blunt", "flail": "blunt",
                "longbow": "missile", "shortbow": "missile", "light crossbow": "missile", "hand crossbow": "missile"}
# monster -> how it looks and sounds while it fights
FLAVOR = {
    "Goblin": ("yellow eyes narrowed", "cackling through pointed teeth", "its notched blade held low",
               "ears flat against its skull"),
    "Bandit": ("a scarf over its face", "muttering a curse", "its leather armor creaking", "eyes darting to the exits"),
    "Kobold": ("hissing in Draconic", "its scales rattling", "tail lashing", "yapping to its kin"),
    "Skeleton": ("its bones clattering", "empty sockets burning blue", "jaw hanging open", "moving in jerks"),
    "Zombie": ("moaning low", "trailing a stench of rot", "its jaw slack", "one arm dangling"),
    "Wolf": ("hackles raised", "growling low", "teeth bared", "circling with its head down"),
    "Orc": ("roaring a war cry", "tusks flecked with spit", "its axe already red", "wearing a necklace of teeth"),
    "Cultist": ("chanting under its breath", "its robe marked with a red eye", "eyes wild with zeal",
                "a holy symbol clutched tight"),
    "Giant Rat": ("squealing", "its fur matted", "whiskers twitching", "teeth yellow and long"),
    "Hobgoblin": ("in perfect discipline", "shield locked high", "barking orders", "armor polished to a shine"),
    "Gnoll": ("cackling like a hyena", "its spotted fur bristling", "drooling", "sniffing the air for blood"),
    "Bugbear": ("moving with uncanny quiet", "its fur matted with mud", "grinning", "hunched low"),
    "Ghoul": ("its tongue lolling", "clawed fingers twitching", "smelling of the grave", "moving in jerks"),
    "Ogre": ("bellowing", "dragging its club", "drool in its beard", "as big as a doorway"),
    "Werewolf": ("half wolf, half man", "howling", "fur standing on end", "eyes glowing amber"),
    "Owlbear": ("screeching", "feathers bristling", "its beak clacking", "rearing up on its hind legs"),
    "Wight": ("its eyes cold pinpricks", "frost spreading where it steps", "speaking in a dead tongue",
              "its armor centuries old"),
    "Troll": ("its wounds already closing", "its long arms swinging", "reeking of swamp water", "grinning wide"),
    "Hill Giant": ("the ground shaking under it", "chewing on something", "bellowing", "its club an uprooted tree"),
    "Young Green Dragon": ("its breath smelling of chlorine", "scales glittering like wet leaves",
                           "wings half spread", "its eyes full of contempt"),
    "Wyvern": ("its stinger dripping", "wings beating up dust", "screaming", "its tail arched"),
    "Basilisk": ("its eyes glowing faintly", "scales grinding on stone", "moving slowly", "tongue flicking"),
}
