"""The corpus plan: one scan names where each shard starts in the source; a reader that
seeks there (and stops at the shard's end) yields exactly the rows of a sequential read,
tokenising only the shard's documents."""

import json
import os

import numpy as np
import pytest

from actstore.corpus import (
    PLAN_FIELDS,
    Checkpoint,
    CorpusSpec,
    RowReader,
    iter_rows,
    plan_checkpoint,
    rows,
    scan,
    stop_after,
    synthetic_plan,
    unknown_plan,
)

from ..conftest import DOCS

DOCS_BIG = [
    f"Document {i}: " + " ".join(DOCS[i % len(DOCS)].split()[: 3 + i % 17]) for i in range(300)
]
DOCS_BIG[7] = DOCS_BIG[40] = ""  # empty documents contribute nothing


def sequential(spec, tokenizer, n):
    return RowReader(spec, tokenizer).take(n)


def boundaries(n_rows, per_shard):
    return list(range(0, n_rows, per_shard)) + [n_rows]


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """The documents each tokenizer call of this process tokenises, by 'rows' / 'plan'."""
    folder = tmp_path / "counts"
    folder.mkdir()
    monkeypatch.setattr(rows, "_COUNT_DOCS", str(folder))

    def total(what):
        return sum(int(x) for f in folder.glob(f"{what}.*") for x in f.read_text().split())

    def reset():
        for f in folder.iterdir():
            f.unlink()

    total.reset = reset
    return total


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def sources(tmp_path):
    (tmp_path / "parts").mkdir()
    text = tmp_path / "docs.txt"
    text.write_text("".join(d.replace("\n", " ") + "\n" for d in DOCS_BIG))
    parts = [
        write_jsonl(tmp_path / "parts" / f"p{i}.jsonl", DOCS_BIG[i * 100 : (i + 1) * 100])
        for i in range(3)
    ]
    return {
        "list": DOCS_BIG,
        "jsonl": write_jsonl(tmp_path / "docs.jsonl", DOCS_BIG),
        "text": str(text),
        "three files": parts,
    }


@pytest.mark.parametrize("kind", ["list", "jsonl", "text", "three files"])
@pytest.mark.parametrize(
    "packing,seq_len,per_shard", [("pack", 16, 23), ("pack", 7, 64), ("document", 12, 70)]
)
def test_seeking_to_shard_k_yields_the_rows_of_a_sequential_read(
    tmp_path, tokenizer, counted, kind, packing, seq_len, per_shard
):
    spec = CorpusSpec.from_dataset(sources(tmp_path)[kind], seq_len=seq_len, packing=packing)
    scanned = scan(spec, tokenizer)
    n = scanned.n_rows
    # the scan counts what a reader yields
    assert n == sum(len(b) for b in iter_rows(spec, tokenizer))
    # the scan tokenised the corpus once
    assert counted("plan") == len(DOCS_BIG) and counted("rows") > 0
    ref = sequential(spec, tokenizer, n)
    plan = scanned.plan(boundaries(n, per_shard))
    assert (
        plan.shape == (len(boundaries(n, per_shard)), len(PLAN_FIELDS)) and plan.dtype == np.int64
    )
    for k, (a, b) in enumerate(zip(boundaries(n, per_shard), boundaries(n, per_shard)[1:])):
        start, end = plan_checkpoint(plan, k), plan_checkpoint(plan, k + 1)
        counted.reset()
        got = RowReader(spec, tokenizer, start, stop_after(end)).take(b - a)
        for name in ("tokens", "doc", "doc_pos", "mask"):
            x, y = getattr(got, name), getattr(ref, name)
            assert (x is None and y is None) or np.array_equal(x, y[a:b]), (k, name)
        # only the shard's own documents are tokenised: the first to the last one it holds
        docs = ref.doc[a:b][ref.doc[a:b] >= 0]
        assert (
            counted("rows")
            == stop_after(end) - start.doc
            <= int(docs.max()) - int(docs.min()) + 1 + 2
        )


def test_the_plan_names_each_file_and_record(tmp_path, tokenizer):
    spec = CorpusSpec.from_dataset(sources(tmp_path)["three files"], seq_len=16)
    scanned = scan(spec, tokenizer)
    for r in (0, 57, 123, scanned.n_rows - 1):
        c = scanned.checkpoint(r)
        assert (c.part, c.record) == (c.doc // 100, c.doc % 100)
    # a list is one part; its records are the documents
    c = scan(CorpusSpec.from_dataset(DOCS_BIG, seq_len=16), tokenizer).checkpoint(57)
    assert (c.part, c.record) == (0, c.doc)


def test_a_scan_with_a_limit_stops_after_the_document_holding_the_last_row(tokenizer, counted):
    spec = CorpusSpec.from_dataset(DOCS_BIG, seq_len=16)
    full = scan(spec, tokenizer)
    part = scan(spec, tokenizer, limit=40)
    assert part.n_rows == 40 and part.checkpoint(40) == full.checkpoint(40)
    assert 0 <= part.checkpoint(40).record < part.n_docs < full.n_docs
    with pytest.raises(ValueError, match="outside"):
        part.checkpoint(41)


def test_synthetic_rows_seek_by_computation(tokenizer):
    spec = CorpusSpec.from_dataset("repeated-random:5", seq_len=11)
    ref = sequential(spec, tokenizer, 200)
    plan = synthetic_plan(boundaries(200, 70))
    for k, (a, b) in enumerate(zip(boundaries(200, 70), boundaries(200, 70)[1:])):
        got = RowReader(spec, tokenizer, plan_checkpoint(plan, k)).take(b - a)
        assert np.array_equal(got.tokens, ref.tokens[a:b]) and np.array_equal(got.doc, ref.doc[a:b])
        assert np.array_equal(got.doc_pos, ref.doc_pos[a:b])


def test_an_unknown_plan_knows_only_row_0():
    plan = unknown_plan([0, 8, 16, 20])
    assert plan_checkpoint(plan, 0) == Checkpoint() and plan_checkpoint(plan, 0).part == -1
    assert [plan_checkpoint(plan, k) for k in (1, 2, 3)] == [None] * 3


def test_counting_is_off_unless_asked():
    assert "ACTSTORE_COUNT_DOCS" not in os.environ and rows._COUNT_DOCS == ""
