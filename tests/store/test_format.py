"""The on-disk format: version 2 fills activation arrays with NaN (so rows not yet
written read as NaN to plain zarr and xarray), version 1 stores are still read,
resumed and loaded, and a small store hashes to a committed value."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import actstore
from actstore.store import verify_store

from .conftest import DEMO, V1_STORE

HOOK = "blocks.0.hook_resid_post"
# how tests/store/data/v1.zarr was made
V1_OPTS = dict(DEMO, sites="resid_post:0", n_rows=4, seq_len=16)


@pytest.fixture(scope="module")
def v2_twin(tmp_path_factory):
    """The v1 store's config, written by this actstore (format version 2)."""
    return actstore.cache(out=str(tmp_path_factory.mktemp("v2") / "s.zarr"), **V1_OPTS)


def test_version_1_store_reads_as_before(v2_twin):
    v1 = actstore.open(V1_STORE)
    assert v1.meta.format_version == 1 and v2_twin.meta.format_version == 2
    assert v1.is_complete and v1.sites == v2_twin.sites == [HOOK]
    # its bytes, as plain zarr reads them
    raw = zarr.open_group(str(V1_STORE), mode="r")[f"acts/{HOOK}"][:]
    assert np.array_equal(v1.acts(HOOK), raw) and np.array_equal(v1["resid_post", 0][1:3], raw[1:3])
    assert np.array_equal(v1.tokens(), v2_twin.tokens())
    # the same values as this machine computes them now: bit for bit where the float32 CPU kernels
    # are those that wrote it, else within their rounding (another CPU: 2e-6 of 8.6 seen on AVX-512)
    spread = float(raw.max() - raw.min())
    assert spread > 1
    np.testing.assert_allclose(v1.acts(HOOK), v2_twin.acts(HOOK), rtol=0, atol=1e-6 * spread)
    np.testing.assert_allclose(
        v1.stats(HOOK).mean, v2_twin.stats(HOOK).mean, rtol=0, atol=1e-6 * spread
    )
    assert v1.group[f"acts/{HOOK}"].metadata.fill_value == 0
    assert verify_store(str(V1_STORE), progress=False) == []


def test_version_1_store_loads_for_training():
    v1 = actstore.open(V1_STORE)
    batches = list(v1.loader("resid_post:0", batch_size=16, shuffle=False))
    x = torch.cat([b[HOOK] for b in batches]).numpy()
    assert len(x) == 4 * 15  # every token but BOS
    assert np.array_equal(x, v1.acts(HOOK)[:, 1:].reshape(-1, 128))


def test_version_1_store_resumes_as_version_1(v1_store):
    before = (v1_store / "zarr.json").read_bytes()
    store = actstore.cache(out=str(v1_store), resume=True, **V1_OPTS)
    assert store.is_complete and store.meta.format_version == 1
    assert (v1_store / "zarr.json").read_bytes() == before


def test_version_2_fills_activations_with_nan(unfinished, v2_twin):
    assert np.isnan(v2_twin.group[f"acts/{HOOK}"].metadata.fill_value)
    assert v2_twin.group["tokens"].metadata.fill_value == 0  # integer arrays cannot hold NaN
    root = zarr.open_group(str(unfinished), mode="r")  # plain zarr, no actstore checks
    assert list(root["done"][:]) == [True, False, False, False]
    for hook in ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z"):
        acts = root[f"acts/{hook}"][:]
        assert np.isfinite(acts[:4]).all()  # shard 0 done, shard 1 written before the kill
        assert np.isnan(acts[4:]).all()  # never written: NaN, not zeros


def test_version_2_nan_through_xarray(unfinished):
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(str(unfinished), consolidated=False)
    x = (
        ds[f"acts/{HOOK}"]
        if f"acts/{HOOK}" in ds
        else xr.open_zarr(str(unfinished), group="acts", consolidated=False)[HOOK]
    )
    assert x.dims == ("row", "pos", "d_model") and bool(np.isnan(x[4:].values).all())


