"""The word lists every prompt generator draws from, in one place.

Two families, because two tokenizers: the IOI paper's lists (Wang et al. 2022, and the
surnames and nouns of the repeated-name and greater-than tasks), filtered by the task
generators to the words that are one token of the tokenizer at hand
(:mod:`actstore.patching.tasks`); and the demo corpus's lists, every word one token
of the demo model's small tokenizer with its leading space (:mod:`actstore.demo.data`).
Their order is part of the generators' output: append, never reorder.
"""

from __future__ import annotations

__all__ = ["IOI_NAMES", "IOI_PLACES", "IOI_OBJECTS", "SURNAMES", "GREATER_THAN_NOUNS",
           "DEMO_NAMES", "DEMO_SURNAMES", "DEMO_OBJECTS", "DEMO_PLACES", "DEMO_ROLES"]

# --- the patching tasks' (GPT-2 tokenizer) ------------------------------------------------------

#: the first names of the IOI authors' code (99)
IOI_NAMES = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel", "David",
    "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah", "William",
    "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam",
    "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren",
    "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen", "Patrick", "Sean",
    "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul", "Angela", "Tyler", "Scott",
    "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen",
    "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia",
    "Cody", "Allison", "Bradley", "Samuel",
)
IOI_PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
IOI_OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
SURNAMES = (
    "Smith", "Jones", "Brown", "Johnson", "Williams", "Miller", "Taylor", "Wilson", "Davis", "White", "Clark",
    "Hall", "Thomas", "Thompson", "Moore", "Hill", "Walker", "Anderson", "Wright", "Martin", "Wood", "Allen",
    "Robinson", "Lewis", "Scott", "Young", "Jackson", "Adams", "Baker", "Harris", "Lee", "King", "Green", "Evans",
    "Turner", "Cooper", "Hughes", "Ward", "Morris", "Edwards", "Collins", "Stewart", "Morgan", "Bell", "Murphy",
    "Bailey", "Cook", "Rogers", "Parker", "Carter", "Phillips", "Mitchell", "Campbell", "Roberts", "Nelson",
)
#: nouns of Hanna et al. 2023 (those that are one GPT-2 token are used)
GREATER_THAN_NOUNS = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack", "attempts",
    "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma", "competition",
    "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact", "contract",
    "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations", "development",
    "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment", "endeavor",
    "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition", "experiments",
    "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness", "impact",
    "imprisonment", "improvement", "incarceration", "increase", "insurgency", "invasion", "investigation",
    "journey", "kingdom", "marriage", "modernization", "negotiations", "notoriety", "obstruction", "operation",
    "order", "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice", "process",
    "program", "progress", "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship",
    "retaliation", "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump",
    "stature", "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour", "tradition", "treaty",
    "trial", "trip", "unemployment", "voyage", "war", "warfare", "work",
)


# --- the demo corpus's (demo tokenizer) -------------------------------------------------------

DEMO_NAMES = ("Mary", "John", "Alice", "Bob", "Sarah", "James", "Anna", "David", "Laura", "Paul", "Emma", "Mark",
              "Tom", "Kate", "Peter", "Lucy", "Jack", "Rose", "Sam", "Helen", "Mike", "Jane", "Chris", "Amy",
              "Dan", "Lisa", "Ben", "Nina", "Adam", "Eva", "Max", "Julia", "Leo", "Clara", "Ryan", "Sophie",
              "Luke", "Grace", "Eric", "Ruth", "Carl", "Diana", "Fred", "Irene", "Henry", "Olivia", "Oscar", "Vera",
              "Michelle", "Steve")
DEMO_SURNAMES = ("Jones", "Smith", "Brown", "Miller", "Davis", "Wilson", "Moore", "Taylor", "Clark", "Hall",
                 "Young", "King", "Wright", "Green", "Baker", "Adams")
DEMO_OBJECTS = ("drink", "book", "ball", "ring", "key", "letter", "bag", "coin", "hat", "pen", "cake", "card",
                "cup", "gift", "lamp", "map", "note", "phone", "shirt", "watch", "apple", "box", "flower", "basket")
DEMO_PLACES = ("store", "park", "school", "office", "garden", "station", "library", "market", "beach", "museum",
               "cafe", "river", "zoo", "bank", "farm", "hotel")
DEMO_ROLES = ("student", "teacher", "doctor", "player", "writer", "cook", "pilot", "singer")
