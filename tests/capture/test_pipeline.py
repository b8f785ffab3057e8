"""The caching pipeline: staging through a hook sink, the buffer pool, automatic
batch and chunk sizes, and a writer failure that stops the forward at once."""

from __future__ import annotations

import importlib
import threading

import numpy as np
import pytest
import torch

import actstore
from actstore import errors
from actstore.capture.batching import batch_for_memory, default_chunk_rows
from actstore.capture.staging import BufferPool, ShardBuffers
from actstore.models import load_model
from actstore.sites import SiteShape, parse_sites

from ..conftest import DOCS, store_files

SITES = "resid_post:all,z:1,pattern:2.1,2.3,loss"


def test_sink_receives_exactly_what_capture_returns(tiny_model):
    m = load_model(tiny_model, "float32", "cpu")
    sites = parse_sites(SITES, m.bridge.hook_dict.keys(), m.info.n_layers, m.info.n_heads)
    tokens = torch.randint(0, 50000, (3, 12))
    kept = m.capture(tokens, sites)
    sunk: dict[str, torch.Tensor] = {}
    assert m.capture(tokens, sites, sink=lambda h, t: sunk.__setitem__(h, t.clone())) == {}
    assert sunk.keys() == kept.keys() == {s.hook for s in sites}
    for hook in kept:
        assert torch.equal(sunk[hook], kept[hook]), hook
    assert sunk["blocks.2.attn.hook_pattern"].shape[1] == 2  # heads narrowed before the sink


def test_staging_casts_exactly_and_views_rows(tiny_model):
    shapes = {"h": SiteShape(("pos", "d_model"), (5, 4))}
    bufs = ShardBuffers(shapes, "float16", rows=6, device="cpu")
    x = torch.randn(2, 5, 4)
    bufs.put("h", 2, x)
    bufs.seal()
    got = bufs.arrays(4)["h"]
    assert got.shape == (4, 5, 4) and got.dtype == np.float16
    assert np.array_equal(got[2:4], x.to(torch.float16).numpy())


def test_pool_makes_at_most_n_sets_and_surfaces_writer_errors_while_waiting():
    made = []

    def make():
        made.append(ShardBuffers({"h": SiteShape(("pos",), (2,))}, "float32", rows=1, device="cpu"))
        return made[-1]

    pool = BufferPool(make, 2)
    a, b = pool.acquire(lambda: None), pool.acquire(lambda: None)
    assert len(made) == 2 and a is not b
    failing = threading.Event()

    def check():
        if failing.is_set():
            raise errors.WriterError("disk full")

    threading.Timer(0.3, failing.set).start()
    with pytest.raises(errors.WriterError, match="disk full"):
        pool.acquire(check)  # would wait forever for a release; the writer's error ends the wait
    pool.release(a)
    assert pool.acquire(lambda: None) is a and len(made) == 2


def test_batch_for_memory():
    # 61.4 rows fit
    assert batch_for_memory(free_bytes=10 * 2**30, bytes_per_row=100 * 2**20, n_rows=10**6) == 32
    assert batch_for_memory(free_bytes=10**15, bytes_per_row=1, n_rows=10**6) == 1024  # capped
    # no more than the run
    assert batch_for_memory(free_bytes=10**15, bytes_per_row=1, n_rows=100) == 64
    # always at least one row
    assert batch_for_memory(free_bytes=1, bytes_per_row=10**9, n_rows=100) == 1


def test_chunk_rows_follow_the_largest_site_not_the_machine():
    big = {
        "a": SiteShape(("pos", "d_model"), (128, 768)),
        "b": SiteShape(("pos", "d_model"), (128, 64)),
    }
    # 16 x 393 KB = 6.3 MB <= 8 MiB < 32 rows
    assert default_chunk_rows(big, "float32", 10**6) == 16
    assert default_chunk_rows(big, "float16", 10**6) == 32
    assert default_chunk_rows(big, "float16", 5) == 5


def test_auto_batch_size_gives_the_same_store_as_any_batch(tmp_path, tiny_model):
    opts = dict(
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:all,z:1",
        seq_len=16,
        n_rows=40,
        progress=False,
    )
    auto = actstore.cache(out=str(tmp_path / "auto.zarr"), **opts)
    # 4 KB rows: 64 rows would fit in 8 MiB, but the run has 40
    assert auto.layout.rows_per_chunk == 40
    fixed = actstore.cache(
        out=str(tmp_path / "b3.zarr"),
        batch_size=3,
        rows_per_chunk=auto.layout.rows_per_chunk,
        rows_per_shard=auto.layout.rows_per_shard,
        **opts,
    )
    assert store_files(auto.path) == store_files(fixed.path)


def test_writer_failure_stops_the_forward_at_once(tmp_path, tiny_model, monkeypatch):
    engine = importlib.import_module("actstore.capture.engine")
    calls = []
    real_capture = engine.LoadedModel.capture

    def counting(self, *a, **kw):
        calls.append(1)
        return real_capture(self, *a, **kw)

    def failing(self, shard):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.LoadedModel, "capture", counting)
    monkeypatch.setattr(engine._ShardWrite, "__call__", failing)
    with pytest.raises(errors.WriterError, match=r"shard 0 .*No space left"):
        actstore.cache(
            out=str(tmp_path / "s.zarr"),
            model=tiny_model,
            dataset=DOCS * 4,
            sites="resid_post:1",
            seq_len=16,
            n_rows=64,
            batch_size=2,
            rows_per_chunk=2,
            rows_per_shard=2,
            progress=False,
        )
    # 32 shards of one batch each: the run stops within the buffer sets in flight, not at the end
    assert len(calls) < 10
    assert not actstore.ActivationStore.open(tmp_path / "s.zarr").done.any()


def test_float16_storage_refuses_values_it_cannot_hold(tmp_path, tiny_model):
    shapes = {"h": SiteShape(("pos", "d_model"), (2, 2))}
    bufs = ShardBuffers(shapes, "float16", rows=2, device="cpu")
    # inf already: stored as it is
    bufs.put("h", 0, torch.tensor([[[1.0, 2.0], [3.0, float("inf")]]]))
    bufs.arrays(1)
    bufs.put("h", 1, torch.tensor([[[1.0, 7e4], [3.0, 4.0]]]))
    with pytest.raises(
        OverflowError, match=r"h hold values beyond float16's range .*--storage-dtype float32"
    ):
        bufs.arrays(2)


def test_rank0_progress_counts_every_process_shards(monkeypatch):
    import zarr

    from actstore.capture import progress
    from actstore.store import Layout

    layout = Layout(n_rows=40, seq_len=16, rows_per_chunk=4, rows_per_shard=8)
    done = zarr.create_array(
        zarr.storage.MemoryStore(), shape=(5,), chunks=(1,), dtype="bool", fill_value=False
    )
    monkeypatch.setattr(progress, "POLL_S", 0.0)
    bar = progress.Progress(layout, rows_before=0, row_mb=1.0, seq_len=16, done=done, on=False)
    bar.update(4)  # this process: 4 rows, nothing done anywhere yet
    assert bar.n == 4
    done[1:4] = True  # other processes finished shards 1-3 (24 rows)
    bar.update(4)
    assert bar.n == 24
    solo = progress.Progress(layout, rows_before=8, row_mb=1.0, seq_len=16, done=None, on=False)
    solo.update(3)
    assert solo.n == 11
