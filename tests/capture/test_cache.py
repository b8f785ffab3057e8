"""Every stored activation equals TransformerLens's run_with_cache for the same rows."""

import numpy as np
import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import actstore
from actstore.errors import RowsNotDoneError, UnknownSiteError

from ..conftest import DOCS

SITES = "resid_pre:0,resid_mid:1,resid_post:all,attn_out:1,mlp_out:2,z:0-2,q:1,k:1,v:1,pattern:1.1,1.3,pattern:2,mlp_post:1"


def reference(bridge, tokens, store):
    _, c = bridge.run_with_cache(torch.from_numpy(tokens).long())
    out = {}
    for s in store.metadata["sites"]:
        ref = c[s["hook"]]
        if s["heads"] is not None:
            ref = ref[:, s["heads"]]
        out[s["hook"]] = ref.numpy()
    return out


@pytest.fixture(scope="module")
def f32_store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("s") / "f32.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=DOCS,
        sites=SITES,
        seq_len=24,
        n_rows=22,
        batch_size=4,
        rows_per_chunk=4,
        rows_per_shard=8,
        progress=False,
    )


def test_float32_is_bit_exact(f32_store, bridge):
    assert f32_store.is_complete and f32_store.n_rows == 22
    ref = reference(bridge, f32_store.tokens(), f32_store)
    assert len(ref) == 16  # 1+1+3+1+1+3+3+2+1 hooks in SITES
    for hook, want in ref.items():
        got = f32_store.acts(hook)
        assert got.dtype == np.float32
        assert np.array_equal(got, want), hook


def test_tokens_are_the_packed_corpus(f32_store, tokenizer):
    from actstore.corpus import CorpusSpec, RowReader

    rows = RowReader(CorpusSpec.from_dataset(DOCS, seq_len=24), tokenizer).take(22)
    assert np.array_equal(f32_store.tokens(), rows.tokens)
    assert np.array_equal(f32_store.doc(), rows.doc) and np.array_equal(
        f32_store.doc_pos(), rows.doc_pos
    )
    assert f32_store.mask().all()
    assert f32_store.str_tokens(0)[:4] == ["<|endoftext|>", "The", " quick", " brown"]


def test_stats_equal_numpy_over_the_store(f32_store):
    for hook in ("blocks.1.hook_resid_post", "blocks.2.attn.hook_z"):
        x = f32_store.acts(hook).astype(np.float64)
        x = x.reshape(-1, *x.shape[2:])  # (row*pos, *feature)
        m = f32_store.stats(hook)
        assert m.count == len(x)
        np.testing.assert_allclose(m.mean, x.mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(m.var, x.var(0), rtol=1e-10, atol=1e-12)
    with pytest.raises(actstore.errors.ConfigError, match="no stats"):
        f32_store.stats("blocks.1.attn.hook_pattern")


def test_store_layout_and_dimension_names(f32_store):
    arr = f32_store["blocks.1.attn.hook_pattern"]
    assert arr.metadata.dimension_names == ("row", "head", "query_pos", "key_pos")
    assert (
        arr.shape == (22, 2, 24, 24)
        and arr.chunks == (4, 2, 24, 24)
        and arr.shards == (8, 2, 24, 24)
    )
    assert f32_store["blocks.0.attn.hook_z"].metadata.dimension_names == (
        "row",
        "pos",
        "head",
        "d_head",
    )
    assert f32_store.group["done"].shape == (3,)
    meta = f32_store.metadata
    assert meta["layout"] == {
        "n_rows": 22,
        "seq_len": 24,
        "rows_per_chunk": 4,
        "rows_per_shard": 8,
        "n_shards": 3,
    }
    assert (
        meta["model"]["fingerprint"].startswith("sha256:") and meta["model"]["dtype"] == "float32"
    )
    assert meta["software"]["zarr"].startswith("3.")


def test_reader_slices_and_torch(f32_store):
    hook = "blocks.2.hook_resid_post"
    full = f32_store.acts(hook)
    t = f32_store.acts(hook, rows=slice(3, 9), as_="torch")
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(full[3:9]))
    assert np.array_equal(f32_store.acts(hook, rows=5), full[5])
    with pytest.raises(UnknownSiteError, match="Close matches"):
        f32_store.acts("blocks.2.hook_resid_pots")


def test_rows_not_done_are_refused(f32_store, tmp_path):
    import shutil

    copy = tmp_path / "partial.zarr"
    shutil.copytree(f32_store.path, copy)
    store = actstore.ActivationStore.open(copy)
    store.group.store  # noqa: B018
    import zarr

    zarr.open_group(str(copy), mode="r+")["done"][1] = False
    assert store.rows_done == 14 and not store.is_complete
    assert store.acts("blocks.0.hook_resid_post", rows=slice(0, 8)).shape[0] == 8
    # made from Python
    with pytest.raises(RowsNotDoneError, match=r"first: 8..15.*verify .* --repair.*resume=True"):
        store.acts("blocks.0.hook_resid_post", rows=slice(6, 10))


