"""Typed metadata: StoreMeta.from_dict/to_dict give back attrs["actstore"] exactly (same
keys, same order, so zarr.json keeps its bytes), and a store of a later format version
is refused with the fix."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import actstore
from actstore.errors import StoreFormatError, StoreMismatchError
from actstore.model_info import ModelInfo
from actstore.store import CorpusMeta, Layout, SiteMeta, StoreMeta
from actstore.store.format import FORMAT_VERSION, READABLE_VERSIONS

from .conftest import DEMO, V1_STORE


def stored_attrs(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]["actstore"]


def same_json(a, b):
    """Equal, with keys in the same order: zarr writes json.dumps of the dict."""
    return json.dumps(a, indent=2) == json.dumps(b, indent=2)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """Stores of each corpus kind and site shape the engine writes."""
    root = tmp_path_factory.mktemp("kinds")
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " * 5}) + "\n" for i in range(20)))
    opts = dict(DEMO, n_rows=3, seq_len=12)
    return [
        actstore.cache(
            out=str(root / "list.zarr"),
            **{**opts, "dataset": ["a b c d e f g"] * 20},
            sites="pattern:1.1,1.3,z:0",
        ),
        actstore.cache(
            out=str(root / "files.zarr"),
            **{**opts, "dataset": str(corpus)},
            sites="resid_pre:0",
            packing="document",
        ),
        actstore.cache(
            out=str(root / "synthetic.zarr"),
            **{**opts, "dataset": "repeated-random:5", "seq_len": None},
            sites="resid_post:all",
        ),
    ]


def test_round_trip_is_exact_for_every_store_the_engine_writes(kinds):
    for path in [V1_STORE] + [k.path for k in kinds]:
        raw = stored_attrs(Path(path))
        assert same_json(StoreMeta.from_dict(raw).to_dict(), raw), path
    assert [k.meta.corpus.kind for k in kinds] == ["python-list", "files", "synthetic"]
    assert kinds[0].meta.corpus.sha256 and kinds[0].meta.corpus.files is None
    assert kinds[1].meta.corpus.files[0]["bytes"] > 0 and kinds[1].meta.corpus.sha256 is None


def test_typed_parts(kinds):
    s = kinds[0]
    m = s.meta
    assert (
        isinstance(m.model, ModelInfo)
        and isinstance(m.corpus, CorpusMeta)
        and isinstance(m.layout, Layout)
    )
    assert m.format_version == FORMAT_VERSION == 2 and s.layout == m.layout
    assert m.model.n_layers == 4 and m.corpus.seq_len == 12 and m.layout.n_rows == 3
    assert m.hooks == s.sites == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern"]
    pattern = m.site("blocks.1.attn.hook_pattern")
    assert (
        isinstance(pattern, SiteMeta)
        and pattern.heads == (1, 3)
        and pattern.shape == (3, 2, 12, 12)
    )
    assert pattern.dims == ("row", "head", "query_pos", "key_pos") and pattern.site.heads == (1, 3)
    with pytest.raises(KeyError, match="Unknown site 'blocks.9.hook_z'"):
        m.site("blocks.9.hook_z")
    assert s.metadata == m.to_dict()  # the plain dict is still there, as stored


def test_unknown_keys_are_kept_in_place():
    raw = stored_attrs(V1_STORE)
    raw = {
        **raw,
        "model": {**raw["model"], "new_model_key": 1},
        "corpus": {**raw["corpus"], "plan": [0, 5]},
        "sites": [{**raw["sites"][0], "note": "x"}],
        "future": {"a": [1, 2]},
    }
    m = StoreMeta.from_dict(raw)
    assert (
        m.model_extra == {"new_model_key": 1}
        and m.corpus.extra == {"plan": [0, 5]}
        and m.extra == {"future": {"a": [1, 2]}}
    )
    assert same_json(m.to_dict(), raw)


def test_a_later_format_version_is_refused_with_the_fix(v1_store):
    doc = json.loads((v1_store / "zarr.json").read_text())
    doc["attributes"]["actstore"]["format_version"] = 99
    (v1_store / "zarr.json").write_text(json.dumps(doc))
    reads = ", ".join(map(str, READABLE_VERSIONS))
    for open_ in (actstore.open, actstore.ActivationStore.open):
        with pytest.raises(
            StoreFormatError,
            match=rf"is format version 99, written by a later actstore; this "
            rf"actstore \(.*\) reads format versions {reads}\. Upgrade actstore",
        ):
            open_(v1_store)
    assert issubclass(StoreFormatError, actstore.ActStoreError) and issubclass(
        StoreFormatError, ValueError
    )


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: m.pop("format_version"), "has no format_version"),
        (lambda m: m.update(format_version="2"), "has format version '2'; this actstore reads"),
        (
            lambda m: m["model"].pop("fingerprint"),
            "'model' lacks fingerprint; the store is damaged",
        ),
        (
            lambda m: m.update(sites=[{"hook": "x"}]),
            r"'sites\[0\]' lacks layer, heads, dims, shape",
        ),
    ],
)
def test_damaged_metadata_is_named(v1_store, change, match):
    raw = stored_attrs(v1_store)
    change(raw)
    with pytest.raises(StoreFormatError, match=match):
        StoreMeta.from_dict(raw, str(v1_store))


def test_resume_compares_typed_metadata(kinds, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(kinds[2].path, out)
    opts = dict(DEMO, n_rows=3, dataset="repeated-random:5", sites="resid_post:all", resume=True)
    assert actstore.cache(out=str(out), **opts).is_complete
    with pytest.raises(
        StoreMismatchError, match=r"layout: store has .*'n_rows': 3.*this run has .*'n_rows': 4"
    ):
        actstore.cache(out=str(out), **{**opts, "n_rows": 4})
    assert np.array_equal(
        actstore.open(out).acts("blocks.0.hook_resid_post"),
        kinds[2].acts("blocks.0.hook_resid_post"),
    )


def test_a_model_held_in_memory_round_trips():
    raw = stored_attrs(V1_STORE)
    raw = {
        **raw,
        "model": {**raw["model"], "source": "in-memory", "hooks": ["blocks.0.hook_resid_post"]},
    }
    m = StoreMeta.from_dict(raw)
    assert (
        m.model.in_memory and m.model.hooks == ("blocks.0.hook_resid_post",) and m.model_extra == {}
    )
    assert same_json(m.to_dict(), raw)
    assert not StoreMeta.from_dict(stored_attrs(V1_STORE)).model.in_memory
