"""Bad input fails before work starts, with our message, and an existing store is
left exactly as it was."""

import importlib
import json
import shutil

import pytest

import actstore
from actstore import errors
from actstore.cli import main

from .conftest import DOCS, store_files

BASE = dict(sites="resid_post:1", seq_len=16, n_rows=4, progress=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("made") / "store.zarr"
    actstore.cache(out=str(out), model=tiny_model, dataset=DOCS, **BASE)
    return out


@pytest.fixture
def existing(made, tmp_path):
    out = tmp_path / "store.zarr"
    shutil.copytree(made, out)
    return out


def snapshot(path):
    return store_files(path), (path / "zarr.json").read_bytes()


@pytest.fixture(scope="module")
def no_text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("c") / "body.jsonl"
    p.write_text(json.dumps({"body": "hello there"}) + "\n")
    return str(p)


CASES = {
    "unknown model path": (
        dict(model="./no/such/model"),
        errors.ModelNotFoundError,
        r"Model folder './no/such/model' not found",
    ),
    "unknown hub model": (
        dict(model="no-such-org/no-such-model-xyz"),
        errors.ModelNotFoundError,
        r"Could not load model 'no-such-org/no-such-model-xyz'",
    ),
    "unknown site": (
        dict(sites="resid_pots:all"),
        errors.UnknownSiteError,
        r"Unknown site 'resid_pots'.*Close matches: resid_post",
    ),
    "layer out of range": (
        dict(sites="z:7"),
        errors.UnknownSiteError,
        r"layer 7 is out of range; this model has layers 0..2",
    ),
    "empty corpus": (dict(dataset=["", "   "][:1]), errors.EmptyCorpusError, r"yields no rows"),
    "seq_len beyond context": (
        dict(seq_len=65),
        errors.ConfigError,
        r"seq_len 65 is beyond the model's context of 64 tokens; pass --seq-len 64",
    ),
    "missing text field": (
        dict(dataset="NO_TEXT"),
        errors.MissingTextFieldError,
        r"no field 'text' \(fields: body\); pass --text-field",
    ),
    "corpus too short": (
        dict(n_rows=10**5),
        errors.CorpusExhaustedError,
        r"yields only \d+ rows.*pass --n-rows \d+",
    ),
    "rows and tokens": (dict(n_tokens=100), errors.ConfigError, r"n_rows or n_tokens, not both"),
    "seq_len 1": (dict(seq_len=1), errors.ConfigError, r"seq_len must be at least 2"),
    "batch size 0": (
        dict(batch_size=0),
        errors.ConfigError,
        r"batch_size must be a positive integer",
    ),
    "bad codec": (dict(codec="lzma"), errors.ConfigError, r"Unknown codec 'lzma'"),
    "bad packing": (dict(packing="sliding"), errors.ConfigError, r"Unknown packing 'sliding'"),
    "missing file": (
        dict(dataset="missing/corpus.jsonl"),
        errors.CorpusError,
        r"'missing/corpus.jsonl' not found",
    ),
}


@pytest.mark.parametrize("mode", ["resume", "overwrite"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_leaves_existing_store_untouched(existing, tiny_model, no_text_file, case, mode):
    change, exc, msg = CASES[case]
    opts = {**BASE, "model": tiny_model, "dataset": DOCS, **change, mode: True}
    if opts["dataset"] == "NO_TEXT":
        opts["dataset"] = no_text_file
    before = snapshot(existing)
    with pytest.raises(exc, match=msg) as info:
        actstore.cache(out=str(existing), **opts)
    assert isinstance(info.value, errors.ActStoreError)
    assert snapshot(existing) == before


def test_existing_store_is_refused_without_resume_or_overwrite(existing, tiny_model):
    before = snapshot(existing)
    with pytest.raises(
        errors.StoreExistsError,
        match=r"already exists \(4 of 4 rows done\); pass --resume .* or --overwrite",
    ):
        actstore.cache(out=str(existing), model=tiny_model, dataset=DOCS, **BASE)
    assert snapshot(existing) == before


def test_store_of_another_config_is_refused(existing, tiny_model):
    before = snapshot(existing)
    with pytest.raises(errors.StoreMismatchError, match=r"sites: store has"):
        actstore.cache(
            out=str(existing),
            model=tiny_model,
            dataset=DOCS,
            resume=True,
            **{**BASE, "sites": "resid_post:2"},
        )
    assert snapshot(existing) == before


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(tmp_path, tiny_model):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(
        errors.StoreExistsError, match="is not an actstore store; refusing to touch it"
    ):
        actstore.cache(out=str(folder), model=tiny_model, dataset=DOCS, overwrite=True, **BASE)
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_overwrite_replaces_a_store(existing, tiny_model, made):
    s = actstore.cache(
        out=str(existing),
        model=tiny_model,
        dataset=DOCS,
        overwrite=True,
        **{**BASE, "sites": "resid_post:2"},
    )
    assert s.sites == ["blocks.2.hook_resid_post"] and s.is_complete


def test_full_disk_is_refused_before_writing(tmp_path, tiny_model, monkeypatch):
    import collections

    engine = importlib.import_module("actstore.capture.checks")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "s.zarr"
    with pytest.raises(
        errors.InsufficientDiskError, match=r"needs about .* has 1.0 KB free;.*--no-disk-check"
    ):
        actstore.cache(out=str(out), model=tiny_model, dataset=DOCS, **BASE)
    assert not out.exists()


def test_non_utf8_text_is_refused_before_work(tmp_path, tiny_model):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("good line\ncafé au lait\n".encode("latin-1"))
    with pytest.raises(errors.CorpusError, match=r"is not UTF-8 text .*iconv"):
        actstore.cache(out=str(tmp_path / "s.zarr"), model=tiny_model, dataset=str(bad), **BASE)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    "errno_, text", [(28, "No space left on device"), (5, "Input/output error")]
)
def test_writer_failure_stops_the_run_and_leaves_shard_not_done(
    tmp_path, tiny_model, monkeypatch, errno_, text
):
    engine = importlib.import_module("actstore.capture.engine")

    real = engine._ShardWrite.__call__

    def failing(self, shard):
        if shard.k == 1:
            raise OSError(errno_, text)
        real(self, shard)

    monkeypatch.setattr(engine._ShardWrite, "__call__", failing)
    out = tmp_path / "s.zarr"
    opts = dict(
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:1",
        seq_len=16,
        n_rows=12,
        batch_size=2,
        rows_per_chunk=2,
        rows_per_shard=4,
        progress=False,
    )
    with pytest.raises(errors.WriterError, match=rf"shard 1 \(rows 4..7\).*{text}.*--resume"):
        actstore.cache(out=str(out), **opts)
    done = actstore.ActivationStore.open(out).done
    assert done[0] and not done[1]
    monkeypatch.setattr(engine._ShardWrite, "__call__", real)
    assert actstore.cache(out=str(out), resume=True, **opts).is_complete


def test_cli_reports_errors_in_one_line(tmp_path, tiny_model, capsys):
    code = main(
        [
            "cache",
            str(tmp_path / "x.zarr"),
            "--model",
            tiny_model,
            "--dataset",
            "missing.jsonl",
            "--seq-len",
            "16",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith("actstore: error: Dataset file 'missing.jsonl' not found")
        and "Traceback" not in err
    )
    assert main(["info", str(tmp_path / "nope.zarr")]) == 2
    assert "No store at" in capsys.readouterr().err
