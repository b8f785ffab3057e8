"""One source for the word lists (actstore.corpus.vocab) and one generator of repeated
random tokens (actstore.corpus.synthetic.repeated_random_rows), pinned to what the
former copies produced."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import actstore
from actstore.corpus import RepeatedRandom, vocab
from actstore.corpus.synthetic import ordinary_tokens, repeated_random_rows
from actstore.demo import data as demo_data
from actstore.demo import demo_tokenizer, repeated_tokens
from actstore.patching import tasks
from actstore.resources import gpt2_tokenizer

WORD_LISTS = ("NAMES", "SURNAMES", "PLACES", "OBJECTS", "ROLES", "NOUNS")


def _hash(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()[:16]


def _hash_json(x: object) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()[:16]


# computed with the code before the generators and lists were merged (commit a43de11)
BEFORE = {
    "synthetic-demo": "2b90e5a8e8aa3577",
    "batch-demo": "b99d87ea20ded568",
    "tokens-demo": "9ccddac8fbfebafe",
    "synthetic-gpt2": "ff384bb0cd21d9b3",
    "batch-gpt2": "28e92a04aea06e4b",
    "tokens-gpt2": "c4d1f5c8499b2018",
    "task-ioi": "7a38f51e383a9b2b",
    "task-ioi-flip": "bba9d4d8fe7d5b0f",
    "task-repeated-name": "7f4b1827921f56ea",
    "task-greater-than": "b026baac0f31a3a8",
    "demo-ioi": "2c0a9ec5fd89483a",
    "demo-docs": "65323422d33e0e8a",
}


@pytest.mark.parametrize("name", ["demo", "gpt2"])
def test_repeated_random_tokens_are_what_each_former_copy_gave(name):
    tok = demo_tokenizer() if name == "demo" else gpt2_tokenizer()
    assert _hash(next(RepeatedRandom(10, 3).rows(tok, 100))[1]) == BEFORE[f"synthetic-{name}"]
    assert (
        _hash(demo_data.repeated_batch(tok, np.random.default_rng(0), 8, 10))
        == BEFORE[f"batch-{name}"]
    )
    assert _hash(repeated_tokens(tok, 70, 7, seed=1)) == BEFORE[f"tokens-{name}"]


def test_the_corpus_rows_and_the_training_batches_are_one_generator():
    tok = demo_tokenizer()
    vocab_ids = ordinary_tokens(tok)
    row = repeated_random_rows(np.random.default_rng([3, 5]), vocab_ids, tok.bos_token_id, 1, 10)
    assert np.array_equal(next(RepeatedRandom(10, 3).rows(tok, 0))[1][5], row[0])
    batch = repeated_random_rows(
        np.random.default_rng(0), vocab_ids.astype(np.int64), tok.bos_token_id, 8, 10
    )
    assert np.array_equal(demo_data.repeated_batch(tok, np.random.default_rng(0), 8, 10), batch)


def test_prompts_are_what_the_former_lists_gave():
    gpt2 = gpt2_tokenizer()
    for task in ("ioi", "ioi-flip", "repeated-name", "greater-than"):
        got = [p.to_json() for p in tasks.make_pairs(task, 12, seed=1, tokenizer=gpt2)]
        assert _hash_json(got) == BEFORE[f"task-{task}"], task
    assert _hash_json(demo_data.ioi_pairs(20)) == BEFORE["demo-ioi"]
    assert _hash_json(demo_data.documents(40, seed=5)) == BEFORE["demo-docs"]


def test_tasks_and_demo_draw_from_the_vocab_module():
    assert (tasks.NAMES, tasks.PLACES, tasks.OBJECTS, tasks.SURNAMES, tasks.GREATER_THAN_NOUNS) == (
        vocab.IOI_NAMES,
        vocab.IOI_PLACES,
        vocab.IOI_OBJECTS,
        vocab.SURNAMES,
        vocab.GREATER_THAN_NOUNS,
    )
    assert tasks.NAMES is vocab.IOI_NAMES and tasks.SURNAMES is vocab.SURNAMES
    assert (
        demo_data.NAMES,
        demo_data.SURNAMES,
        demo_data.OBJECTS,
        demo_data.PLACES,
        demo_data.ROLES,
    ) == (
        vocab.DEMO_NAMES,
        vocab.DEMO_SURNAMES,
        vocab.DEMO_OBJECTS,
        vocab.DEMO_PLACES,
        vocab.DEMO_ROLES,
    )
    assert demo_data.NAMES is vocab.DEMO_NAMES
    gpt2 = gpt2_tokenizer()
    for p in tasks.make_pairs("ioi", 8, tokenizer=gpt2):
        assert p.meta["io"] in vocab.IOI_NAMES and p.meta["s"] in vocab.IOI_NAMES
    for p in demo_data.ioi_pairs(8):
        assert p["answer"].strip() in vocab.DEMO_NAMES and p["wrong"].strip() in vocab.DEMO_NAMES
    tok = demo_tokenizer()
    assert all(
        len(tok.encode(w, add_special_tokens=False)) == 1 for w in demo_data.single_token_words()
    )


def test_no_module_but_vocab_defines_a_word_list():
    root = Path(actstore.__file__).parent
    owners = []
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Tuple)
                and node.value.elts
                and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str)
                    for e in node.value.elts
                )
            ):
                names = [
                    t.id
                    for t in node.targets
                    if isinstance(t, ast.Name) and t.id.endswith(WORD_LISTS)
                ]
                owners += [f"{path.relative_to(root)}:{n}" for n in names]
    assert owners and all(o.startswith("corpus/vocab/") for o in owners), owners