def test_float16_storage_is_the_exact_cast(tmp_path, tiny_model, bridge):
    s = actstore.cache(
        out=str(tmp_path / "h.zarr"),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:2,z:1",
        seq_len=16,
        n_rows=6,
        storage_dtype="float16",
        progress=False,
    )
    ref = reference(bridge, s.tokens(), s)
    for hook, want in ref.items():
        assert s.acts(hook).dtype == np.float16
        assert np.array_equal(s.acts(hook), want.astype(np.float16))


def test_float16_compute_within_tolerance(tmp_path, tiny_model, bridge):
    """fp16 compute against the float32 reference: fp16 rounding through 3 layers.
    Tolerance: atol 2e-2 + rtol 2e-2 (fp16 has an 11-bit mantissa, ~5e-4 relative per op)."""
    s = actstore.cache(
        out=str(tmp_path / "h16.zarr"),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:all,pattern:2",
        seq_len=16,
        n_rows=6,
        dtype="float16",
        device="cpu",
        progress=False,
    )
    assert s.metadata["storage_dtype"] == "float16" and s.metadata["model"]["dtype"] == "float16"
    ref = reference(bridge, s.tokens(), s)
    for hook, want in ref.items():
        torch.testing.assert_close(
            torch.from_numpy(s.acts(hook)).float(), torch.from_numpy(want), atol=2e-2, rtol=2e-2
        )


def test_document_mode_store(tmp_path, tiny_model, bridge):
    docs = [d for d in DOCS[:10]]
    s = actstore.cache(
        out=str(tmp_path / "d.zarr"),
        model=tiny_model,
        dataset=docs,
        sites="resid_post:1",
        seq_len=20,
        packing="document",
        progress=False,
    )
    assert s.n_rows == len(docs)
    mask = s.mask()
    assert mask[:, 0].all() and (~mask[1, 1:]).all()  # document 1 is empty: BOS only
    ref = reference(bridge, s.tokens(), s)["blocks.1.hook_resid_post"]
    assert np.array_equal(s.acts("blocks.1.hook_resid_post"), ref)
    x = ref.astype(np.float64)[mask]
    np.testing.assert_allclose(s.stats("blocks.1.hook_resid_post").mean, x.mean(0), atol=1e-12)
    assert s.stats("blocks.1.hook_resid_post").count == mask.sum()


def test_forward_stops_after_last_needed_hook(tiny_model):
    from actstore.models import load_model
    from actstore.sites import Site

    m = load_model(tiny_model, "float32", "cpu")
    started = []
    for layer in range(3):
        m.bridge.blocks[layer].register_forward_pre_hook(
            lambda mod, a, layer=layer: started.append(layer)
        )
    m.bridge.ln_final.register_forward_pre_hook(lambda *a: started.append("ln_final"))
    m.bridge.unembed.register_forward_pre_hook(lambda *a: started.append("unembed"))
    tokens = torch.zeros(1, 4, dtype=torch.long)

    m.capture(tokens, [Site("blocks.0.hook_resid_post", 0), Site("blocks.1.attn.hook_z", 1)])
    assert started == [0, 1]
    started.clear()
    # the last block: still no ln_final/unembed
    m.capture(tokens, [Site("blocks.2.hook_resid_post", 2)])
    assert started == [0, 1, 2]
    started.clear()
    got = m.capture(tokens, [Site("unembed.hook_out", None)])
    assert started == [0, 1, 2, "ln_final", "unembed"] and got["unembed.hook_out"].shape == (
        1,
        4,
        50257,
    )


@pytest.mark.slow
def test_real_gpt2_shape_is_bit_exact(tmp_path, gpt2_small_model):
    s = actstore.cache(
        out=str(tmp_path / "g.zarr"),
        model=gpt2_small_model,
        dataset=DOCS,
        sites="resid_post:0,resid_post:11,z:5,pattern:5.0,5.7,mlp_post:3",
        seq_len=32,
        n_rows=3,
        batch_size=2,
        progress=False,
    )
    assert s.metadata["model"]["n_layers"] == 12 and s.metadata["model"]["d_model"] == 768
    b = TransformerBridge.boot_transformers(gpt2_small_model, device="cpu", dtype=torch.float32)
    ref = reference(b, s.tokens(), s)
    assert set(ref) == set(s.sites)
    for hook, want in ref.items():
        assert np.array_equal(s.acts(hook), want), hook
