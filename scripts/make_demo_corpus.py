"""Write actstore/data/demo_corpus.jsonl: the small bundled corpus behind
`--dataset actstore-demo`. Deterministic from the seed; templated English with
single-token names and objects, number sequences and repeated token segments.

    python scripts/make_demo_corpus.py
"""

import json
import random
from pathlib import Path

SEED = 0
N_DOCS = 400
NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "James", "Anna", "David", "Laura", "Paul", "Emma", "Mark"]
PLACES = ["store", "park", "school", "office", "garden", "station", "library", "market"]
OBJECTS = ["book", "ball", "ring", "key", "drink", "letter", "bag", "coin", "hat", "pen"]
TEMPLATES = [
    "When {a} and {b} went to the {place}, {b} gave a {obj} to {a}.",
    "{a} and {b} were at the {place}. {a} handed the {obj} to {b}.",
    "After the meeting at the {place}, {a} told {b} about the {obj}.",
    "{a} found a {obj} near the {place} and showed it to {b}.",
    "The {obj} that {a} bought at the {place} was a gift for {b}.",
]


def document(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(2, 8)):
        kind = rng.random()
        if kind < 0.7:
            a, b = rng.sample(NAMES, 2)
            parts.append(rng.choice(TEMPLATES).format(a=a, b=b, place=rng.choice(PLACES), obj=rng.choice(OBJECTS)))
        elif kind < 0.85:
            start = rng.randint(1, 90)
            parts.append("Counting: " + ", ".join(str(start + i) for i in range(rng.randint(4, 10))) + ".")
        else:
            words = rng.sample(OBJECTS + PLACES, 5)
            parts.append(" ".join(words) + " " + " ".join(words) + ".")
    return " ".join(parts)


def main() -> None:
    rng = random.Random(SEED)
    out = Path(__file__).resolve().parent.parent / "actstore" / "data" / "demo_corpus.jsonl"
    with out.open("w") as f:
        for i in range(N_DOCS):
            f.write(json.dumps({"id": i, "text": document(rng)}) + "\n")
    print(f"wrote {N_DOCS} documents to {out}")


if __name__ == "__main__":
    main()
