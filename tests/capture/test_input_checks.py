"""`cache` refuses bad input before it writes anything, and never resumes from other
data: a corpus edited in place, an output inside a store, an unwritable folder, an
unknown device, a codec level out of range, a model folder without a tokenizer.
Ctrl-C leaves a safe store and says where it stopped."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import actstore
from actstore.capture.lock import store_lock
from actstore.errors import ConfigError, ModelNotFoundError, StoreExistsError, StoreMismatchError

from ..conftest import DOCS, store_files
from ..conftest import RESUME_OPTS as OPTS
from ..helpers import interruptible
from .test_resume import SLOW_DISK, assert_same_store, cli_args

SMALL = dict(sites="resid_post:0", seq_len=16, n_rows=4, progress=False)


@pytest.fixture
def text_corpus(tmp_path, corpus_file):
    """A private copy of the shared corpus, to edit."""
    path = tmp_path / "docs.jsonl"
    shutil.copy(corpus_file, path)
    return path


def _killed_run(out, model, corpus):
    env = {**os.environ, "ACTSTORE_FAULT": "before_done:2"}  # dies with shards 0 and 1 done
    proc = subprocess.run(cli_args(out, model, corpus), env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_resume_refuses_a_corpus_edited_in_place_at_the_same_size(
    tmp_path, tiny_model, text_corpus
):
    out = tmp_path / "s.zarr"
    _killed_run(out, tiny_model, text_corpus)
    size = text_corpus.stat().st_size
    text_corpus.write_text(text_corpus.read_text().replace(" fox ", " cat "))
    assert text_corpus.stat().st_size == size
    before = store_files(out)
    with pytest.raises(
        StoreMismatchError,
        match=r"corpus file '.*docs.jsonl' changed since the store was made, at the same size",
    ):
        actstore.cache(
            out=str(out),
            model=tiny_model,
            dataset=str(text_corpus),
            resume=True,
            progress=False,
            **OPTS,
        )
    assert store_files(out) == before


def test_a_store_without_fingerprints_resumes_and_says_what_it_cannot_check(
    tmp_path, tiny_model, text_corpus, reference, capsys
):
    out = tmp_path / "s.zarr"
    _killed_run(out, tiny_model, text_corpus)
    meta_path = out / "zarr.json"
    doc = json.loads(meta_path.read_text())
    for f in doc["attributes"]["actstore"]["corpus"]["files"]:  # as written before fingerprints
        del f["sha256"]
    meta_path.write_text(json.dumps(doc))
    actstore.cache(out=str(out), model=tiny_model, dataset=str(text_corpus), resume=True, **OPTS)
    assert "resuming without checking the content of corpus file" in capsys.readouterr().err
    files, ref = store_files(out), store_files(reference)
    assert sorted(files) == sorted(ref) and [k for k in files if files[k] != ref[k]] == []


def test_an_output_inside_a_store_is_refused(tmp_path, tiny_model):
    outer = tmp_path / "a.zarr"
    actstore.cache(out=str(outer), model=tiny_model, dataset=DOCS, **SMALL)
    before = store_files(outer)
    for inner in (outer / "results" / "inner.zarr", outer / "acts" / "x.zarr"):
        with pytest.raises(StoreExistsError, match=r"is inside the store '.*a.zarr'.*outside it"):
            actstore.cache(out=str(inner), model=tiny_model, dataset=DOCS, **SMALL)
    assert store_files(outer) == before and not (outer / "results").exists()


def test_an_unwritable_folder_is_refused_before_anything(tmp_path, tiny_model, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    # root ignores chmod: a read-only folder, simulated
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ConfigError, match=r"the folder '.*' is not writable \(Permission denied\)"):
        actstore.cache(out=str(tmp_path / "s.zarr"), model=tiny_model, dataset=DOCS, **SMALL)
    assert os.listdir(tmp_path) == []


def test_a_read_only_store_is_refused_before_anything(tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "s.zarr"
    actstore.cache(out=str(out), model=tiny_model, dataset=DOCS, **SMALL)
    before = store_files(out)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(out) else real_access(p, mode)
    )
    for mode in ("resume", "overwrite"):
        with pytest.raises(
            ConfigError, match=r"s.zarr': the folder is not writable. Fix its permissions"
        ):
            actstore.cache(out=str(out), model=tiny_model, dataset=DOCS, **{mode: True}, **SMALL)
    assert store_files(out) == before and sorted(os.listdir(tmp_path)) == ["s.zarr"]


def test_a_lock_file_that_cannot_be_created_is_a_clear_error(tmp_path, monkeypatch):
    from actstore.store import lock

    real_open = os.open

    def refuse(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(30, "Read-only file system")
        return real_open(path, *a, **k)

    monkeypatch.setattr(lock.os, "open", refuse)
    with pytest.raises(
        ConfigError, match=r"lock file .* cannot be created \(Read-only file system\).*not writable"
    ):
        with store_lock(str(tmp_path / "s.zarr")):
            pass


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta"])
def test_an_unknown_device_is_named_with_the_valid_ones(tmp_path, tiny_model, device):
    with pytest.raises(
        ConfigError, match=rf"Unknown device '{device}'; pass auto .* cpu, cuda, cuda:N or mps"
    ):
        actstore.cache(
            out=str(tmp_path / "s.zarr"), model=tiny_model, dataset=DOCS, device=device, **SMALL
        )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "codec,message",
    [
        ("zstd:99", r"level 99 is outside zstd's levels -131072..22"),
        ("blosc-zstd:50", r"level 50 is outside blosc-zstd's levels 0..9"),
        ("blosc-lz4:-1", r"level -1 is outside blosc-lz4's levels 0..9"),
    ],
)
def test_codec_levels_are_checked_before_anything_is_created(tmp_path, tiny_model, codec, message):
    with pytest.raises(ConfigError, match=message):
        actstore.cache(
            out=str(tmp_path / "s.zarr"), model=tiny_model, dataset=DOCS, codec=codec, **SMALL
        )
    assert os.listdir(tmp_path) == []


def test_a_model_folder_without_a_tokenizer_says_so(tmp_path, tiny_model):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in os.listdir(tiny_model):
        if "token" not in name and "vocab" not in name and "merges" not in name:
            shutil.copy(os.path.join(tiny_model, name), folder / name)
    with pytest.raises(ModelNotFoundError, match=r"has no tokenizer .*tokenizer.save_pretrained"):
        actstore.cache(out=str(tmp_path / "s.zarr"), model=str(folder), dataset=DOCS, **SMALL)


@pytest.mark.parametrize(
    "rows_per_shard,batch_size,chunk", [(8, None, 8), (12, 8, 6), (6, 4, 3), (16, 4, 4)]
)
def test_a_shard_size_alone_gets_a_chunk_that_divides_it(
    tmp_path, tiny_model, rows_per_shard, batch_size, chunk
):
    store = actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:0",
        seq_len=8,
        n_rows=30,
        rows_per_shard=rows_per_shard,
        batch_size=batch_size,
        progress=False,
    )
    assert store.is_complete and store.layout.rows_per_shard == rows_per_shard
    assert store.layout.rows_per_chunk == chunk


def test_ctrl_c_says_where_it_stopped_and_resume_finishes_exactly(
    tmp_path, tiny_model, corpus_file, reference
):
    out = tmp_path / "s.zarr"
    # seconds a shard: the interrupt lands mid-run however busy the machine
    slow = {
        **SLOW_DISK,
        "ACTSTORE_SLOW_IO": "0.3",
    }
    proc = subprocess.Popen(
        cli_args(out, tiny_model, corpus_file),
        env=slow,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 120
    while not (out / "done" / "c" / "0").exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    done = actstore.ActivationStore.open(out).rows_done
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and 8 <= done < 30
    assert err.strip().splitlines()[-1] == (
        f"actstore: interrupted; '{out}' holds {done} of 30 rows, safely; "
        "rerun the same command with --resume to continue"
    )
    actstore.cache(
        out=str(out), model=tiny_model, dataset=corpus_file, resume=True, progress=False, **OPTS
    )
    assert_same_store(out, reference)
