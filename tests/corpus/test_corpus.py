import json

import numpy as np
import pytest

import actstore
from actstore.corpus import Checkpoint, CorpusSpec, RowReader, count_rows, iter_rows
from actstore.errors import (
    CorpusError,
    CorpusExhaustedError,
    EmptyCorpusError,
    MissingTextFieldError,
)

from ..conftest import DOCS

EOT = 50256


def reference_packed(docs, tokenizer, seq_len):
    """Independent packing: one document at a time, plain Python lists."""
    stream = []
    for d, text in enumerate(docs):
        ids = tokenizer.encode(text)
        if ids:
            stream += [(t, d, i) for i, t in enumerate(ids)] + [(EOT, d, len(ids))]
    rows = []
    for r in range(len(stream) // (seq_len - 1)):
        items = [(EOT, -1, -1)] + stream[r * (seq_len - 1) : (r + 1) * (seq_len - 1)]
        rows.append(tuple(np.array(col) for col in zip(*items)))
    return rows


def all_rows(spec, tokenizer, start=None):
    blocks = list(iter_rows(spec, tokenizer, start or Checkpoint()))
    return (
        np.concatenate([b.tokens for b in blocks]),
        np.concatenate([b.doc for b in blocks]),
        np.concatenate([b.doc_pos for b in blocks]),
    )


@pytest.mark.parametrize("seq_len", [2, 7, 32])
def test_packing_matches_independent_tokenisation(tokenizer, seq_len):
    ref = reference_packed(DOCS, tokenizer, seq_len)
    tokens, doc, doc_pos = all_rows(CorpusSpec.from_dataset(DOCS, seq_len=seq_len), tokenizer)
    assert len(tokens) == len(ref) > 0
    assert np.array_equal(tokens, np.stack([r[0] for r in ref]))
    assert np.array_equal(doc, np.stack([r[1] for r in ref]))
    assert np.array_equal(doc_pos, np.stack([r[2] for r in ref]))
    assert (tokens[:, 0] == EOT).all()  # every row starts with BOS
    assert tokens.dtype == np.int32 and doc.dtype == np.int64 and doc_pos.dtype == np.int32


def test_seek_from_checkpoint_equals_reading_from_start(tokenizer):
    spec = CorpusSpec.from_dataset(DOCS, seq_len=16)
    tokens, doc, doc_pos = all_rows(spec, tokenizer)
    for r in (1, 5, 11, len(tokens) - 1):
        start = Checkpoint(row=r, doc=int(doc[r - 1, -1]), item=int(doc_pos[r - 1, -1]) + 1)
        t2, d2, p2 = all_rows(spec, tokenizer, start)
        assert (
            np.array_equal(t2, tokens[r:])
            and np.array_equal(d2, doc[r:])
            and np.array_equal(p2, doc_pos[r:])
        )


def test_row_reader_takes_exact_counts(tokenizer):
    spec = CorpusSpec.from_dataset(DOCS, seq_len=8)
    tokens, _, _ = all_rows(spec, tokenizer)
    reader = RowReader(spec, tokenizer)
    parts = [reader.take(n) for n in (3, 1, 10)]
    assert [p.start for p in parts] == [0, 3, 4]
    assert np.array_equal(np.concatenate([p.tokens for p in parts]), tokens[:14])
    with pytest.raises(CorpusExhaustedError, match="ran out"):
        reader.take(10**6)


def test_document_mode_pads_and_masks(tokenizer):
    spec = CorpusSpec.from_dataset(DOCS[:8], seq_len=12, packing="document")
    blocks = list(iter_rows(spec, tokenizer))
    assert [b.start for b in blocks] == list(range(8))
    for d, b in enumerate(blocks):
        ids = tokenizer.encode(DOCS[d])[:11]
        n = len(ids) + 1
        assert (
            b.tokens[0, 0] == EOT
            and list(b.tokens[0, 1:n]) == ids
            and (b.tokens[0, n:] == EOT).all()
        )
        assert b.mask[0].tolist() == [True] * n + [False] * (12 - n)
        assert b.doc[0].tolist() == [-1] + [d] * (n - 1) + [-1] * (12 - n)
        assert b.doc_pos[0].tolist() == [-1] + list(range(n - 1)) + [-1] * (12 - n)
    later = list(iter_rows(spec, tokenizer, Checkpoint(row=5, doc=5)))
    assert [b.start for b in later] == [5, 6, 7] and np.array_equal(
        later[0].tokens, blocks[5].tokens
    )


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "parquet", "csv"])
def test_local_files_equal_python_list(tmp_path, tokenizer, fmt):
    docs = [d.replace("\n", " ") for d in DOCS if d]  # one line per document for .txt
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        path.write_text(
            "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
        )
    elif fmt == "txt":
        path.write_text("\n".join(docs) + "\n")
    else:
        import pandas as pd

        df = pd.DataFrame({"text": docs})
        df.to_parquet(path) if fmt == "parquet" else df.to_csv(path, index=False)
    from_file = all_rows(CorpusSpec.from_dataset(str(path), seq_len=16), tokenizer)
    from_list = all_rows(CorpusSpec.from_dataset(docs, seq_len=16), tokenizer)
    for a, b in zip(from_file, from_list):
        assert np.array_equal(a, b)