# --- the committed hash ------------------------------------------------------------
# A small store written deterministically (demo model, float32 on CPU, 6 rows in shards
# of 4 so the last shard is partial, one sharded and one unsharded layout of chunks).
# Hashed: every file's relative path, then its bytes, in sorted order; zarr.json files
# are parsed and re-dumped with sorted keys, so zarr's JSON layout does not count, and
# from attrs["actstore"] three entries that vary between machines and runs are dropped:
# "software" (library versions), "created" (the time) and "command_line" (fixed here
# anyway). Nothing else is excluded: chunk bytes, codecs, fill values, dimension names,
# corpus and model metadata all count.
#
# FORMAT_HASH covers only the zarr.json files (the format's declarations); a full hash
# also every chunk's bytes. After a DELIBERATE format change, regenerate both with
#     PYTHONPATH=. HF_HUB_OFFLINE=1 python -m tests.store.test_format
# and paste them below (and bump FORMAT_VERSION if old readers would misread the store).
# If only the full hash differs on some machine while FORMAT_HASH matches, the metadata is
# the same and chunk bytes differ: float32 CPU kernels of another torch or CPU, or another
# codec library's encoding; check that first (another CPU's kernels: add its hash to FULL_HASHES).
# Last change: the merged stats (stats/<hook>/{count,mean,M2}) carry crc32c checksums and
# write every chunk, so their damage is found (readable by earlier actstore versions too); the
# corpus metadata holds each local file's sha256 (a resume of a changed corpus is refused).
FORMAT_HASH = "sha256:0e9d230fa5e05f90d00165d3b7b500f8915a2a7bf5da9730dbd1af5e02fea108"
# FULL_HASHES: one per set of float32 CPU kernels seen giving other chunk bytes (the same metadata)
FULL_HASHES = {
    "sha256:4f276381019048650d6cadae1cafc0108e95cf65b4415765ea4e750985f52bcd": "CI's machine to 2026-11-30",
    "sha256:6a7da42904c35818c73de4e938e54fc9f2c83005617964f8c337b49bf8dfae4a": "AMD EPYC, torch AVX512 (2026-12-06)",
}
HASHED_OPTS = dict(
    DEMO,
    sites="resid_post:0,z:1",
    n_rows=6,
    seq_len=16,
    batch_size=2,
    rows_per_chunk=2,
    rows_per_shard=4,
    write_threads=1,
    command_line="actstore cache (format hash)",
)
_VARYING = ("software", "created", "command_line")


def store_hashes(path: Path) -> tuple[str, str]:
    fmt, full = hashlib.sha256(), hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        data = f.read_bytes()
        if f.name == "zarr.json":
            doc = json.loads(data)
            for key in _VARYING:
                doc.get("attributes", {}).get("actstore", {}).pop(key, None)
            data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            fmt.update(rel.encode() + b"\0" + data + b"\0")
        full.update(rel.encode() + b"\0" + data + b"\0")
    return f"sha256:{fmt.hexdigest()}", f"sha256:{full.hexdigest()}"


def write_hashed_store(out: Path) -> Path:
    actstore.cache(out=str(out), **HASHED_OPTS)
    return out


def test_store_bytes_match_the_committed_hash(tmp_path):
    fmt, full = store_hashes(write_hashed_store(tmp_path / "h.zarr"))
    assert fmt == FORMAT_HASH, (
        "the store's zarr.json files changed: see the comment above FORMAT_HASH"
    )
    assert full in FULL_HASHES, (
        "chunk bytes changed while the metadata did not: see the comment above FORMAT_HASH "
        f"(torch CPU capability {torch.backends.cpu.get_cpu_capability()})"
    )


def test_the_hash_sees_a_changed_byte(tmp_path):
    out = write_hashed_store(tmp_path / "h.zarr")
    before = store_hashes(out)
    chunk = next(
        p for p in sorted((out / "acts").rglob("*")) if p.is_file() and p.name != "zarr.json"
    )
    data = bytearray(chunk.read_bytes())
    data[0] ^= 1
    chunk.write_bytes(bytes(data))
    after = store_hashes(out)
    assert after[0] == before[0] and after[1] != before[1]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fmt_hash, full_hash = store_hashes(write_hashed_store(Path(d) / "h.zarr"))
    print(
        f'FORMAT_HASH = "{fmt_hash}"\nFULL_HASHES = {{"{full_hash}": "<this machine, the date>"}}'
    )
