"""Stores of the trained demo model (loads in a second): float32 and float16 storage."""

from __future__ import annotations

import pytest

import actstore

L, ROWS = 16, 40
SITES = "resid_post:1,z:1,pattern:1"


def _store(tmp_path_factory: pytest.TempPathFactory, storage_dtype: str, n_rows: int):
    out = tmp_path_factory.mktemp("saelens") / f"{storage_dtype}.zarr"
    return actstore.cache(
        out=str(out),
        model="actstore-demo",
        dataset="actstore-demo",
        sites=SITES,
        seq_len=L,
        n_rows=n_rows,
        batch_size=8,
        rows_per_chunk=4,
        rows_per_shard=8,
        dtype="float32",
        storage_dtype=storage_dtype,
        device="cpu",
        progress=False,
    )


@pytest.fixture(scope="package")
def store(tmp_path_factory: pytest.TempPathFactory):
    return _store(tmp_path_factory, "float32", ROWS)


@pytest.fixture(scope="package")
def half_store(tmp_path_factory: pytest.TempPathFactory):
    return _store(tmp_path_factory, "float16", 8)
