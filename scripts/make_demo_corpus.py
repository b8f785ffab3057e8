"""Write actstore/data/demo_corpus.jsonl, the bundled corpus behind `--dataset
actstore-demo`: 600 documents of actstore.demo.data, the generator of the demo model's
training text (IOI-style and repeated-name sentences, plain sentences, counting,
repeated word lists), from seed 1; the model was trained on the seed-0 stream, so this
text is held out. Plain English: any tokenizer reads it.

    python scripts/make_demo_corpus.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actstore.demo.data import write_documents  # noqa: E402

SEED = 1  # not 0: held out from the training text
N_DOCS = 600  # ~50k GPT-2 tokens: ~390 rows of 128


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "actstore" / "data" / "demo_corpus.jsonl"
    write_documents(str(out), N_DOCS, SEED)
    print(f"wrote {N_DOCS} documents to {out}")


if __name__ == "__main__":
    main()