def test_missing_text_field_names_the_fields(tmp_path, tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"body": "hello", "id": 1}) + "\n")
    with pytest.raises(
        MissingTextFieldError, match=r"no field 'text' \(fields: body, id\); pass --text-field"
    ):
        count_rows(CorpusSpec.from_dataset(str(path)), tokenizer)


def test_empty_corpus(tokenizer, tmp_path):
    with pytest.raises(EmptyCorpusError, match="yields no rows"):
        count_rows(CorpusSpec.from_dataset(["", ""]), tokenizer)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EmptyCorpusError):
        count_rows(CorpusSpec.from_dataset(str(empty)), tokenizer)


def test_missing_file(tokenizer):
    with pytest.raises(CorpusError, match="not found"):
        CorpusSpec.from_dataset("no/such/file.jsonl").files()


def test_count_rows_stops_at_limit(tokenizer):
    spec = CorpusSpec.from_dataset(DOCS, seq_len=8)
    total = count_rows(spec, tokenizer)
    assert count_rows(spec, tokenizer, limit=3) == 3 and total == len(all_rows(spec, tokenizer)[0])


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset for a hub name, offline: records the call and streams DOCS."""
    import datasets

    calls = []
    real = datasets.load_dataset

    def load_dataset(path, name=None, **kw):
        if path != "someorg/some-corpus":
            return real(path, name, **kw)
        calls.append((path, name, kw))
        return datasets.IterableDataset.from_generator(lambda: ({"text": d} for d in DOCS))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_names_with_a_slash_are_hub_datasets(fake_hub, tokenizer):
    spec = CorpusSpec.from_dataset(
        "someorg/some-corpus", split="validation", config_name="c1", revision="r2", seq_len=16
    )
    assert spec.kind == "hub" and spec.files() == []
    got = all_rows(spec, tokenizer)
    want = all_rows(CorpusSpec.from_dataset(DOCS, seq_len=16), tokenizer)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert fake_hub[0] == (
        "someorg/some-corpus",
        "c1",
        {"split": "validation", "revision": "r2", "streaming": True},
    )
    _, doc, doc_pos = want
    # resume through ds.skip
    start = Checkpoint(row=4, doc=int(doc[3, -1]), item=int(doc_pos[3, -1]) + 1)
    assert np.array_equal(all_rows(spec, tokenizer, start)[0], want[0][4:])


def test_hub_dataset_needs_a_length(fake_hub, tiny_model, tmp_path):
    import actstore
    from actstore.errors import ConfigError

    with pytest.raises(ConfigError, match="streamed.*pass --n-rows or --n-tokens"):
        actstore.cache(
            out=str(tmp_path / "s.zarr"),
            model=tiny_model,
            dataset="someorg/some-corpus",
            seq_len=16,
            sites="resid_post:0",
            progress=False,
        )
    s = actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model=tiny_model,
        dataset="someorg/some-corpus",
        seq_len=16,
        sites="resid_post:0",
        n_rows=5,
        progress=False,
    )
    assert (
        s.is_complete
        and s.metadata["corpus"]["kind"] == "hub"
        and s.metadata["corpus"]["source"] == "someorg/some-corpus"
    )
    # a streamed source is not scanned: only row 0's start is known
    plan = np.asarray(s.group["plan"][...])
    assert plan[0].tolist() == [0, 0, 0, -1, -1] and (plan[1:, 1:] == -1).all()


def test_hub_resume_compares_the_commit_the_revision_resolves_to(
    fake_hub, tiny_model, tmp_path, monkeypatch, capsys
):
    import actstore
    from actstore.corpus import rows
    from actstore.errors import StoreMismatchError

    opts = dict(
        out=str(tmp_path / "s.zarr"),
        model=tiny_model,
        dataset="someorg/some-corpus",
        seq_len=16,
        sites="resid_post:0",
        n_rows=4,
        progress=False,
    )
    monkeypatch.setattr(rows, "hub_revision", lambda name, revision: "abc123")
    assert actstore.cache(**opts).metadata["corpus"]["resolved_revision"] == "abc123"
    # the branch moved on
    monkeypatch.setattr(rows, "hub_revision", lambda name, revision: "def456")
    with pytest.raises(
        StoreMismatchError,
        match="'someorg/some-corpus' is now at commit def456; the store was made "
        "from commit abc123",
    ):
        actstore.cache(**opts, resume=True)
    # offline: said, not refused
    monkeypatch.setattr(rows, "hub_revision", lambda name, revision: None)
    assert actstore.cache(**{**opts, "progress": True}, resume=True).is_complete
    assert (
        "without checking that hub dataset 'someorg/some-corpus' is still at commit abc123"
        in capsys.readouterr().err
    )


def test_file_lists_are_files_even_when_one_is_missing(tmp_path):
    real = tmp_path / "a.jsonl"
    real.write_text('{"text": "hi"}\n')
    spec = CorpusSpec.from_dataset([str(real), str(tmp_path / "b.jsonl")])
    assert spec.documents is None
    with pytest.raises(CorpusError, match="b.jsonl' not found"):
        spec.files()
    assert CorpusSpec.from_dataset(["just some text", "more text"]).kind == "python-list"


def test_repeated_random_rows_take_their_length_without_seq_len(tmp_path, tiny_model):
    """--dataset repeated-random:H with no --seq-len makes rows of BOS + 2H tokens (issue 14, 7a);
    a --seq-len that disagrees is still refused."""
    from actstore.cli import main

    store = actstore.cache(
        out=str(tmp_path / "r.zarr"),
        model=tiny_model,
        dataset="repeated-random:5",
        n_rows=3,
        sites="resid_post:0",
        progress=False,
    )
    assert store.layout.seq_len == 11 and store.tokens().shape == (3, 11)
    assert (
        store.tokens()[:, 1:6] == store.tokens()[:, 6:]
    ).all()  # the second half repeats the first
    assert (
        main(
            [
                "cache",
                str(tmp_path / "c.zarr"),
                "--model",
                tiny_model,
                "--dataset",
                "repeated-random:4",
                "--n-rows",
                "2",
                "--sites",
                "resid_post:0",
                "--quiet",
            ]
        )
        == 0
    )
    assert actstore.ActivationStore.open(tmp_path / "c.zarr").layout.seq_len == 9
    with pytest.raises(
        actstore.errors.CorpusError, match="pass --seq-len 11, or leave --seq-len out"
    ):
        actstore.cache(
            out=str(tmp_path / "x.zarr"),
            model=tiny_model,
            dataset="repeated-random:5",
            seq_len=12,
            n_rows=1,
            progress=False,
        )
